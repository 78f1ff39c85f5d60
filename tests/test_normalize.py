"""Percentile normalisation per image and channel, undone exactly with the same statistics."""
from __future__ import annotations

import numpy as np
import pytest

from msrgan_core.config import NormalizationConfig
from msrgan_core.normalize import Stats, denormalize, normalize, percentile_stats


def _image(dtype, shape=(2, 40, 50), seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.gamma(2.0, 300.0, shape) + 5).astype(dtype)
    top = 4095 if dtype == np.uint16 else 255
    return rng.integers(3, top, shape, endpoint=True).astype(dtype)


def test_stats_are_the_default_1_and_99_8_percentiles_per_channel():
    image = _image(np.uint16)
    image[1] //= 10  # channels have their own statistics
    stats = percentile_stats(image)
    for c in range(2):
        low, high = np.percentile(image[c].astype(np.float64), [1.0, 99.8])
        assert stats.low[c] == pytest.approx(low) and stats.high[c] == pytest.approx(high)
    assert stats.high[1] < stats.high[0] / 5


def test_custom_percentiles():
    image = _image(np.float32)
    stats = percentile_stats(image, NormalizationConfig(low=5, high=95))
    np.testing.assert_allclose(stats.low, np.percentile(image.reshape(2, -1), 5, axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats.high, np.percentile(image.reshape(2, -1), 95, axis=1), rtol=1e-6)


def test_normalize_maps_percentiles_to_0_and_1():
    image = _image(np.uint16)
    stats = percentile_stats(image)
    normalized = normalize(image, stats)
    assert normalized.dtype == np.float32 and normalized.shape == image.shape
    for c in range(2):
        assert np.mean(normalized[c] < 0) == pytest.approx(0.01, abs=0.003)
        assert np.mean(normalized[c] > 1) == pytest.approx(0.002, abs=0.002)
        np.testing.assert_allclose(np.percentile(normalized[c], [1.0, 99.8]), [0, 1], atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_round_trip_is_exact(dtype):
    image = _image(dtype)
    image[0, 0, 0], image[0, 0, 1] = 0, np.iinfo(dtype).max  # extremes beyond the percentiles
    stats = percentile_stats(image)
    back, clipped = denormalize(normalize(image, stats), stats, dtype)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, image)
    assert clipped == 0.0


def test_float_round_trip():
    image = _image(np.float32)
    stats = percentile_stats(image)
    back, clipped = denormalize(normalize(image, stats), stats, np.float32)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, image, rtol=1e-6, atol=1e-6 * float(image.max()))
    assert clipped == 0.0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_flat_image_gives_no_nan(dtype):
    image = np.full((1, 16, 16), 7, dtype)
    stats = percentile_stats(image)
    normalized = normalize(image, stats)
    assert np.all(np.isfinite(normalized)) and np.all(normalized == 0)
    back, _ = denormalize(normalized, stats, dtype)
    np.testing.assert_array_equal(back, image)


def test_all_zero_image_gives_no_nan():
    image = np.zeros((2, 8, 8), np.uint16)
    normalized = normalize(image, percentile_stats(image))
    assert np.all(np.isfinite(normalized))


def test_denormalize_clips_to_the_dtype_and_reports_the_fraction():
    stats = Stats(low=np.array([0.0]), high=np.array([255.0]))
    normalized = np.full((1, 10, 10), 0.5, np.float32)
    normalized[0, 0, :3] = 2.0  # 510: above uint8
    normalized[0, 1, :2] = -0.5  # -127.5: below 0
    out, clipped = denormalize(normalized.copy(), stats, np.uint8)  # denormalize works in place
    assert clipped == pytest.approx(5 / 100)
    assert out[0, 0, :3].tolist() == [255] * 3 and out[0, 1, :2].tolist() == [0, 0]
    assert out[0, 5, 5] == 128  # 127.5 rounds (to even), no rescaling
    as_float, clipped_float = denormalize(normalized.copy(), stats, np.float32)
    assert clipped_float == 0.0 and as_float.max() == pytest.approx(510)


def test_denormalize_keeps_the_input_scale():
    """A 12-bit image stays 12-bit in uint16: nothing is stretched to the dtype's range."""
    image = _image(np.uint16)
    stats = percentile_stats(image)
    out, _ = denormalize(normalize(image, stats), stats, np.uint16)
    assert out.max() <= 4095


@pytest.mark.parametrize("dtype,common,dark", [(np.uint8, 255, 0), (np.uint16, 100, 99), (np.float32, 1000.0, 0.0)])
def test_a_channel_mostly_at_its_brightest_is_mapped_by_its_darkest_pixel(dtype, common, dark):
    """A saturated field with a few dark pixels: they lie at 0 and the field at 1, not hundreds of
    spans below it (where the network had erased them)."""
    image = np.full((1, 64, 64), common, dtype)
    image[0, 20:22, 20:22] = dark
    stats = percentile_stats(image)
    assert stats.low[0] == dark and stats.high[0] == common
    normalized = normalize(image, stats)
    assert normalized.min() == 0 and normalized.max() == 1


@pytest.mark.parametrize("dtype,offset", [(np.int32, 2_000_000_000), (np.float64, 1e9)])
def test_an_offset_beyond_float32_costs_no_precision(dtype, offset):
    """int32 and float64 values float32 cannot hold are normalised and mapped back in float64."""
    rng = np.random.default_rng(0)
    signal = rng.integers(0, 870, (1, 32, 32))
    image = (signal + offset).astype(dtype)
    stats = percentile_stats(image)
    normalized = normalize(image, stats)
    np.testing.assert_allclose(normalized, normalize(signal.astype(np.float32), percentile_stats(signal.astype(np.float32))),
                               atol=1e-6)
    back, _ = denormalize(normalized, stats, dtype)
    np.testing.assert_allclose(back, image, rtol=0, atol=1e-3)
