import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from lavise_nb.probe import LayerProbe, load_model, recalibrate_batchnorm, wrap_model
from lavise_nb.transform import Preprocess


def _hooks(module):
    return sum(len(m._forward_hooks) for m in module.modules())


def test_layers_measured_by_forward_pass(tiny_model):
    table = tiny_model.layers()
    row = table.set_index("layer").loc["features.3"]
    assert (row["channels"], row["height"], row["width"]) == (12, 16, 16)
    assert _hooks(tiny_model.module) == 0


def test_unknown_layer_lists_closest_names(tiny_model):
    with pytest.raises(KeyError, match="features.3"):
        tiny_model.resolve("features.33")


def test_probe_returns_layer_output_and_stops_early(tiny_model):
    x = torch.randn(2, 3, 64, 64)
    calls = []
    handle = tiny_model.module.fc.register_forward_hook(lambda *a: calls.append(1))
    try:
        with LayerProbe(tiny_model, "features.1") as probe:
            out = probe(x)
    finally:
        handle.remove()
    expected = torch.relu(tiny_model.module.features[0](x))
    assert torch.allclose(out, expected)
    assert calls == []


def test_no_hook_remains_after_success_or_exception(tiny_model):
    before = _hooks(tiny_model.module)
    with LayerProbe(tiny_model, "features.3") as probe:
        probe(torch.randn(1, 3, 64, 64))
        assert _hooks(tiny_model.module) == before + 1
    assert _hooks(tiny_model.module) == before
    with pytest.raises(RuntimeError):
        with LayerProbe(tiny_model, "features.3") as probe:
            probe(torch.randn(1, 5, 64, 64))  # wrong channel count fails inside the forward pass
    assert _hooks(tiny_model.module) == before
    with pytest.raises(ZeroDivisionError):
        with LayerProbe(tiny_model, "features.3"):
            1 / 0
    assert _hooks(tiny_model.module) == before


def test_probe_outside_with_block_fails(tiny_model):
    with pytest.raises(RuntimeError, match="with"):
        LayerProbe(tiny_model, "features.3")(torch.randn(1, 3, 64, 64))


def test_fingerprint_is_stable_and_weight_sensitive(tiny_model):
    from tests.conftest import planted_net
    same = wrap_model(planted_net(), tiny_model.preprocess, "planted")
    assert same.fingerprint == tiny_model.fingerprint
    other = wrap_model(planted_net(seed=1), tiny_model.preprocess, "planted")
    assert other.fingerprint != tiny_model.fingerprint


def test_torchvision_weights_from_local_checkpoint(tmp_path):
    import torchvision
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    model = load_model("resnet18", weights=tmp_path / "ckpt.pth")
    assert torch.equal(model.module.fc.weight, source.fc.weight)
    assert model.preprocess.size == 224
    assert model.resolve("layer4") is model.module.layer4
    with pytest.raises(KeyError, match="layer4"):
        model.resolve("layer5")


def test_torchvision_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="weights"):
        load_model("resnet18")
    with pytest.raises(KeyError, match="resnet18"):
        load_model("resnet81", weights="x.pth")
    import torchvision

    def offline(*args, **kwargs):
        if kwargs.get("weights") == "DEFAULT":
            raise OSError("network is unreachable")
        return original(*args, **kwargs)
    original = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(RuntimeError, match="weights='path/to/resnet18.pth'"):
        load_model("resnet18", weights="DEFAULT")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit"):
        load_model("resnet18", weights=tmp_path / "wrong.pth")


def test_recalibrate_batchnorm_restores_feature_scale():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    net[1].running_mean.fill_(100.0)
    model = wrap_model(net, Preprocess(16))
    x = torch.randn(8, 3, 16, 16) * 5 + 2
    recalibrate_batchnorm(model, [x])
    out = model.module(x)
    assert out.mean().abs() < 0.2 and 0.8 < out.std() < 1.2
    assert not model.module.training


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator thresholds")
@pytest.mark.parametrize("setting,expected", [("fast", "True True"), ("", "False False"), ("system", "False False")])
def test_allocator_thresholds_are_raised_once_and_only_on_request(setting, expected):
    code = "from lavise_nb._utils.allocator import keep_large_buffers as k; print(k(), k())"
    env = {**os.environ, "LAVISE_NB_MALLOC": setting}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split("\n")[0] == expected


def test_probe_without_stopping_keeps_the_layers_own_output():
    """A hook on a BatchNorm followed by ReLU(inplace=True) must see the pre-ReLU values."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten())
    model = wrap_model(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = net[1](net[0](x))
    assert (expected < 0).any()
    with LayerProbe(model, "1", stop=False) as probe:
        kept = probe(x)
    with LayerProbe(model, "1") as probe:
        stopped = probe(x)
    assert torch.equal(kept, expected) and torch.equal(stopped, expected)


def test_checkpoints_of_fine_tuned_models_and_bad_files(tmp_path):
    import torchvision

    torch.manual_seed(0)
    tuned = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save({"state_dict": tuned.state_dict()}, tmp_path / "ten.pth")
    model = load_model("resnet18", weights=tmp_path / "ten.pth")
    assert model.module.fc.out_features == 10
    assert torch.equal(model.module.fc.weight, tuned.fc.weight)
    with pytest.raises(ValueError, match="does not fit ResNet.*num_classes"):
        load_model("resnet18", weights=tmp_path / "ten.pth", num_classes=1000)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    torch.save(net.state_dict(), tmp_path / "net.pth")
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    loaded = load_model(fresh, weights=tmp_path / "net.pth")
    assert torch.equal(loaded.module[0].weight, net[0].weight)  # applied, not ignored
    data = (tmp_path / "ten.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth is not a readable PyTorch checkpoint"):
        load_model("resnet18", weights=tmp_path / "cut.pth")
    torch.save(net, tmp_path / "whole.pth")
    with pytest.raises(ValueError, match=r"whole\.pth holds a pickled Python object.*state_dict"):
        load_model("resnet18", weights=tmp_path / "whole.pth")
