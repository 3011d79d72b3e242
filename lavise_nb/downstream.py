"""The rest of a network after one layer: its output computed from that layer's output.

:func:`split_after` traces the network with ``torch.fx`` (the layer kept as one call) and
keeps the part of the graph that depends on the layer's output, so stored activations
of ``(B, C, h, w)`` go to the model's logits without running the layers before. The
class prior classifies regions this way (:class:`~lavise_nb.prior.ClassPrior`,
``source="features"``) and a store without logits gets them from its activations.

A network whose later layers also read earlier values (a skip connection around the
layer, as inside a residual block) has no such split; :class:`SplitError` says so and
names the alternative.
"""
from __future__ import annotations

import torch
import torch.fx
from torch import nn

__all__ = ["SplitError", "split_after"]


class SplitError(ValueError):
    """The network cannot be computed from this layer's output alone."""


def split_after(module: nn.Module, layer: str) -> torch.fx.GraphModule:
    """The network from ``layer``'s output to its own output.

    Parameters
    ----------
    module : torch.nn.Module
        The whole network.
    layer : str
        Dotted name of a submodule called exactly once by the forward pass.

    Returns
    -------
    torch.fx.GraphModule
        Maps (B, C, h, w) activations of ``layer`` to the network's output; shares
        ``module``'s parameters (nothing is copied).

    Raises
    ------
    SplitError
        The network cannot be traced, calls ``layer`` more or less than once, or reads a
        value from before the layer after it (beyond the batch size).
    """

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return name == layer or super().is_leaf_module(m, name)

    try:
        graph = Tracer().trace(module)
    except Exception as error:  # fx raises many types for untraceable code
        raise SplitError(f"{type(module).__name__} cannot be traced by torch.fx ({type(error).__name__}: "
                         f"{error}); classify crops instead (ClassPrior(source='region'))") from error
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        raise SplitError(f"the forward pass calls {layer!r} {len(calls)} times, not once; choose another layer "
                         "or classify crops (ClassPrior(source='region'))")
    cut = calls[0]
    after = nodes[nodes.index(cut) + 1:]
    depends = {cut}
    for node in after:
        if any(d in depends for d in node.all_input_nodes):
            depends.add(node)
    upstream = set()
    for node in nodes:
        if node not in depends and (node.op == "placeholder" or any(d in upstream for d in node.all_input_nodes)):
            upstream.add(node)

    split = torch.fx.Graph()
    copies = {cut: split.placeholder("features")}

    def copy(node):
        if node in copies:
            return copies[node]
        if node in upstream:
            if _batch_size(node):
                copies[node] = split.call_method("size", (copies[cut], 0))
                return copies[node]
            raise SplitError(f"after {layer!r} the network reads {node.name!r}, computed before it (a skip "
                             "connection around the layer?); choose a layer whose output is all the rest reads, "
                             "or classify crops (ClassPrior(source='region'))")
        for source in node.all_input_nodes:
            copy(source)
        copies[node] = split.node_copy(node, lambda n: copies[n])
        return copies[node]

    for node in after:
        if node in depends or node.op == "output":
            copy(node)
    return torch.fx.GraphModule(module, split)


def _batch_size(node: torch.fx.Node) -> bool:
    """Whether ``node`` is ``x.size(0)``: the batch size, the same before the layer and after it."""
    if node.op != "call_method" or node.target != "size":
        return False
    return tuple(node.args[1:]) == (0,) or (len(node.args) == 1 and node.kwargs.get("dim") == 0)
