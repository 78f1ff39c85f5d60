"""Generator and discriminator: shapes, the bicubic input skip, the receptive radius, any patch size."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_generator
from msrgan_core import models
from msrgan_core.config import DiscriminatorConfig, GeneratorConfig
from msrgan_core.models import Discriminator, Generator, count_parameters, fold_tail, receptive_radius


def _input(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("in_ch,out_ch", [(1, 1), (2, 2), (3, 3), (1, 2), (3, 1)])
def test_generator_output_shape(scale, in_ch, out_ch):
    generator = tiny_generator(scale=scale, channels=in_ch, out_channels=out_ch, input_skip=in_ch == out_ch)
    with torch.no_grad():
        out = generator(_input((2, in_ch, 7, 11)))
    assert out.shape == (2, out_ch, 7 * scale, 11 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("channels", [1, 3])
def test_input_skip_with_zero_tail_is_exactly_bicubic(scale, channels):
    generator = tiny_generator(scale=scale, channels=channels, n_blocks=2, zero_tail=True)
    x = _input((1, channels, 9, 12))
    with torch.no_grad():
        out = generator(x)
    expected = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert torch.equal(out, expected)


def test_without_input_skip_a_zero_tail_gives_zero():
    generator = tiny_generator(scale=2, input_skip=False, zero_tail=True)
    with torch.no_grad():
        assert torch.equal(generator(_input((1, 1, 8, 8))), torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("scale,in_ch,out_ch", [(2, 1, 1), (4, 1, 1), (4, 2, 3), (8, 3, 1)])
def test_forward_is_the_plain_layer_by_layer_computation(scale, in_ch, out_ch):
    """The folded tail is a speed-up only: the same numbers and gradients as the layers in order."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(scale=scale, in_channels=in_ch, out_channels=out_ch, n_blocks=2,
                                  n_features=8, input_skip=in_ch == out_ch))
    with torch.no_grad():  # a trained-looking tail, not the small initial one
        g.tail.weight.normal_(0, 0.1)
        g.tail.bias.normal_(0, 0.1)
        g.upsample[-1].weight.uniform_(-0.5, 0.5)
    x = torch.rand(2, in_ch, 11, 7)
    target = torch.rand(2, out_ch, 11 * scale, 7 * scale)

    def loss_and_grads(forward):
        g.zero_grad()
        out = forward(x)
        (out - target).square().mean().backward()
        return out.detach(), {name: p.grad.clone() for name, p in g.named_parameters()}

    def plain(x):
        features = g.head(x)
        out = g.tail(g.upsample(features + g.body(features)))
        return out + F.interpolate(x, scale_factor=scale, mode="bicubic") if g.config.input_skip else out

    out, grads = loss_and_grads(g)
    expected, expected_grads = loss_and_grads(plain)
    assert out.is_contiguous() and out.shape == (2, out_ch, 11 * scale, 7 * scale)
    assert torch.allclose(out, expected, atol=1e-5)
    for name, grad in expected_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("scale,in_ch,out_ch", [(2, 1, 1), (4, 1, 1), (4, 2, 3), (8, 1, 1)])
def test_upsampling_in_parts_is_the_whole_computation(scale, in_ch, out_ch, monkeypatch):
    """At inference on the CPU, SRResNet upsamples squares of its body's output with a halo: the
    same numbers as the whole at once, at the image's borders and between the parts."""
    from msrgan_core.models import TAIL_HALO, TAIL_PART

    torch.manual_seed(1)
    g = Generator(GeneratorConfig(scale=scale, in_channels=in_ch, out_channels=out_ch, n_blocks=1,
                                  n_features=8, input_skip=in_ch == out_ch)).eval()
    with torch.no_grad():  # a trained-looking tail and upsampling, whose context reaches the halo
        g.tail.weight.normal_(0, 0.1)
        for stage in g.upsample:
            if isinstance(stage, torch.nn.Conv2d):
                stage.weight.normal_(0, 0.2)
    x = torch.rand(1, in_ch, 2 * TAIL_PART + 5, TAIL_PART + TAIL_HALO + 1)  # parts of three shapes
    with torch.no_grad():
        hidden = g.head(x)
        hidden = hidden + g.body(hidden)
        whole = g.upsample_tail(hidden)
        if g.config.input_skip:
            whole = whole + F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
        parts = g(x)
        monkeypatch.setattr(models, "TAIL_HALO", 0)  # without context the parts' seams show
        seams = g(x)
    assert parts.shape == whole.shape
    assert torch.allclose(parts, whole, atol=1e-5)
    assert float((seams - whole).abs().max()) > 1e-3
    with torch.enable_grad():  # training never runs in parts: gradients flow through the whole
        assert g(x).requires_grad


def test_fold_tail_reads_every_tap_of_the_kernel_once_per_sub_pixel():
    """Each output sub-pixel's folded kernel holds all 81 taps of the 9 x 9 kernel, each once."""
    weight = torch.arange(1, 82, dtype=torch.float64).reshape(1, 1, 9, 9)
    folded = fold_tail(weight, 2)
    assert folded.shape == (4, 4, 5, 5)
    for sub_pixel in folded:
        taps = sub_pixel[sub_pixel != 0]
        assert sorted(taps.tolist()) == list(range(1, 82))


def test_channels_last_weights_give_the_same_output():
    """Inference keeps the generator channels-last for speed; the numbers must not change."""
    torch.manual_seed(0)
    plain = Generator(GeneratorConfig(scale=4, n_blocks=2, n_features=16)).eval()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert fast.tail.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 13, 17)
    with torch.no_grad():
        out_plain, out_fast = plain(x), fast(x)
    assert out_fast.is_contiguous() and torch.allclose(out_fast, out_plain, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("largest_slope", [0.8, 1.3])
@pytest.mark.parametrize("shape", [(2, 24, 8, 32), (2, 48, 9, 31), (1, 48, 3, 5)])
def test_bf16_prelu_is_autocasts_to_the_bit(memory_format, grad, largest_slope, shape):
    """models.prelu gives what torch's PReLU gives under autocast in bf16 on the CPU, output and
    gradients alike: pixels that fill whole vector rows or not, slopes of either sign, up to 1 and
    above, values at exactly zero."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    x[:, :, 1] = 0.0
    x = x.to(memory_format=memory_format).bfloat16()
    weight = torch.linspace(-0.4, largest_slope, shape[1])
    outs, grads = [], []
    for function in (F.prelu, models.prelu):
        xi, wi = x.clone().requires_grad_(grad), weight.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            out = function(xi, wi)
        assert out.dtype == torch.bfloat16 and out.shape == x.shape
        outs.append(out)
        if grad:
            out.float().mul(torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            grads.append((xi.grad, wi.grad))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[1], F.relu(x))  # the slopes did something
    if grad:
        assert torch.equal(grads[0][0], grads[1][0])
        torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-2, atol=1e-2)


def test_batch_norm_generator_runs_in_train_and_eval():
    generator = tiny_generator(scale=2, batch_norm=True, n_blocks=2)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in generator.modules())
    generator.train()
    assert generator(_input((2, 1, 8, 8))).shape == (2, 1, 16, 16)
    generator.eval()
    with torch.no_grad():
        assert generator(_input((1, 1, 8, 8))).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("scale,n_blocks", [(2, 1), (4, 2), (8, 1)])
def test_receptive_radius_bounds_the_influence_of_a_pixel(scale, n_blocks):
    """Changing one input pixel changes no output pixel further than the receptive radius."""
    config_generator = tiny_generator(scale=scale, n_blocks=n_blocks, seed=4)
    radius = receptive_radius(config_generator.config)
    size = 2 * radius + 11
    x = _input((1, 1, size, size))
    y = x.clone()
    centre = size // 2
    y[0, 0, centre, centre] += 1.0
    with torch.no_grad():
        changed = (config_generator(x) - config_generator(y)).abs()[0, 0] > 0
    rows, cols = np.nonzero(changed.numpy())
    assert len(rows) > 0
    # output pixel i sits at input coordinate (i + 0.5) / scale
    for coords in (rows, cols):
        distance = np.abs((coords + 0.5) / scale - (centre + 0.5))
        assert distance.max() <= radius


@pytest.mark.parametrize("patch", [24, 48, 96, 100])
def test_discriminator_takes_any_patch_size(patch):
    discriminator = Discriminator(DiscriminatorConfig(in_channels=1, n_features=8))
    discriminator.train()
    logits = discriminator(_input((2, 1, patch, patch)))
    assert logits.shape == (2,)
    discriminator.eval()
    with torch.no_grad():
        assert discriminator(_input((1, 1, patch, patch))).shape == (1,)


def test_discriminator_multichannel_and_gradients():
    discriminator = Discriminator(DiscriminatorConfig(in_channels=3, n_features=8))
    x = _input((3, 3, 32, 40)).requires_grad_(True)
    logits = discriminator(x)
    assert logits.shape == (3,)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_count_parameters_grows_with_width():
    small = count_parameters(Generator(GeneratorConfig(n_blocks=1, n_features=8)))
    large = count_parameters(Generator(GeneratorConfig(n_blocks=1, n_features=16)))
    assert 0 < small < large


# --- the compact generator ------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("channels", [1, 2])
def test_compact_output_shape_and_zero_tail_is_exactly_bicubic(scale, channels):
    from msrgan_core.models import CompactGenerator

    generator = tiny_generator(scale=scale, channels=channels, n_blocks=2, zero_tail=True, architecture="compact")
    assert isinstance(generator, CompactGenerator)
    x = _input((2, channels, 9, 13))
    with torch.no_grad():
        out = generator(x)
    expected = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert out.shape == (2, channels, 9 * scale, 13 * scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)  # the skip is bicubic, borders included


def test_compact_generator_runs_every_convolution_at_input_resolution():
    generator = tiny_generator(scale=4, n_blocks=3, n_features=16, architecture="compact")
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
             for m in generator.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        generator(_input((1, 1, 10, 12)))
    for hook in hooks:
        hook.remove()
    assert len(seen) == 4 and all(tuple(shape) == (10, 12) for shape in seen)
    assert "skip_kernel" not in generator.state_dict()  # derived from the scale, not a weight


def test_compact_widths_must_be_multiples_of_eight():
    from msrgan_core.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of 8, got 20"):
        GeneratorConfig(architecture="compact", n_features=20)
    with pytest.raises(ConfigError, match="architecture must be one of"):
        GeneratorConfig(architecture="unet")


@pytest.mark.parametrize("architecture", ["srresnet", "compact"])
def test_influence_radius_is_where_the_context_stops_mattering(architecture):
    """Input beyond the measured radius moves the centre's output by < the threshold; inside, by more."""
    from msrgan_core.models import INFLUENCE_THRESHOLD, influence_radius

    generator = tiny_generator(scale=4, n_blocks=3, n_features=16, seed=7, architecture=architecture)
    radius = influence_radius(generator)
    bound = receptive_radius(generator.config)
    assert 0 < radius <= bound
    size = 2 * bound + 1
    x = 0.3 + 0.7 * _input((1, 1, size, size), seed=11)
    c = bound
    with torch.no_grad():
        full = generator(x)[:, :, 4 * c:4 * c + 4, 4 * c:4 * c + 4]
        cut = torch.zeros_like(x)
        window = (slice(None), slice(None), slice(c - radius, c + radius + 1), slice(c - radius, c + radius + 1))
        cut[window] = x[window]
        moved = (generator(cut)[:, :, 4 * c:4 * c + 4, 4 * c:4 * c + 4] - full).abs().max()
    assert moved < 10 * INFLUENCE_THRESHOLD  # another image than the measurement's: the same order
    assert radius <= influence_radius(generator, threshold=1e-7) <= bound  # a stricter bound needs no less context


def test_forward_memory_estimate_bounds_a_forward_pass():
    """The tile sizing's estimate is of the right size: within 3x of the activations really held,
    for SRResNet with its upsampling whole (a GPU) and in parts (the CPU)."""
    from msrgan_core.models import TAIL_PART, forward_bytes_per_pixel, forward_fixed_bytes

    for architecture, features, device_type, edge in (("compact", 16, "cpu", 20), ("srresnet", 8, "cuda", 20),
                                                      ("srresnet", 8, "cpu", 3 * TAIL_PART)):
        generator = tiny_generator(scale=4, n_blocks=2, n_features=features, architecture=architecture)
        largest = []
        hooks = [m.register_forward_hook(lambda m, i, o: largest.append(o.numel() * 4)) for m in generator.modules()
                 if not list(m.children())]
        with torch.no_grad():
            generator(_input((1, 1, edge, edge)))
        for hook in hooks:
            hook.remove()
        per_pixel = forward_bytes_per_pixel(generator.config, device_type) * edge ** 2
        estimate = per_pixel + forward_fixed_bytes(generator.config, device_type)
        assert max(largest) <= estimate <= 3 * 3 * max(largest), (architecture, device_type)
    assert forward_fixed_bytes(generator.config, "cpu") < per_pixel  # in parts, the tile's own size rules


@pytest.mark.parametrize("k,channels,outputs,shape", [(5, 16, 4, (13, 22)), (3, 8, 1, (7, 5)), (7, 12, 3, (1, 9))])
def test_few_channel_convolution_by_shifted_sums_is_the_convolution(k, channels, outputs, shape):
    """SRResNet's folded tail at inference on the CPU: a 1 x 1 convolution and shifted sums, the
    same numbers as the k x k convolution with zero padding, at the borders too."""
    from msrgan_core.models import conv_to_few_channels

    generator = torch.Generator().manual_seed(k)
    x = torch.randn(2, channels, *shape, generator=generator)
    kernel = torch.randn(outputs, channels, k, k, generator=generator)
    bias = torch.randn(outputs, generator=generator)
    expected = F.conv2d(x, kernel, bias, padding=k // 2)
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            got = conv_to_few_channels(x.contiguous(memory_format=layout), kernel, bias)
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())


@pytest.mark.parametrize("architecture,batch_norm,scale,channels", [
    ("compact", False, 4, 1), ("compact", False, 2, 2), ("srresnet", False, 4, 1), ("srresnet", True, 2, 2)])
@pytest.mark.parametrize("shape,rows", [((97, 61), 20), ((131, 70), 3), ((50, 40), 500), ((1, 5), 1)])
def test_streaming_in_strips_is_the_whole_computation(architecture, batch_norm, scale, channels, shape, rows):
    """On the CPU, images go through the network in full-width strips, each convolution and residual
    sum keeping the rows the next strip needs: the same numbers as the whole image at once, at the
    seams, at the image's top and bottom, for strips shorter than the network is deep, and for a
    last strip of any height."""
    g = tiny_generator(scale=scale, channels=channels, n_blocks=3, n_features=8, architecture=architecture,
                       batch_norm=batch_norm, seed=2)
    with torch.no_grad():  # a trained-looking network, whose output depends on far context
        for module in g.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0, 1.5 / (module.in_channels * module.kernel_size[0] ** 2) ** 0.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2)
    x = _input((2, channels, *shape), seed=3).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        whole = g(x)
        strips = list(g.stream(x, rows))
    starts = [start for start, _ in strips]
    assert starts[0] == 0
    for (start, out), following in zip(strips, starts[1:] + [shape[0]]):
        assert out.shape[2] == (following - start) * scale  # strips meet: no row twice, none left out
    if shape[0] > 2 * rows:
        assert len(strips) > 2
    streamed = torch.cat([out for _, out in strips], dim=2)
    assert streamed.shape == whole.shape
    assert torch.allclose(streamed, whole, atol=1e-5), float((streamed - whole).abs().max())
