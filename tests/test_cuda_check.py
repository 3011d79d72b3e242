"""benchmarks/cuda_check.py, the GPU machine's check, run on the CPU with small sizes so it cannot rot."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cuda_check_runs_every_stage_on_cpu(tmp_path):
    env = dict(os.environ, LAVISE_NB_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cuda_check.py"), "--device", "cpu",
                             "--images", "40", "--words", "300", "--max-epochs", "4", "--compare-cpu", "8",
                             "--output-dir", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "cuda_check.json").read_text())
    stages = [row["stage"] for row in report["stages"]]
    assert stages == ["store build", "weak labels (from the store's logits)", "training",
                      "class prior (source=features)", "calibration", "explaining"]
    assert all(row["seconds"] > 0 for row in report["stages"]) and len(report["forward_seconds"]) == 2
    facts = report["facts"]
    assert facts["images"] == 40 and facts["filters"] == 320 and facts["candidate_words"] == 311
    assert 1 <= facts["epochs_run"] <= 4
    assert facts["filters_explained"] == 320 and 320 < facts["explanation_rows"] <= 320 * 10   # up to ten words
    gap = report["device_gap"]                          # on the CPU: a second build of the same images
    assert gap["images"] == 8 and gap["max_abs_activation_gap"] == 0 and gap["max_abs_threshold_gap"] == 0
    assert gap["activation_scale"] > 0
    text = (out / "cuda_check.md").read_text()
    assert "| **total** |" in text and "x forward" in text and "differ by at most 0" in text


def test_cuda_check_says_what_to_do_without_cuda(tmp_path):
    import pytest
    import torch
    if torch.cuda.is_available():
        pytest.skip("a cuda device is here: the check runs instead of refusing")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cuda_check.py"), "--output-dir",
                             str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode != 0 and "--device cpu" in result.stderr
