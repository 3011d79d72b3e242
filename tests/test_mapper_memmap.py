"""Pooled training pairs on disk (memory-mapped) give the same values and the same head as in memory."""
import numpy as np
import pandas as pd
import torch

import lavise_nb.mapper as mapper_module
from lavise_nb.config import TrainingConfig
from lavise_nb.mapper import ExplainerTrainer, mask_features, mask_table, pooled_file, pooled_masks
from tests.helpers import shapes_space

SEEN = ["red", "green", "blue", "circle", "square", "stripes", "dots", "plain"]
WEAK = pd.DataFrame({"image": [0, 1, 2, 3, 7], "label": ["dog", "car", "dog", "tree", "car"]})


def _train(store, **kwargs):
    config = TrainingConfig(seen=SEEN, margin=0.1, dropout=0.1, max_epochs=6)
    trainer = ExplainerTrainer(store, shapes_space(), config, show_progress=False, **kwargs)
    return trainer, trainer.fit()


def test_memory_mapped_pooled_pairs_equal_the_in_memory_ones_and_are_reused(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISE_NB_CACHE", str(tmp_path))
    table = mask_table(tiny_store)
    in_memory = mask_features(tiny_store, table)
    assert not (tmp_path / "pooled").exists()
    mapped = mask_features(tiny_store, table, budget=0)
    assert len(list((tmp_path / "pooled").glob("*.npy"))) == 1
    assert torch.equal(mapped, in_memory) and torch.equal(in_memory, pooled_masks(tiny_store, table))
    path = pooled_file(tiny_store, table)
    assert path.parent == tmp_path / "pooled" and list(path.parent.glob("*.tmp.npy")) == []
    stamp = path.stat().st_mtime_ns
    assert pooled_file(tiny_store, table) == path and path.stat().st_mtime_ns == stamp
    assert pooled_file(tiny_store, table, pooling="mean") != path
    assert torch.equal(torch.from_numpy(np.load(path)), in_memory)


def test_pooled_files_of_removed_or_rebuilt_stores_are_deleted(tiny_store, tmp_path, monkeypatch):
    import shutil

    from lavise_nb.pooling import remove_stale_pooled
    from lavise_nb.store import ActivationStore

    monkeypatch.setenv("LAVISE_NB_CACHE", str(tmp_path / "cache"))
    def edit(store, mark):  # a copy whose manifest differs, as after a rebuild
        manifest = store.path / "manifest.json"
        manifest.write_text(manifest.read_text().replace("{", f'{{"{mark}": 1, ', 1))
        return ActivationStore.open(store.path)

    copies = [edit(ActivationStore.open(shutil.copytree(tiny_store.path, tmp_path / n)), n) for n in ("a", "b")]
    table = mask_table(tiny_store)
    live = pooled_file(tiny_store, table)
    gone, rebuilt = pooled_file(copies[0], table), pooled_file(copies[1], table)
    assert len({live, gone, rebuilt}) == 3 and all(p.with_suffix(".json").is_file() for p in (live, gone, rebuilt))
    assert remove_stale_pooled() == []
    shutil.rmtree(copies[0].path)
    edit(copies[1], "again")
    assert sorted(remove_stale_pooled()) == sorted([gone, rebuilt])
    assert live.is_file() and not gone.exists() and not rebuilt.exists()
    assert not gone.with_suffix(".json").exists()


def test_training_from_the_memory_mapped_pairs_gives_the_same_head(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISE_NB_CACHE", str(tmp_path))
    _, in_memory = _train(tiny_store, weak_labels=WEAK)
    monkeypatch.setenv("LAVISE_NB_POOLED_BUDGET", "0")
    assert not (tmp_path / "pooled").exists()
    _, mapped = _train(tiny_store, weak_labels=WEAK)
    assert len(list((tmp_path / "pooled").glob("*.npy"))) == 1
    state, other = in_memory.head.state_dict(), mapped.head.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)
    pd.testing.assert_frame_equal(in_memory.history, mapped.history)


def test_validation_scored_in_chunks_matches_one_pass(tiny_store, monkeypatch):
    _, whole = _train(tiny_store)
    monkeypatch.setattr(mapper_module, "EVAL_ROWS", 7)
    _, chunked = _train(tiny_store)
    pd.testing.assert_frame_equal(whole.history, chunked.history, rtol=1e-5)


def test_top_indices_match_a_full_stable_sort(tiny_store):
    maxima = np.asarray(tiny_store.maxima, dtype=np.float32)
    expected = np.argsort(-maxima, axis=0, kind="stable")[:9].T
    np.testing.assert_array_equal(tiny_store.top_indices(9, block_bytes=4 * len(maxima) * 3), expected)
    np.testing.assert_array_equal(tiny_store.top_indices(4, [5, 2, 5]), expected[[5, 2, 5], :4])


def test_training_without_the_accuracy_metrics_gives_the_same_head(tiny_store):
    _, monitored = _train(tiny_store, weak_labels=WEAK)
    _, quiet = _train(tiny_store, weak_labels=WEAK, metrics=False)
    state, other = monitored.head.state_dict(), quiet.head.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)
    pd.testing.assert_series_equal(monitored.history["val_loss"], quiet.history["val_loss"])
    assert monitored.history["unseen_top5"].notna().all()
    assert quiet.history[["seen_top1", "seen_top5", "unseen_top1", "unseen_top5"]].isna().all().all()
