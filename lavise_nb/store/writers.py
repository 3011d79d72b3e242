"""Writing a store's arrays: rows of ``.npy`` files, the build's part files, and joining parts."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

__all__ = ["RowWriter", "concat_parts", "part_files", "read_parts", "write_part"]


class RowWriter:
    """Write rows of a .npy file with plain file writes.

    No memory map: its dirty pages would count towards the process's resident memory and
    grow with the dataset.

    Parameters
    ----------
    file : pathlib.Path
    shape : tuple of int, optional
        Create ``file`` with this shape (header and a sparse file); without it, open an
        existing ``file`` to write more rows.
    dtype : numpy dtype, optional
        With ``shape``.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    """

    def __init__(self, file: Path, shape=None, dtype=None):
        if shape is not None:
            array = open_memmap(file, mode="w+", dtype=dtype, shape=tuple(shape))
        else:
            array = np.load(file, mmap_mode="r")
        self.offset, self.dtype = array.offset, array.dtype
        self.row_bytes = int(np.prod(array.shape[1:])) * array.dtype.itemsize
        self.shape = array.shape
        del array
        self._fd = os.open(file, os.O_RDWR)

    def write(self, start: int, block: np.ndarray) -> None:
        """Write ``block`` (rows, ``*shape[1:]``) from row ``start`` on, cast to the file's dtype."""
        data = np.ascontiguousarray(block, dtype=self.dtype)
        if data.size:
            view = memoryview(data.reshape(-1).view(np.uint8))
            at, written = self.offset + start * self.row_bytes, 0
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], at + written)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_part(file: Path, arrays: dict) -> None:
    """Write one batch's part file (:func:`lavise_nb.store.masks.mask_part`) atomically."""
    np.savez(file.with_suffix(".tmp.npz"), **arrays)
    os.replace(file.with_suffix(".tmp.npz"), file)


def part_files(parts: Path) -> list[Path]:
    """The complete part files in the folder ``parts``, in batch order."""
    return sorted(parts.glob("[0-9]*.npz"))


def read_parts(files: list, names) -> dict:
    """Some arrays of every part file, each concatenated over the parts (empty lists give no key)."""
    columns = {name: [] for name in names}
    for f in files:
        with np.load(f) as data:
            for name in columns:
                columns[name].append(data[name])
    return {name: np.concatenate(blocks) for name, blocks in columns.items() if blocks}


def concat_parts(files: list, name: str, out: Path) -> int:
    """Stream one array of every part into one .npy, a part at a time (constant memory).

    Returns
    -------
    int
        The number of rows written.
    """
    shapes = []
    for f in files:
        with np.load(f) as data:
            shapes.append((data[name].shape, data[name].dtype))
    rows = sum(shape[0] for shape, _ in shapes)
    tail, dtype = shapes[0][0][1:], shapes[0][1]
    writer = RowWriter(out, (rows, *tail), dtype)
    try:
        at = 0
        for f in files:
            with np.load(f) as data:
                block = data[name]
            writer.write(at, block)
            at += len(block)
    finally:
        writer.close()
    return rows
