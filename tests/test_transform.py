"""Preprocess: the three crop modes with planted geometry, the valid mask, descriptions and the model check."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from lavise_nb.probe import EFFICIENTNET_LITE, wrap_model
from lavise_nb.transform import MODES, Preprocess, check_model_preprocess

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _wide(width=60, height=20):
    """A (height, width) image whose column c has red level 4c and a far-right corner box (rows 0-5, cols 52-59)."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = (np.arange(width) * 4)[None, :]
    box = np.zeros((height, width), bool)
    box[0:6, 52:60] = True
    rgb[box, 2] = 255
    return Image.fromarray(rgb), box


def test_default_description_and_key_are_unchanged():
    assert Preprocess().describe() == {"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert Preprocess(64, (0.5,) * 3, (0.25,) * 3, "center_crop").describe() == {
        "size": 64, "mean": [0.5] * 3, "std": [0.25] * 3}
    assert Preprocess(mode="letterbox").describe()["mode"] == "letterbox"
    assert Preprocess(mode="resize").describe() != Preprocess().describe()


def test_bad_mode_and_size_name_the_choices():
    with pytest.raises(ValueError, match="mode must be one of 'center_crop', 'resize', 'letterbox'"):
        Preprocess(mode="pad")
    with pytest.raises(ValueError, match="size must be a positive int"):
        Preprocess(size=0)


def test_centre_crop_is_the_old_geometry_on_odd_sizes():
    image, _ = _wide(31, 20)
    out = Preprocess(20, **PLAIN).image(image)
    # 31x20 at scale 1: columns (31 - 20) // 2 = 5 .. 24 are kept
    np.testing.assert_allclose(out[0, 0].numpy(), np.arange(5, 25) * 4 / 255, atol=1e-6)
    assert Preprocess(20).valid_mask(31, 20).all()


def test_far_corner_box_is_lost_by_centre_crop_and_kept_by_resize_and_letterbox():
    image, box = _wide()
    kept = {}
    for mode in MODES:
        p = Preprocess(20, mode=mode, **PLAIN)
        masks = p.masks(box[None], 60, 20)
        assert masks.shape == (1, 20, 20) and masks.dtype == torch.bool
        kept[mode] = bool(masks.any())
        blue = p.image(image)[2]
        if kept[mode]:   # the mask covers the box's (blue) pixels in the image
            assert blue[masks[0]].min() > 0.5 and blue[masks[0]].mean() > 0.75
            assert blue[~masks[0]].max() < 0.5
    assert kept == {"center_crop": False, "resize": True, "letterbox": True}


def test_letterbox_pads_with_zero_and_keeps_padding_out_of_masks():
    image, box = _wide()
    p = Preprocess(30, mode="letterbox", mean=(0.2, 0.4, 0.6), std=(0.5, 0.5, 0.5))
    valid = p.valid_mask(60, 20)
    # 60x20 -> 30x10, placed on rows 10..19
    expected = torch.zeros(30, 30, dtype=torch.bool)
    expected[10:20] = True
    assert torch.equal(valid, expected)
    out = p.image(image)
    assert torch.equal(out[:, ~valid], torch.zeros(3, int((~valid).sum())))
    everything = p.masks(np.ones((1, 20, 60), bool), 60, 20)[0]
    assert torch.equal(everything, valid)
    corner = p.masks(box[None], 60, 20)[0]
    expected = torch.zeros(30, 30, dtype=torch.bool)
    expected[10:13, 26:30] = True           # nearest: rows 0-5 and columns 52-59, halved, on rows 10..
    assert torch.equal(corner, expected)


def test_letterbox_of_a_tall_image_and_of_a_square_one():
    p = Preprocess(16, mode="letterbox", **PLAIN)
    tall = p.valid_mask(8, 32)                  # -> 4x16, columns 6..9
    assert tall.all(0)[6:10].all() and not tall[:, :6].any() and not tall[:, 10:].any()
    assert p.valid_mask(50, 50).all()
    exact = Image.fromarray(np.full((16, 8, 3), 200, np.uint8))
    out = p.image(exact)                        # no resampling: 8x16 -> 8x16 on columns 4..11
    np.testing.assert_allclose(out[:, :, 4:12].numpy(), 200 / 255, atol=1e-6)
    assert (out[:, :, :4] == 0).all() and (out[:, :, 12:] == 0).all()


def test_resize_stretches_to_the_square():
    image, box = _wide()
    p = Preprocess(20, mode="resize", **PLAIN)
    expected = np.asarray(image.resize((20, 20), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(p.image(image).permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert p.valid_mask(60, 20).all()
    assert p.masks(box[None], 60, 20)[0, 0:6, 17:20].all()


class _Data:
    def __init__(self, preprocess):
        self.preprocess = preprocess


def test_model_check_names_both_sides_and_the_fix():
    model = wrap_model(torch.nn.Conv2d(3, 2, 1), EFFICIENTNET_LITE, "efficientnet-lite0")
    with pytest.raises(ValueError) as caught:
        check_model_preprocess(_Data(Preprocess(64, (0.5,) * 3, (0.25,) * 3)), model)
    message = str(caught.value)
    assert "size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)" in message
    assert "efficientnet-lite0 expects (size=224, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))" in message
    assert "preprocess=model.preprocess" in message
    with pytest.raises(ValueError, match="std="):
        check_model_preprocess(_Data(Preprocess(224)), model)      # ImageNet normalisation, not Lite's
    check_model_preprocess(_Data(model.preprocess), model)
    check_model_preprocess(_Data(dataclasses.replace(model.preprocess, mode="letterbox")), model)
    check_model_preprocess(_Data(Preprocess(224, (127 / 255,) * 3, [128 / 255] * 3)), model)
    larger = dataclasses.replace(model, preprocess=Preprocess(448, model.preprocess.mean, model.preprocess.std))
    check_model_preprocess(_Data(larger.preprocess), larger)        # the documented way to run at another size
