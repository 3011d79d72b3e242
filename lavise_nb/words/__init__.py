"""Word-vector spaces, concept embeddings and candidate vocabularies.

LaViSE explains a CNN filter by mapping its features into a word-vector space
and reading off the nearest words.  This package owns everything on the word
side: loading a space (:func:`load_word_space`), embedding concept names
(:meth:`WordSpace.embed`), building the candidate :class:`Vocabulary` and the
nearest-word search (:func:`nearest`).

Modules
-------
text
    Folding morphological variants, lemmas, stopwords, word frequency.
space
    :class:`WordSpace`, :class:`Embedding`, :func:`combine_spaces`.
formats
    Word-vector files (GloVe text, word2vec, fastText, ``.kv``) and gensim-data.
loading
    :func:`load_word_space` and :func:`hybrid_space`.
encoders
    :func:`sentence_space` (packaged sentence encoders).
vocabulary
    :class:`Vocabulary` and :func:`nearest`.
wordnet
    WordNet's ``data.noun``: parsing, physical-entity lemmas, fetching.
"""
from .encoders import sentence_space
from .formats import KINDS, WordSpaceUnavailableError
from .loading import DEFAULT_SPACE, HYBRID_SPACE, hybrid_space, load_word_space
from .space import Embedding, MissingWordsError, WordSpace, combine_spaces
from .text import fold
from .vocabulary import Vocabulary, nearest
from .wordnet import PHYSICAL_ENTITY, fetch_wordnet, parse_wordnet_nouns, physical_entity_lemmas

__all__ = [
    "DEFAULT_SPACE",
    "Embedding",
    "HYBRID_SPACE",
    "KINDS",
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
    "PHYSICAL_ENTITY",
    "parse_wordnet_nouns",
    "physical_entity_lemmas",
    "sentence_space",
]
