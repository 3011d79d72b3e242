"""split_after: the network after a layer, computed from that layer's stored output."""
import pytest
import torch
from torch import nn

from lavise_nb.downstream import SplitError, split_after
from lavise_nb.probe import LayerProbe, load_model


@pytest.mark.parametrize("name, layer", [("efficientnet-lite0", "_blocks.15"), ("efficientnet-lite0", "_blocks.10"),
                                         ("resnet18", "layer3"), ("resnet18", "layer4")])
def test_the_rest_of_the_network_gives_the_models_own_output(name, layer):
    model = load_model(name, random_init=name != "efficientnet-lite0", device="cpu")
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with LayerProbe(model, layer) as probe:
        features = probe(images)
    with torch.no_grad():
        whole, rest = model.module(images), model.downstream(layer)(features)
    assert rest.shape == whole.shape and torch.allclose(rest, whole, atol=1e-5)
    assert model.downstream(layer) is model.downstream(layer)   # traced once
    shared = dict(model.downstream(layer).named_parameters())
    assert all(p.data_ptr() == dict(model.module.named_parameters())[n].data_ptr() for n, p in shared.items())


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.block(self.block(x))


def test_a_layer_the_rest_cannot_be_computed_from_is_refused_with_the_reason():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), Residual(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(split_after(net, "1")(net[1](net[0](x))), net(x))   # after the whole block: fine
    with pytest.raises(SplitError, match="skip connection"):
        split_after(net, "1.conv")                                           # inside it: x is read after
    with pytest.raises(SplitError, match="2 times"):
        split_after(Twice(), "block")

    class Untraceable(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(SplitError, match="cannot be traced"):
        split_after(Untraceable(), "")
