"""Tiled inference: tiles cover the image, tiled equals untiled, outputs keep dtype and intensity scale."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from helpers import CGROUP_CASES, cgroup_tree, smooth_image, tiny_model
from msrgan_core.binning import bin_mean
from msrgan_core.inference import (
    InferenceError, Upscaler, axis_tiles, orient, orientations, resolve_precision, tile_slices, unorient, upscale,
    upscale_file,
)
from msrgan_core.io import ImageError, read_image
from msrgan_core.modelfile import ModelFileError, with_inference_defaults
from msrgan_core.errors import UserError
from msrgan_core.options import PRECISIONS

UNTILED = 100_000  # a tile edge larger than any test image: one tile


@pytest.fixture(autouse=True)
def fp32_unless_asked(monkeypatch):
    """``auto`` runs fp32 in these tests on every CPU, so that tiles, strips, orientations and
    batches are compared to float rounding, not to bf16's; the bf16 tests ask for it."""
    from msrgan_core import inference

    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: False)


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
def compact_x4(model_dir):
    return tiny_model(model_dir, "compact.safetensors", scale=4, n_blocks=3, seed=4, architecture="compact")


@pytest.fixture(scope="module")
def compact_2ch(model_dir):
    return tiny_model(model_dir, "compact_c2.safetensors", scale=2, channels=2, n_blocks=2, seed=5, architecture="compact")


@pytest.fixture(scope="module")
def bicubic_x4(model_dir):
    return tiny_model(model_dir, "bicubic.safetensors", scale=4, zero_tail=True)


@pytest.fixture(scope="module")
def compact_bicubic_x4(model_dir):
    return tiny_model(model_dir, "compact_bicubic.safetensors", scale=4, n_blocks=2, architecture="compact", zero_tail=True)


def _run(model, image, tile):
    return Upscaler(model, device="cpu", tile=tile).upscale(image)


def _assert_tiled_equals_untiled(model, image, tiles):
    whole = _run(model, image, UNTILED).astype(np.float64)
    tolerance = 1e-3 * (whole.max() - whole.min())
    assert tolerance > 0
    for tile in tiles:
        plan = Upscaler(model, device="cpu", tile=tile).plan()
        assert len(plan.tiles(image.shape[-2:], model.scale)) > 1, "not tiled"
        tiled = _run(model, image, tile).astype(np.float64)
        assert tiled.shape == whole.shape
        assert np.max(np.abs(tiled - whole)) <= tolerance, f"tile {tile}"


# --- pure tiling functions ----------------------------------------------------------------

@pytest.mark.parametrize("length,core,margin", [(301, 64, 17), (97, 60, 18), (130, 100, 10), (50, 64, 17), (64, 64, 5), (65, 64, 5), (7, 3, 9)])
def test_axis_tiles_partition_the_axis_and_add_the_margin(length, core, margin):
    tiles = axis_tiles(length, core, margin)
    assert tiles[0][2] == 0 and tiles[-1][3] == length
    for (s0, s1, c0, c1), nxt in zip(tiles, tiles[1:] + [None]):
        assert 0 < c1 - c0 <= core
        assert (s0, s1) == (max(0, c0 - margin), min(length, c1 + margin))
        if nxt is not None:
            assert nxt[2] == c1  # cores meet: no pixel twice, none left out
    sizes = {c1 - c0 for _, _, c0, c1 in tiles}
    assert max(sizes) - min(sizes) <= 1  # equal cores, so no sliver of a last tile pays full margins


@pytest.mark.parametrize("shape,core,margin,scale", [((301, 257), 64, 17, 2), ((97, 130), 60, 18, 4), ((20, 30), 64, 17, 8)])
def test_tile_cores_cover_the_output_exactly_once(shape, core, margin, scale):
    out_count = np.zeros((shape[0] * scale, shape[1] * scale), int)
    for tile in tile_slices(shape, core, margin, scale):
        (sy, sx), (cy, cx), (dy, dx) = tile.source, tile.core, tile.destination
        assert 0 <= sy.start < sy.stop <= shape[0] and 0 <= sx.start < sx.stop <= shape[1]
        assert (dy.start, dy.stop) == ((sy.start + cy.start) * scale, (sy.start + cy.stop) * scale)
        assert (dx.start, dx.stop) == ((sx.start + cx.start) * scale, (sx.start + cx.stop) * scale)
        assert cy.stop <= sy.stop - sy.start and cx.stop <= sx.stop - sx.start
        out_count[dy, dx] += 1
    assert np.all(out_count == 1)


def test_plan_margin_is_the_measured_influence_radius_plus_spare(compact_x4):
    from msrgan_core.inference import MARGIN_SPARE
    from msrgan_core.models import influence_radius, receptive_radius

    plan = Upscaler(compact_x4, device="cpu", tile=60).plan()
    assert compact_x4.influence_radius == influence_radius(compact_x4.generator)
    assert plan.margin == min(compact_x4.influence_radius + MARGIN_SPARE, receptive_radius(compact_x4.config))
    assert len(plan.tiles((50, 60), 4)) == 1  # fits in one tile: no margins at all


def test_automatic_tile_fits_the_memory_budget(compact_x4, model_x4):
    from msrgan_core.models import forward_bytes_per_pixel, forward_fixed_bytes

    from msrgan_core.inference import MIN_CORE_MARGINS

    for model in (compact_x4, model_x4):
        upscaler = Upscaler(model, device="cpu")
        plan = upscaler.plan()
        per_pixel, fixed = forward_bytes_per_pixel(model.config), forward_fixed_bytes(model.config)
        assert plan.tile ** 2 * per_pixel + fixed <= upscaler.memory
        assert (plan.tile + 1) ** 2 * per_pixel + fixed > upscaler.memory
        upscaler.memory = 1000  # a budget too small for any tile: the core stays a few margins wide
        assert upscaler.plan().core == MIN_CORE_MARGINS * upscaler.plan().margin


def test_a_tile_below_its_context_is_raised_with_a_warning(model_x4, caplog):
    with caplog.at_level("WARNING", logger="msrgan"):
        upscaler = Upscaler(model_x4, device="cpu", tile=8)
    assert upscaler.plan().tile > 8 and f"tile 8 raised to {upscaler.plan().tile}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="msrgan"):
        Upscaler(model_x4, device="cpu", tile=upscaler.plan().tile)
    assert "raised" not in caplog.text


# --- tiled == untiled ---------------------------------------------------------------------

def test_tiled_equals_untiled_odd_size_x2(model_x2):
    image = smooth_image((301, 257), seed=1).astype(np.float32)
    _assert_tiled_equals_untiled(model_x2, image, tiles=(100, 160))


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_tiled_equals_untiled_odd_size_x4(model_x4, dtype):
    image = smooth_image((97, 130), seed=2).astype(dtype)
    _assert_tiled_equals_untiled(model_x4, image, tiles=(60, 64, 90))


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_tiled_equals_untiled_compact_odd_size(compact_x4, dtype):
    image = smooth_image((97, 131), seed=21).astype(dtype)
    _assert_tiled_equals_untiled(compact_x4, image, tiles=(30, 47, 64))


def test_tiled_equals_untiled_compact_multichannel(compact_2ch):
    image = np.stack([smooth_image((61, 83), seed=22), smooth_image((61, 83), seed=23, low=0, high=300)]).astype(np.float32)
    _assert_tiled_equals_untiled(compact_2ch, image, tiles=(25, 40))


def test_batched_tiles_equal_tiles_one_at_a_time(compact_x4, model_x4):
    image = smooth_image((90, 77), seed=24).astype(np.float32)
    for model in (compact_x4, model_x4):
        batched = Upscaler(model, device="cpu", tile=40, ensemble=2)
        single = Upscaler(model, device="cpu", tile=40, ensemble=2)
        single.memory = 1  # every batch holds one oriented tile
        np.testing.assert_allclose(batched.upscale(image), single.upscale(image), rtol=1e-5, atol=1e-3)


def _in_strips(model, rows, width, **options):
    """An upscaler on the CPU whose memory budget holds strips of ``rows`` input rows ``width`` wide."""
    from msrgan_core.models import forward_bytes_per_pixel, forward_fixed_bytes

    upscaler = Upscaler(model, device="cpu", **options)
    runs = len(upscaler.uncertainty_orientations())
    upscaler.memory = forward_fixed_bytes(model.config) + rows * width * forward_bytes_per_pixel(model.config) * runs
    assert upscaler.streams() and upscaler.strip_rows(width, uncertainty=True) == rows
    return upscaler


@pytest.mark.parametrize("name,shape", [("compact_x4", (131, 70)), ("model_x4", (97, 61)), ("compact_2ch", (2, 77, 59))])
def test_strips_equal_the_whole_image(name, shape, request):
    """On the CPU, with the automatic tile size, images go through the network in full-width strips
    that recompute no context: the whole image's result, whatever the strips' height, with bins
    matched, and with the uncertainty image (the mirror image as a second pass, in one batch)."""
    model = request.getfixturevalue(name)
    image = smooth_image(shape[-2:], seed=40).astype(np.float32)
    if len(shape) == 3:
        image = np.stack([image, smooth_image(shape[-2:], seed=41, low=0, high=300).astype(np.float32)])
    tolerance = 1e-3 * (image.max() - image.min())
    for match_bins in (False, True):
        whole, whole_spread = Upscaler(model, device="cpu", tile=UNTILED, match_bins=match_bins).upscale(image, uncertainty=True)
        for rows in (7, 30):
            strips = _in_strips(model, rows, shape[-1], match_bins=match_bins)
            assert np.max(np.abs(strips.upscale(image) - whole)) <= tolerance, (rows, match_bins)
            out, spread = strips.upscale(image, uncertainty=True)
            assert np.max(np.abs(out - whole)) <= tolerance and np.max(np.abs(spread - whole_spread)) <= tolerance


def test_strips_are_for_the_cpu_automatic_tile_and_orientations_that_keep_rows(compact_x4, model_x4):
    """Strips need every orientation's rows to stay rows (the image and its mirror); a tile size
    the user sets is kept; each strip's activations fit the memory budget."""
    from msrgan_core.inference import activation_room
    from msrgan_core.models import forward_bytes_per_pixel

    for model in (compact_x4, model_x4):
        assert Upscaler(model, device="cpu").streams() and Upscaler(model, device="cpu", ensemble=2).streams()
        assert not Upscaler(model, device="cpu", ensemble=4).streams()
        assert not Upscaler(model, device="cpu", tile=64).streams()
        upscaler = Upscaler(model, device="cpu")
        room, per_pixel = activation_room(model.config, upscaler.memory, "cpu"), forward_bytes_per_pixel(model.config)
        for width, runs in ((2048, 1), (517, 2)):
            rows = upscaler.strip_rows(width, uncertainty=runs == 2)
            assert rows * width * per_pixel * runs <= room < (rows + 1) * width * per_pixel * runs


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
    image = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    turned = [orient(image, k, m) for k, m in orientations(count)]
    assert len({t.numpy().tobytes() + bytes(t.shape) for t in turned}) == count
    for (k, m), t in zip(orientations(count), turned):
        torch.testing.assert_close(unorient(t, k, m), image, rtol=0, atol=0)


def test_ensemble_is_the_mean_over_orientations(model_x4):
    image = smooth_image((26, 33), seed=13).astype(np.float32)
    single = Upscaler(model_x4, device="cpu")
    oriented = [(k, m, orient(torch.from_numpy(image), k, m).numpy().copy()) for k, m in orientations(4)]
    by_hand = np.mean([unorient(torch.from_numpy(single.upscale(o)), k, m).numpy() for k, m, o in oriented], axis=0)
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
    assert len(Upscaler(model_x4, device="cpu", tile=40).plan().tiles(image.shape, 4)) > 1, "not tiled"
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
    with pytest.raises(ValueError, match="int8"):
        Upscaler(model_x4, device="cpu", precision="int8")


def test_the_cpu_runs_bf16_by_default_only_where_it_computes_bf16_itself(monkeypatch, caplog):
    import logging

    from msrgan_core import inference

    cpu = torch.device("cpu")
    for native, auto in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(inference, "cpu_has_bf16", lambda: native)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="msrgan"):
            ran = {precision: resolve_precision(precision, cpu) for precision in PRECISIONS}
        assert ran == {"auto": auto, "fp32": "fp32", "bf16": "bf16", "fp16": "fp32"}  # fp16 is for GPUs
        assert ("emulated" in caplog.text) == (not native) and "fp16 is for CUDA GPUs" in caplog.text


@pytest.mark.parametrize("name", ["compact_x4", "model_x4"])
@pytest.mark.parametrize("tile", [0, 40])
def test_bf16_on_the_cpu_stays_close_to_fp32_in_strips_and_in_tiles(name, tile, request):
    """bf16 runs (the output differs from fp32's), in the image's dtype, and close to fp32."""
    from msrgan_core.metrics import psnr

    model = request.getfixturevalue(name)
    image = smooth_image((67, 90), seed=16, low=100, high=4000).round().astype(np.uint16)
    fp32 = Upscaler(model, device="cpu", tile=tile, precision="fp32").upscale(image).astype(np.float64)
    upscaler = Upscaler(model, device="cpu", tile=tile, precision="bf16")
    assert upscaler.streams() == (tile == 0)
    bf16 = upscaler.upscale(image)
    assert bf16.dtype == image.dtype and bf16.shape == fp32.shape
    assert 50 < psnr(fp32, bf16, 3900) < np.inf


@pytest.mark.parametrize("name", ["bicubic_x4", "compact_bicubic_x4"])
def test_the_bicubic_skip_stays_fp32_in_bf16(name, request):
    """A generator whose tail is zero is bicubic upsampling: in bf16 exactly fp32's output, since only
    the network runs in bf16 (the image rounded to bf16's 8 significant bits would be far off)."""
    model = request.getfixturevalue(name)
    image = smooth_image((37, 45), seed=17, low=100, high=60000).astype(np.float32)
    for tile in (0, 24):
        fp32 = Upscaler(model, device="cpu", tile=tile, precision="fp32").upscale(image)
        np.testing.assert_array_equal(Upscaler(model, device="cpu", tile=tile, precision="bf16").upscale(image), fp32)


@pytest.mark.parametrize("tile", [0, 40])
def test_a_bf16_output_that_is_not_finite_is_redone_in_fp32(compact_x4, tile, monkeypatch, caplog):
    """In strips the whole image is redone (a strip's layers hold rows of the one before), in tiles the batch."""
    import logging

    image = smooth_image((67, 90), seed=18, low=100, high=4000).round().astype(np.uint16)
    fp32 = Upscaler(compact_x4, device="cpu", tile=tile, precision="fp32").upscale(image)
    upscaler = Upscaler(compact_x4, device="cpu", tile=tile, precision="bf16")
    last = upscaler.generator.body[-1]  # a PReLU: strips call it as a module too (their convolutions are F.conv2d)
    # what an overflow in reduced precision gives, under autocast only
    hook = last.register_forward_hook(lambda module, args, y: y.fill_(float("nan")) if torch.is_autocast_enabled("cpu") else y)
    try:
        with caplog.at_level(logging.WARNING, logger="msrgan"):
            out = upscaler.upscale(image)
    finally:
        hook.remove()
    np.testing.assert_array_equal(out, fp32)
    assert "bf16 output was not finite; recomputing the " + ("image" if tile == 0 else "batch") in caplog.text


def test_the_finiteness_check_sees_nan_and_infinity_and_not_an_overflowing_sum():
    from msrgan_core.inference import _all_finite

    big = torch.full((4, 1000), 3e38)  # finite, but its sum overflows to infinity
    assert _all_finite(big) and _all_finite(torch.zeros(3))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = big.clone()
        y[2, 17] = bad
        assert not _all_finite(y)
    opposite = torch.tensor([float("inf"), -float("inf"), 1.0])  # sums to NaN
    assert not _all_finite(opposite)


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


# --- the uncertainty image ----------------------------------------------------------------

def test_uncertainty_leaves_the_output_alone_and_is_the_spread_over_orientations(model_x4):
    image = smooth_image((31, 44), seed=30, low=100, high=3000).astype(np.float32)
    upscaler = Upscaler(model_x4, device="cpu")
    plain = upscaler.upscale(image)
    out, spread = upscaler.upscale(image, uncertainty=True)
    # one orientation: its mirror adds only the spread. The two go through the network as one batch,
    # which oneDNN may compute in another order (AVX-512 CPUs): the same numbers to float rounding
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=0)
    assert spread.shape == out.shape and spread.dtype == np.float32
    mirrored = upscaler.upscale(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
    by_hand = np.abs(plain.astype(np.float64) - mirrored) / 2  # the std of two values is half their distance
    assert np.max(np.abs(spread - by_hand)) <= 1e-3 * 2900
    assert spread.mean() > 1.0  # a random net is far from mirror-symmetric
    _, counts = upscaler.upscale(image.round().astype(np.uint16), uncertainty=True)
    assert counts.dtype == np.float32 and counts.shape == out.shape  # the error estimate is not rounded to counts


def test_uncertainty_of_a_mirror_symmetric_model_is_zero_and_tiles_match(bicubic_x4, model_x4):
    image = smooth_image((61, 70), seed=31).astype(np.float32)
    _, spread = Upscaler(bicubic_x4, device="cpu").upscale(image, uncertainty=True)
    assert np.max(spread) < 1e-3 * (image.max() - image.min())  # bicubic is the same however the image lies
    _, whole = Upscaler(model_x4, device="cpu", tile=UNTILED, ensemble=4).upscale(image, uncertainty=True)
    _, tiled = Upscaler(model_x4, device="cpu", tile=40, ensemble=4).upscale(image, uncertainty=True)
    assert np.max(np.abs(tiled - whole)) <= 1e-3 * (image.max() - image.min())


# --- outputs that would be wrong are errors, before or after the work ---------------------

def test_non_finite_weights_are_an_error_naming_the_image_not_a_black_output(tmp_path):
    from helpers import tiny_generator
    from msrgan_core.modelfile import load_model, save_model

    generator = tiny_generator(scale=2)
    with torch.no_grad():
        generator.tail.weight.fill_(float("nan"))
    model = load_model(save_model(tmp_path / "nan.safetensors", generator, {"influence_radius": 3}))
    with pytest.raises(InferenceError, match="plate_A01.tif.*non-finite"):
        Upscaler(model, device="cpu").upscale(np.arange(100, dtype=np.uint16).reshape(10, 10), source="plate_A01.tif")


def test_tiny_and_huge_images_are_refused_before_any_tile(model_x4, monkeypatch):
    import msrgan_core.inference as inference

    with pytest.raises(ImageError, match="dot.tif: the image is 1 x 1 pixels; msrgan needs at least 2 x 2"):
        Upscaler(model_x4, device="cpu").upscale(np.ones((1, 1), np.uint16), source="dot.tif")
    monkeypatch.setattr(inference, "available_memory", lambda: 1 << 20)  # 1 MiB free
    with pytest.raises(InferenceError, match=r"big.tif.*GiB.*upscale it in parts"):
        Upscaler(model_x4, device="cpu").upscale(np.ones((200, 300), np.uint16), source="big.tif")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8])
def test_every_supported_integer_type_comes_back_as_itself(model_x4, dtype):
    info = np.iinfo(dtype)
    image = smooth_image((20, 24), seed=40, low=max(info.min, -100), high=min(info.max, 100)).round().astype(dtype)
    out = Upscaler(model_x4, device="cpu").upscale(image)
    assert out.dtype == dtype and out.shape == (80, 96)


def test_an_empty_image_is_not_reported_as_clipped_and_negative_floats_stay_finite(bicubic_x4, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="msrgan"):
        out = Upscaler(bicubic_x4, device="cpu").upscale(np.zeros((20, 20), np.uint16))
    assert not out.any() and "clipped" not in caplog.text
    signed = smooth_image((20, 20), seed=41, low=-50.0, high=10.0).astype(np.float32)
    assert np.isfinite(Upscaler(bicubic_x4, device="cpu").upscale(signed)).all()


def test_a_saturated_12_bit_channel_is_not_upscaled_past_its_ceiling(bicubic_x4, caplog):
    """A 12-bit camera stored as uint16 saturates at 4095: nothing was measured above, and values
    over it would break saturation and percent-maximal measurements; an image below its ceiling
    keeps what the network gives (bicubic overshoots beside bright edges)."""
    import logging

    image = smooth_image((24, 30), seed=43, low=0, high=4000).round().astype(np.uint16)
    below = Upscaler(bicubic_x4, device="cpu").upscale(image)
    assert below.max() > image.max()  # overshoot beside the brightest pixels, kept
    image[:6, :10] = 4095  # saturated nuclei
    with caplog.at_level(logging.INFO, logger="msrgan"):
        out = Upscaler(bicubic_x4, device="cpu").upscale(image, source="sat.tif")
    assert out.max() == 4095 and "sat.tif: reaches its 12-bit ceiling (4095)" in caplog.text


def test_matched_bins_say_where_clipping_broke_them(model_x4, caplog):
    import logging

    image = smooth_image((24, 30), seed=42, low=0, high=65535).round().astype(np.uint16)
    image[:8] = 65535  # saturated: the network overshoots past what uint16 holds
    with caplog.at_level(logging.WARNING, logger="msrgan"):
        Upscaler(model_x4, device="cpu", match_bins=True).upscale(image, source="bright.tif")
    assert "bright.tif" in caplog.text and "no longer bin back exactly" in caplog.text


def test_calibration_scales_the_uncertainty_to_the_mean_absolute_error(model_x4, tmp_path):
    from msrgan_core.calibration import calibrate
    from msrgan_core.evaluate import grid_degradation, image_seed, low_resolution
    from msrgan_core.modelfile import load_model, save_model

    paths = []
    for seed in range(2):
        paths.append(tmp_path / f"hr{seed}.tif")
        tifffile.imwrite(paths[-1], smooth_image((48, 56), seed=50 + seed, low=100, high=3000,
                                                     noise=0.02).astype(np.float32))
    found = calibrate(Upscaler(model_x4, device="cpu"), paths, cells=["bin"], progress=False)
    k = found["uncertainty_scale"]
    assert k > 0 and found["uncertainty_calibration"]["images"] == 2
    calibrated = load_model(save_model(tmp_path / "c.safetensors", model_x4.generator, dict(model_x4.metadata, **found)))
    assert calibrated.card.uncertainty_scale == k
    errors, spreads = [], []
    for path in paths:
        hr = tifffile.imread(path)[None]
        lr = low_resolution(hr, calibrated.normalization, grid_degradation("bin"), np.random.default_rng(image_seed(path)))
        out, spread = Upscaler(calibrated, device="cpu").upscale(lr, uncertainty=True)
        errors.append(np.abs(out - hr).sum())
        spreads.append(spread.sum())
    assert sum(spreads) == pytest.approx(sum(errors), rel=1e-3)  # the mean uncertainty is now the mean error


def test_each_upscaler_runs_with_its_own_thread_count(tmp_path):
    """torch's thread count belongs to the process: two upscalers of one process (two modules of a
    pipeline) each run with theirs, not with the last one made."""
    import torch

    model = tiny_model(tmp_path, scale=2, seed=3)
    one, two = Upscaler(model, device="cpu", threads=1), Upscaler(model, device="cpu", threads=2)
    seen = []
    for upscaler in (one, two):
        def counted(*args, run=upscaler._upscale_group):  # the threads torch has as the network runs
            seen.append(torch.get_num_threads())
            return run(*args)
        upscaler._upscale_group = counted
    for upscaler in (one, two, one):
        upscaler.upscale(smooth_image((16, 16), seed=0))
    assert seen == [1, 2, 1]


@pytest.mark.parametrize("membership, files, quota", CGROUP_CASES)
def test_threads_follow_a_containers_cpu_limit_not_the_nodes_cores(membership, files, quota, tmp_path, monkeypatch):
    """A container limited to 1 core on a 64-core node still has all 64 in its affinity."""
    import msrgan_core.device as device

    root, proc = cgroup_tree(tmp_path, membership, files)
    monkeypatch.setattr(device, "CGROUP_ROOT", root)
    monkeypatch.setattr(device, "CGROUP_MEMBERSHIP", proc)
    assert device.cpu_quota() == quota
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert device.available_cores() == min(affinity, quota or affinity)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert device.available_cores() == (quota or 64)


@pytest.mark.parametrize("membership, files, room", [
    # a Slurm job's --mem (cgroup v2): the job's limit, not the node's free memory
    ("0::/system.slice/slurmstepd.scope/job_7/step_0\n",
     {"system.slice/slurmstepd.scope/job_7/memory.max": "629145600\n",
      "system.slice/slurmstepd.scope/job_7/memory.current": "314572800\n",
      "system.slice/slurmstepd.scope/job_7/step_0/memory.max": "max\n",
      "system.slice/slurmstepd.scope/job_7/step_0/memory.current": "314572800\n"}, 314572800),
    # docker --memory (cgroup v1), the container's own group at the mount
    ("4:memory:/docker/abc\n", {"memory/memory.limit_in_bytes": "1073741824\n",
                                 "memory/memory.usage_in_bytes": "1000000000\n"}, 73741824),
    ("0::/\n", {"memory.max": "max\n", "memory.current": "5\n"}, None),  # no limit
    (None, {}, None),
])
def test_memory_follows_a_jobs_limit_not_the_nodes_free_memory(membership, files, room, tmp_path, monkeypatch):
    """A job past its limit is killed without a word: an output that would not fit is refused instead."""
    import msrgan_core.device as device
    import msrgan_core.inference as inference

    root, proc = cgroup_tree(tmp_path, membership, files)
    monkeypatch.setattr(device, "CGROUP_ROOT", root)
    monkeypatch.setattr(device, "CGROUP_MEMBERSHIP", proc)
    assert device.cgroup_memory_room() == room
    if room is not None:
        assert inference.available_memory() == room  # the node has more free


def test_threads_follow_omp_num_threads_where_it_asks_for_fewer(monkeypatch):
    import msrgan_core.device as device

    monkeypatch.setattr(device, "available_cores", lambda: 8)
    for value, expected in (("1", 1), ("3", 3), ("64", 8), ("", 8), ("0", 8), ("two", 8)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert device.default_threads() == expected, value


FAULTS_PROBE = """
import resource, sys, torch
from msrgan_core.device import reuse_freed_memory

def faults_per_tensor():
    for _ in range(8):  # the first few after a change of allocator settings still grow the heap
        torch.ones(16 << 20).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):  # a 64 MiB activation, made and freed, as each tile's layers do
        torch.ones(16 << 20).sum()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4

plain = faults_per_tensor()
print(reuse_freed_memory(), plain, faults_per_tensor())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_upscaler_process_reuses_freed_memory_instead_of_faulting_in_fresh_pages():
    """Without it every large tensor lands on fresh pages (16384 of 4 KiB for 64 MiB, each a page
    fault); with it, the second tensor reuses the first one's memory."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", FAULTS_PROBE], capture_output=True, text=True, check=True)
    took, plain, reused = done.stdout.split()
    if took != "True":
        pytest.skip("not glibc")
    assert float(plain) > 4000  # huge pages would fault less, but not this little
    assert float(reused) < 100


#: the device of the GPU test: CUDA where present; MSRGAN_TEST_DEVICE=cpu runs its logic on the CPU
GPU = os.environ.get("MSRGAN_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)


@pytest.mark.skipif(GPU is None, reason="needs a CUDA GPU (benchmarks/device_check.sh runs it on one)")
@pytest.mark.parametrize("name", ["compact_x4", "model_x4"])
def test_gpu_gives_the_cpu_result_tiled_batched_and_in_reduced_precision(name, request):
    """On the GPU: whole and in batched tiles alike, the CPU's result (cuDNN's fp32 convolutions
    may round to TF32), and bf16 and fp16 outputs in the image's dtype, neither black nor NaN."""
    from msrgan_core.metrics import psnr

    model = request.getfixturevalue(name)
    image = smooth_image((131, 97), seed=8, low=100, high=4000).round().astype(np.uint16)
    cpu = Upscaler(model, device="cpu", tile=UNTILED, precision="fp32").upscale(image).astype(np.float64)
    span = cpu.max() - cpu.min()
    whole = Upscaler(model, device=GPU, precision="fp32", tile=UNTILED).upscale(image).astype(np.float64)
    tiled = Upscaler(model, device=GPU, precision="fp32", tile=40)
    assert len(tiled.plan().tiles(image.shape, model.scale)) > 1
    assert np.abs(tiled.upscale(image).astype(np.float64) - whole).max() <= 1e-3 * span
    assert psnr(cpu, whole, span) > 50
    for precision in ("bf16", "fp16"):
        out = Upscaler(model, device=GPU, precision=precision).upscale(image)
        assert out.dtype == image.dtype and out.shape == cpu.shape
        assert psnr(cpu, out, span) > 30, precision


def test_an_upscaler_takes_a_model_file_or_a_packaged_name_as_load_model_does(model_x4):
    image = smooth_image((24, 20), seed=9).astype(np.uint16)
    expected = _run(model_x4, image, UNTILED)
    for given in (model_x4.source, str(model_x4.source)):
        np.testing.assert_array_equal(Upscaler(given, device="cpu").upscale(image), expected)
    assert Path(Upscaler("fidelity", device="cpu").model.source).name == "fidelity.safetensors"
    with pytest.raises(ModelFileError, match="no-such-model"):
        Upscaler("no-such-model", device="cpu")


def test_arrays_as_users_hand_them_are_taken_or_refused_in_one_line(tmp_path):
    """Channels last is refused with the fix (not read as hundreds of channels of 3 pixels), big-endian
    pixels are the same numbers, values beyond float32 are refused, not turned into infinities."""
    upscaler = Upscaler(tiny_model(tmp_path, scale=2, seed=5), device="cpu")
    with pytest.raises(InferenceError, match=r"looks like channels last .*np.moveaxis\(image, -1, 0\)"):
        upscaler.upscale(np.zeros((40, 48, 3), np.uint16))
    native = (smooth_image((24, 32), seed=1) * 1000).astype(np.uint16)
    np.testing.assert_array_equal(upscaler.upscale(native.astype(">u2")), upscaler.upscale(native))
    with pytest.raises(ImageError, match="beyond what msrgan computes in"):
        upscaler.upscale(np.full((16, 16), 1e39))
    with pytest.raises(ImageError, match="pixel type int64 is not supported"):  # a list of Python ints
        upscaler.upscale(native.tolist())


def test_int32_at_the_top_of_its_range_is_clipped_not_wrapped():
    from msrgan_core.normalize import Stats, denormalize

    top = np.iinfo(np.int32).max
    out, _ = denormalize(np.ones((1, 2, 2), np.float32), Stats(low=np.zeros(1), high=np.array([float(top)])), np.int32)
    assert out.min() > 0 and out.max() <= top


def test_a_sparse_or_constant_channel_keeps_its_own_scale_whatever_its_units():
    """Nearly all one value (beads, a masked field): mapped by its brightest pixel, not by a span of one unit."""
    from msrgan_core.normalize import percentile_stats

    for scale in (1e-6, 1.0, 1e4):
        field = np.full((1, 64, 64), 2 * scale, np.float32)
        field[0, 30:32, 30:32] = 5 * scale  # 0.1 % of the pixels: the 99.8th percentile is the background
        stats = percentile_stats(field)
        assert stats.low[0] == pytest.approx(2 * scale, rel=1e-6) and stats.high[0] == pytest.approx(5 * scale, rel=1e-6)
    flat = percentile_stats(np.full((1, 8, 8), 3.0, np.float32))
    assert 0 < flat.span[0] < 1e-5  # a constant float channel: a span far below its value
    assert percentile_stats(np.full((1, 8, 8), 7, np.uint16)).span[0] == 1.0  # one grey level


def test_an_empty_channel_comes_back_as_its_value_exactly_and_certain(model_x4):
    """Not the network's faint answer to nothing: a threshold on an empty channel finds nothing."""
    rng = np.random.default_rng(0)
    image = np.stack([np.zeros((24, 28), np.float32), rng.uniform(100, 900, (24, 28)).astype(np.float32),
                      np.full((24, 28), 7.5, np.float32)])
    out, spread = Upscaler(model_x4, device="cpu").upscale(image, uncertainty=True)
    assert np.all(out[0] == 0) and np.all(out[2] == 7.5) and np.all(spread[[0, 2]] == 0)
    assert out[1].std() > 0 and spread[1].max() > 0


def test_a_float_image_whose_range_float32_cannot_hold_is_refused(model_x4):
    image = np.zeros((16, 16), np.float32)
    image[:8], image[8:] = -3e38, 3e38
    with pytest.raises(ImageError, match="values from -3e\\+38 to 3e\\+38 are beyond .* scale the image down"):
        Upscaler(model_x4, device="cpu").upscale(image)


def test_a_gpu_is_named_by_its_index_and_one_the_machine_lacks_is_refused(monkeypatch, caplog):
    """``cuda:N`` picks one GPU of several (a node running one msrgan per GPU); an index beyond the
    GPUs the process sees is an error naming those it has, not a silent cuda:0."""
    import torch
    import msrgan_core.device as device

    assert device.resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda:N"):
        device.resolve_device("cuda:one")
    with pytest.raises(ValueError, match="cuda:N"):
        device.resolve_device("cpu:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger="msrgan"):
        assert device.resolve_device("cuda:1") == torch.device("cpu")  # as for plain cuda: a warning, the CPU
    assert "CUDA is not available" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert device.resolve_device("gpu") == torch.device("cuda")
    with pytest.raises(device.DeviceError, match=r"cuda:2: this machine shows 2 GPUs \(cuda:0 to cuda:1"):
        device.resolve_device("cuda:2")
    assert issubclass(device.DeviceError, UserError)  # the command line says it in one line, exit status 2


def test_the_one_call_upscale_takes_a_packaged_models_name_and_the_upscalers_options():
    image = smooth_image((24, 28)).astype(np.uint16)
    options = dict(device="cpu", precision="fp32", ensemble=2, match_bins=True)
    np.testing.assert_array_equal(upscale(image, "fidelity", **options), Upscaler("fidelity", **options).upscale(image))
    assert not np.array_equal(upscale(image, "fidelity", **options), upscale(image, "fidelity", device="cpu", precision="fp32"))
