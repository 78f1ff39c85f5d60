"""The mSRGAN networks: two generators (SRResNet, and a compact one) and SRGAN's VGG-style discriminator."""
from __future__ import annotations

import functools
import itertools
import math
from typing import Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiscriminatorConfig, GeneratorConfig
from .streaming import RowPass


#: elements in the widest SIMD vector of bf16 (AVX-512); torch's CPU PReLU is vectorised only over
#: rows whose length it divides
BF16_VECTOR = 32


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.prelu(x, weight)`` (one slope per channel, dim 1), as autocast computes it, fast in bf16
    on the CPU, where torch's kernel is vectorised only if the channels fill whole vectors.

    Channels-last, a 48-channel activation is 48-element rows, and PReLU took 10 x longer than on
    64 channels (a third of a bf16 upscale). The same memory read as rows of ``lcm(channels, 32)``
    elements, with the slopes repeated to match, is the same computation, vectorised: the same
    numbers to the bit. Blocks whose pixels do not fill such rows (odd rows of an odd width) run
    torch's kernel: on a 2047-pixel-wide image they cost nothing measurable.
    """
    if x.device.type != "cpu" or x.dtype != torch.bfloat16:
        return F.prelu(x, weight)
    channels = x.shape[1] if x.dim() > 1 else 1
    slopes = weight.to(x.dtype).expand(channels)  # as autocast rounds them
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        n, _, h, w = x.shape
        period = math.lcm(channels, BF16_VECTOR)
        if x.numel() % period == 0:
            rows = x.permute(0, 2, 3, 1).reshape(-1, period)  # a view of the memory as it lies
            out = F.prelu(rows, slopes.repeat(period // channels))
            return out.view(n, h, w, channels).permute(0, 3, 1, 2)
    return F.prelu(x, slopes)


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same parameters and state dict) by :func:`prelu`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prelu(x, self.weight)


class ResidualBlock(nn.Module):
    """conv3 - (BN) - PReLU - conv3 - (BN), plus the identity."""

    def __init__(self, n_features: int, batch_norm: bool) -> None:
        super().__init__()
        layers = [nn.Conv2d(n_features, n_features, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(n_features))
        layers += [PReLU(n_features), nn.Conv2d(n_features, n_features, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(n_features))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """SRResNet (``architecture = "srresnet"``): head conv, residual blocks with a global skip,
    sub-pixel upsampling, tail conv.

    Input ``(N, in_channels, H, W)`` normalised intensities; output
    ``(N, out_channels, H * scale, W * scale)`` on the same scale.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        f = config.n_features
        self.head = nn.Sequential(nn.Conv2d(config.in_channels, f, 9, padding=4), PReLU(f))
        body = [ResidualBlock(f, config.batch_norm) for _ in range(config.n_blocks)]
        body.append(nn.Conv2d(f, f, 3, padding=1))
        if config.batch_norm:
            body.append(nn.BatchNorm2d(f))
        self.body = nn.Sequential(*body)
        upsample = []
        for _ in range(int(math.log2(config.scale))):
            upsample += [nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2), PReLU(f)]
        self.upsample = nn.Sequential(*upsample)
        self.tail = nn.Conv2d(f, config.out_channels, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.head(x)
        hidden = hidden + self.body(hidden)
        if not torch.is_grad_enabled() and tail_in_parts(x.device.type) and max(hidden.shape[-2:]) > TAIL_PART:
            out = self._upsample_tail_in_parts(hidden)
        else:
            out = self.upsample_tail(hidden)
        if self.config.input_skip:
            with full_precision(x):
                out = out + F.interpolate(x.float(), scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return out

    def upsample_tail(self, hidden: torch.Tensor) -> torch.Tensor:
        """The upsampling stages and the tail, on the body's output (input resolution, ``n_features``)."""
        *stages, conv, shuffle, last_prelu = self.upsample
        # The last stage's shuffle and PReLU and the tail (9 x 9 to few channels at output
        # resolution, slow on the CPU) run as one equivalent convolution on the unshuffled
        # features and a shuffle of its few output channels: the same function and parameters,
        # twice as fast. oneDNN prefers channels-last input; without autograd the contiguous
        # copy is freed once converted. (Upscaler keeps all weights channels-last.)
        s = shuffle.upscale_factor
        for layer in stages:
            hidden = layer(hidden)
        unshuffled = prelu(conv(hidden), last_prelu.weight.repeat_interleave(s * s))
        unshuffled = unshuffled.contiguous(memory_format=torch.channels_last)
        out = conv_to_few_channels(unshuffled, fold_tail(self.tail.weight, s), self.tail.bias.repeat_interleave(s * s))
        return F.pixel_shuffle(out.contiguous(), s)

    def _upsample_tail_in_parts(self, hidden: torch.Tensor) -> torch.Tensor:
        """:meth:`upsample_tail` on squares of :data:`TAIL_PART` pixels with :data:`TAIL_HALO` of
        context, which covers its receptive field: the same numbers, in a fraction of the memory
        (its activations, 4 x ``n_features`` channels at half the output resolution, are most of the
        network's), so a CPU tile can be as large as the body's activations allow."""
        n, _, h, w = hidden.shape
        s = self.config.scale
        out = hidden.new_empty((n, self.config.out_channels, h * s, w * s))
        for y0, x0 in itertools.product(range(0, h, TAIL_PART), range(0, w, TAIL_PART)):
            y1, x1 = min(h, y0 + TAIL_PART), min(w, x0 + TAIL_PART)
            sy, sx = max(0, y0 - TAIL_HALO), max(0, x0 - TAIL_HALO)
            part = self.upsample_tail(hidden[:, :, sy:min(h, y1 + TAIL_HALO), sx:min(w, x1 + TAIL_HALO)])
            out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = part[:, :, (y0 - sy) * s:(y1 - sy) * s, (x0 - sx) * s:(x1 - sx) * s]
        return out

    def stream(self, x: torch.Tensor, rows: int) -> Iterator[Tuple[int, torch.Tensor]]:
        """:meth:`forward` of ``x`` in full-width strips of about ``rows`` input rows
        (:class:`~msrgan_core.streaming.RowPass`): ``(first input row, output rows)`` pairs that
        cover the output from top to bottom, the same numbers up to float rounding. Only the
        upsampling recomputes context: :data:`TAIL_HALO` rows on either side of a strip."""
        run = RowPass(x)
        lag = self.config.n_blocks * 2 + 1 + self.head[0].padding[0] + TAIL_HALO
        skip = None
        if self.config.input_skip:
            skip = BicubicRows(x, bicubic_kernel(self.config.scale).repeat(x.shape[1], 1, 1, 1).to(x.device, x.dtype))
        for strip in run.strips(max(int(rows), lag + TAIL_HALO + 1)):  # the first strip reaches the output
            head = run.through(self.head, strip)
            hidden = head
            for module in self.body:  # residual blocks, then a convolution (and its batch norm)
                if isinstance(module, ResidualBlock):
                    hidden = run.add(module, hidden, run.through(module.body, hidden))
                else:
                    hidden = run.through([module], hidden)
            hidden = run.add(self.body, head, hidden)
            del strip, head  # the upsampling's parts need the room
            start, out = run.window(self.upsample, hidden, TAIL_HALO, self._upsample_tail_in_parts)
            if skip is not None:
                out = out + F.pixel_shuffle(skip.unshuffled(start, start + out.shape[2] // self.config.scale),
                                            self.config.scale)
            yield start, out


#: on the CPU without autograd, SRResNet's upsampling stages and tail run on squares of the body's
#: output of this many input pixels (see ``Generator._upsample_tail_in_parts``)
TAIL_PART = 64
#: context of a square: the receptive radius of the stages and the tail, in input pixels. For any
#: scale, 3 x 3 convolutions at 1x, 2x, 4x ... resolution see 1 + 1/2 + 1/4 ... < 2 pixels and the
#: 9 x 9 tail at output resolution 4 / scale <= 2: 3 cover them
TAIL_HALO = 3


def tail_in_parts(device_type: str) -> bool:
    """Whether SRResNet's upsampling runs in parts (at inference) on this device: on the CPU, where
    memory is short; a GPU takes whole tiles, batched."""
    return device_type == "cpu"


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


def conv_to_few_channels(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, kernel, bias, padding=k // 2)`` for a k x k kernel to few output channels.

    On the CPU without autograd (inference): one 1 x 1 convolution to every (tap, output channel)
    pair, then the k * k shifted sums of its taps. The same numbers up to float rounding, twice as
    fast for SRResNet's folded tail (256 channels to 4, 5 x 5): a convolution to 4 channels ran at
    54 GFLOP/s, the 1 x 1 convolution to 100 channels and the sums at 114 (2 cores of an AMD EPYC).
    Elsewhere the convolution itself.
    """
    o, c, k, _ = kernel.shape
    r = k // 2
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return F.conv2d(x, kernel, bias, padding=r)
    taps = F.conv2d(x.contiguous(memory_format=torch.channels_last), kernel.permute(2, 3, 0, 1).reshape(k * k * o, c, 1, 1))
    n, _, h, w = taps.shape
    taps = F.pad(taps, (r, r, r, r)).permute(0, 2, 3, 1).reshape(n, h + 2 * r, w + 2 * r, k, k, o)  # N Y X u v O
    out = bias.expand(n, h, w, o).clone()
    for u, v in itertools.product(range(k), range(k)):
        out += taps[:, u:u + h, v:v + w, u, v]
    return out.permute(0, 3, 1, 2)


class CompactGenerator(nn.Module):
    """``architecture = "compact"``: every convolution at input resolution.

    ``n_blocks`` 3 x 3 convolutions of ``n_features`` with PReLU, a 3 x 3 tail to
    ``out_channels * scale**2`` channels and a pixel shuffle (ESPCN's sub-pixel tail), plus the
    bicubic upsampling of the input (:func:`bicubic_kernel`, itself a convolution at input
    resolution). It costs about ``9 * n_blocks * n_features**2`` multiply-adds per input pixel:
    for 12 x 48, 0.24 M, against SRResNet 16 x 64's 2 M, half of which run at 2x and 4x resolution.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        f, s = config.n_features, config.scale
        layers = [nn.Conv2d(config.in_channels, f, 3, padding=1), PReLU(f)]
        for _ in range(config.n_blocks - 1):
            layers += [nn.Conv2d(f, f, 3, padding=1), PReLU(f)]
        self.body = nn.Sequential(*layers)
        self.tail = nn.Conv2d(f, config.out_channels * s * s, 3, padding=1)
        if config.input_skip:  # derived from the scale, so not part of the weights (persistent=False)
            self.register_buffer("skip_kernel", bicubic_kernel(s).repeat(config.in_channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tail(self.body(x))
        if self.config.input_skip:
            out = out + BicubicRows(x, self.skip_kernel).unshuffled(0, x.shape[2])
        return F.pixel_shuffle(out, self.config.scale)

    def stream(self, x: torch.Tensor, rows: int) -> Iterator[Tuple[int, torch.Tensor]]:
        """:meth:`forward` of ``x`` in full-width strips of about ``rows`` input rows, with nothing
        computed twice (:class:`~msrgan_core.streaming.RowPass`): ``(first input row, output
        rows)`` pairs that cover the output from top to bottom. The same numbers up to float rounding."""
        run = RowPass(x)
        layers = [*self.body, self.tail]
        skip = BicubicRows(x, self.skip_kernel) if self.config.input_skip else None
        convolutions = sum(isinstance(layer, nn.Conv2d) for layer in layers)
        for strip in run.strips(max(int(rows), convolutions + 1)):  # the first strip reaches the tail
            strip = run.through(layers, strip)
            for start, block in strip.located():
                if skip is not None:
                    block = block + skip.unshuffled(start, start + block.shape[2])
                yield start, F.pixel_shuffle(block, self.config.scale)


class BicubicRows:
    """torch's bicubic upsampling of rows of ``x``, by ``kernel`` (:func:`bicubic_kernel`, one per
    channel), for the whole image or strips of it."""

    def __init__(self, x: torch.Tensor, kernel: torch.Tensor) -> None:
        self.kernel, self.channels = kernel, x.shape[1]
        self.radius = r = kernel.shape[-1] // 2
        self.padded = F.pad(x, (r, r, r, r), mode="replicate")  # torch's bicubic clamps at the border too

    def unshuffled(self, start: int, stop: int) -> torch.Tensor:
        """Input rows ``start`` to ``stop`` upsampled, before the pixel shuffle: ``scale**2`` channels
        each, in fp32 whatever the network's precision (:func:`full_precision`)."""
        rows = self.padded[:, :, start:stop + 2 * self.radius]
        with full_precision(rows):
            return F.conv2d(rows.float(), self.kernel.float(), groups=self.channels)


def full_precision(x: torch.Tensor):
    """A context where ``x``'s device computes in fp32 even inside autocast: for the bicubic skip,
    which carries the image itself: in bf16 it would round the output to 8 significant bits, while
    rounding the network's residual, a fraction of the output, costs far less (docs/benchmarks.md)."""
    return torch.autocast(x.device.type, enabled=False)


@functools.lru_cache(maxsize=None)
def _bicubic_kernel(scale: int) -> torch.Tensor:
    r = 2  # bicubic reads 4 input pixels per axis: 2 on either side of an output sub-pixel's input pixel
    n = 2 * r + 1
    impulse = torch.zeros(1, 1, 4 * n, 4 * n, dtype=torch.float64)
    c = 2 * n  # far from the borders, so clamping plays no part
    impulse[0, 0, c, c] = 1.0
    up = F.interpolate(impulse, scale_factor=scale, mode="bicubic", align_corners=False)[0, 0]
    kernel = torch.zeros(scale * scale, 1, n, n, dtype=torch.float64)
    for ky, kx, dy, dx in itertools.product(range(scale), range(scale), range(-r, r + 1), range(-r, r + 1)):
        # output sub-pixel (ky, kx) of input pixel (c - dy, c - dx) reads the impulse at offset (dy, dx)
        kernel[ky * scale + kx, 0, dy + r, dx + r] = up[(c - dy) * scale + ky, (c - dx) * scale + kx]
    return kernel.float()


def bicubic_kernel(scale: int) -> torch.Tensor:
    """torch's bicubic upsampling by ``scale`` as a ``(scale**2, 1, 5, 5)`` convolution kernel.

    Convolving a replicate-padded ``(N, 1, H, W)`` image with it and pixel-shuffling the result
    by ``scale`` equals ``F.interpolate(x, scale_factor=scale, mode="bicubic")``.
    """
    return _bicubic_kernel(int(scale)).clone()


def build_generator(config: GeneratorConfig) -> nn.Module:
    """The generator that ``config.architecture`` names."""
    return CompactGenerator(config) if config.architecture == "compact" else Generator(config)


def receptive_radius(config: GeneratorConfig) -> int:
    """How far (in input pixels) an output pixel can see: an upper bound of the context it needs.

    SRResNet: head 9x9 (4), two 3x3 per residual block, the body conv (1), one 3x3 per
    upsampling stage at rising resolution (< 2 in all), the tail 9x9 at output resolution
    (4 / scale), and the bicubic input skip (2). Compact: one pixel per 3x3 layer and the tail
    (the skip's 2 lie within them). Rounded up, with one pixel to spare.
    """
    if config.architecture == "compact":
        return config.n_blocks + 1 + 1
    return 4 + 2 * config.n_blocks + 1 + 2 + math.ceil(4 / config.scale) + 2 + 1


def _upsampling_bytes_per_pixel(config: GeneratorConfig) -> int:
    """SRResNet's last upsampling stage: 4 x ``n_features`` channels at ``scale / 2`` times the
    resolution, about three copies of it, per input pixel."""
    return 4 * config.n_features * 3 * config.scale ** 2


def forward_bytes_per_pixel(config: GeneratorConfig, device_type: str = "cpu") -> int:
    """About how many bytes of activations a forward pass without autograd holds per input pixel.

    What sizes an inference tile to a memory budget. Compact: a layer's input, its convolution's
    output and the PReLU's, of ``n_features`` each, and the tail's ``scale**2`` channels twice.
    SRResNet: the same for its body and output, and where its upsampling runs in parts
    (:func:`tail_in_parts`) a fixed cost (:func:`forward_fixed_bytes`), else the upsampling's.
    """
    own = 4 * (3 * config.n_features + 2 * config.scale ** 2 * config.out_channels)
    if config.architecture == "compact" or tail_in_parts(device_type):
        return own
    return own + _upsampling_bytes_per_pixel(config)


def forward_fixed_bytes(config: GeneratorConfig, device_type: str = "cpu") -> int:
    """Activations a forward pass holds whatever the tile's size: SRResNet's upsampling of one part
    (:data:`TAIL_PART` plus :data:`TAIL_HALO` on each side) where it runs in parts; else nothing."""
    if config.architecture == "compact" or not tail_in_parts(device_type):
        return 0
    return _upsampling_bytes_per_pixel(config) * (TAIL_PART + 2 * TAIL_HALO) ** 2


#: an input change that moves no output by more than this (on the normalised 0..1 scale) is ignored
INFLUENCE_THRESHOLD = 1e-4


@torch.no_grad()
def influence_radius(generator: nn.Module, threshold: float = INFLUENCE_THRESHOLD, seeds: int = 3) -> int:
    """The context (input pixels) beyond which the input changes an output pixel by < ``threshold``.

    Measured, not bounded: on test images of blobs and noise (normalised intensities, 0..1), the
    output of the central pixel is computed once from the whole image and once with everything
    farther than ``r`` pixels (in every direction, the worst case of a tile's corner) set to zero,
    as beyond a tile's border. The result is the smallest ``r`` at which the two differ by less
    than ``threshold`` for every test image; :func:`receptive_radius` bounds the search. A 3 x 3
    network's influence fades long before its receptive field ends, so tiles need far less overlap.
    """
    config = generator.config
    bound = receptive_radius(config)
    n = 2 * bound + 1
    s, c = config.scale, bound
    param = next(generator.parameters())
    images = []
    for seed in range(seeds):
        rng = torch.Generator().manual_seed(seed)
        white = torch.rand((1, config.in_channels, n, n), generator=rng)
        blobs = F.avg_pool2d(F.pad(white, (3, 3, 3, 3), mode="reflect"), 7, stride=1)
        images.append((blobs - blobs.min()) / (blobs.max() - blobs.min()) * 0.7 + 0.3 * white)
    x = torch.cat(images).to(param.device, param.dtype)
    was_training = generator.training
    generator.eval()
    try:
        def centre(image: torch.Tensor) -> torch.Tensor:
            return generator(image)[:, :, c * s:(c + 1) * s, c * s:(c + 1) * s]

        full = centre(x)
        yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        distance = torch.maximum((yy - c).abs(), (xx - c).abs()).to(param.device)

        def moved(r: int) -> float:
            return float((centre(x * (distance <= r)) - full).abs().max())

        low, high = 0, bound  # moved(bound) is 0: nothing beyond the receptive field matters
        while low < high:  # smallest r with moved(r) < threshold (the change shrinks as r grows)
            mid = (low + high) // 2
            if moved(mid) < threshold:
                high = mid
            else:
                low = mid + 1
        return low
    finally:
        generator.train(was_training)


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
