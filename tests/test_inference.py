"""Tiled inference: tiles cover the image, tiled equals untiled, outputs keep dtype and intensity scale."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from helpers import smooth_image, tiny_model
from msrgan_core.degradation import bin_mean
from msrgan_core.inference import (
    InferenceError, TilePlan, Upscaler, axis_starts, blend_weight, orient, orientations, tile_slices, unorient,
    upscale, upscale_file,
)
from msrgan_core.io import ImageError, read_image
from msrgan_core.modelfile import with_inference_defaults

UNTILED = 100_000  # a tile edge larger than any test image: one tile


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def model_x4(model_dir):
    return tiny_model(model_dir, "x4.safetensors", scale=4, seed=1)


@pytest.fixture(scope="module")
def model_x2(model_dir):
    return tiny_model(model_dir, "x2.safetensors", scale=2, seed=2)


@pytest.fixture(scope="module")
def model_2ch(model_dir):
    return tiny_model(model_dir, "c2.safetensors", scale=2, channels=2, seed=3)


@pytest.fixture(scope="module")
def bicubic_x4(model_dir):
    return tiny_model(model_dir, "bicubic.safetensors", scale=4, zero_tail=True)


def _run(model, image, tile):
    return Upscaler(model, device="cpu", tile=tile).upscale(image)


def _assert_tiled_equals_untiled(model, image, tiles):
    whole = _run(model, image, UNTILED).astype(np.float64)
    tolerance = 1e-3 * (whole.max() - whole.min())
    assert tolerance > 0
    for tile in tiles:
        plan = TilePlan.for_model(model, tile)
        assert len(list(tile_slices(image.shape[-2:], plan.tile, plan.overlap, model.scale))) > 1, "not tiled"
        tiled = _run(model, image, tile).astype(np.float64)
        assert tiled.shape == whole.shape
        assert np.max(np.abs(tiled - whole)) <= tolerance, f"tile {tile}"


# --- pure tiling functions ----------------------------------------------------------------

@pytest.mark.parametrize("length,tile,overlap", [(301, 64, 34), (97, 60, 36), (130, 100, 20), (50, 64, 34), (64, 64, 10), (65, 64, 10)])
def test_axis_starts_cover_the_axis_with_the_overlap(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    assert starts[0] == 0
    assert min(starts[-1] + tile, length) == length
    assert starts == sorted(set(starts))
    for a, b in zip(starts, starts[1:]):
        assert b - a <= tile - overlap  # neighbours overlap by at least `overlap`


@pytest.mark.parametrize("shape,tile,overlap,scale", [((301, 257), 64, 34, 2), ((97, 130), 60, 36, 4), ((20, 30), 64, 34, 8)])
def test_tile_slices_cover_input_and_output_exactly(shape, tile, overlap, scale):
    covered = np.zeros(shape, bool)
    out_covered = np.zeros((shape[0] * scale, shape[1] * scale), bool)
    for (sy, sx), (dy, dx) in tile_slices(shape, tile, overlap, scale):
        assert (dy.start, dy.stop, dx.start, dx.stop) == (sy.start * scale, sy.stop * scale, sx.start * scale, sx.stop * scale)
        assert 0 <= sy.start < sy.stop <= shape[0] and 0 <= sx.start < sx.stop <= shape[1]
        assert sy.stop - sy.start <= tile and sx.stop - sx.start <= tile
        covered[sy, sx] = True
        out_covered[dy, dx] = True
    assert covered.all() and out_covered.all()


@pytest.mark.parametrize("length,tile", [(301, 60), (301, 64), (97, 60), (61, 60), (130, 100), (257, 200), (40, 60)])
@pytest.mark.parametrize("scale", [2, 4])
def test_blend_weights_sum_positive_everywhere(length, tile, scale):
    margin, ramp = 14, 8
    overlap = 2 * margin + ramp
    total = np.zeros(length * scale)
    for start in axis_starts(length, tile, overlap):
        stop = min(start + tile, length)
        w = blend_weight(start, stop, length, margin, ramp, scale)
        assert w.shape == ((stop - start) * scale,)
        assert np.all((w >= 0) & (w <= 1))
        if start > 0:  # nothing from within `margin` of an inner border
            assert np.all(w[: margin * scale] == 0)
        if stop < length:
            assert np.all(w[-margin * scale:] == 0)
        total[start * scale: stop * scale] += w
    assert total.min() > 0.1


def test_single_tile_weight_is_one():
    assert np.all(blend_weight(0, 50, 50, 14, 8, 4) == 1)


# --- tiled == untiled ---------------------------------------------------------------------

def test_tiled_equals_untiled_odd_size_x2(model_x2):
    image = smooth_image((301, 257), seed=1).astype(np.float32)
    _assert_tiled_equals_untiled(model_x2, image, tiles=(100, 160))


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_tiled_equals_untiled_odd_size_x4(model_x4, dtype):
    image = smooth_image((97, 130), seed=2).astype(dtype)
    _assert_tiled_equals_untiled(model_x4, image, tiles=(60, 64, 90))


def test_tiled_equals_untiled_multichannel_model(model_2ch):
    image = np.stack([smooth_image((97, 130), seed=3), smooth_image((97, 130), seed=4, low=0, high=300)]).astype(np.float32)
    _assert_tiled_equals_untiled(model_2ch, image, tiles=(64, 100))


def test_tiled_equals_untiled_multichannel_image_single_channel_model(model_x4):
    image = np.stack([smooth_image((70, 97), seed=5), smooth_image((70, 97), seed=6, low=10, high=60)]).astype(np.float32)
    _assert_tiled_equals_untiled(model_x4, image, tiles=(60,))


def test_normalisation_uses_the_whole_image_not_each_tile(model_x4):
    """Per-tile percentiles would map the dark and the bright half differently in each tile."""
    image = smooth_image((64, 150), seed=7, low=50, high=200)
    image[:, 75:] += 3000
    _assert_tiled_equals_untiled(model_x4, image.astype(np.float32), tiles=(60,))


# --- outputs: dtype, shape, intensity scale ----------------------------------------------

@pytest.mark.parametrize("dtype,high", [(np.uint8, 250), (np.uint16, 4095), (np.float32, 1.5)])
def test_output_dtype_and_shape(model_x4, dtype, high):
    image = smooth_image((23, 31), low=0.1 * high, high=0.9 * high).astype(dtype)
    out = upscale(image, model_x4, device="cpu")
    assert out.dtype == np.dtype(dtype)
    assert out.shape == (92, 124)
    out3 = upscale(np.stack([image, image[::-1]]), model_x4, device="cpu")
    assert out3.dtype == np.dtype(dtype) and out3.shape == (2, 92, 124)


@pytest.mark.parametrize("model_name,scale", [("model_x2", 2), ("model_x4", 4)])
def test_output_is_scale_times_larger(request, model_name, scale):
    model = request.getfixturevalue(model_name)
    out = upscale(smooth_image((17, 26)).astype(np.float32), model, device="cpu")
    assert out.shape == (17 * scale, 26 * scale)


def test_single_channel_model_upscales_each_channel_separately(model_x4):
    a, b = smooth_image((30, 40), seed=8), smooth_image((30, 40), seed=9, low=5, high=50)
    both = upscale(np.stack([a, b]).astype(np.float32), model_x4, device="cpu")
    np.testing.assert_allclose(both[0], upscale(a.astype(np.float32), model_x4, device="cpu"), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(both[1], upscale(b.astype(np.float32), model_x4, device="cpu"), rtol=1e-5, atol=1e-4)


def test_output_stays_on_the_input_intensity_scale(bicubic_x4):
    """A zero-tail model is pure bicubic: a 12-bit image stays 12-bit, not rescaled to 0..1 or 0..65535."""
    image = smooth_image((40, 52), seed=10, low=200, high=3900, noise=0).round().astype(np.uint16)
    out = upscale(image, bicubic_x4, device="cpu", tile=60)
    assert out.dtype == np.uint16
    lo, hi = int(image.min()), int(image.max())
    span = hi - lo
    assert lo - 0.05 * span <= out.min() and out.max() <= hi + 0.05 * span
    assert abs(out.mean() - image.mean()) < 0.01 * image.mean()
    expected = F.interpolate(torch.from_numpy(image.astype(np.float32))[None, None], scale_factor=4, mode="bicubic",
                             align_corners=False)[0, 0].numpy()
    assert np.max(np.abs(out.astype(np.float64) - np.clip(expected, 0, 65535))) <= 1.0


# --- matched bins and the orientation ensemble ------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_matched_bins_give_outputs_that_bin_back_to_the_input(model_x4, dtype):
    image = smooth_image((29, 37), seed=11, low=200, high=3000).astype(dtype)
    matched = Upscaler(model_x4, device="cpu", match_bins=True).upscale(image)
    rounding = 0.5 if dtype == np.uint16 else 1e-3
    assert np.max(np.abs(bin_mean(matched[None].astype(np.float32), 4)[0] - image)) <= rounding
    plain = Upscaler(model_x4, device="cpu").upscale(image)  # the default leaves the model's output as it is
    assert np.max(np.abs(bin_mean(plain[None].astype(np.float32), 4)[0] - image)) > 50  # a random net is far off


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_orientations_are_distinct_and_undone(count):
    image = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    turned = [orient(image, k, m) for k, m in orientations(count)]
    assert len({t.tobytes() + bytes(t.shape) for t in turned}) == count
    for (k, m), t in zip(orientations(count), turned):
        np.testing.assert_array_equal(unorient(t, k, m), image)


def test_ensemble_is_the_mean_over_orientations(model_x4):
    image = smooth_image((26, 33), seed=13).astype(np.float32)
    single = Upscaler(model_x4, device="cpu")
    by_hand = np.mean([unorient(single.upscale(orient(image[None], k, m))[0][None], k, m)[0]
                       for k, m in orientations(4)], axis=0)
    np.testing.assert_allclose(Upscaler(model_x4, device="cpu", ensemble=4).upscale(image), by_hand,
                               rtol=1e-5, atol=1e-3)


def test_eight_orientation_ensemble_turns_with_its_input(model_x4):
    """A random net is not rotation-equivariant; averaged over all eight orientations it is."""
    image = smooth_image((24, 31), seed=14).astype(np.float32)
    for ensemble, equivariant in [(1, False), (8, True)]:
        upscaler = Upscaler(model_x4, device="cpu", ensemble=ensemble, match_bins=True)
        turned = upscaler.upscale(np.rot90(image).copy())
        difference = np.max(np.abs(turned - np.rot90(upscaler.upscale(image))))
        assert (difference < 1e-3) == equivariant, (ensemble, difference)


def test_tiled_equals_untiled_with_ensemble_and_matched_bins(model_x4):
    image = smooth_image((67, 90), seed=15).astype(np.float32)
    plan = TilePlan.for_model(model_x4, 40)
    assert len(list(tile_slices(image.shape, plan.tile, plan.overlap, 4))) > 1, "not tiled"
    whole = Upscaler(model_x4, device="cpu", tile=UNTILED, ensemble=2, match_bins=True).upscale(image)
    tiled = Upscaler(model_x4, device="cpu", tile=40, ensemble=2, match_bins=True).upscale(image)
    assert np.max(np.abs(tiled - whole)) <= 1e-3 * (whole.max() - whole.min())


def test_options_left_unset_follow_the_model_file(model_x4):
    image = smooth_image((26, 33), seed=17).astype(np.float32)
    told = with_inference_defaults(model_x4, 2, True)
    by_default = Upscaler(told, device="cpu")
    assert (by_default.ensemble, by_default.match_bins) == (2, True)
    np.testing.assert_array_equal(by_default.upscale(image),
                                  Upscaler(model_x4, device="cpu", ensemble=2, match_bins=True).upscale(image))
    overridden = Upscaler(told, device="cpu", ensemble=1, match_bins=False)
    np.testing.assert_array_equal(overridden.upscale(image), Upscaler(model_x4, device="cpu").upscale(image))
    assert (Upscaler(model_x4, device="cpu").ensemble, Upscaler(model_x4, device="cpu").match_bins) == (1, False)


def test_bad_ensemble_raises(model_x4):
    with pytest.raises(ValueError, match="ensemble must be one of"):
        Upscaler(model_x4, device="cpu", ensemble=3)


# --- errors -------------------------------------------------------------------------------

def test_wrong_channel_count_raises(model_2ch):
    with pytest.raises(InferenceError, match=r"3 channel\(s\).*takes 2"):
        upscale(np.ones((3, 20, 20), np.float32), model_2ch, device="cpu")
    with pytest.raises(InferenceError, match="1 channel"):
        upscale(np.ones((20, 20), np.float32), model_2ch, device="cpu")


def test_four_dimensional_array_raises(model_x4):
    with pytest.raises(InferenceError, match="2-D"):
        upscale(np.ones((2, 3, 20, 20), np.float32), model_x4, device="cpu")


def test_nan_image_raises(model_x4):
    image = np.ones((20, 20), np.float32)
    image[3, 4] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        upscale(image, model_x4, device="cpu")


def test_stack_file_raises_naming_the_file(model_x4, tmp_path):
    source = tmp_path / "stack.ome.tif"
    tifffile.imwrite(source, np.ones((5, 20, 20), np.uint16), ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(ImageError, match=r"stack\.ome\.tif.*3-D stack"):
        upscale_file(Upscaler(model_x4, device="cpu"), source, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


def test_bad_tile_and_precision_raise(model_x4):
    with pytest.raises(ValueError, match="-5"):
        Upscaler(model_x4, device="cpu", tile=-5)
    with pytest.raises(ValueError, match="bf16"):
        Upscaler(model_x4, device="cpu", precision="bf16")


# --- files --------------------------------------------------------------------------------

def test_upscale_file_keeps_dtype_and_layout_and_skips_existing(model_x4, tmp_path):
    source = tmp_path / "rgbish.tif"
    yxc = np.moveaxis(np.stack([smooth_image((20, 24), seed=s, low=0, high=250) for s in range(3)]), 0, -1).astype(np.uint8)
    tifffile.imwrite(source, yxc, photometric="rgb")
    destination = tmp_path / "out" / "rgbish.tif"
    upscaler = Upscaler(model_x4, device="cpu")
    assert upscale_file(upscaler, source, destination) is True
    raw = tifffile.imread(destination)
    assert raw.shape == (80, 96, 3) and raw.dtype == np.uint8
    image, layout = read_image(destination)
    assert layout.channel_axis == 2 and image.shape == (3, 80, 96)
    mtime = destination.stat().st_mtime_ns
    assert upscale_file(upscaler, source, destination) is False
    assert destination.stat().st_mtime_ns == mtime
    assert upscale_file(upscaler, source, destination, overwrite=True) is True
