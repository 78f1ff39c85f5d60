"""Content-loss feature extractors (local VGG19 weights, discriminator features) and the loss terms."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

import helpers  # noqa: F401  (one torch thread for toy networks)
from msrgan_core.config import DiscriminatorConfig, LossConfig
from msrgan_core.features import (
    FeatureError, VGG19Features, build_vgg19_features, make_feature_extractor, vgg19_layer_names,
)
from msrgan_core.losses import (
    adversarial_loss, content_loss, discriminator_loss, fine_detail, perceptual_loss, pixel_loss, texture_loss,
)
from msrgan_core.models import Discriminator


def _rand(*shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    """A randomly initialised VGG19 saved the way torchvision's state dict is (``features.*``, ``classifier.*``)."""
    folder = tmp_path_factory.mktemp("vgg")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = build_vgg19_features().eval()
    state = {f"features.{k}": v for k, v in reference.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 2)  # torchvision's file has a classifier too
    torch.save(state, folder / "vgg19.pth")
    save_file(state, str(folder / "vgg19.safetensors"))
    return {"pth": folder / "vgg19.pth", "safetensors": folder / "vgg19.safetensors", "reference": reference}


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
@pytest.mark.parametrize("layer,channels,size", [("relu5_4", 512, 2), ("relu2_2", 128, 16)])
def test_vgg19_features_from_a_local_file(vgg_files, kind, layer, channels, size):
    vgg = VGG19Features(vgg_files[kind], layer)
    x = _rand(2, 1, 32, 32)
    with torch.no_grad():
        features = vgg(x)
    assert features.shape == (2, channels, size, size)
    # the file's weights are used: compare with the network the file was made from
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = vgg_files["reference"][: vgg19_layer_names().index(layer) + 1]((x.expand(-1, 3, -1, -1) - mean) / std)
    torch.testing.assert_close(features, expected)


def test_vgg19_is_frozen_but_passes_gradients(vgg_files):
    vgg = VGG19Features(vgg_files["safetensors"], "relu2_2")
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.features.training  # stays in eval mode
    x = _rand(1, 3, 16, 16).requires_grad_(True)
    vgg(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_vgg19_takes_any_channel_count(vgg_files, channels):
    vgg = VGG19Features(vgg_files["safetensors"], "relu1_2")
    with torch.no_grad():
        assert vgg(_rand(1, channels, 8, 8)).shape == (1, 64, 8, 8)


def test_missing_vgg19_file_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(FeatureError, match="never downloads") as info:
        VGG19Features(tmp_path / "vgg19-dcbb9e9d.pth")
    assert "vgg19-dcbb9e9d.pth" in str(info.value)
    with pytest.raises(FeatureError, match="nothing is downloaded"):
        make_feature_extractor(LossConfig(feature_extractor="vgg19"))


def test_vgg19_via_the_loss_config(vgg_files):
    config = LossConfig(feature_extractor="vgg19", vgg19_weights=str(vgg_files["pth"]), vgg19_layer="relu1_1")
    extractor = make_feature_extractor(config)
    assert isinstance(extractor, VGG19Features)
    with torch.no_grad():
        assert extractor(_rand(1, 1, 8, 8)).shape == (1, 64, 8, 8)


def test_mismatched_vgg19_file(tmp_path):
    wrong = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}  # first layer only
    save_file(wrong, str(tmp_path / "partial.safetensors"))
    with pytest.raises(FeatureError, match="does not match"):
        VGG19Features(tmp_path / "partial.safetensors")
    shapes = {k: torch.zeros(1) for k in build_vgg19_features().state_dict()}
    torch.save(shapes, tmp_path / "shapes.pth")
    with pytest.raises(FeatureError, match="does not match"):
        VGG19Features(tmp_path / "shapes.pth")


def test_unreadable_vgg19_files(tmp_path):
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(FeatureError, match="cannot be read"):
        VGG19Features(tmp_path / "text.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(FeatureError, match="not a state dict"):
        VGG19Features(tmp_path / "list.pth")


def test_unknown_vgg19_layer(vgg_files):
    with pytest.raises(FeatureError, match="relu9_9"):
        VGG19Features(vgg_files["safetensors"], "relu9_9")


# --- losses -------------------------------------------------------------------------------

def test_pixel_losses_against_hand_values():
    sr = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    hr = torch.tensor([[[[1.0, 1.0], [0.0, 3.0]]]])
    assert pixel_loss(sr, hr, "mse").item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    assert pixel_loss(sr, hr, "l1").item() == pytest.approx((1 + 0 + 2 + 0) / 4)


def test_adversarial_and_discriminator_losses_at_zero_logits():
    zero = torch.zeros(5)
    assert adversarial_loss(zero).item() == pytest.approx(math.log(2))
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    confident = discriminator_loss(torch.full((5,), 20.0), torch.full((5,), -20.0))
    assert confident.item() < 1e-6
    assert adversarial_loss(torch.full((5,), -20.0)).item() == pytest.approx(20.0, rel=1e-3)


def test_content_loss_treats_the_target_as_fixed():
    sr = _rand(2, 1, 8, 8, seed=1).requires_grad_(True)
    hr = _rand(2, 1, 8, 8, seed=2).requires_grad_(True)
    loss = content_loss(sr, hr, lambda x: 2 * x)
    assert loss.item() == pytest.approx((4 * (sr - hr) ** 2).mean().item())
    loss.backward()
    assert sr.grad is not None and hr.grad is None


def test_perceptual_loss_total_is_the_weighted_sum_of_its_terms():
    config = LossConfig(w_pixel=2.0, w_content=0.5, w_adv=0.25, w_texture=0.125)
    discriminator = Discriminator(DiscriminatorConfig(in_channels=1, n_features=8))
    features = make_feature_extractor(config, discriminator)
    sr = _rand(2, 1, 24, 24, seed=3).requires_grad_(True)
    hr = _rand(2, 1, 24, 24, seed=4)
    terms = perceptual_loss(sr, hr, discriminator(sr), features, config, pixel_kind="l1", scale=4)
    assert set(terms) == {"pixel", "content", "adversarial", "texture", "total"}
    assert terms["pixel"].item() == pytest.approx((sr - hr).abs().mean().item())
    assert terms["content"].item() > 0 and terms["texture"].item() > 0
    expected = 2.0 * terms["pixel"] + 0.5 * terms["content"] + 0.25 * terms["adversarial"] + 0.125 * terms["texture"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    terms["total"].backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [2, 4])
def test_fine_detail_is_the_detail_above_half_the_low_resolution_nyquist(scale):
    """A wave below the quality grid's high-frequency cutoff (0.25 / scale cycles a pixel) is
    not fine detail; one well above it is all detail, its RMS amplitude**2/2 under the root."""
    size = 32 * scale
    x = torch.arange(size, dtype=torch.float64)
    cutoff = 0.25 / scale

    def wave(frequency):
        return (0.3 * torch.sin(2 * math.pi * frequency * x)).expand(size, size).reshape(1, 1, size, size)

    coarse, fine = fine_detail(wave(cutoff / 4), scale), fine_detail(wave(cutoff * 3), scale)
    assert coarse.shape == fine.shape == (1, 1, 8, 8)
    assert coarse.max() < 0.15 * fine.min()  # 1 - 0.5 ** (1 / 16) of the coarse wave gets through, and the edges
    assert fine.mean().item() == pytest.approx(0.3 / math.sqrt(2), rel=0.03)


def test_texture_loss_asks_for_as_much_detail_as_the_truth_not_where():
    """The truth's texture moved by two pixels costs little; smoothed away it costs much (the
    pixel loss says the opposite), and the loss's gradient gives a smoothed output detail back."""
    from scipy.ndimage import gaussian_filter

    wave = torch.sin(2 * math.pi * torch.arange(128, dtype=torch.float64) / 128)
    base = 10 + wave[:, None] * wave[None, :]  # smooth and periodic: rolling it leaves no seam
    truth = (base + 0.2 * _rand(128, 128, seed=9).double()).view(1, 1, 128, 128)
    moved = torch.roll(truth, shifts=(2, 2), dims=(2, 3))
    smoothed = torch.from_numpy(gaussian_filter(truth[0, 0].numpy(), 3, mode="wrap")).view(1, 1, 128, 128)
    assert pixel_loss(moved, truth, "l1") > pixel_loss(smoothed, truth, "l1")
    assert texture_loss(moved, truth, 4) < 0.1 * texture_loss(smoothed, truth, 4)

    output = smoothed.clone().requires_grad_(True)
    texture_loss(output, truth, 4).backward()
    stepped = output.detach() - 0.05 * output.grad / output.grad.abs().max()
    assert fine_detail(stepped, 4).mean() > 1.1 * fine_detail(smoothed, 4).mean()
    assert texture_loss(stepped, truth, 4) < texture_loss(smoothed, truth, 4)


def test_zero_weights_remove_terms():
    config = LossConfig(w_pixel=1.0, w_content=0.0, w_adv=0.0)
    sr, hr = _rand(1, 1, 8, 8, seed=5), _rand(1, 1, 8, 8, seed=6)
    terms = perceptual_loss(sr, hr, torch.tensor([3.0]), lambda x: x, config, pixel_kind="mse", scale=4)
    assert terms["total"].item() == pytest.approx(terms["pixel"].item())


def test_discriminator_feature_extractor():
    discriminator = Discriminator(DiscriminatorConfig(in_channels=1, n_features=8))
    features = make_feature_extractor(LossConfig(feature_extractor="discriminator"), discriminator)
    x = _rand(2, 1, 24, 24, seed=7)
    out = features(x)
    assert out.shape == (2, 64, 2, 2)  # 8 * n_features channels after four stride-2 convolutions
    assert content_loss(x, x.clone(), features).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(FeatureError, match="discriminator"):
        make_feature_extractor(LossConfig(feature_extractor="discriminator"))
