"""The activation store: one layer's activations over a dataset, cached on disk."""
from .read import ActivationStore, ConcatRows, _histogram_quantiles, _load_histogram, _TailHistogram, store_key

__all__ = ["ActivationStore", "ConcatRows", "store_key"]
