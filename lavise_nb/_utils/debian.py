"""Fetching Debian packages: ``apt-get download`` and ``dpkg-deb -x``, for data shipped as .deb files."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

__all__ = ["fetch_deb"]

_TOOLS = ("apt-get", "dpkg-deb")


def _error(message: str, fix: str) -> RuntimeError:
    return RuntimeError(f"{message} {fix}".strip())


def _download(packages: list[str], folder: Path, fix: str) -> list[Path]:
    """The .deb of each package, downloaded into ``folder``; one ``apt-get update`` and retry if needed."""
    for attempt in range(2):
        result = subprocess.run(["apt-get", "download", *packages], cwd=folder, capture_output=True, text=True)
        found = [sorted(folder.glob(f"{package}_*.deb")) for package in packages]
        if all(found):
            return [debs[-1] for debs in found]
        if attempt == 0:
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
    detail = result.stderr.strip()[-500:]
    raise _error(f"'apt-get download {' '.join(packages)}' failed, even after apt-get update (the update "
                 f"needs root, the download a Debian mirror){': ' + detail if detail else ''}.", fix)


def fetch_deb(packages: str | Sequence[str], dest: str | os.PathLike, *, needs: Sequence[str] = (),
              purpose: str = "", fix: str = "") -> Path:
    """Download Debian packages with ``apt-get download`` and unpack them into a new folder.

    The packages are downloaded and unpacked (``dpkg-deb -x``) in a temporary
    folder beside ``dest``, which is then renamed to ``dest``, so an
    interrupted fetch never leaves a partial ``dest``.  When a download misses
    a package, ``apt-get update`` is run once and the download tried again.

    Parameters
    ----------
    packages : str or sequence of str
        Debian package names, e.g. ``"wordnet-base"``.
    dest : path
        The folder to create; it receives the packages' file trees
        (``dest/usr/share/...``).  Its parent is created if needed.
    needs : sequence of str
        Paths relative to ``dest`` that the packages must provide.
    purpose : str
        What the packages are for, for the error messages, e.g.
        ``"StampScenes (GPL-2 Tux Paint stamps and templates)"``.
    fix : str
        What to do instead (a manual route); ends every error message.

    Returns
    -------
    Path
        ``dest``.  If another process created ``dest`` first, with ``needs``
        in it, that folder is kept.

    Raises
    ------
    RuntimeError
        When ``apt-get`` or ``dpkg-deb`` is missing, the download or unpacking
        fails, or the packages lack ``needs``.  The message names the packages
        and ends with ``fix``.
    """
    packages = [packages] if isinstance(packages, str) else list(packages)
    listed = " and ".join(packages)
    noun = "package" if len(packages) == 1 else "packages"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise _error(f"{' and '.join(missing)} not found: {purpose or 'this'} needs the Debian {noun} {listed}, "
                     f"fetched with apt-get download and dpkg-deb (Debian/Ubuntu).", fix)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".deb-") as tmp:
        tmp = Path(tmp)
        root = tmp / "root"
        for deb in _download(packages, tmp, fix):
            done = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
            if done.returncode != 0:
                raise _error(f"'dpkg-deb -x {deb.name}' failed: {done.stderr.strip()[-500:]}.", fix)
        lacking = [need for need in needs if not (root / need).exists()]
        if lacking:
            raise _error(f"the Debian {noun} {listed} did not contain {' and '.join(lacking)}.", fix)
        try:
            os.replace(root, dest)
        except OSError:
            if not dest.is_dir() or not all((dest / need).exists() for need in needs):
                raise
    return dest
