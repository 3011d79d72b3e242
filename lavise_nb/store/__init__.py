"""The activation store: one layer's activations over a dataset, cached on disk, self-describing.

=============  ==============================================================
``format``     the files of a store, its key, folder name and manifest
``thresholds`` per-filter quantiles: the streaming tail histogram, exact passes
``writers``    row writer for .npy files, the build's part files
``masks``      packing and pooling object masks, the build loader's collate
``build``      building (resumable, in shards) and merging shards
``read``       :class:`ActivationStore` (open, read, build, merge), :class:`ConcatRows`
=============  ==============================================================
"""
from .build import BuildInterrupted
from .format import store_key
from .read import ActivationStore, ConcatRows

__all__ = ["ActivationStore", "BuildInterrupted", "ConcatRows", "store_key"]
