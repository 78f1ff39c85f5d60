"""Metrics checked against values computed independently, by hand or from definitions."""
from __future__ import annotations

import numpy as np
import pytest

from msrgan_core.metrics import (
    high_frequency_ratio, image_metrics, matched_f1, noise_levels, segment_nuclei, texture_error,
    upscale_bicubic, upscale_lanczos, upscale_nearest,
)


def test_psnr_ssim_nrmse_match_their_definitions():
    rng = np.random.default_rng(0)
    truth = rng.uniform(100, 4100, (64, 64))
    test = truth + rng.normal(0, 40, truth.shape)
    mse = np.mean((truth - test) ** 2)
    data_range = truth.max() - truth.min()
    m = image_metrics(truth, test)
    assert m["psnr"] == pytest.approx(10 * np.log10(data_range ** 2 / mse), abs=1e-9)
    assert m["nrmse"] == pytest.approx(np.sqrt(mse) / np.sqrt(np.mean(truth ** 2)), rel=1e-9)
    assert image_metrics(truth, truth)["ssim"] == pytest.approx(1.0)
    assert 0 < m["ssim"] < 1


def test_each_channel_is_scored_on_its_own_range():
    """A dim stain beside a bright one: its errors count as much as the bright one's."""
    rng = np.random.default_rng(1)
    bright = rng.uniform(100, 4100, (64, 64))
    truth = np.stack([bright, bright / 20])
    test = truth + rng.normal(0, 40, (64, 64)) * np.array([1, 1 / 20])[:, None, None]
    both, bright_alone = image_metrics(truth, test), image_metrics(truth[0], test[0])
    assert both["psnr"] == pytest.approx(bright_alone["psnr"], abs=1e-6)  # the same relative error in each
    assert both["ssim"] == pytest.approx(bright_alone["ssim"], abs=1e-6)
    worse_dim = test.copy()
    worse_dim[1] += rng.normal(0, 10, (64, 64))
    assert image_metrics(truth, worse_dim)["psnr"] < both["psnr"] - 3
    with_empty = image_metrics(np.concatenate([truth, np.zeros((1, 64, 64))]), np.concatenate([test, np.zeros((1, 64, 64))]))
    assert with_empty == pytest.approx(both)  # an empty channel has no range: not scored


def test_an_integer_files_degraded_counterpart_holds_whole_counts(tmp_path):
    """As a camera records it: rounded and within the dtype, not a float no file holds."""
    import tifffile
    from msrgan_core.config import NormalizationConfig
    from msrgan_core.evaluate import degraded_pair, grid_degradation
    from helpers import smooth_image

    dim = smooth_image((96, 96), seed=4, low=2, high=40, noise=0.0).round().astype(np.uint8)
    (tmp_path / "float").mkdir()
    tifffile.imwrite(tmp_path / "dim.tif", dim)
    tifffile.imwrite(tmp_path / "float" / "dim.tif", dim.astype(np.float32))  # the same name: the same noise
    for cell in ("bin", "bin+100ph"):
        hr, lr, dtype = degraded_pair(tmp_path / "dim.tif", NormalizationConfig(), grid_degradation(cell))
        assert dtype == np.uint8 and lr.dtype == np.float32 and lr.shape == (1, 24, 24)
        np.testing.assert_array_equal(lr, np.clip(np.rint(lr), 0, 255))
        _, as_float, _ = degraded_pair(tmp_path / "float" / "dim.tif", NormalizationConfig(), grid_degradation(cell))
        assert np.any(as_float != np.rint(as_float))  # a float file's keeps its fractions
        np.testing.assert_allclose(lr, as_float, atol=0.5 + 1e-4)


def test_baselines_keep_flat_images_flat_and_nearest_replicates():
    lr = np.full((1, 5, 7), 123.0, np.float32)
    for fn in (upscale_nearest, upscale_bicubic, upscale_lanczos):
        out = fn(lr, 4)
        assert out.shape == (1, 20, 28)
        np.testing.assert_allclose(out, 123.0, rtol=1e-5)
    ramp = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    np.testing.assert_array_equal(upscale_nearest(ramp, 2)[0, :2, :2], 0)
    assert upscale_nearest(ramp, 2)[0, 3, 5] == 5


def test_high_frequency_ratio_is_the_power_ratio_of_fine_detail():
    y, x = np.mgrid[:128, :128]
    coarse = np.sin(2 * np.pi * x / 64.0)          # 1/64 cycles per pixel: below the cutoff (1/16)
    fine = np.sin(2 * np.pi * (x + y) / 5.0)       # well above it
    truth = coarse + fine
    assert high_frequency_ratio(truth, truth, 4) == pytest.approx(1.0)
    assert high_frequency_ratio(truth, coarse + 2 * fine, 4) == pytest.approx(4.0, rel=1e-3)
    assert high_frequency_ratio(truth, coarse, 4) < 0.01


def disk_labels(shape, centres, radius):
    y, x = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2] = i
    return labels


def test_matched_f1_counts_only_objects_overlapping_by_more_than_half():
    truth = disk_labels((100, 100), [(20, 20), (20, 70), (70, 45)], 10)
    assert matched_f1(truth, truth) == 1.0
    shifted = disk_labels((100, 100), [(20, 20), (20, 84), (70, 45), (90, 90)], 10)  # one moved too far, one extra
    # tp = 2 of 3 true and 4 found objects: 2 * 2 / (3 + 4)
    assert matched_f1(truth, shifted) == pytest.approx(4 / 7)
    assert matched_f1(truth, np.zeros_like(truth)) == 0.0


def test_segmentation_recipe_separates_touching_nuclei():
    truth = disk_labels((120, 120), [(40, 40), (40, 58), (90, 80)], 10)
    rng = np.random.default_rng(1)
    image = 100 + 1000 * (truth > 0) + rng.normal(0, 20, truth.shape)
    found = segment_nuclei(image)
    assert found.max() == 3
    assert matched_f1(truth, found) == 1.0


def test_texture_error_is_the_mean_relative_std_error_over_objects():
    labels = disk_labels((60, 60), [(15, 15), (40, 40)], 8)
    rng = np.random.default_rng(2)
    truth = rng.normal(1000, 50, labels.shape)
    test = truth.copy()
    test[labels == 1] = 1000 + 2 * (truth[labels == 1] - 1000)     # object 1: std doubled
    test[labels == 2] = truth[labels == 2].mean()                   # object 2: flattened
    # relative errors: (2 - 1) / 1 = 1 for object 1 and 1 for object 2 -> mean 1.0
    assert texture_error(truth, test, labels) == pytest.approx(1.0, rel=1e-6)
    assert texture_error(truth, truth, labels) == 0.0


def test_blank_fields_are_told_from_fields_with_objects():
    from msrgan_core.config import NormalizationConfig
    from msrgan_core.evaluate import BLANK_NOISE_SPANS, BlankField, check_not_blank, noise_spans
    from helpers import smooth_image

    rng = np.random.default_rng(0)
    normalization = NormalizationConfig()
    blobs = rng.poisson(smooth_image((128, 128), seed=3, low=100, high=3000, noise=0.0)).astype(np.float32)[None]
    background = rng.poisson(150.0, (1, 128, 128)).astype(np.float32)  # an empty well: shot noise alone
    spans = {name: float(noise_spans(image, normalization)[0]) for name, image in
             [("blobs", blobs), ("background", background), ("flat", np.full((1, 64, 64), 150, np.float32))]}
    assert spans["blobs"] > 3 * BLANK_NOISE_SPANS and 4 < spans["background"] < BLANK_NOISE_SPANS and spans["flat"] == 0
    check_not_blank(blobs, normalization, "blobs.tif")
    with pytest.raises(BlankField, match=r"two.tif: channel 1 a blank field"):
        check_not_blank(np.concatenate([blobs, background]), normalization, "two.tif")


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_noise_levels_of_a_flat_channel_are_zero_without_a_warning():
    rng = np.random.default_rng(0)
    image = np.stack([np.full((32, 32), 7.0), rng.normal(100, 2, (32, 32))])
    flat, noisy = noise_levels(image)
    assert flat == 0 and noisy == pytest.approx(2, rel=0.25)
