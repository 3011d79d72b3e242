"""A synthetic activation store at any scale, in the package's own format, written in blocks.

Activations are seeded standard normals (float16) with planted concept -> channel associations:
each concept has ``PLANTED`` channels whose maps are raised under that concept's masks, so a
head trained on the store has signal to learn. Every image gets about ``masks_per_image``
rectangular masks of distinct concepts. Blocks are seeded by their index, so the store of N
images is the first N images of the store of 4N. Nothing of size N x C is held in memory:
activations, maxima and masks go to disk through :class:`~lavise_nb.store.writers.RowWriter`
a block at a time; the thresholds come from a streaming
:class:`~lavise_nb.store.thresholds.TailHistogram`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lavise_nb.coherence import direction_maxima, draw_directions
from lavise_nb.store.format import FORMAT, folder_name, write_manifest
from lavise_nb.store.masks import VALID_CELLS, pool_masks
from lavise_nb.store.thresholds import TailHistogram, load_histogram, store_thresholds
from lavise_nb.store.writers import RowWriter

CONCEPTS = ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "bench", "bird",
            "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
            "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "ball", "kite", "bat", "glove",
            "skateboard", "surfboard", "racket", "bottle", "glass", "cup", "fork", "knife", "spoon", "bowl",
            "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "cake", "chair",
            "couch", "plant", "bed", "table", "toilet", "television", "laptop", "mouse", "remote", "keyboard",
            "phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
            "doll", "toothbrush", "lamp", "window", "door", "mirror", "pillow", "basket")
PLANTED = 8            # channels per concept that fire under its masks
STRENGTH = 3.0         # what a full mask cell adds to a planted channel (the noise has std 1)
BLOCK = 256            # images generated and written per step
QUANTILE = 0.995


def store_folder(root: Path, images: int, channels: int, map_side: int, image_size: int, seed: int) -> Path:
    """The folder (under ``root``) of the synthetic store with these sizes."""
    return Path(root) / folder_name("synthetic", "scale", store_key(images, channels, map_side, image_size, seed))


def store_key(images: int, channels: int, map_side: int, image_size: int, seed: int) -> dict:
    return {"format": FORMAT, "model": f"synthetic-c{channels}-seed{seed}", "layer": "scale",
            "dataset": f"synthetic-scale:{images}:s{image_size}:m{map_side}:seed{seed}",
            "preprocess": {"size": image_size, "kind": "synthetic"}, "dtype": "float16"}


def planted_channels(channels: int, seed: int) -> np.ndarray:
    """(n_concepts, PLANTED) int64: the channels each concept raises."""
    rng = np.random.default_rng([seed, 10 ** 6])
    return rng.choice(channels, size=(len(CONCEPTS), PLANTED), replace=False) if channels >= len(CONCEPTS) * PLANTED \
        else rng.integers(0, channels, size=(len(CONCEPTS), PLANTED))


def mask_counts(images: int, masks_per_image: float, seed: int) -> np.ndarray:
    """(images,) int64 masks per image: Poisson, at least 1, at most 20, the same prefix for any ``images``."""
    counts = [np.random.default_rng([seed, b, 1]).poisson(masks_per_image, min(BLOCK, images - a))
              for b, a in enumerate(range(0, images, BLOCK))]
    return np.clip(np.concatenate(counts), 1, 20).astype(np.int64)


def block_masks(rng, counts: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles of distinct concepts for a block's images: (K, S, S) bool masks and (K,) concept ids."""
    concepts = np.concatenate([rng.choice(len(CONCEPTS), size=k, replace=False) for k in counts])
    k, s = len(concepts), image_size
    side = rng.integers(s // 8, s // 2 + 1, size=(k, 2))
    corner = rng.integers(0, s - side + 1)
    grid = np.arange(s)
    rows = (grid >= corner[:, :1]) & (grid < corner[:, :1] + side[:, :1])
    cols = (grid >= corner[:, 1:]) & (grid < corner[:, 1:] + side[:, 1:])
    return rows[:, :, None] & cols[:, None, :], concepts


def write_store(root: Path, images: int, channels: int = 2048, map_side: int = 7, image_size: int = 56,
                masks_per_image: float = 7.0, seed: int = 0, log=print) -> Path:
    """Write (or reuse) the synthetic store; return its folder."""
    folder = store_folder(root, images, channels, map_side, image_size, seed)
    if (folder / "manifest.json").is_file():
        log(f"reusing {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    h = w = map_side
    counts = mask_counts(images, masks_per_image, seed)
    n_objects = int(counts.sum())
    planted = planted_channels(channels, seed)
    acts = RowWriter(folder / "activations.npy", (images, channels, h, w), np.float16)
    maxima = RowWriter(folder / "maxima.npy", (images, channels), np.float32)
    packed = RowWriter(folder / "object_masks.npy", (n_objects, (image_size ** 2 + 7) // 8), np.uint8)
    small = RowWriter(folder / "object_masks_small.npy", (n_objects, h, w), np.float32)
    histogram = TailHistogram(channels, "cpu")
    directions = draw_directions(channels)        # the coherence null's, kept as a build keeps them
    np.save(folder / "null_directions.npy", directions.numpy())
    null = RowWriter(folder / "null_maxima.npy", (images, len(directions)), np.float32)
    image_of, concept_of, area_of = [], [], []
    at = 0
    try:
        for b, start in enumerate(range(0, images, BLOCK)):
            rng = np.random.default_rng([seed, b, 2])
            stop = min(start + BLOCK, images)
            full, concepts = block_masks(rng, counts[start:stop], image_size)
            pooled = pool_masks(full, (h, w))
            local = np.repeat(np.arange(stop - start), counts[start:stop])
            block = rng.standard_normal((stop - start, channels, h * w), dtype=np.float32)
            raised = np.zeros((stop - start, len(CONCEPTS), h * w), np.float32)
            np.add.at(raised, (local, concepts), pooled.reshape(len(concepts), -1))
            for j in range(PLANTED):
                np.add.at(block, (slice(None), planted[:, j]), STRENGTH * raised)
            half = block.astype(np.float16).reshape(stop - start, channels, h, w)
            acts.write(start, half)
            maxima.write(start, half.reshape(stop - start, channels, -1).max(2).astype(np.float32))
            histogram.add(torch.from_numpy(half), QUANTILE)
            null.write(start, direction_maxima(torch.from_numpy(half), directions,
                                               torch.ones(stop - start, h, w, dtype=torch.bool)).numpy())
            flat = full.reshape(len(full), -1)
            packed.write(at, np.packbits(flat, axis=1))
            small.write(at, pooled)
            image_of.append(start + local)
            concept_of.append(concepts)
            area_of.append(flat.sum(1))
            at += len(concepts)
            if b % 40 == 0:
                log(f"  {stop}/{images} images written")
    finally:
        for writer in (acts, maxima, null, packed, small):
            writer.close()
    histogram.save(folder / "histogram.npz")
    cells = np.ones((images, h, w), bool)
    np.save(folder / VALID_CELLS, cells)
    mapped = np.load(folder / "activations.npy", mmap_mode="r")
    np.save(folder / "thresholds.npy", store_thresholds(mapped, cells, QUANTILE, load_histogram(folder)))
    del mapped
    names = np.asarray(CONCEPTS)
    pd.DataFrame({"object": np.arange(n_objects), "image": np.concatenate(image_of).astype(np.int64),
                  "concept": names[np.concatenate(concept_of)], "area": np.concatenate(area_of).astype(np.int64)}
                 ).to_parquet(folder / "objects.parquet", index=False)
    pd.DataFrame({"image": np.arange(images), "image_id": np.arange(images), "path": [f"synthetic/{i}.png" for i in
                                                                                    range(images)],
                  "valid": True, "error": ""}).to_parquet(folder / "index.parquet", index=False)
    write_manifest(folder, store_key(images, channels, map_side, image_size, seed),
                   dict(model_name="synthetic", shape=(images, channels, h, w), dtype="float16",
                        image_size=image_size, quantile=QUANTILE, n_objects=n_objects, n_invalid=0,
                        supercategories={}))
    return folder
