"""The activation store: one layer's activations over a dataset, cached on disk, self-describing.

=============  ==============================================================
``format``     the files of a store, its key, folder name and manifest
``thresholds`` per-filter quantiles: the streaming tail histogram, exact passes
``writers``    row writer for .npy files, the build's part files, checksums
``masks``      packing and pooling object masks, the build loader's collate
``integrity``  checking a store against its manifest (sizes, headers, checksums)
``locks``      the lock per store, loader workers that end with their builder
``build``      :class:`BuildSettings`, building (resumable, in shards)
``merge``      merging shards
``distributed`` building under torchrun: one shard per rank, rank 0 merges
``read``       :class:`ActivationStore` (open, verify, read, build, merge), :class:`ConcatRows`
=============  ==============================================================
"""
from .build import BuildInterrupted, BuildSettings
from .format import store_key
from .integrity import StoreDamagedError
from .read import ActivationStore, ConcatRows
from .distributed import build_distributed

__all__ = ["ActivationStore", "BuildInterrupted", "BuildSettings", "ConcatRows", "StoreDamagedError", "build_distributed",
           "store_key"]
