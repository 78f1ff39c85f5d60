"""The mSRGAN perceptual loss: ``w_pixel * pixel + w_content * content + w_adv * adversarial``,
plus ``w_texture * texture`` (the local amount of fine detail, output against truth)."""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from .config import TEXTURE_WINDOW, LossConfig
from .metrics import high_frequency_cutoff


def pixel_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean squared (``mse``) or absolute (``l1``) error between output and target."""
    return F.mse_loss(sr, hr) if kind == "mse" else F.l1_loss(sr, hr)


def content_loss(sr: torch.Tensor, hr: torch.Tensor, features: Callable) -> torch.Tensor:
    """Mean squared error between deep features of output and (fixed) target."""
    with torch.no_grad():
        target = features(hr)
    return F.mse_loss(features(sr), target)


def fine_detail(x: torch.Tensor, scale: int) -> torch.Tensor:
    """RMS of ``x``'s detail finer than half the low-resolution Nyquist frequency, per window of
    ``TEXTURE_WINDOW`` x ``TEXTURE_WINDOW`` low-resolution pixels.

    The detail is ``x`` less its Gaussian blur whose response is one half at the quality grid's
    high-frequency cutoff (:func:`~msrgan_core.metrics.high_frequency_cutoff`: sigma 3 pixels at
    4x); ``x`` is ``(N, C, H, W)``, the result ``(N, C, H // w, W // w)`` with ``w = TEXTURE_WINDOW *
    scale``.
    """
    sigma = math.sqrt(math.log(2) / 2) / (math.pi * high_frequency_cutoff(scale))
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1)
    blurred = F.pad(x, (radius,) * 4, mode="replicate")
    blurred = F.conv2d(blurred, kernel.view(-1, 1, 1, len(taps)), groups=x.shape[1])
    blurred = F.conv2d(blurred, kernel.view(-1, 1, len(taps), 1), groups=x.shape[1])
    return torch.sqrt(F.avg_pool2d((x - blurred) ** 2, TEXTURE_WINDOW * scale) + 1e-8)


def texture_loss(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Mean absolute difference of :func:`fine_detail` between output and (fixed) target.

    It asks for as much fine detail as the truth has in each small window, not for where it
    lies (the pixel loss asks that, and a noisy or blurred input cannot tell it): the output
    neither smooths texture away nor draws more than there is.
    """
    with torch.no_grad():
        target = fine_detail(hr, scale)
    return F.l1_loss(fine_detail(sr, scale), target)


def adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's loss: the discriminator should call its outputs real."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Real patches are real (1), generated ones fake (0)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def perceptual_loss(
    sr: torch.Tensor,
    hr: torch.Tensor,
    fake_logits: torch.Tensor,
    features: Callable,
    config: LossConfig,
    pixel_kind: str,
    scale: int,
) -> Dict[str, torch.Tensor]:
    """The generator's named loss terms and their weighted ``total``.

    Parameters
    ----------
    sr, hr : torch.Tensor, shape (N, C, H, W)
        Generated and true high-resolution patches.
    fake_logits : torch.Tensor, shape (N,)
        The discriminator's logits for ``sr``.
    features : callable
        The content-loss feature extractor.
    pixel_kind : str
        :func:`pixel_loss`'s ``kind``.
    scale : int
        The upscaling factor (:func:`texture_loss`'s windows are low-resolution pixels).
    """
    terms = {
        "pixel": pixel_loss(sr, hr, pixel_kind),
        "content": content_loss(sr, hr, features),
        "adversarial": adversarial_loss(fake_logits),
    }
    terms["total"] = (
        config.w_pixel * terms["pixel"] + config.w_content * terms["content"] + config.w_adv * terms["adversarial"]
    )
    if config.w_texture > 0:
        terms["texture"] = texture_loss(sr, hr, scale)
        terms["total"] = terms["total"] + config.w_texture * terms["texture"]
    return terms
