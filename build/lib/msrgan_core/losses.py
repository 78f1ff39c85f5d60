"""The mSRGAN perceptual loss: ``w_pixel * pixel + w_content * content + w_adv * adversarial``."""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F

from .config import LossConfig


def pixel_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean squared (``mse``) or absolute (``l1``) error between output and target."""
    return F.mse_loss(sr, hr) if kind == "mse" else F.l1_loss(sr, hr)


def content_loss(sr: torch.Tensor, hr: torch.Tensor, features: Callable) -> torch.Tensor:
    """Mean squared error between deep features of output and (fixed) target."""
    with torch.no_grad():
        target = features(hr)
    return F.mse_loss(features(sr), target)


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
    pixel_kind: str = "mse",
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
    """
    terms = {
        "pixel": pixel_loss(sr, hr, pixel_kind),
        "content": content_loss(sr, hr, features),
        "adversarial": adversarial_loss(fake_logits),
    }
    terms["total"] = (
        config.w_pixel * terms["pixel"] + config.w_content * terms["content"] + config.w_adv * terms["adversarial"]
    )
    return terms
