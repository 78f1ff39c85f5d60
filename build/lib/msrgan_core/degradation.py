"""Synthesise low-resolution images from high-resolution ones.

Pure functions on ``(C, Y, X)`` float arrays; every random draw comes from the explicit
``numpy.random.Generator`` passed in, so a degradation is reproducible from its seed.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from .binning import bin_mean, crop_to_multiple
from .config import DegradationConfig


def bicubic_down(image: np.ndarray, k: int) -> np.ndarray:
    """Anti-aliased bicubic downsampling by ``k`` of a ``(C, Y, X)`` image."""
    image = crop_to_multiple(image, k)
    c, y, x = image.shape
    return resize(image, (c, y // k, x // k), order=3, anti_aliasing=True, preserve_range=True).astype(np.float32)


#: the lateral widefield PSF as a Gaussian: sigma = PSF_SIGMA_FACTOR * wavelength / NA (Zhang et al. 2007)
PSF_SIGMA_FACTOR = 0.21


def optical_blur_sigma(na_high: float, na_low: float, wavelength_um: float, pixel_size_um: float) -> float:
    """The extra blur of a lower-NA objective, as a Gaussian sigma in high-resolution pixels.

    A widefield point-spread function is close to a Gaussian of sigma ``0.21 * wavelength / NA``
    (Zhang, Zerubia and Olivo-Marin, Applied Optics 2007). The high-resolution image already
    carries the high-NA objective's blur; Gaussians add in quadrature, so the low-NA image is
    the high-resolution one blurred by::

        sigma = 0.21 * wavelength * sqrt(1 / na_low**2 - 1 / na_high**2) / pixel_size

    with the emission wavelength and the high-resolution pixel size at the sample in the same
    unit (micrometres). For example Hoechst (0.46 um) at 0.16 um pixels, a 10x/0.3 objective
    beside a 40x/0.95 one: 1.91 pixels.
    """
    if not 0 < na_low < na_high:
        raise ValueError(f"need 0 < na_low < na_high, got na_low={na_low!r} na_high={na_high!r}")
    if wavelength_um <= 0 or pixel_size_um <= 0:
        raise ValueError(f"wavelength and pixel size must be > 0, got {wavelength_um!r} and {pixel_size_um!r}")
    return float(PSF_SIGMA_FACTOR * wavelength_um * np.sqrt(1 / na_low ** 2 - 1 / na_high ** 2) / pixel_size_um)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each channel of a ``(C, Y, X)`` image with a Gaussian of ``sigma`` pixels."""
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma=(0, sigma, sigma), mode="reflect").astype(np.float32)


def subpixel_shift(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Shift each channel of a ``(C, Y, X)`` image by ``(dy, dx)`` pixels (cubic spline, mirrored edges)."""
    if dy == 0 and dx == 0:
        return image
    return ndimage.shift(image, (0, dy, dx), order=3, mode="mirror").astype(np.float32)


def poisson_gaussian_noise(
    image: np.ndarray, peak: float, sigma: float, rng: np.random.Generator, background: float = 0.0
) -> np.ndarray:
    """Shot noise (``peak`` photons at intensity 1) plus Gaussian read noise of ``sigma``.

    ``image`` is a normalised image (about 0..1); negative values carry no photons.
    ``background`` adds that fraction of ``peak`` photons everywhere, as background light does,
    and subtracts its mean again: only its shot noise stays.
    """
    out = image.astype(np.float32, copy=True)
    if peak > 0:
        photons = (np.clip(out, 0, None) + background) * peak
        out += (rng.poisson(photons).astype(np.float32) - photons) / peak
    if sigma > 0:
        out += rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return out


def _uniform(rng: np.random.Generator, bounds: tuple) -> float:
    low, high = bounds
    return float(low) if high <= low else float(rng.uniform(low, high))


def _log_uniform(rng: np.random.Generator, bounds: tuple) -> float:
    low, high = bounds
    if high <= 0:
        return 0.0
    return float(np.exp(rng.uniform(np.log(max(low, 1e-3)), np.log(high))))


def degrade(hr: np.ndarray, config: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """Make the low-resolution counterpart of a normalised ``(C, Y, X)`` high-resolution image.

    For a ``config.degraded_fraction`` share of calls: an optional sub-pixel shift, the optical
    blur, ``bin`` or ``bicubic`` downsampling by ``config.scale``, then (but for a
    ``config.noise_free_fraction`` share) shot noise with background and read noise. The other
    calls are plainly downsampled. The input's Y and X should be multiples of the scale; the
    remainder is cropped. Options left at 0 draw nothing from ``rng``.
    """
    downsample = bin_mean if config.method == "bin" else bicubic_down
    if config.degraded_fraction < 1.0 and rng.random() >= config.degraded_fraction:
        return downsample(hr, config.scale)
    if config.shift > 0:
        hr = subpixel_shift(hr, *rng.uniform(-config.shift, config.shift, size=2))
    lr = downsample(gaussian_blur(hr, _uniform(rng, config.blur_sigma)), config.scale)
    if config.noise_free_fraction > 0 and rng.random() < config.noise_free_fraction:
        return lr
    peak = _log_uniform(rng, config.poisson_peak)
    sigma = _uniform(rng, config.gaussian_sigma)
    background = _uniform(rng, config.background) if config.background[1] > 0 else 0.0
    return poisson_gaussian_noise(lr, peak, sigma, rng, background)
