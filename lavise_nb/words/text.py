"""Plain-text helpers for words: folding variants, lemmas, stopwords and word frequency."""
from __future__ import annotations

import functools
import importlib
import re

__all__ = ["NUMBER_WORDS", "SEPARATORS", "fold", "in_lexicon", "is_noun", "stopwords", "zipf"]

SEPARATORS = re.compile(r"[\s_\-]+")
"""What splits a concept name into tokens: white space, ``_`` and ``-``."""

NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred thousand million billion trillion dozen".split()
)
"""English number words, left out of default vocabularies like stopwords."""


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
def in_lexicon(token: str) -> bool:
    """Whether lemminflect's English dictionary knows ``token`` (as any part of speech)."""
    return bool(_lemminflect().getAllLemmas(token))


def is_noun(token: str) -> bool:
    """Whether lemminflect's English dictionary knows ``token`` as a noun."""
    return "NOUN" in _lemminflect().getAllLemmas(token)


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


def stopwords() -> frozenset[str]:
    """English stopwords: gensim's ``STOPWORDS`` and, if installed, scikit-learn's ``ENGLISH_STOP_WORDS``."""
    from gensim.parsing.preprocessing import STOPWORDS

    words = set(STOPWORDS)
    try:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        words |= set(ENGLISH_STOP_WORDS)
    except ImportError:
        pass
    return frozenset(words)


@functools.lru_cache(maxsize=1 << 18)
def zipf(word: str) -> float:
    """wordfreq's English Zipf frequency of ``word`` (log10 per billion words; 3 = once per million)."""
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")
