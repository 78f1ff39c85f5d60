"""The mSRGAN networks: an SRResNet-style generator and SRGAN's VGG-style discriminator."""
from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiscriminatorConfig, GeneratorConfig


class ResidualBlock(nn.Module):
    """conv3 - (BN) - PReLU - conv3 - (BN), plus the identity."""

    def __init__(self, n_features: int, batch_norm: bool) -> None:
        super().__init__()
        layers = [nn.Conv2d(n_features, n_features, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(n_features))
        layers += [nn.PReLU(n_features), nn.Conv2d(n_features, n_features, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(n_features))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """SRResNet: head conv, residual blocks with a global skip, sub-pixel upsampling, tail conv.

    Input ``(N, in_channels, H, W)`` normalised intensities; output
    ``(N, out_channels, H * scale, W * scale)`` on the same scale.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        f = config.n_features
        self.head = nn.Sequential(nn.Conv2d(config.in_channels, f, 9, padding=4), nn.PReLU(f))
        body = [ResidualBlock(f, config.batch_norm) for _ in range(config.n_blocks)]
        body.append(nn.Conv2d(f, f, 3, padding=1))
        if config.batch_norm:
            body.append(nn.BatchNorm2d(f))
        self.body = nn.Sequential(*body)
        upsample = []
        for _ in range(int(math.log2(config.scale))):
            upsample += [nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(f)]
        self.upsample = nn.Sequential(*upsample)
        self.tail = nn.Conv2d(f, config.out_channels, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        *stages, conv, shuffle, prelu = self.upsample
        # The last stage's shuffle and PReLU and the tail (9 x 9 to few channels at output
        # resolution, slow on the CPU) run as one equivalent convolution on the unshuffled
        # features and a shuffle of its few output channels: the same function and parameters,
        # twice as fast. oneDNN prefers channels-last input; without autograd the contiguous
        # copy is freed once converted. (Upscaler keeps all weights channels-last.)
        s = shuffle.upscale_factor
        hidden = features + self.body(features)
        for layer in stages:
            hidden = layer(hidden)
        unshuffled = F.prelu(conv(hidden), prelu.weight.repeat_interleave(s * s))
        unshuffled = unshuffled.contiguous(memory_format=torch.channels_last)
        kernel = fold_tail(self.tail.weight, s)
        out = F.conv2d(unshuffled, kernel, self.tail.bias.repeat_interleave(s * s), padding=kernel.shape[-1] // 2)
        out = F.pixel_shuffle(out.contiguous(), s)
        if self.config.input_skip:
            out = out + F.interpolate(x, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return out


@functools.lru_cache(maxsize=None)
def _fold_index(k: int, s: int, device: torch.device) -> torch.Tensor:
    """Where each tap of the folded kernel (see :func:`fold_tail`) reads the k x k kernel; k * k = zero.

    Cached per device, so a forward pass (once per tile) copies nothing to the device.
    """
    r = k // 2
    n = 2 * ((r + s - 1) // s) + 1
    index = torch.full((s, s, s, s, n, n), k * k, dtype=torch.long)  # i j p q u v
    for i, j, p, q, u, v in itertools.product(range(s), range(s), range(s), range(s), range(n), range(n)):
        dy, dx = s * (u - n // 2) + p - i, s * (v - n // 2) + q - j
        if abs(dy) <= r and abs(dx) <= r:
            index[i, j, p, q, u, v] = (dy + r) * k + dx + r
    return index.to(device)


def fold_tail(weight: torch.Tensor, s: int) -> torch.Tensor:
    """A k x k convolution after a pixel shuffle by ``s``, as a convolution before it.

    ``weight`` ``(O, C, k, k)`` (k odd, zero padding k // 2) acts on ``pixel_shuffle(x, s)``.
    The returned ``(O * s * s, C * s * s, n, n)`` kernel (padding n // 2) acts on ``x`` itself;
    shuffling its output by ``s`` gives the same result. Output sub-pixel (i, j) of input pixel
    (Y, X) reads sub-pixel (p, q) of input pixel (Y + u, X + v) at offset ``s * u + p - i``.
    Differentiable, so training updates ``weight`` as it is.
    """
    o, c, k, _ = weight.shape
    index = _fold_index(k, s, weight.device)
    padded = torch.cat([weight.flatten(2), weight.new_zeros(o, c, 1)], dim=2)
    folded = padded[:, :, index]  # o c i j p q u v
    return folded.permute(0, 2, 3, 1, 4, 5, 6, 7).reshape(o * s * s, c * s * s, *folded.shape[-2:])


def receptive_radius(config: GeneratorConfig) -> int:
    """How far (in input pixels) an output pixel sees: the context a tile needs on each side.

    Head 9x9 (4), two 3x3 per residual block, the body conv (1), one 3x3 per upsampling stage
    at rising resolution (< 2 in all), the tail 9x9 at output resolution (4 / scale), and the
    bicubic input skip (2). Rounded up, with one pixel to spare.
    """
    return 4 + 2 * config.n_blocks + 1 + 2 + math.ceil(4 / config.scale) + 2 + 1


class Discriminator(nn.Module):
    """SRGAN's discriminator: eight 3x3 convolutions (stride 2 every second), then a classifier.

    Global average pooling before the dense layers lets it take any patch size.
    """

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        f = config.n_features
        widths = [f, f, 2 * f, 2 * f, 4 * f, 4 * f, 8 * f, 8 * f]
        layers = []
        in_ch = config.in_channels
        for i, width in enumerate(widths):
            stride = 2 if i % 2 == 1 else 1
            layers.append(nn.Conv2d(in_ch, width, 3, stride=stride, padding=1))
            if i > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_ch, 16 * f),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(16 * f, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of "real", shape ``(N,)``."""
        return self.classifier(self.features(x)).squeeze(1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
