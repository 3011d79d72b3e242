"""Candidate words for explanations (:class:`Vocabulary`) and the nearest-word search (:func:`nearest`)."""
from __future__ import annotations

import os
import re
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .._utils.cache import cache_dir
from .space import MissingWordsError, WordSpace, unit_rows
from .text import NUMBER_WORDS, SEPARATORS, fold, in_lexicon, is_noun, stopwords, zipf
from .wordnet import fetch_wordnet, physical_entity_lemmas

__all__ = ["Vocabulary", "nearest"]

_ALPHA = re.compile(r"[a-z]+")
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_NEAREST_CHUNK = 1 << 24
_LIST_VERSION = 1


def nearest(vectors: np.ndarray, vocabulary, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of each query among the vocabulary.

    Parameters
    ----------
    vectors : array-like or torch.Tensor, shape (n, dim) or (dim,)
        Queries; normalised here.
    vocabulary : Vocabulary, WordSpace or array-like, shape (V, dim)
        Candidates; arrays are normalised here.
    k : int
        Number of neighbours (capped at V).

    Returns
    -------
    indices : ndarray, int64, shape (n, k)
        Rows of the vocabulary, best first.
    scores : ndarray, float32, shape (n, k)
        Cosine similarities, descending.
    """
    if isinstance(vocabulary, (Vocabulary, WordSpace)):
        table = vocabulary.vectors if isinstance(vocabulary, Vocabulary) else vocabulary.normed
    else:
        table = unit_rows(vocabulary)
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    if table.shape[0] == 0:
        raise ValueError("the vocabulary is empty")
    queries = unit_rows(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
    if queries.shape[1] != table.shape[1]:
        raise ValueError(
            f"query dim {queries.shape[1]} does not match vocabulary dim {table.shape[1]}: "
            "map features into the same word space first"
        )
    k = int(min(k, table.shape[0]))
    n = queries.shape[0]
    indices = np.empty((n, k), np.int64)
    scores = np.empty((n, k), np.float32)
    step = max(1, _NEAREST_CHUNK // max(table.shape[0], 1))
    for lo in range(0, n, step):
        sims = queries[lo : lo + step] @ table.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.argsort(-sims, axis=1)
        top_s = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        indices[lo : lo + step] = np.take_along_axis(top, order, axis=1)
        scores[lo : lo + step] = np.take_along_axis(top_s, order, axis=1)
    return indices, scores


def _read_list(path: Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _write_list_atomic(words: Sequence[str], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text("".join(w + "\n" for w in words), encoding="utf-8")
    os.replace(tmp, path)


def _fold_group(words: Iterable[str], space: WordSpace, accept=None, limit: int | None = None) -> list[str]:
    """One representative per :func:`fold` class: the lemma if the space has it
    (and ``accept(lemma)``), else the first form seen."""
    seen: dict[str, str] = {}
    for w in words:
        key = fold(w)
        if key not in seen:
            ok = key in space and (accept is None or accept(key))
            seen[key] = key if ok else w
            if limit is not None and len(seen) >= limit:
                break
    return list(seen.values())


@dataclass(eq=False)
class Vocabulary:
    """Candidate words for explanations.

    Attributes
    ----------
    words : list of str
        V words or phrases.
    vectors : ndarray, float32, shape (V, dim)
        Unit-norm rows, row i for ``words[i]``.
    space_id : str
        :attr:`WordSpace.space_id` of the space the vectors come from.
    name : str
    space : WordSpace or None
        Kept so concepts can be added later (``vocab + ["hot dog"]``).
    """

    words: list[str]
    vectors: np.ndarray
    space_id: str
    name: str = "vocabulary"
    space: WordSpace | None = field(default=None, repr=False)

    def __post_init__(self):
        self.words = list(self.words)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.shape[0] != len(self.words):
            raise ValueError(f"{len(self.words)} words but {self.vectors.shape[0]} vectors")
        self._index = {w: i for i, w in enumerate(self.words)}

    def __repr__(self) -> str:
        return f"Vocabulary(name={self.name!r}, words={len(self)}, space_id={self.space_id!r})"

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word) -> bool:
        return word in self._index

    def index(self, word: str) -> int:
        return self._index[word]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    # ---- constructors

    @classmethod
    def _from_space_words(cls, space: WordSpace, words: Sequence[str], name: str) -> "Vocabulary":
        # a cached list is keyed by space_id, which hybrid spaces over other word lists share: keep what this one has
        words = [w for w in words if w in space]
        rows = [space.index(w) for w in words]
        return cls(words, space.normed[rows], space.space_id, name, space)

    @classmethod
    def full(cls, space: WordSpace) -> "Vocabulary":
        """Every word of the space, shape (V, dim)."""
        return cls(list(space.words), space.normed, space.space_id, f"{space.name}-full", space)

    @classmethod
    def from_words(cls, space: WordSpace, words_or_path, missing: str = "error",
                   name: str | None = None) -> "Vocabulary":
        """Words or phrases embedded like concepts (:meth:`WordSpace.embed`).

        Parameters
        ----------
        space : WordSpace
        words_or_path : iterable of str, or path
            A list, or a UTF-8 text file with one word/phrase per line (blank
            lines and ``#`` comments ignored).
        missing : {"error", "skip"}
        name : str, optional
        """
        if isinstance(words_or_path, (str, os.PathLike)) and Path(words_or_path).is_file():
            name = name or Path(words_or_path).stem
            words_or_path = _read_list(Path(words_or_path))
        elif isinstance(words_or_path, str):
            raise FileNotFoundError(
                f"no word list file at {words_or_path!r}; pass a list of words, not a single string"
            )
        words = list(dict.fromkeys(words_or_path))
        emb = space.embed(words, missing=missing)
        return cls(emb.names, emb.vectors, space.space_id, name or "words", space)

    @classmethod
    def default(cls, space: WordSpace, max_words: int = 20000, min_zipf: float = 2.5,
                nouns_only: bool = False, cache: bool = True) -> "Vocabulary":
        """The default concept vocabulary of a space.

        Walks the space in its own (frequency) order and keeps words that are
        lower-case alphabetic with >= 2 letters; not stopwords (gensim's
        ``STOPWORDS`` and scikit-learn's ``ENGLISH_STOP_WORDS``); with wordfreq
        ``zipf_frequency >= min_zipf`` (2.5 is about 0.3 per million words);
        and known to lemminflect's English dictionary, which leaves out proper
        names (``london``, ``john``, ``toyota``) and tokenizer junk.
        Morphological variants are folded with :func:`fold`, keeping the
        singular lemma.  Stops at ``max_words`` words.

        Parameters
        ----------
        space : WordSpace
        max_words : int
        min_zipf : float
        nouns_only : bool
            Keep only words lemminflect knows as nouns.
        cache : bool
            Read/write the word list under ``cache_dir("words")``.

        Returns
        -------
        Vocabulary
            At most ``max_words`` single-token words.
        """
        tag = f"default-v{_LIST_VERSION}-{space.space_id}-{max_words}-{min_zipf}-{int(nouns_only)}"
        path = cache_dir("words") / f"{tag}.txt"
        if cache and path.exists():
            return cls._from_space_words(space, _read_list(path), "default")
        stop = stopwords() | NUMBER_WORDS

        def keep(w: str) -> bool:
            if not (isinstance(w, str) and len(w) > 1 and _ALPHA.fullmatch(w)) or w in stop:
                return False
            if zipf(w) < min_zipf or not in_lexicon(w) or fold(w) in stop:
                return False
            return not nouns_only or is_noun(w)

        words = _fold_group((w for w in space.words if keep(w)), space, keep, limit=max_words)
        if cache:
            _write_list_atomic(words, path)
        return cls._from_space_words(space, words, "default")

    @classmethod
    def concrete_nouns(cls, space: WordSpace, min_zipf: float = 2.5, phrases: bool = False,
                       data_noun: str | os.PathLike | None = None, cache: bool = True) -> "Vocabulary":
        """WordNet physical-entity nouns known to the space.

        All noun lemmas under ``physical_entity.n.01`` (WordNet 3.0 offset
        00001930), found through hyponym/hypernym and instance pointers in
        ``data.noun`` (fetched with :func:`fetch_wordnet` unless given).
        Lemmas of instance synsets (proper names: ``Paris``, ``Einstein``) are
        left out; the others are lower-cased (``T-shirt`` -> ``t-shirt``), must
        be in the space and have wordfreq ``zipf >= min_zipf``; variants are
        folded with :func:`fold`.

        Parameters
        ----------
        space : WordSpace
        min_zipf : float
            2.5 is about 0.3 per million words.
        phrases : bool
            Also keep multi-word lemmas (``"fire hydrant"``) whose tokens are
            all known, embedded like concepts; their frequency is that of the
            phrase.  Default: single words only.
        data_noun : path, optional
            A WordNet 3.0 ``data.noun`` file; default: Debian's ``wordnet-base``.
        cache : bool
            Read/write the final word list under ``cache_dir("wordnet")``.

        Returns
        -------
        Vocabulary
        """
        tag = f"concrete-nouns-v{_LIST_VERSION}-{space.space_id}-{min_zipf}-{int(phrases)}"
        path = cache_dir("wordnet") / f"{tag}.txt"
        if cache and data_noun is None and path.exists():
            words = _read_list(path)
        else:
            lemmas = physical_entity_lemmas(data_noun or fetch_wordnet())
            words = _concrete_filter(lemmas, space, min_zipf, phrases)
            if cache and data_noun is None:
                _write_list_atomic(words, path)
        if all(w in space for w in words):
            return cls._from_space_words(space, words, "concrete-nouns")
        return cls.from_words(space, words, missing="skip", name="concrete-nouns")

    # ---- combining

    def union(self, *others) -> "Vocabulary":
        """This vocabulary followed by the new words of ``others``.

        ``others`` are vocabularies of the same space, or lists of concept
        names (embedded in :attr:`space`).  Duplicates keep the first entry.
        ``Vocabulary.union(a, b, c)`` and ``a + ["hot dog"]`` work too.
        """
        words, blocks, names = list(self.words), [self.vectors], [self.name]
        seen = set(words)
        for other in others:
            if not isinstance(other, Vocabulary):
                other = self._concepts(other)
            if other.space_id != self.space_id:
                raise ValueError(
                    f"cannot join vocabularies of different spaces ({self.space_id} vs "
                    f"{other.space_id}); rebuild one of them in the other's space"
                )
            new = [i for i, w in enumerate(other.words) if w not in seen]
            seen.update(other.words[i] for i in new)
            words += [other.words[i] for i in new]
            blocks.append(other.vectors[new])
            names.append(other.name)
        return Vocabulary(words, np.concatenate(blocks), self.space_id, "+".join(names), self.space)

    def _concepts(self, names) -> "Vocabulary":
        if self.space is None:
            raise ValueError(
                "this Vocabulary has no WordSpace attached; build the concepts with "
                "Vocabulary.from_words(space, names) and add that instead"
            )
        names = [names] if isinstance(names, str) else list(names)
        return Vocabulary.from_words(self.space, names, name="concepts")

    def __add__(self, other) -> "Vocabulary":
        return self.union(other)

    def restrict(self, words: Iterable[str], missing: str = "error") -> "Vocabulary":
        """The sub-vocabulary of ``words``, in the given order.

        Words not in this vocabulary raise :class:`MissingWordsError`
        (``missing="error"``) or are dropped with a warning (``"skip"``).
        """
        words = list(dict.fromkeys([words] if isinstance(words, str) else words))
        absent = [w for w in words if w not in self]
        if absent and missing == "error":
            raise MissingWordsError(absent, f"vocabulary {self.name!r}")
        if absent:
            warnings.warn(f"{len(absent)} word(s) not in vocabulary {self.name!r}: {absent}", stacklevel=2)
        rows = [self.index(w) for w in words if w in self]
        return Vocabulary([self.words[i] for i in rows], self.vectors[rows], self.space_id,
                          self.name, self.space)

    # ---- querying

    def nearest(self, vectors: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """:func:`nearest` over this vocabulary."""
        return nearest(vectors, self, k)

    def nearest_words(self, vectors: np.ndarray, k: int = 5, queries: Sequence | None = None) -> pd.DataFrame:
        """Top-k words for each query vector as a tidy table.

        Parameters
        ----------
        vectors : array-like, shape (n, dim) or (dim,)
        k : int
        queries : sequence of length n, optional
            Labels for the ``query`` column (e.g. filter ids); default 0..n-1.

        Returns
        -------
        DataFrame
            n*k rows with columns ``query``, ``rank`` (1 = best), ``word``, ``score``.
        """
        idx, sc = nearest(vectors, self, k)
        n, kk = idx.shape
        labels = np.arange(n) if queries is None else np.asarray(list(queries), dtype=object)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} query labels for {n} vectors")
        words = np.asarray(self.words, dtype=object)
        return pd.DataFrame({
            "query": np.repeat(labels, kk),
            "rank": np.tile(np.arange(1, kk + 1), n),
            "word": words[idx.ravel()] if idx.size else np.array([], dtype=object),
            "score": sc.ravel(),
        })


def _concrete_filter(lemmas: Iterable[str], space: WordSpace, min_zipf: float, phrases: bool) -> list[str]:
    def keep(lemma: str) -> bool:
        if lemma in space and _WORD.fullmatch(lemma):
            return zipf(lemma) >= min_zipf
        tokens = SEPARATORS.split(lemma)
        if len(tokens) < 2 or not phrases or not all(t in space for t in tokens):
            return False
        return zipf(" ".join(tokens)) >= min_zipf

    lemmas = dict.fromkeys(lm.lower() for lm in lemmas)
    kept = [lm if lm in space else lm.replace("_", " ") for lm in lemmas if keep(lm)]
    ranked = sorted(dict.fromkeys(kept), key=lambda w: (-zipf(w), w))
    return _fold_group(ranked, space, keep)
