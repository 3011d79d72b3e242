"""Checking a store against its manifest: cheap checks on every open, checksums on request.

:func:`check_store` (run by every :class:`~lavise_nb.store.read.ActivationStore`) reads
the manifest, checks its fields and that its key is the one the folder's name was made
from, then each file's size and ``.npy`` header: a ``stat`` and a few bytes per file.
:func:`verify_files` also compares each file's BLAKE2b checksum with the manifest's, which
reads every byte. Stores written before the manifest listed its files are checked for
what their manifest does say (files present, shapes, sizes that fit the headers).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .format import FORMAT, MERGED_FILES, OPTIONAL_FILES, STORE_FILES, key_hash
from .writers import file_digest, npy_header

__all__ = ["StoreDamagedError", "check_files", "check_store", "damaged", "read_manifest", "verify_files"]

REQUIRED = {"key": dict, "model_name": str, "shape": list, "dtype": str, "image_size": int,
            "quantile": (int, float), "n_objects": int, "n_invalid": int}
KEY_FIELDS = ("format", "model", "layer", "dataset", "preprocess", "dtype")
_FOLDER_HASH = re.compile(r"_([0-9a-f]{12})(?:_shard\d+of\d+)?$")


class StoreDamagedError(ValueError):
    """A store's files do not match its manifest, or its manifest is unreadable.

    Attributes
    ----------
    path : pathlib.Path
        The store's folder.
    file : str
        The file at fault, relative to ``path``.
    """

    def __init__(self, message: str, path: Path, file: str):
        super().__init__(message)
        self.path, self.file = Path(path), file


def damaged(folder: Path, file: str, problem: str, merged: bool = False) -> StoreDamagedError:
    """The error for ``file`` of the store at ``folder``: what is wrong, and how to fix it."""
    fix = ("merge the shards again with ActivationStore.merge(shards, out_path)" if merged else
           "build it again with ActivationStore.build(..., rebuild=True)")
    return StoreDamagedError(f"{folder / file}: {problem}. The store at {folder} is damaged: {fix}, "
                             "or delete the folder and build it again.", folder, file)


def read_manifest(folder: Path) -> dict:
    """``folder``'s manifest, checked: valid JSON, every field, a key that matches the folder.

    Raises
    ------
    FileNotFoundError
        No ``manifest.json``: not a complete store.
    StoreDamagedError
        The manifest is not valid JSON, lacks a field, or its key does not hash to the
        folder's (or its own recorded) key hash.
    """
    file = folder / "manifest.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder} is not a complete activation store (no manifest.json); "
                                "build it with ActivationStore.build(...)")
    try:
        manifest = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise damaged(folder, "manifest.json", f"is not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise damaged(folder, "manifest.json", "does not hold a JSON object")
    merged = bool(manifest.get("shards"))
    wrong = [name for name, kind in REQUIRED.items() if not isinstance(manifest.get(name), kind)]
    wrong += [f"key.{name}" for name in KEY_FIELDS if name not in manifest.get("key", {})] if not wrong else []
    if wrong:
        raise damaged(folder, "manifest.json", f"lacks or mistypes the field(s) {', '.join(wrong)}", merged)
    key = manifest["key"]
    if key["format"] != FORMAT:
        raise damaged(folder, "manifest.json", f"is format {key['format']!r}; this version of lavise-nb "
                      f"reads format {FORMAT}", merged)
    actual = key_hash(key)
    recorded = manifest.get("key_hash", actual)
    named = _FOLDER_HASH.search(folder.name)
    if actual != recorded or (named and not merged and named.group(1) != actual):
        expected = named.group(1) if named and not merged else recorded
        raise damaged(folder, "manifest.json", f"has a key (layer {key['layer']!r}, model {key['model']!r}) "
                      f"that hashes to {actual}, not to {expected}: the manifest was edited or belongs "
                      "to another store", merged)
    return manifest


def expected_arrays(manifest: dict) -> dict:
    """Name -> (shape, dtype) that each ``.npy`` file must have by the manifest's fields (None: any)."""
    n, c, h, w = manifest["shape"]
    arrays = {"maxima.npy": ((n, c), None), "thresholds.npy": ((c,), None), "logits.npy": ((n, None), None),
              "null_directions.npy": ((None, c), None), "null_maxima.npy": ((n, None), None)}
    if not manifest.get("shards"):
        k = manifest["n_objects"]
        arrays.update({"activations.npy": ((n, c, h, w), np.dtype(manifest["dtype"])),
                       "object_masks.npy": ((k, None), None), "object_masks_small.npy": ((k, h, w), None)})
    return arrays


def check_files(folder: Path, manifest: dict) -> None:
    """The cheap checks: each file exists with the manifest's size, each ``.npy`` header has the
    manifest's shape and dtype and its data fill the file exactly.

    Raises
    ------
    StoreDamagedError
        The first file that fails, named with what is wrong.
    """
    merged = bool(manifest.get("shards"))
    if len(manifest["shape"]) != 4:
        raise damaged(folder, "manifest.json", f"has shape {manifest['shape']}, not (N, C, h, w)", merged)
    files = manifest.get("files") or {}
    arrays = expected_arrays(manifest)
    names = list(files) or [n for n in (MERGED_FILES if merged else STORE_FILES) if n not in OPTIONAL_FILES]
    for name in names:
        file = folder / name
        if not file.is_file():
            raise damaged(folder, name, "is missing", merged)
        size = file.stat().st_size
        if name in files and size != files[name].get("bytes"):
            raise damaged(folder, name, f"has {size} bytes, the manifest says {files[name].get('bytes')} "
                          "(cut short, or replaced)", merged)
        if name.endswith(".npy"):
            _check_header(folder, name, size, arrays.get(name), files.get(name), merged)


def _check_header(folder: Path, name: str, size: int, expected, recorded, merged: bool) -> None:
    try:
        shape, dtype, offset = npy_header(folder / name)
    except (ValueError, OSError, SyntaxError) as error:
        raise damaged(folder, name, f"has no valid .npy header ({error})", merged) from None
    wanted = [expected] if expected else []
    if recorded and "shape" in recorded:
        wanted.append((tuple(recorded["shape"]), np.dtype(recorded["dtype"])))
    for want_shape, want_dtype in wanted:
        fits = len(want_shape) == len(shape) and all(w is None or w == v for w, v in zip(want_shape, shape))
        if not fits or want_dtype not in (None, dtype):
            raise damaged(folder, name, f"holds a {dtype} array of shape {shape}, the manifest says "
                          f"{want_dtype or 'an array of shape'} {tuple(want_shape)}", merged)
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if size != needed:
        raise damaged(folder, name, f"has {size} bytes, its header needs {needed} (cut short, or grown)", merged)


def check_store(folder: Path) -> dict:
    """:func:`read_manifest` and :func:`check_files`; returns the manifest."""
    manifest = read_manifest(folder)
    check_files(folder, manifest)
    return manifest


def verify_files(folder: Path, manifest: dict) -> list[Path]:
    """:func:`check_files`, then every file's checksum against the manifest's (reads every byte).

    Returns
    -------
    list of pathlib.Path
        The files whose checksums matched; empty for a store written before manifests
        held checksums.

    Raises
    ------
    StoreDamagedError
        The first file whose contents differ from what the build wrote.
    """
    check_files(folder, manifest)
    checked = []
    for name, entry in (manifest.get("files") or {}).items():
        if "blake2b" in entry:
            if file_digest(folder / name) != entry["blake2b"]:
                raise damaged(folder, name, "does not match its checksum: its contents changed after the "
                              "build (a disk or copy error, or an edit)", bool(manifest.get("shards")))
            checked.append(folder / name)
    return checked
