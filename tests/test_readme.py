"""The README's Python example runs as written, on a small COCO set and a checkpoint the test writes."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
CATEGORIES = ["dog", "car", "tree", "person", "bicycle", "boat"]


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Using it on your own model and data"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _write_coco(root: Path, n_images: int = 24) -> None:
    """Non-square photos with two boxed objects each; every category drawn in its own colour."""
    rng = np.random.default_rng(0)
    (root / "val2017").mkdir()
    colours = rng.integers(0, 256, (len(CATEGORIES), 3))
    images, annotations = [], []
    for i in range(n_images):
        width, height = 96, 64
        pixels = np.full((height, width, 3), 90, dtype=np.uint8)
        for k, category in enumerate(rng.choice(len(CATEGORIES), 2, replace=False)):
            x, y = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 24))
            pixels[y:y + 24, x:x + 30] = colours[category]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(category) + 1,
                                "bbox": [x, y, 30, 24], "iscrowd": 0})
        Image.fromarray(pixels).save(root / "val2017" / f"{i:04d}.jpg", quality=95)
        images.append({"id": i + 1, "file_name": f"{i:04d}.jpg", "width": width, "height": height})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CATEGORIES)]
    (root / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))


def test_readme_example_runs_on_small_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    _write_coco(tmp_path)
    namespace: dict = {}
    exec(compile(_example(), str(README), "exec"), namespace)
    words, explainer, store, record = namespace["words"], namespace["explainer"], namespace["store"], namespace["record"]
    assert store.shape[:2] == (24, 512) and store.layer == "layer4"
    assert set(words["filter"]) == set(range(512)) and words["rank"].max() == 10
    assert list(words.columns[:4]) == ["layer", "filter", "rank", "word"]
    assert namespace["mapper"].calibration is record and record.settings == namespace["settings"].scoring()
    assert set(namespace["mapper"].concepts) == set(CATEGORIES)
    hits = explainer.lookup("wheel")
    assert isinstance(hits, pd.DataFrame) and len(hits) == 10 and hits["score"].is_monotonic_decreasing
