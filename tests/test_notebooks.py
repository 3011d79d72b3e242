"""The notebooks run end to end with papermill (small parameters) and write their results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
COMMON = ["model", "weights", "num_classes", "layer", "reference", "annotations", "image_data", "images", "crop",
          "n_images", "seed", "word_space", "class_names", "vocabulary", "output_dir", "interactive", "show_progress", "store_root",
          "device"]
DOCUMENTED = {
    "03_bias_analysis.ipynb": COMMON + ["target_root", "target_csv", "group_column", "n_per_group", "alpha", "p",
                                        "ranking"],
    "01_train_explainer.ipynb": COMMON + ["batch_size", "max_epochs", "seen_fraction", "calibrate", "p",
                                          "ranking", "weak_labels", "class_prior"],
    "02_explain_filters.ipynb": COMMON + ["method", "attention", "p", "s", "voting", "ranking", "top_words",
                                          "n_cards", "query", "recall_k", "compare", "calibrated", "hubness",
                                          "class_prior", "faithfulness", "probe_images", "random_directions",
                                          "dissection", "score_dissection", "verify"],
}
SMALL = dict(n_images=200, seed=0, interactive=False, show_progress=False)


def _run(name: str, out: Path, **parameters) -> Path:
    target = out / "notebooks" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOKS / name), str(target), parameters=parameters, kernel_name="python3",
                               cwd=str(NOTEBOOKS), progress_bar=False)
    return target


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_parameters_are_documented_literals(name):
    declared = papermill.inspect_notebook(str(NOTEBOOKS / name))
    assert set(DOCUMENTED[name]) <= set(declared), set(DOCUMENTED[name]) - set(declared)
    assert declared["layer"]["default"] == '"_blocks.15"' and declared["n_images"]["default"] == "2000"
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_notebooks_kernel_runs_this_checkout_over_a_users_stale_one(name, tmp_path):
    kernel = json.loads((NOTEBOOKS / name).read_text())["metadata"]["kernelspec"]["name"]
    stale = tmp_path / "kernels" / kernel
    stale.mkdir(parents=True)  # a user-level spec another checkout left, its venv since deleted
    (stale / "kernel.json").write_text(json.dumps({"argv": ["/gone/.venv/bin/python", "-m", "ipykernel_launcher",
                                                            "-f", "{connection_file}"], "language": "python",
                                                   "display_name": "Python (lavise-nb)"}))
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PREFER_ENV_PATH"}
    env["JUPYTER_DATA_DIR"] = str(tmp_path)
    found = subprocess.run([sys.executable, "-c", "from jupyter_client.kernelspec import KernelSpecManager as K; "
                            f"print(K().get_kernel_spec({kernel!r}).argv[0])"],
                           env=env, capture_output=True, text=True)
    assert found.returncode == 0, f"no {kernel!r} kernelspec in the venv (make setup installs it): {found.stderr}"
    assert os.path.samefile(found.stdout.strip(), sys.executable)


@pytest.fixture(scope="module")
def ran(trained_notebook):
    out, first = trained_notebook  # 01 with output_dir=out, max_epochs=2, p=5, **SMALL (tests/conftest.py)
    second = _run("02_explain_filters.ipynb", out, output_dir=str(out), p=5, s=3, top_words=5, n_cards=2,
                  query="car", probe_images=6, random_directions=8, score_dissection=True, verify=True, **SMALL)
    return out, first, second


@pytest.mark.notebook
def test_training_notebook_writes_the_mapper_and_history(ran):
    out, executed, _ = ran
    train = out / "train"
    for name in ("mapper.pt", "history.csv", "accuracy.csv", "concept_split.csv", "training_curves.png",
                 "settings.json", "layers.csv", "concepts.csv", "gamma.csv", "gamma.png"):
        assert (train / name).is_file(), name
    history = pd.read_csv(train / "history.csv")
    assert list(history["epoch"]) == [0, 1] and history["best"].sum() >= 1
    assert history[["seen_top1", "seen_top5"]].stack().between(0, 1).all()
    assert (history["seen_top5"] >= history["seen_top1"]).all()
    split = pd.read_csv(train / "concept_split.csv")
    assert set(split["split"]) == {"seen", "unseen"} and split["concept"].is_unique
    gamma = pd.read_csv(train / "gamma.csv")
    assert list(gamma.columns) == ["gamma", "words", "seen", "unseen", "H", "level", "k"]
    assert gamma["H"].between(0, 1).all() and len(gamma) == 2 * 26 and set(gamma["words"]) == {"image", "filter"}
    settings = json.loads((train / "settings.json").read_text())
    assert settings["n_images"] == 200 and settings["layer"] == "_blocks.15" and settings["class_prior"]
    checkpoint = torch.load(train / "mapper.pt", weights_only=True)
    calibration = checkpoint["calibration"]
    assert calibration["prior"]["source"] == "features" and calibration["prior"]["top"] == 10
    assert calibration["settings"]["p"] == 5 and calibration["vocabulary"] == "concrete-nouns"
    assert settings["word_space"] == "glove-6b-50d+minilm"
    assert checkpoint["space_id"].startswith("glove-6b-50d+minilm-434d-") and checkpoint["dim"] == 50 + 384
    cells = json.loads(executed.read_text())["cells"]
    assert not any(o.get("output_type") == "error" for c in cells for o in c.get("outputs", []))
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


@pytest.mark.notebook
def test_explain_notebook_finds_the_mapper_and_writes_tables(ran):
    out, _, executed = ran
    explain = out / "explain"
    table = pd.read_csv(explain / "explanations.csv")
    assert list(table.columns) == ["layer", "filter", "rank", "word", "votes", "support", "lift", "score", "kind",
                                   "n_images", "coherence", "null_share", "method", "note", "faithfulness",
                                   "dissection_word", "dissection_iou", "dissection_faithfulness", "agrees",
                                   "verified_word", "verified_from", "verified_selection", "verified_faithfulness"]
    per_filter = table.groupby("filter")[["coherence", "null_share"]].nunique(dropna=False)
    assert (per_filter <= 1).all().all()  # one value per filter
    assert table["coherence"].dropna().between(0, 1).all() and table["null_share"].dropna().between(0, 1).all()
    named = table.dropna(subset=["word"])
    scores = pd.read_csv(explain / "faithfulness.csv")
    tested = scores[scores["testable"]]
    assert len(scores) == named["filter"].nunique() and len(tested) > 0 and tested["auc"].between(0, 1).all()
    firsts = table[(table["rank"] == 1)].set_index("filter")
    assert firsts.loc[tested["filter"], "faithfulness"].to_numpy() == pytest.approx(tested["auc"].to_numpy())
    checks = table.groupby("filter")[["dissection_word", "dissection_iou", "agrees"]].nunique(dropna=False)
    assert (checks == 1).all().all()  # the closed-vocabulary check: one label per filter, an annotated concept
    concepts = set(pd.read_csv(out / "train" / "concepts.csv")["concept"])
    assert set(firsts["dissection_word"]) <= concepts and firsts["dissection_iou"].between(0, 1).all()
    assert (firsts["agrees"] == (firsts["word"] == firsts["dissection_word"])).all()
    scored = firsts["dissection_faithfulness"].dropna()
    assert len(scored) and scored.between(0, 1).all()
    verified = table.groupby("filter")[["verified_word", "verified_faithfulness"]].nunique(dropna=False)
    assert (verified == 1).all().all() and firsts["verified_word"].notna().sum() > 100
    own = table.groupby("filter")["word"].apply(set)
    for f, row in firsts.dropna(subset=["verified_word"]).iterrows():  # one of its words or its label
        assert row["verified_word"] in own[f] | {row["dissection_word"]}
        assert (row["verified_from"] == "dissection") == (row["verified_word"] not in own[f])
    assert firsts[["verified_selection", "verified_faithfulness"]].stack().between(0, 1).all()
    baseline = pd.read_csv(explain / "random_directions.csv")
    units = baseline.groupby("unit")["filter"].agg(["nunique", "max"])
    assert units.loc["filter", "nunique"] == named["filter"].nunique() and units.loc["random direction", "max"] < 8
    assert baseline.loc[baseline["testable"], "auc"].dropna().between(0, 1).all()
    assert table["filter"].nunique() == 320 and named.groupby("filter").size().max() == 5
    assert set(named["kind"]) <= {"seen", "unseen", "zero-shot"} and (named["votes"] > 0).all()
    words = pd.read_csv(explain / "image_words.csv")
    assert words.groupby(["filter", "image"]).ngroups <= 320 * 5
    summary = pd.read_csv(explain / "filter_summary.csv")
    assert summary["agreement"].between(0, 1 + 1e-6).all()
    cards = sorted(explain.glob("filter_card_*.png"))
    assert len(cards) == 2 and {int(p.stem.split("_")[-1]) for p in cards} <= set(summary["filter"])
    lookup = pd.read_csv(explain / "lookup_car.csv")
    assert list(lookup["rank"]) == list(range(1, 11)) and lookup["score"].is_monotonic_decreasing
    recall = pd.read_csv(explain / "recall.csv")
    assert {"attention/paper", "attention/soft_mask", "frequency", "netdissect"} <= set(recall["method"])
    assert set(recall["subset"]) == {"all", "seen", "unseen"} and recall["recall"].dropna().between(0, 1).all()
    assert (explain / "recall.png").is_file()
    comparison = pd.read_csv(explain / "calibration_comparison.csv")
    assert len(comparison) == 320 and {"word_uncalibrated", "word_calibrated"} <= set(comparison.columns)
    cells = json.loads(executed.read_text())["cells"]
    pictures = sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    assert pictures >= 3 + 1 + 1  # static browser cards, look-up bars, recall bars
    printed = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    assert "class prior: ClassPrior(efficientnet-lite0, source='features', top=10" in printed
    assert "run GammaCalibration" not in printed  # the gamma of notebook 01 was tuned with the same prior


@pytest.mark.notebook
def test_notebooks_train_and_explain_in_glove_alone(tmp_path):
    glove = dict(SMALL, word_space="glove-6b-50d", output_dir=str(tmp_path))
    _run("01_train_explainer.ipynb", tmp_path, max_epochs=2, calibrate=False, class_prior=False, **glove)
    _run("02_explain_filters.ipynb", tmp_path, vocabulary="concepts", compare=False, p=5, s=3, top_words=5,
         n_cards=1, query="car", class_prior=False, voting="top_s", faithfulness=False, **glove)
    checkpoint = torch.load(tmp_path / "train" / "mapper.pt", weights_only=True)
    assert checkpoint["space_id"].startswith("glove-6b-50d-50d-") and checkpoint["dim"] == 50
    table = pd.read_csv(tmp_path / "explain" / "explanations.csv").dropna(subset=["word"])
    assert table["filter"].nunique() > 200 and set(table["word"]) <= set(checkpoint["concepts"])


@pytest.mark.notebook
def test_explain_notebook_says_when_the_mapper_is_missing(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="run 01_train_explainer"):
        _run("02_explain_filters.ipynb", tmp_path, output_dir=str(tmp_path), **SMALL)
