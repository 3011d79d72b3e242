"""Building one store on several processes launched by ``torchrun``: :func:`build_distributed`.

Each process (rank) builds the shard ``(rank, world_size)`` of the dataset
(:meth:`ActivationStore.build` with ``shard=``), the ranks meet, rank 0 merges the shards
(:meth:`ActivationStore.merge`) and every rank returns the merged store. The ranks talk
through ``torch.distributed`` (backend "gloo" on CPU, "nccl" on GPU), set up from the
variables ``torchrun`` exports (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). Outside ``torchrun`` it is a plain :meth:`ActivationStore.build`.

Stores on several machines need a ``root`` every machine sees at the same path (a shared
file system): rank 0 reads every shard to merge them, and each rank opens the merged store.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .._utils.cache import cache_dir
from ..probe import TargetModel, resolve_device
from .build import BuildSettings
from .format import folder_name, store_key
from .read import ActivationStore

__all__ = ["LaunchInfo", "build_distributed", "launch_info", "merged_folder"]

#: How long a rank waits for the others (builds of uneven speed, a resumed shard) before giving up.
DEFAULT_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process stands in a ``torchrun`` launch.

    Attributes
    ----------
    rank : int
        This process's number among all processes, 0 to ``world_size - 1``.
    world_size : int
        The number of processes (on all machines).
    local_rank : int
        This process's number on its machine: the GPU it uses.
    """

    rank: int
    world_size: int
    local_rank: int


def launch_info(environ=None) -> LaunchInfo | None:
    """This process's :class:`LaunchInfo` from ``torchrun``'s variables, or None outside ``torchrun``.

    Parameters
    ----------
    environ : mapping, optional
        Default: ``os.environ``.

    Raises
    ------
    ValueError
        ``WORLD_SIZE`` is set but a variable is missing, not an integer or out of range.
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = environ.get(name)
        try:
            values[name] = int(text)
        except (TypeError, ValueError):
            raise ValueError(f"WORLD_SIZE is set, so this looks like a torchrun launch, but {name} is "
                             f"{'missing' if text is None else repr(text)}: start the script with torchrun "
                             "(it sets RANK, WORLD_SIZE and LOCAL_RANK), or unset WORLD_SIZE for a plain build"
                             ) from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"torchrun variables out of range: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}; "
                         "need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return LaunchInfo(rank, world, local)


def merged_folder(model: TargetModel, layer: str, dataset, root: str | Path | None = None,
                  settings: BuildSettings | None = None, *, world_size: int) -> Path:
    """The folder :func:`build_distributed` merges ``world_size`` shards into.

    ``<root>/<model>_<layer>_<key hash>_merged<world_size>``, beside the shards' folders
    (so it never takes the folder of a single-process build of the same store).
    """
    settings = BuildSettings() if settings is None else settings
    root = Path(root) if root is not None else cache_dir("stores")
    key = store_key(model, layer, dataset, settings.dtype)
    return root / f"{folder_name(model.name, layer, key)}_merged{world_size}"


def build_distributed(model: TargetModel, layer: str, dataset, root: str | Path | None = None,
                      settings: BuildSettings | None = None, *, device="auto", timeout: timedelta | None = None,
                      show_progress: bool = True) -> ActivationStore:
    """Build a store with every process of a ``torchrun`` launch, one shard each; a plain build outside one.

    Under ``torchrun`` (``WORLD_SIZE`` set, above 1) rank ``r`` builds shard
    ``(r, WORLD_SIZE)`` into its own folder under ``root``, the ranks wait for each other,
    rank 0 merges the shards into :func:`merged_folder`, and every rank returns that merged
    store. Shards and merge that are already complete are reused, so a relaunch after a
    failure resumes the unfinished shards. A process group this function starts is destroyed
    before it returns; one that is already started (``dist.init_process_group``) is used and
    left running.

    Parameters
    ----------
    model, layer, dataset
        As for :meth:`ActivationStore.build`: the same on every rank, the dataset in the same order.
    root : path, optional
        Parent folder of the shards and the merged store (default: the cache's ``stores/``).
        On several machines, a folder every machine sees at the same path.
    settings : BuildSettings, optional
        As for :meth:`ActivationStore.build`; the same on every rank.
    device : str
        ``"auto"``: cuda when present, else cpu. Under ``torchrun`` a cuda device becomes
        ``cuda:LOCAL_RANK`` (one GPU per process) and the ranks talk over "nccl"; on cpu, "gloo".
    timeout : datetime.timedelta, optional
        How long a rank waits for the others (default 24 hours: a rank whose shard is already
        built waits for the slowest). Only for a process group this function starts.
    show_progress : bool
        Rank 0's progress bar (the other ranks build without one).

    Returns
    -------
    ActivationStore
        The merged store (under ``torchrun``), or the plain store.

    Raises
    ------
    RuntimeError
        On every rank, when any rank's build or the merge failed; the message names the
        ranks and their errors.
    ValueError
        Malformed ``torchrun`` variables, or a ``LOCAL_RANK`` without a GPU.
    """
    info = launch_info()
    if info is None or info.world_size == 1:
        return ActivationStore.build(model, layer, dataset, root, settings, device=device,
                                     show_progress=show_progress)
    device = _rank_device(device, info)
    started = not dist.is_initialized()
    if started:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=info.rank, world_size=info.world_size,
                                timeout=timeout or DEFAULT_TIMEOUT)
    try:
        if dist.get_world_size() != info.world_size:
            raise ValueError(f"the running process group has {dist.get_world_size()} processes but WORLD_SIZE "
                             f"is {info.world_size}")
        return _build_and_merge(model, layer, dataset, root, settings, device, info, show_progress)
    finally:
        if started:
            dist.destroy_process_group()


def _rank_device(device, info: LaunchInfo) -> torch.device:
    device = resolve_device(device)
    if device.type != "cuda":
        return device
    if device.index is None:
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise ValueError(f"LOCAL_RANK is {info.local_rank} but this machine has {count} GPU(s): start at most "
                             f"{count} processes per machine (torchrun --nproc_per_node={count}), or device='cpu'")
        device = torch.device("cuda", info.local_rank)
    torch.cuda.set_device(device)
    return device


def _build_and_merge(model, layer, dataset, root, settings, device, info: LaunchInfo,
                     show_progress: bool) -> ActivationStore:
    """Each rank's shard, the merge on rank 0, and the merged store on every rank."""
    lead = info.rank == 0
    try:
        shard = ActivationStore.build(model, layer, dataset, root, settings, device=device,
                                      shard=(info.rank, info.world_size), show_progress=show_progress and lead)
        mine = {"path": str(shard.path)}
    except Exception as error:  # every rank must reach the exchange below, or the others wait forever
        mine = {"error": f"{type(error).__name__}: {error}"}
    reports = [None] * info.world_size
    dist.all_gather_object(reports, mine)
    _raise_failures(reports, "building its shard")

    out = merged_folder(model, layer, dataset, root, settings, world_size=info.world_size)
    verdict = [None]
    if lead:
        try:
            paths = [Path(r["path"]) for r in reports]
            unseen = [f"rank {r}: {p}" for r, p in enumerate(paths) if not (p / "manifest.json").is_file()]
            if unseen:
                raise FileNotFoundError(f"rank 0 cannot see the shards of {', '.join(unseen)}: give root a folder "
                                        "every machine shares (the same path on each)")
            ActivationStore.merge(paths, out)
            verdict = [{"path": str(out)}]
        except Exception as error:
            verdict = [{"error": f"{type(error).__name__}: {error}"}]
    dist.broadcast_object_list(verdict, src=0)
    _raise_failures(verdict, "merging the shards")
    return ActivationStore.open(out)


def _raise_failures(reports: list[dict], step: str) -> None:
    failed = [f"rank {rank}: {r['error']}" for rank, r in enumerate(reports) if "error" in r]
    if failed:
        raise RuntimeError(f"the distributed store build failed {step}; " + "; ".join(failed)
                           + ". Fix the cause and launch again: finished shards are reused")
