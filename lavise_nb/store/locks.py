"""Keeping processes apart: one lock per store folder, and loader workers that end with their builder.

Building or merging a store holds ``<folder>.lock`` beside the folder (a :mod:`filelock`
lock: ``flock`` on Unix, released by the operating system when its process dies, so it
is never stale). A second process that builds the same store waits for it, then opens
the finished store or resumes the build the first left. The lock file stays; it is empty.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .format import LEFTOVERS

__all__ = ["LOCK_TIMEOUT", "EndWithParent", "lock_file", "remove_leftovers", "store_lock"]

LOCK_TIMEOUT = 24 * 3600.0      # seconds a build waits for another build of the same store
PR_SET_PDEATHSIG = 1


def lock_file(folder: Path) -> Path:
    """``<folder>.lock``, beside the store's folder."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".lock")


@contextmanager
def store_lock(folder: Path, timeout: float = LOCK_TIMEOUT, notice=None):
    """Hold the store's lock for the ``with`` block, waiting up to ``timeout`` seconds for it.

    Parameters
    ----------
    folder : pathlib.Path
        The store's folder (its parent must exist).
    timeout : float
    notice : callable, optional
        Called with a message when another process holds the lock (before waiting).

    Raises
    ------
    TimeoutError
        The lock was not free within ``timeout``; the message names the lock file.
    """
    path = lock_file(folder)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if notice is not None:
            notice(f"waiting for {path}: another process is building or merging {Path(folder).name}")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for the lock {path}: another process "
                               f"is building or merging {folder}. Let it finish (or stop it), then build "
                               "again.") from None
    try:
        yield path
    finally:
        lock.release()


def remove_leftovers(folder: Path, locked: bool = False) -> None:
    """Remove what a build killed after writing ``manifest.json`` left (``building.json``, ``parts/``,
    ``.tmp`` files) from a complete store.

    Without ``locked`` (the caller does not hold the store's lock) this happens only when the
    lock is free and can be taken at once: a build that is finishing removes them itself.
    """
    folder = Path(folder)
    if not any((folder / name).exists() for name in LEFTOVERS):
        return
    if locked:
        for name in LEFTOVERS:
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        return
    try:
        with store_lock(folder, timeout=0):
            remove_leftovers(folder, locked=True)
    except (TimeoutError, OSError):
        pass


class EndWithParent:
    """A DataLoader ``worker_init_fn``: the worker gets SIGTERM when the process that made it dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere it does nothing. Without it, workers
    of a killed notebook kernel can stay, blocked on a queue no one reads.
    The signal comes when the thread that started the workers ends, so iterate the loader
    in a thread that lives as long as the loader.
    """

    def __init__(self):
        self.parent = os.getpid()

    def __call__(self, worker_id: int) -> None:
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                return
        except (OSError, AttributeError):
            return
        if os.getppid() != self.parent:      # the parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)
