"""build_distributed: two CPU ranks under torchrun build and merge the store a single process builds."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lavise_nb.store import ActivationStore, build_distributed
from lavise_nb.store.distributed import launch_info, merged_folder

REPO = Path(__file__).resolve().parents[1]

# Run by the launcher (and once without it, for the single-process store). One image per forward pass and
# one thread per process: a convolution's float rounding can depend on batch composition and thread count.
SCRIPT = """
import os
import sys
from pathlib import Path

import torch
from lavise_nb.datasets import ShapesWorld
from lavise_nb.probe import wrap_model
from lavise_nb.store import BuildSettings, build_distributed
from tests.conftest import planted_net

torch.set_num_threads(1)
data = ShapesWorld(70, seed=5)
model = wrap_model(planted_net(), data.preprocess, "planted")
store = build_distributed(model, "features.1", data, sys.argv[1], BuildSettings(batch_size=1, num_workers=0),
                          device="cpu", show_progress=False)
Path(sys.argv[2], f"rank{os.environ.get('RANK', '-')}.txt").write_text(str(store.path))
"""


def _run(command, tmp_path, name: str) -> dict:
    """Run ``command`` + [root, reports]; returns {rank: the store path that rank returned}."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    reports = tmp_path / f"{name}-reports"
    reports.mkdir()
    result = subprocess.run([*command, str(tmp_path / name), str(reports)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    return {p.stem[4:]: p.read_text() for p in sorted(reports.iterdir())}


def test_torchrun_ranks_build_the_single_process_store(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(SCRIPT))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    paths = _run([*launcher, str(script)], tmp_path, "dist")
    assert sorted(paths) == ["0", "1"] and paths["0"] == paths["1"] and paths["0"].endswith("_merged2")
    single_path = _run([sys.executable, str(script)], tmp_path, "single")["-"]

    merged, single = ActivationStore.open(paths["0"]), ActivationStore.open(single_path)
    assert [Path(p).name[-9:] for p in merged.shard_paths] == ["shard0of2", "shard1of2"]
    assert merged.shape == single.shape and merged.shape[0] == 70
    np.testing.assert_array_equal(np.asarray(merged.activations), np.asarray(single.activations))
    np.testing.assert_array_equal(np.asarray(merged.maxima), np.asarray(single.maxima))
    np.testing.assert_array_equal(merged.thresholds, single.thresholds)
    np.testing.assert_array_equal(np.asarray(merged.packed_masks), np.asarray(single.packed_masks))
    np.testing.assert_array_equal(np.asarray(merged.packed_masks_small), np.asarray(single.packed_masks_small))
    assert merged.objects.equals(single.objects) and merged.index.equals(single.index)
    merged.verify()


def test_outside_torchrun_it_is_a_plain_build(tmp_path, tiny_model, shapes, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    store = build_distributed(tiny_model, "features.1", shapes, tmp_path, show_progress=False)
    assert store.shard_paths is None and "shard" not in store.manifest and store.shape[0] == len(shapes)
    merged = merged_folder(tiny_model, "features.1", shapes, tmp_path, world_size=2)
    assert merged.parent == tmp_path and merged.name == f"{store.path.name}_merged2"


def test_launch_variables_are_checked():
    assert launch_info({}) is None
    assert launch_info({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}).local_rank == 1
    with pytest.raises(ValueError, match="RANK is missing"):
        launch_info({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="0 <= RANK < WORLD_SIZE"):
        launch_info({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
