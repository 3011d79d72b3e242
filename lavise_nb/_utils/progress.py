"""One place for progress bars, so every long loop looks and behaves the same."""
from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable=None, *, enabled: bool = True, **kwargs):
    """Wrap ``iterable`` in a ``tqdm.auto`` bar unless ``enabled`` is False."""
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)
