"""Writing a store's arrays: rows of ``.npy`` files, the build's part files, joining parts,
and describing what was written (sizes, ``.npy`` headers, checksums)."""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy
from numpy.lib.format import open_memmap

__all__ = ["RowWriter", "concat_parts", "describe_files", "file_digest", "npy_header", "part_files",
           "read_digests", "read_parts", "save_npz", "write_part"]

DIGESTS = "checksums.txt"      # in ``parts/``: one line per part file written, "<name> <blake2b>"


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


def save_npz(file: Path, arrays: dict) -> None:
    """Write an uncompressed ``.npz`` atomically (through a ``.tmp.npz``), byte for byte the same for
    the same arrays: unlike :func:`numpy.savez`, no time stamps in the zip entries."""
    tmp = file.with_suffix(".tmp.npz")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(entry, "w", force_zip64=True) as out:
                npy.write_array(out, np.asanyarray(value), allow_pickle=False)
    os.replace(tmp, file)


def write_part(file: Path, arrays: dict) -> str:
    """Write one batch's part file (:func:`lavise_nb.store.masks.mask_part`) atomically and append
    its checksum to ``checksums.txt`` beside it; returns the checksum."""
    save_npz(file, arrays)
    digest = file_digest(file)
    with open(file.parent / DIGESTS, "a") as out:
        out.write(f"{file.name} {digest}\n")
    return digest


def read_digests(parts: Path, count: int) -> dict:
    """The checksums of part files ``0`` to ``count - 1`` (name -> hex), the last one written for each,
    rewriting ``checksums.txt`` to hold just those (it may end in a line a killed build cut short)."""
    wanted = {f"{i:06d}.npz" for i in range(count)}
    digests = {}
    if (parts / DIGESTS).is_file():
        for line in (parts / DIGESTS).read_text().splitlines():
            name, _, digest = line.partition(" ")
            if name in wanted and len(digest) == 64:
                digests[name] = digest
        tmp = parts / (DIGESTS + ".tmp")
        tmp.write_text("".join(f"{name} {digest}\n" for name, digest in sorted(digests.items())))
        os.replace(tmp, parts / DIGESTS)
    return digests


def part_files(parts: Path, count: int | None = None) -> list[Path]:
    """The part files in the folder ``parts``, in batch order: the first ``count`` (all by default)."""
    if count is not None:
        return [parts / f"{i:06d}.npz" for i in range(count)]
    return sorted((f for f in parts.glob("*.npz") if f.stem.isdigit()), key=lambda f: int(f.stem))


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


def file_digest(file: Path, chunk: int = 8 << 20) -> str:
    """The 32-byte BLAKE2b of a file as 64 hex digits, read ``chunk`` bytes at a time."""
    digest = hashlib.blake2b(digest_size=32)
    buffer = memoryview(bytearray(chunk))
    with open(file, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def npy_header(file: Path) -> tuple[tuple, np.dtype, int]:
    """The shape, dtype and data offset in the header of a ``.npy`` file (nothing else is read).

    Raises
    ------
    ValueError
        The file does not start with a valid ``.npy`` header.
    """
    with open(file, "rb") as f:
        version = npy.read_magic(f)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(f)
        return tuple(int(v) for v in shape), np.dtype(dtype), f.tell()


def describe_files(folder: Path, names) -> dict:
    """Name -> ``bytes`` and ``blake2b`` of each file of ``names`` in ``folder`` that exists, plus
    ``shape`` and ``dtype`` for ``.npy`` files."""
    described = {}
    for name in names:
        file = folder / name
        if not file.is_file():
            continue
        entry = {"bytes": file.stat().st_size, "blake2b": file_digest(file)}
        if name.endswith(".npy"):
            shape, dtype, _ = npy_header(file)
            entry.update(shape=list(shape), dtype=dtype.str)
        described[name] = entry
    return described
