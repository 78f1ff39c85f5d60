"""Image-quality metrics and the classical upscaling baselines they are compared against."""
from __future__ import annotations

import warnings
from typing import Callable, Dict

import numpy as np
from PIL import Image
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize


def psnr(truth: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB; ``data_range`` is the true image's intensity range."""
    return float(peak_signal_noise_ratio(truth.astype(np.float64), test.astype(np.float64), data_range=data_range))


def ssim(truth: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """Mean structural similarity of ``(Y, X)`` or ``(C, Y, X)`` images (channels averaged)."""
    truth, test = np.asarray(truth, np.float64), np.asarray(test, np.float64)
    if truth.ndim == 3:
        return float(np.mean([ssim(t, s, data_range) for t, s in zip(truth, test)]))
    return float(structural_similarity(truth, test, data_range=data_range))


def nrmse(truth: np.ndarray, test: np.ndarray) -> float:
    """Root mean squared error divided by the true image's Euclidean norm (scikit-image's default)."""
    return float(normalized_root_mse(truth.astype(np.float64), test.astype(np.float64)))


def true_range(truth: np.ndarray) -> float:
    """The data range every figure here is measured on: the true image's intensity range (1 if flat)."""
    return float(truth.max() - truth.min()) or 1.0


def image_metrics(truth: np.ndarray, test: np.ndarray) -> Dict[str, float]:
    """PSNR, SSIM (data range = :func:`true_range`) and NRMSE of a ``(Y, X)`` image; of a
    ``(C, Y, X)`` one, each channel's on its own range, averaged over the channels that are not
    flat (under one range a dim stain's errors would hardly count)."""
    if truth.ndim == 3:
        varying = [c for c in range(len(truth)) if truth[c].max() > truth[c].min()] or list(range(len(truth)))
        each = [image_metrics(truth[c], test[c]) for c in varying]  # a flat channel has no range to score on
        return {key: float(np.mean([m[key] for m in each])) for key in each[0]}
    data_range = true_range(truth)
    return {"psnr": psnr(truth, test, data_range), "ssim": ssim(truth, test, data_range), "nrmse": nrmse(truth, test)}


def _resize_planes(image: np.ndarray, scale: int, order: int) -> np.ndarray:
    c, h, w = image.shape
    return resize(image.astype(np.float32), (c, h * scale, w * scale), order=order, mode="edge",
                  anti_aliasing=False, preserve_range=True).astype(np.float32)


def upscale_nearest(image: np.ndarray, scale: int) -> np.ndarray:
    """Pixel replication of a ``(C, Y, X)`` image."""
    return np.repeat(np.repeat(image.astype(np.float32), scale, axis=1), scale, axis=2)


def upscale_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic interpolation (scikit-image, order 3) of a ``(C, Y, X)`` image."""
    return _resize_planes(image, scale, order=3)


def upscale_lanczos(image: np.ndarray, scale: int) -> np.ndarray:
    """Lanczos-3 interpolation (Pillow, float mode) of a ``(C, Y, X)`` image."""
    c, h, w = image.shape
    planes = [
        np.asarray(Image.fromarray(plane.astype(np.float32)).resize((w * scale, h * scale), Image.LANCZOS))
        for plane in image
    ]
    return np.stack(planes).astype(np.float32)


def noise_levels(image: np.ndarray) -> np.ndarray:
    """Per channel of a ``(C, Y, X)`` image, its noise's standard deviation as scikit-image's wavelet
    ``estimate_sigma`` reads it (mostly the background's: fine texture counts a little too)."""
    return np.array([noise_sigma(np.asarray(channel, np.float64)) for channel in image])


def noise_sigma(plane: np.ndarray) -> float:
    """scikit-image's wavelet ``estimate_sigma`` of one plane; 0 for a flat plane (it has no detail
    to read noise from, where scikit-image gives NaN and a warning)."""
    from skimage.restoration import estimate_sigma

    if np.ptp(plane) == 0:  # exactly flat: the wavelet reads rounding (1e-32), not noise
        return 0.0
    with warnings.catch_warnings():  # detail that is all zero but for the edges: no noise
        warnings.simplefilter("ignore", RuntimeWarning)
        sigma = float(estimate_sigma(plane))
    return 0.0 if np.isnan(sigma) else sigma


def upscale_denoised_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    """Non-local means (scikit-image, noise level estimated per channel) then bicubic: the
    classical answer to a noisy low-resolution image."""
    from skimage.restoration import denoise_nl_means

    planes = []
    for plane in np.asarray(image, np.float32):
        sigma = noise_sigma(plane)
        if sigma > 0:
            plane = denoise_nl_means(plane, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                     fast_mode=True, preserve_range=True).astype(np.float32)
        planes.append(plane)
    return upscale_bicubic(np.stack(planes), scale)


BASELINES: Dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "nearest": upscale_nearest,
    "bicubic": upscale_bicubic,
    "lanczos": upscale_lanczos,
    "nlm+bicubic": upscale_denoised_bicubic,
}
#: the classical methods a model must beat (nearest is shown, but never the best)
CLASSICAL = ("bicubic", "lanczos", "nlm+bicubic")


# --- measures of sharpness, texture and segmentation (benchmarks/quality.py) ---------------

def high_frequency_cutoff(scale: int) -> float:
    """Half the low-resolution Nyquist frequency, in cycles per high-resolution pixel."""
    return 0.25 / scale


def above_cutoff(shape: tuple, cutoff: float) -> np.ndarray:
    """Boolean mask of the ``np.fft.fft2`` frequencies of a ``shape`` image above ``cutoff``."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return np.hypot(fy, fx) > cutoff


def high_frequency_power(image: np.ndarray, cutoff: float) -> float:
    """Spectral power of a ``(Y, X)`` image above ``cutoff`` cycles per pixel (Hann-windowed)."""
    image = np.asarray(image, np.float64)
    window = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    spectrum = np.abs(np.fft.fft2((image - image.mean()) * window)) ** 2
    return float(spectrum[above_cutoff(image.shape, cutoff)].sum())


def high_frequency_ratio(truth: np.ndarray, test: np.ndarray, scale: int) -> float:
    """Power above :func:`high_frequency_cutoff`, of ``test`` over ``truth``: 1.0 is as sharp
    as the truth."""
    cutoff = high_frequency_cutoff(scale)
    return high_frequency_power(test, cutoff) / high_frequency_power(truth, cutoff)


def segment_nuclei(image: np.ndarray, smooth: float = 2.0, min_distance: int = 7, min_area: int = 30) -> np.ndarray:
    """One fixed classical recipe: Gaussian smoothing, Otsu, hole filling, distance watershed.

    Returns a ``(Y, X)`` label image. The same recipe serves every method compared.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    smoothed = gaussian(np.asarray(image, np.float64), sigma=smooth, preserve_range=True)
    foreground = ndimage.binary_fill_holes(smoothed > threshold_otsu(smoothed))
    foreground = remove_small_objects(foreground, min_area)
    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(foreground)[0], exclude_border=False)
    markers = np.zeros(distance.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground)


def matched_f1(truth_labels: np.ndarray, test_labels: np.ndarray, iou_threshold: float = 0.5) -> float:
    """F1 of object detection: a true and a found object match when their IoU exceeds the threshold.

    With a threshold of 0.5 or more each object matches at most one other, so matches are unique.
    """
    truth_ids = np.unique(truth_labels)
    test_ids = np.unique(test_labels)
    n_truth, n_test = int((truth_ids > 0).sum()), int((test_ids > 0).sum())
    if n_truth == 0 and n_test == 0:
        return 1.0
    pairs = np.stack([truth_labels.ravel(), test_labels.ravel()], axis=1)
    pairs = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0)]
    combos, overlap = np.unique(pairs, axis=0, return_counts=True)
    area_truth = dict(zip(*np.unique(truth_labels, return_counts=True)))
    area_test = dict(zip(*np.unique(test_labels, return_counts=True)))
    union = np.array([area_truth[a] + area_test[b] for a, b in combos], np.float64) - overlap
    iou = overlap / union if len(combos) else np.zeros(0)
    tp = int((iou > iou_threshold).sum())
    return 2 * tp / (n_truth + n_test)


def texture_error(truth: np.ndarray, test: np.ndarray, labels: np.ndarray) -> float:
    """Mean relative error of the within-object intensity standard deviation over the objects of ``labels``."""
    from scipy import ndimage

    ids = np.unique(labels)
    ids = ids[ids > 0]
    std_truth = np.asarray(ndimage.standard_deviation(np.asarray(truth, np.float64), labels, ids))
    std_test = np.asarray(ndimage.standard_deviation(np.asarray(test, np.float64), labels, ids))
    keep = std_truth > 0
    return float(np.mean(np.abs(std_test[keep] - std_truth[keep]) / std_truth[keep]))
