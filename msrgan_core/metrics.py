"""Image-quality metrics and the classical upscaling baselines they are compared against."""
from __future__ import annotations

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


def image_metrics(truth: np.ndarray, test: np.ndarray) -> Dict[str, float]:
    """PSNR, SSIM (data range = the true image's range) and NRMSE."""
    data_range = float(truth.max() - truth.min()) or 1.0
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
        np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((w * scale, h * scale), Image.LANCZOS))
        for plane in image
    ]
    return np.stack(planes).astype(np.float32)


BASELINES: Dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "nearest": upscale_nearest,
    "bicubic": upscale_bicubic,
    "lanczos": upscale_lanczos,
}
