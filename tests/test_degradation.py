"""Low-resolution synthesis: exact binning, bicubic shape, reproducible random blur and noise."""
from __future__ import annotations

import numpy as np
import pytest

from msrgan_core.config import DegradationConfig
from msrgan_core.binning import bin_mean, crop_to_multiple, match_bins
from msrgan_core.degradation import bicubic_down, degrade, gaussian_blur, poisson_gaussian_noise


def _hr(shape=(1, 32, 32), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_bin_is_the_exact_k_by_k_mean():
    image = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    out = bin_mean(image, 2)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    # by hand: channel 0 rows 0-1, cols 0-1 hold 0, 1, 6, 7
    assert out[0, 0, 0] == (0 + 1 + 6 + 7) / 4
    assert out[0, 1, 2] == (16 + 17 + 22 + 23) / 4
    assert out[1, 0, 1] == (26 + 27 + 32 + 33) / 4
    for c in range(2):
        for i in range(2):
            for j in range(3):
                assert out[c, i, j] == pytest.approx(image[c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean())


@pytest.mark.parametrize("k,shape", [(4, (1, 13, 7)), (2, (3, 5, 9))])
def test_match_bins_output_bins_back_to_the_input(k, shape):
    rng = np.random.default_rng(1)
    lowres = rng.random(shape).astype(np.float32)
    upscaled = rng.random((shape[0], shape[1] * k, shape[2] * k)).astype(np.float32) * 3
    matched = match_bins(upscaled, lowres, k)
    assert matched.shape == upscaled.shape and matched.dtype == np.float32
    np.testing.assert_allclose(bin_mean(matched, k), lowres, atol=1e-5)
    # within each block only the mean moved: the differences between its pixels are kept
    moved = (matched - upscaled).reshape(shape[0], shape[1], k, shape[2], k)
    np.testing.assert_allclose(moved, moved[:, :, :1, :, :1] * np.ones_like(moved), atol=1e-5)
    np.testing.assert_allclose(match_bins(matched, lowres, k), matched, atol=1e-5)


def test_match_bins_of_an_integer_image_stays_in_its_type():
    rng = np.random.default_rng(3)
    lowres = rng.integers(400, 4000, (1, 6, 5)).astype(np.uint16)
    upscaled = np.clip(np.repeat(np.repeat(lowres, 4, 1), 4, 2) + rng.integers(-300, 300, (1, 24, 20)), 0, None)
    matched = match_bins(upscaled.astype(np.uint16), lowres, 4)
    assert matched.dtype == np.uint16
    np.testing.assert_allclose(bin_mean(matched.astype(np.float32), 4), lowres, atol=0.5)


def test_match_bins_never_moves_away_from_the_truth():
    """Projection onto a set holding the truth: each image's error can only fall, and does when its bins are off."""
    rng = np.random.default_rng(2)
    truth = _hr((1, 48, 40), seed=3)
    lowres = bin_mean(truth, 4)
    for trial in range(20):
        guess = truth + rng.normal(0, 0.1, truth.shape).astype(np.float32) + rng.normal(0, 0.05)
        before = np.mean((guess - truth) ** 2)
        after = np.mean((match_bins(guess, lowres, 4) - truth) ** 2)
        assert after < before
    assert np.max(np.abs(match_bins(truth, lowres, 4) - truth)) < 1e-6


def test_match_bins_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="is not 4 x"):
        match_bins(np.zeros((1, 40, 40), np.float32), np.zeros((1, 10, 9), np.float32), 4)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_bin_keeps_the_mean_and_crops_the_remainder(k):
    image = _hr((1, 8 * 5 + 3, 8 * 4 + 1))
    out = bin_mean(image, k)
    assert out.shape == (1, (8 * 5 + 3) // k, (8 * 4 + 1) // k)
    cropped = crop_to_multiple(image, k)
    assert out.mean() == pytest.approx(cropped.mean(), rel=1e-6)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_bicubic_shape_and_constant(k):
    image = _hr((3, 64, 48))
    out = bicubic_down(image, k)
    assert out.shape == (3, 64 // k, 48 // k) and out.dtype == np.float32
    flat = bicubic_down(np.full((1, 32, 32), 0.25, np.float32), k)
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)


def test_blur_keeps_mean_and_smooths():
    image = _hr((1, 64, 64))
    blurred = gaussian_blur(image, 2.0)
    assert blurred.shape == image.shape
    assert blurred.mean() == pytest.approx(image.mean(), rel=1e-3)
    assert blurred.std() < image.std() / 3
    assert gaussian_blur(image, 0.0) is image


def test_poisson_variance_is_mean_over_peak():
    level, peak = 0.4, 50.0
    image = np.full((1, 200, 200), level, np.float32)
    noisy = poisson_gaussian_noise(image, peak, 0.0, np.random.default_rng(0))
    assert noisy.mean() == pytest.approx(level, abs=0.005)
    assert noisy.var() == pytest.approx(level / peak, rel=0.05)
    # intensities are whole photon counts over the peak
    np.testing.assert_allclose(noisy * peak, np.round(noisy * peak), atol=1e-3)


def test_gaussian_read_noise_statistics():
    image = np.full((1, 200, 200), 0.3, np.float32)
    noisy = poisson_gaussian_noise(image, 0.0, 0.05, np.random.default_rng(1))
    assert noisy.mean() == pytest.approx(0.3, abs=0.002)
    assert noisy.std() == pytest.approx(0.05, rel=0.03)


def test_poisson_and_gaussian_variances_add():
    image = np.full((1, 200, 200), 0.5, np.float32)
    noisy = poisson_gaussian_noise(image, 100.0, 0.04, np.random.default_rng(2))
    assert noisy.var() == pytest.approx(0.5 / 100 + 0.04 ** 2, rel=0.05)


def test_negative_intensities_carry_no_photons():
    image = np.full((1, 20, 20), -0.2, np.float32)
    noisy = poisson_gaussian_noise(image, 30.0, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(noisy, image)


NOISY = DegradationConfig(method="bin", scale=4, blur_sigma=(0.5, 2.0), poisson_peak=(10.0, 100.0), gaussian_sigma=(0.0, 0.05))


@pytest.mark.parametrize("method", ["bin", "bicubic"])
def test_degrade_is_reproducible_from_the_seed(method):
    config = DegradationConfig(method=method, scale=4, blur_sigma=(0.5, 2.0), poisson_peak=(10.0, 100.0),
                               gaussian_sigma=(0.0, 0.05))
    hr = _hr((1, 64, 64))
    a = degrade(hr, config, np.random.default_rng(123))
    b = degrade(hr, config, np.random.default_rng(123))
    c = degrade(hr, config, np.random.default_rng(124))
    assert a.shape == (1, 16, 16)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_degrade_does_not_touch_global_random_state():
    np.random.seed(5)
    before = np.random.random()
    np.random.seed(5)
    degrade(_hr((1, 32, 32)), NOISY, np.random.default_rng(0))
    assert np.random.random() == before


def test_degrade_without_randomness_is_plain_binning():
    hr = _hr((2, 32, 32))
    lr = degrade(hr, DegradationConfig.acquisition(method="bin", scale=4), np.random.default_rng(0))
    np.testing.assert_array_equal(lr, bin_mean(hr, 4))


def test_degrade_random_blur_only_differs_between_seeds():
    config = DegradationConfig(method="bin", scale=2, blur_sigma=(0.5, 3.0))
    hr = _hr((1, 32, 32))
    a = degrade(hr, config, np.random.default_rng(0))
    assert not np.array_equal(a, degrade(hr, config, np.random.default_rng(1)))
    np.testing.assert_array_equal(a, degrade(hr, config, np.random.default_rng(0)))


def test_degraded_fraction_zero_is_plain_binning_even_with_noise_configured():
    config = DegradationConfig(method="bin", scale=4, blur_sigma=(0.5, 2.0), poisson_peak=(10.0, 100.0),
                               gaussian_sigma=(0.0, 0.05), degraded_fraction=0.0)
    hr = _hr((1, 32, 32))
    for seed in range(5):
        np.testing.assert_array_equal(degrade(hr, config, np.random.default_rng(seed)), bin_mean(hr, 4))


def test_degraded_fraction_sets_the_share_of_blurred_noisy_patches():
    config = DegradationConfig(method="bin", scale=4, blur_sigma=(0.5, 2.0), poisson_peak=(10.0, 100.0),
                               gaussian_sigma=(0.0, 0.05), degraded_fraction=0.3)
    hr = _hr((1, 32, 32))
    clean = bin_mean(hr, 4)
    degraded = [not np.array_equal(degrade(hr, config, np.random.default_rng(seed)), clean) for seed in range(400)]
    assert 0.22 < np.mean(degraded) < 0.38


# --- a low-magnification acquisition --------------------------------------------------------

def test_optical_blur_follows_the_documented_formula():
    from msrgan_core.degradation import optical_blur_sigma

    sigma = optical_blur_sigma(na_high=0.95, na_low=0.3, wavelength_um=0.46, pixel_size_um=0.16)
    assert sigma == pytest.approx(0.21 * 0.46 * np.sqrt(1 / 0.3 ** 2 - 1 / 0.95 ** 2) / 0.16)
    assert sigma == pytest.approx(1.91, abs=0.01)
    # the optics in a config give a fixed blur; half of them is an error naming the rest
    config = DegradationConfig(na_high=0.95, na_low=0.3, wavelength_um=0.46, pixel_size_um=0.16)
    assert config.blur_sigma == (sigma, sigma)
    from msrgan_core.config import ConfigError

    with pytest.raises(ConfigError, match="pixel_size_um"):
        DegradationConfig(na_high=0.95, na_low=0.3, wavelength_um=0.46)
    with pytest.raises(ConfigError, match="below na_high"):
        DegradationConfig(na_high=0.3, na_low=0.95, wavelength_um=0.46, pixel_size_um=0.16)
    # optics in the wrong unit or beyond any objective, and optics beside a blur range, are refused
    optics = dict(na_high=0.95, na_low=0.3, wavelength_um=0.46, pixel_size_um=0.16)
    for wrong, says in [({"wavelength_um": 460}, "nanometres"), ({"pixel_size_um": 6.5}, "unmagnified"),
                        ({"na_high": 1.8}, "beyond any objective"), ({"blur_sigma": (0.5, 3.0)}, "not both")]:
        with pytest.raises(ConfigError, match=says):
            DegradationConfig(**dict(optics, **wrong))
    assert DegradationConfig(**dict(optics, blur_sigma=config.blur_sigma)).blur_sigma == (sigma, sigma)  # as saved


def test_a_photon_range_from_zero_is_refused():
    """Drawn log-uniformly, [0, 1000] is mostly under 10 photons: not 'noise-free to 1000'."""
    from msrgan_core.config import ConfigError

    with pytest.raises(ConfigError, match="noise_free_fraction"):
        DegradationConfig(poisson_peak=(0.0, 1000.0))
    assert DegradationConfig(poisson_peak=(0.0, 0.0)).poisson_peak == (0.0, 0.0)  # no shot noise at all


def test_defaults_span_a_real_acquisition_and_acquisition_fixes_one():
    config = DegradationConfig()
    assert config.poisson_peak[0] <= 30 and config.poisson_peak[1] >= 1e5 and config.blur_sigma[1] >= 2
    fixed = DegradationConfig.acquisition(blur=1.5, photons=100.0, read_noise=0.01)
    hr = _hr((1, 64, 64))
    lr = degrade(hr, fixed, np.random.default_rng(0))
    clean = bin_mean(gaussian_blur(hr, 1.5), 4)
    noise = lr - clean
    expected = np.sqrt(np.clip(clean, 0, None).mean() / 100.0 + 0.01 ** 2)
    assert 0.7 * expected < noise.std() < 1.3 * expected  # shot noise of 100 photons plus read noise


def test_noise_free_share_background_and_shift():
    hr = _hr((1, 32, 32))
    config = DegradationConfig(blur_sigma=(0.0, 0.0), poisson_peak=(100.0, 100.0), gaussian_sigma=(0.0, 0.0),
                               noise_free_fraction=0.5)
    clean = [np.array_equal(degrade(hr, config, np.random.default_rng(s)), bin_mean(hr, 4)) for s in range(200)]
    assert 0.4 < np.mean(clean) < 0.6
    dark = np.zeros((1, 32, 32), np.float32)  # background light brings shot noise to where there is no signal
    lit = DegradationConfig.acquisition(photons=100.0)
    assert np.all(degrade(dark, lit, np.random.default_rng(1)) == 0)
    lit = DegradationConfig(blur_sigma=(0.0, 0.0), poisson_peak=(100.0, 100.0), gaussian_sigma=(0.0, 0.0),
                            background=(0.1, 0.1))
    noisy = degrade(dark, lit, np.random.default_rng(1))
    assert abs(noisy.mean()) < 0.02 and noisy.std() > 0.005
    moved = DegradationConfig(blur_sigma=(0.0, 0.0), poisson_peak=(0.0, 0.0), gaussian_sigma=(0.0, 0.0), shift=1.0)
    assert not np.allclose(degrade(hr, moved, np.random.default_rng(2)), bin_mean(hr, 4))
