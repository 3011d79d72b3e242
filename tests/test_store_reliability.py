"""The store under failure: killed builds resume bit-identical, concurrent builders take turns, damage is
caught, failed builds leave nothing behind, loader workers end with their builder.

Builds run in forked processes (one torch thread each, so every build computes the same floats) that
are killed with SIGKILL.
"""
import json
import os
import random
import shutil
import signal
import time
import traceback
import warnings

import numpy as np
import psutil
import pytest
import torch

from lavise_nb.datasets import ShapesWorld
from lavise_nb.store import ActivationStore, BuildInterrupted, BuildSettings, StoreDamagedError
from lavise_nb.store import build as build_module
from lavise_nb.store.locks import lock_file, store_lock
from lavise_nb.store.format import MERGED_FILES, STORE_FILES

LAYER = "features.4"
SETTINGS = BuildSettings(batch_size=4, num_workers=0)
KILLS = 20


class Flaky(torch.utils.data.Dataset):
    """A dataset that raises at image ``fail_at`` and sleeps ``delay`` seconds per image; else ``base``."""

    def __init__(self, base, fail_at=None, delay=0.0):
        self.base, self.fail_at, self.delay = base, fail_at, delay

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"image {i} cannot be loaded")
        time.sleep(self.delay)
        return self.base[i]

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


class Empty(Flaky):
    """A dataset with no images (ShapesWorld itself refuses n_images=0)."""

    def __len__(self):
        return 0


@pytest.fixture(scope="module")
def data():
    return ShapesWorld(48, seed=7)


def _fork(work, *args, **kwargs) -> int:
    """Run ``work(*args, **kwargs)`` in a forked process; it exits 0 when ``work`` returns, 1 on an exception."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            work(*args, **kwargs)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _build(model, data, root, **options):
    return ActivationStore.build(model, LAYER, data, root, SETTINGS, show_progress=False, **options)


def _kill_at(name: str, call: int):
    """Make the build module's ``name`` SIGKILL its process at its ``call``-th call (in a forked child)."""
    original = getattr(build_module, name)
    calls = []

    def killing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(build_module, name, killing)


def _files(folder) -> dict:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def assert_same_store(folder, reference):
    """Every file of ``folder`` has the bytes of ``reference``'s (the manifest holds no time stamp)."""
    got, want = _files(folder), _files(reference)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []


def _progress(folder) -> str:
    if (folder / "manifest.json").exists():
        return "after the manifest"
    if (folder / "building.json").exists():
        return f"after batch {json.loads((folder / 'building.json').read_text())['batches']}"
    return "before the first batch"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, data):
    """An uninterrupted build (in a forked process, as every build here) and the median seconds of three."""
    tiny_model.fingerprint
    roots, seconds = [tmp_path_factory.mktemp("reference") for _ in range(3)], []
    for root in roots:
        start = time.perf_counter()
        assert _exit_code(_fork(_build, tiny_model, data, root)) == 0
        seconds.append(time.perf_counter() - start)
    (folder,) = [p for p in roots[0].iterdir() if p.is_dir()]
    assert_same_store(roots[1] / folder.name, folder)
    return folder, float(np.median(seconds))


def test_builds_killed_at_random_moments_resume_bit_identical(tmp_path, tiny_model, data, reference):
    folder, seconds = reference
    rng = random.Random(0)
    moments, identical, finished = [], 0, 0
    for attempt in range(3 * KILLS):
        if len(moments) == KILLS:
            break
        root = tmp_path / f"kill{attempt}"
        pid = _fork(_build, tiny_model, data, root)
        time.sleep(rng.uniform(0.0, 0.9 * seconds))
        os.kill(pid, signal.SIGKILL)
        if _exit_code(pid) != -signal.SIGKILL:
            shutil.rmtree(root)                     # finished before the kill: not a kill moment
            finished += 1
            seconds *= 0.8
            continue
        moments.append(_progress(root / folder.name))
        assert _exit_code(_fork(_build, tiny_model, data, root)) == 0
        assert_same_store(root / folder.name, folder)
        identical += 1
    print(f"\n{identical} of {KILLS} killed builds resumed bit-identical ({finished} more finished before "
          f"their kill); killed {', '.join(moments)}")
    assert identical == KILLS


@pytest.mark.parametrize("name, call", [("write_part", 3), ("finalize", 1), ("write_manifest", 1),
                                        ("remove_leftovers", 1)])
def test_builds_killed_at_set_steps_resume_bit_identical(tmp_path, tiny_model, data, reference, name, call):
    def killed_build():
        _kill_at(name, call)
        _build(tiny_model, data, tmp_path)
    assert _exit_code(_fork(killed_build)) == -signal.SIGKILL
    folder = tmp_path / reference[0].name
    if name == "remove_leftovers":                  # killed right after the manifest: open tidies up
        assert (folder / "parts").is_dir() and (folder / "building.json").is_file()
        ActivationStore.open(folder)
        assert not (folder / "parts").exists() and not (folder / "building.json").exists()
    assert _exit_code(_fork(_build, tiny_model, data, tmp_path)) == 0
    assert_same_store(folder, reference[0])


def test_concurrent_builders_take_turns_and_agree(tmp_path, tiny_model, data, reference):
    passed = 0
    for run in range(10):
        root, count = tmp_path / f"run{run}", 2 + run % 2
        start_r, start_w = os.pipe()

        def builder():
            os.read(start_r, 1)
            _build(tiny_model, data, root).verify()
        pids = [_fork(builder) for _ in range(count)]
        os.write(start_w, b"x" * count)
        codes = [_exit_code(pid) for pid in pids]
        os.close(start_r), os.close(start_w)
        assert codes == [0] * count
        assert_same_store(root / reference[0].name, reference[0])
        passed += 1
    print(f"\n{passed} of 10 concurrent runs (2 or 3 builders) agreed")
    assert passed == 10


def test_a_waiting_builder_resumes_when_the_first_dies(tmp_path, tiny_model, data, reference):
    folder = tmp_path / reference[0].name
    first = _fork(_build, tiny_model, Flaky(data, delay=0.02), tmp_path)
    while not (folder / "building.json").exists():
        time.sleep(0.005)
    second = _fork(_build, tiny_model, data, tmp_path)
    time.sleep(0.3)
    os.kill(first, signal.SIGKILL)
    assert _exit_code(first) == -signal.SIGKILL
    assert _exit_code(second) == 0
    assert_same_store(folder, reference[0])


def test_concurrent_merges_agree(tmp_path, tiny_model, data):
    shards = [ActivationStore.build(tiny_model, LAYER, data, tmp_path, SETTINGS, shard=(i, 2),
                                    show_progress=False).path for i in range(2)]
    pids = [_fork(ActivationStore.merge, shards, tmp_path / "merged") for _ in range(2)]
    assert [_exit_code(pid) for pid in pids] == [0, 0]
    merged = _files(tmp_path / "merged")
    again = ActivationStore.merge(shards, tmp_path / "merged")
    assert _files(again.path) == merged
    assert len(again.verify()) == len(MERGED_FILES) + 2 * len(STORE_FILES)  # its own tables, then every shard file


def test_lock_timeout_names_the_lock_file(tmp_path):
    folder = tmp_path / "store"

    def hold():
        with store_lock(folder):
            time.sleep(5)
    held = _fork(hold)
    while not lock_file(folder).exists():
        time.sleep(0.01)
    time.sleep(0.2)
    try:
        with pytest.raises(TimeoutError, match=str(lock_file(folder))):
            with store_lock(folder, timeout=0.2):
                pass
    finally:
        os.kill(held, signal.SIGKILL)
        _exit_code(held)
    with store_lock(folder, timeout=1):             # the kernel freed the dead holder's lock
        pass


@pytest.fixture()
def store_copy(tmp_path, reference):
    """A copy of the reference store, to damage."""
    folder = tmp_path / reference[0].name
    shutil.copytree(reference[0], folder)
    return folder


def _edit_manifest(folder, edit):
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _truncate(folder):
    with open(folder / "activations.npy", "r+b") as f:
        f.truncate(os.path.getsize(folder / "activations.npy") - 100)


DAMAGE = {
    "truncated activations": (_truncate, "activations.npy: has .* bytes"),
    "missing array": (lambda f: (f / "object_masks_small.npy").unlink(), "object_masks_small.npy: is missing"),
    "edited layer": (lambda f: _edit_manifest(f, lambda m: m["key"].update(layer="features.1")),
                     "manifest.json: has a key \\(layer 'features.1'"),
    "edited layer and key hash": (lambda f: _edit_manifest(f, lambda m: m.update(
        key=dict(m["key"], layer="features.1"), key_hash="0" * 12)), "manifest.json: has a key"),
    "invalid JSON": (lambda f: (f / "manifest.json").write_text('{"key": {'), "manifest.json: is not valid JSON"),
    "missing field": (lambda f: _edit_manifest(f, lambda m: m.pop("shape")), "lacks or mistypes the field.* shape"),
    "wrong shape": (lambda f: _edit_manifest(f, lambda m: m.update(shape=[m["shape"][0] + 1, *m["shape"][1:]])),
                    "activations.npy: holds a float16 array"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_is_caught_on_open_and_build(store_copy, tiny_model, data, reference, case):
    damage, message = DAMAGE[case]
    damage(store_copy)
    for attempt in (lambda: ActivationStore.open(store_copy),
                    lambda: ActivationStore.build(tiny_model, LAYER, data, store_copy.parent, SETTINGS,
                                                  show_progress=False)):
        with pytest.raises(StoreDamagedError, match=message) as caught:
            attempt()
        assert "rebuild=True" in str(caught.value) and str(store_copy) in str(caught.value)
    assert _exit_code(_fork(_build, tiny_model, data, store_copy.parent, rebuild=True)) == 0
    assert_same_store(store_copy, reference[0])


def test_zeroed_values_are_found_by_verify_only(store_copy):
    file = store_copy / "activations.npy"
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.seek(size - size // 10)
        f.write(bytes(size // 10))
    store = ActivationStore.open(store_copy)
    with pytest.raises(StoreDamagedError, match="activations.npy: does not match its checksum"):
        store.verify()


def test_a_store_without_file_entries_opens_quietly(store_copy):
    _edit_manifest(store_copy, lambda m: m.pop("files"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = ActivationStore.open(store_copy)
        assert store.verify() == []
    _truncate(store_copy)
    with pytest.raises(StoreDamagedError, match="activations.npy: has .* bytes, its header needs"):
        ActivationStore.open(store_copy)


def test_a_changed_part_file_stops_the_resumed_build(tmp_path, tiny_model, data, reference):
    def interrupted():
        with pytest.raises(BuildInterrupted):
            _build(tiny_model, data, tmp_path, max_batches=3)
    assert _exit_code(_fork(interrupted)) == 0
    part = tmp_path / reference[0].name / "parts" / "000001.npz"
    part.write_bytes(part.read_bytes()[:-1] + b"?")
    with pytest.raises(StoreDamagedError, match="parts/000001.npz: differs from the checksum"):
        _build(tiny_model, data, tmp_path)
    assert _exit_code(_fork(_build, tiny_model, data, tmp_path, rebuild=True)) == 0
    assert_same_store(tmp_path / reference[0].name, reference[0])


def test_a_damaged_merge_is_merged_again_and_names_a_damaged_shard(tmp_path, tiny_model, data):
    shards = [ActivationStore.build(tiny_model, LAYER, data, tmp_path, SETTINGS, shard=(i, 2),
                                    show_progress=False).path for i in range(2)]
    merged = ActivationStore.merge(shards, tmp_path / "merged").path
    good = _files(merged)
    with open(merged / "maxima.npy", "r+b") as f:
        f.truncate(200)
    with pytest.raises(StoreDamagedError, match="maxima.npy: has 200 bytes.*merge the shards again"):
        ActivationStore.open(merged)
    assert _files(ActivationStore.merge(shards, merged).path) == good
    _truncate(shards[1])
    with pytest.raises(StoreDamagedError, match=f"{shards[1] / 'activations.npy'}: has"):
        ActivationStore.open(merged)


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be an int >= 1"), ("batch_size", 2.5, "batch_size must be an int >= 1"),
    ("num_workers", -1, "num_workers must be an int >= 0"), ("num_workers", "2", "num_workers must be an int >= 0"),
    ("dtype", "bfloat16", "dtype must be one of 'float16', 'float32'"),
    ("quantile", 1.0, "quantile must be a number in \\(0, 1\\)"), ("quantile", 0, "quantile must be a number"),
    ("quantile", float("nan"), "quantile must be a number"), ("amp", 1, "amp must be True or False"),
])
def test_bad_build_settings_name_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        BuildSettings(**{field: value})


def test_build_settings_resolve_their_workers(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert BuildSettings().workers == 2 and BuildSettings(num_workers=0).workers == 0
    assert BuildSettings(num_workers=5).workers == 5
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert BuildSettings().workers == 1


def test_settings_must_be_build_settings(tmp_path, tiny_model, data):
    with pytest.raises(TypeError, match="settings must be a BuildSettings"):
        ActivationStore.build(tiny_model, LAYER, data, tmp_path, {"batch_size": 4})


@pytest.mark.parametrize("case", ["bad layer", "no images", "failing dataset", "empty shard"])
def test_a_failed_build_leaves_no_folder(tmp_path, tiny_model, data, case):
    layer, dataset, shard, error = {
        "bad layer": ("features.99", data, None, KeyError),
        "no images": (LAYER, Empty(data), None, ValueError),
        "failing dataset": (LAYER, Flaky(data, fail_at=1), None, RuntimeError),
        "empty shard": (LAYER, ShapesWorld(3, seed=1), (0, 4), ValueError),
    }[case]
    with pytest.raises(error):
        ActivationStore.build(tiny_model, layer, dataset, tmp_path, SETTINGS, shard=shard, show_progress=False)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_a_failure_keeps_an_earlier_runs_resumable_work(tmp_path, tiny_model, data, reference):
    def interrupted():
        with pytest.raises(BuildInterrupted):
            _build(tiny_model, data, tmp_path, max_batches=2)
        with pytest.raises(RuntimeError, match="cannot be loaded"):
            _build(tiny_model, Flaky(data, fail_at=9), tmp_path)
    assert _exit_code(_fork(interrupted)) == 0
    folder = tmp_path / reference[0].name
    assert json.loads((folder / "building.json").read_text())["done"] == 8
    assert _exit_code(_fork(_build, tiny_model, data, tmp_path)) == 0
    assert_same_store(folder, reference[0])


def test_loader_workers_end_when_the_builder_is_killed(tmp_path, tiny_model, data):
    # batches of part files larger than a pipe: without the parent-death signal, workers whose parent died
    # wait forever to flush their queue (the siblings keep its read end open)
    def slow_build():
        ActivationStore.build(tiny_model, LAYER, Flaky(data, delay=0.02), tmp_path,
                              BuildSettings(batch_size=16, num_workers=2), device="cpu", show_progress=False)
    builder = _fork(slow_build)
    deadline = time.monotonic() + 30
    while len(psutil.Process(builder).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = psutil.Process(builder).children()
    assert len(workers) == 2
    os.kill(builder, signal.SIGKILL)
    _exit_code(builder)
    gone, alive = psutil.wait_procs(workers, timeout=3)
    for worker in alive:
        worker.kill()
    assert alive == []
