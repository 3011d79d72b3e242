"""Word-vector spaces: :class:`WordSpace`, concept :class:`Embedding` and :func:`combine_spaces`."""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from gensim.models import KeyedVectors

from .text import SEPARATORS, fold

__all__ = ["Embedding", "MissingWordsError", "WordSpace", "combine_spaces", "content_id", "make_kv", "unit_rows"]


class MissingWordsError(KeyError, ValueError):
    """Some names have no known token in the word space."""

    def __init__(self, names: Sequence[str], space_name: str = "word space"):
        self.names = list(names)
        shown = ", ".join(repr(n) for n in self.names)
        self.message = (
            f"{len(self.names)} name(s) have no known token in {space_name}: {shown}. "
            "Rename them to words the space knows, or pass missing='skip' to drop "
            "them (they are then listed in Embedding.missing)."
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass
class Embedding:
    """Concept names embedded in a word space.

    Attributes
    ----------
    names : list of str
        The names that were kept, in input order (length n).
    vectors : ndarray, float32, shape (n, dim)
        L2-normalised vectors, row i for ``names[i]``.
    missing : list of str
        Names with no known token (dropped under ``missing="skip"``).
    partial : dict of str to list of str
        Kept names for which some tokens were unknown, with those tokens.
    """

    names: list[str]
    vectors: np.ndarray
    missing: list[str] = field(default_factory=list)
    partial: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def make_kv(words: Sequence[str], vectors: np.ndarray) -> KeyedVectors:
    """A KeyedVectors holding exactly ``words`` with ``vectors`` (shape (V, dim))."""
    vectors = np.asarray(vectors, dtype=np.float32)
    kv = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
    kv.add_vectors(list(words), vectors)
    return kv


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` (shape (..., dim)) as float32 with each row scaled to unit norm; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(np.float32)


def content_id(space_id: str) -> str:
    """The dimension and hash of a ``"<name>-<dim>d-<hash>"`` space id, without the name."""
    return "-".join(space_id.rsplit("-", 2)[-2:])


class WordSpace:
    """A word-vector space: a gensim ``KeyedVectors`` plus a name.

    Parameters
    ----------
    kv : gensim.models.KeyedVectors
        The vectors, shape (V, dim).
    name : str
        Short human-readable name, e.g. ``"glove-6b-50d"``.
    space_id : str, optional
        A fixed :attr:`space_id`, for a space defined by how it is built rather
        than by its exact word list (:func:`~lavise_nb.words.hybrid_space`).
        Default: derived from the name and a hash of the vectors.
    """

    def __init__(self, kv: KeyedVectors, name: str = "custom", *, space_id: str | None = None):
        self.kv = kv
        self.name = str(name)
        self._noted: set = set()
        self._normed: np.ndarray | None = None
        self._space_id: str | None = None if space_id is None else str(space_id)

    def __repr__(self) -> str:
        return f"WordSpace(name={self.name!r}, words={len(self)}, dim={self.dim})"

    def __len__(self) -> int:
        return len(self.kv.index_to_key)

    def __contains__(self, word) -> bool:
        return word in self.kv.key_to_index

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.kv.vector_size)

    @property
    def words(self) -> list[str]:
        """All words, in the space's own (usually frequency) order; length V."""
        return self.kv.index_to_key

    @property
    def normed(self) -> np.ndarray:
        """Unit-norm float32 vectors, shape (V, dim), computed once."""
        if self._normed is None:
            self._normed = unit_rows(self.kv.vectors)
        return self._normed

    @property
    def space_id(self) -> str:
        """Stable id: name, dim and a hash of the vocabulary and sampled vectors (unless given)."""
        if self._space_id is None:
            h = hashlib.sha1()
            h.update("\n".join(map(str, self.words)).encode("utf-8"))
            rows = np.unique(np.linspace(0, max(len(self) - 1, 0), num=min(len(self), 1000)).astype(int))
            h.update(np.ascontiguousarray(self.kv.vectors[rows], dtype=np.float32).tobytes())
            self._space_id = f"{self.name}-{self.dim}d-{h.hexdigest()[:12]}"
        return self._space_id

    @property
    def content_id(self) -> str:
        """:attr:`space_id` without the name (``"50d-<hash>"``): the same vectors under another name match."""
        return content_id(self.space_id)

    def index(self, word: str) -> int:
        """Row of ``word`` in :attr:`words` and :attr:`normed`."""
        return self.kv.key_to_index[word]

    def _lookup(self, token: str) -> str | None:
        for cand in (token, token.lower(), fold(token)):
            if cand in self:
                return cand
        return None

    def tokens(self, name: str) -> tuple[list[str], list[str]]:
        """Split a concept name into known and unknown tokens.

        The whole name is tried first (as given, lower-cased, folded, and with
        separators as ``-`` or ``_``), so compounds the space knows
        (``"t-shirt"``) stay one token; otherwise it is split on white space,
        ``_`` and ``-``, and each part looked up as given, lower-cased and
        folded (:func:`~lavise_nb.words.fold`).

        Returns
        -------
        known : list of str
            Keys of the space.
        unknown : list of str
        """
        name = str(name).strip()
        low = name.lower()
        for cand in (name, low, fold(low), re.sub(r"[\s_]+", "-", low), re.sub(r"[\s\-]+", "_", low)):
            if cand and cand in self:
                return [cand], []
        known, unknown = [], []
        for part in (p for p in SEPARATORS.split(name) if p):
            hit = self._lookup(part)
            (known if hit is not None else unknown).append(hit if hit is not None else part)
        return known, unknown

    def note(self, message: str) -> None:
        """Warn once per message and space: the same names lost in every cell of a notebook say it once."""
        if message not in self._noted:
            self._noted.add(message)
            warnings.warn(message, stacklevel=3)

    def embed(self, names: str | Iterable[str], missing: str = "error") -> Embedding:
        """Embed concept names as unit vectors.

        A name's vector is the mean of the unit vectors of its known tokens
        (see :meth:`tokens`), L2-normalised.

        Parameters
        ----------
        names : str or iterable of str
            n concept names, e.g. ``["dog", "traffic light", "heron_greatblue"]``.
        missing : {"error", "skip"}
            What to do with names that have no known token: raise
            :class:`MissingWordsError` listing all of them, or drop them with a
            warning and report them in ``Embedding.missing``.

        Returns
        -------
        Embedding
            ``vectors`` has shape (n_kept, dim).
        """
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        names = [names] if isinstance(names, str) else list(names)
        kept, rows, lost, partial = [], [], [], {}
        for name in names:
            known, unknown = self.tokens(name)
            if not known:
                lost.append(name)
                continue
            if unknown:
                partial[name] = unknown
            kept.append(name)
            rows.append(self.normed[[self.index(t) for t in known]].mean(axis=0))
        if lost and missing == "error":
            raise MissingWordsError(lost, self.name)
        if lost:
            self.note(f"{len(lost)} of {len(names)} names have no vector in word space {self.name!r} and are left out "
                      f"(e.g. {', '.join(map(repr, lost[:5]))}); to keep them, load a word space that has them "
                      "(load_word_space(..., words=[...]) adds names to the default GloVe+MiniLM space)")
        if partial:
            examples = ", ".join(f"{k!r} without {v}" for k, v in list(partial.items())[:3])
            self.note(f"{len(partial)} of {len(names)} names are embedded from some of their words only ({examples}); "
                      "their vectors may be rough")
        vectors = unit_rows(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)
        return Embedding(kept, vectors, lost, partial)


def combine_spaces(*spaces: WordSpace, name: str | None = None) -> WordSpace:
    """Concatenate several spaces over their shared words.

    Each space contributes its unit vectors scaled by ``1/sqrt(n_spaces)``,
    so combined vectors are unit-norm and the cosine of two words is the mean
    of their per-space cosines.

    Parameters
    ----------
    *spaces : WordSpace
        Spaces with dims d_1 ... d_s.
    name : str, optional
        Defaults to the names joined by ``"+"``.

    Returns
    -------
    WordSpace
        Vectors of shape (V_shared, d_1 + ... + d_s), words in the first
        space's order.
    """
    if len(spaces) < 1:
        raise ValueError("combine_spaces needs at least one WordSpace")
    shared = [w for w in spaces[0].words if all(w in s for s in spaces[1:])]
    if not shared:
        raise ValueError(f"the spaces {[s.name for s in spaces]} share no words")
    scale = np.float32(1.0 / np.sqrt(len(spaces)))
    blocks = [s.normed[[s.index(w) for w in shared]] * scale for s in spaces]
    vectors = np.concatenate(blocks, axis=1)
    kv = make_kv(shared, vectors)
    return WordSpace(kv, name or "+".join(s.name for s in spaces))

