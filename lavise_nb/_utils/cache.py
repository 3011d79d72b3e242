"""Where fetched data and built artefacts live between runs."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the toolkit cache.

    The root is ``$LAVISE_NB_CACHE`` when set, else ``~/.cache/lavise_nb``.
    """
    root = Path(os.environ.get("LAVISE_NB_CACHE", Path.home() / ".cache" / "lavise_nb"))
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        if not path.is_dir():  # a read-only cache still serves what it holds
            raise
    return path
