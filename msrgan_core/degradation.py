"""Synthesise low-resolution images from high-resolution ones.

Pure functions on ``(C, Y, X)`` float arrays; every random draw comes from the explicit
``numpy.random.Generator`` passed in, so a degradation is reproducible from its seed.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from .config import DegradationConfig


def crop_to_multiple(image: np.ndarray, k: int) -> np.ndarray:
    """Crop the bottom/right edges so Y and X are multiples of ``k``."""
    y, x = image.shape[-2] // k * k, image.shape[-1] // k * k
    return image[..., :y, :x]


def bin_mean(image: np.ndarray, k: int) -> np.ndarray:
    """k x k mean binning of a ``(C, Y, X)`` image: a camera with k-times larger pixels."""
    image = crop_to_multiple(image, k)
    c, y, x = image.shape
    return image.reshape(c, y // k, k, x // k, k).mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


def match_bins(upscaled: np.ndarray, lowres: np.ndarray, k: int) -> np.ndarray:
    """Shift each k x k block of ``upscaled`` so that its mean equals its ``lowres`` pixel.

    ``upscaled`` is ``(C, k*Y, k*X)``, ``lowres`` ``(C, Y, X)``. This is the orthogonal projection
    onto the images that :func:`bin_mean` maps to ``lowres``: of all such images it is the
    nearest to ``upscaled``, and it is never farther (in mean squared error) than ``upscaled``
    from any of them, such as the true high-resolution image when ``lowres`` is its binning.
    """
    c, y, x = lowres.shape
    if upscaled.shape != (c, y * k, x * k):
        raise ValueError(f"match_bins: {upscaled.shape} is not {k} x {lowres.shape}")
    residual = lowres - bin_mean(upscaled, k)
    return (upscaled.reshape(c, y, k, x, k) + residual[:, :, None, :, None]).reshape(upscaled.shape)


def bicubic_down(image: np.ndarray, k: int) -> np.ndarray:
    """Anti-aliased bicubic downsampling by ``k`` of a ``(C, Y, X)`` image."""
    image = crop_to_multiple(image, k)
    c, y, x = image.shape
    return resize(image, (c, y // k, x // k), order=3, anti_aliasing=True, preserve_range=True).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each channel of a ``(C, Y, X)`` image with a Gaussian of ``sigma`` pixels."""
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma=(0, sigma, sigma), mode="reflect").astype(np.float32)


def poisson_gaussian_noise(image: np.ndarray, peak: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (``peak`` photons at intensity 1) plus Gaussian read noise of ``sigma``.

    ``image`` is a normalised image (about 0..1); negative values carry no photons.
    """
    out = image.astype(np.float32, copy=True)
    if peak > 0:
        photons = np.clip(out, 0, None) * peak
        out += (rng.poisson(photons).astype(np.float32) - photons) / peak
    if sigma > 0:
        out += rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return out


def _uniform(rng: np.random.Generator, bounds: tuple) -> float:
    low, high = bounds
    return float(low) if high <= low else float(rng.uniform(low, high))


def degrade(hr: np.ndarray, config: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """Make the low-resolution counterpart of a normalised ``(C, Y, X)`` high-resolution image.

    Optional blur (before downsampling), then ``bin`` or ``bicubic`` downsampling by
    ``config.scale``, then optional Poisson-Gaussian noise; blur and noise only for a
    ``config.degraded_fraction`` share of calls. The input's Y and X should be multiples of
    the scale; the remainder is cropped.
    """
    downsample = bin_mean if config.method == "bin" else bicubic_down
    if config.degraded_fraction < 1.0 and rng.random() >= config.degraded_fraction:
        return downsample(hr, config.scale)
    lr = downsample(gaussian_blur(hr, _uniform(rng, config.blur_sigma)), config.scale)
    peak_low, peak_high = config.poisson_peak
    peak = 0.0 if peak_high <= 0 else float(np.exp(rng.uniform(np.log(max(peak_low, 1e-3)), np.log(peak_high))))
    return poisson_gaussian_noise(lr, peak, _uniform(rng, config.gaussian_sigma), rng)
