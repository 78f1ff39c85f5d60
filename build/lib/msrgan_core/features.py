"""Feature extractors for the content loss.

Two kinds, picked by ``LossConfig.feature_extractor``:

- ``discriminator``: the discriminator's own convolutional features. Needs no external weights,
  and its features are learned on the microscopy images being trained on (the default).
- ``vgg19``: SRGAN's VGG19 with ImageNet weights read from a local file the user gives, in
  torchvision's state-dict layout (``vgg19-dcbb9e9d.pth``) or as safetensors. Nothing is ever
  downloaded: a missing file is an error that says where to put it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .config import LossConfig
from .errors import UserError

#: torchvision's VGG19 ("E") feature layout: conv widths, with "M" for max-pooling
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureError(UserError, ValueError):
    """A feature extractor cannot be built (missing or mismatched weights file)."""


def vgg19_layer_names() -> "list[str]":
    """Names (``conv1_1``, ``relu1_1``, ..., ``pool5``) of torchvision's ``features`` indices."""
    names, block, index = [], 1, 1
    for item in VGG19_LAYOUT:
        if item == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


def build_vgg19_features() -> nn.Sequential:
    """torchvision's ``vgg19().features`` layer for layer, so its state-dict keys load as they are."""
    layers, in_ch = [], 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = item
    return nn.Sequential(*layers)


def read_state_dict(path: "str | Path") -> "dict[str, torch.Tensor]":
    """Tensors from a ``.safetensors`` file, or a ``.pth`` read with ``weights_only`` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureError(
            f"VGG19 weights file {path} does not exist. msrgan never downloads weights: copy torchvision's "
            "vgg19-dcbb9e9d.pth (or a safetensors export of it) to this machine and give its path as "
            "loss.vgg19_weights, or use feature_extractor = 'discriminator'"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatureError(f"VGG19 weights file {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise FeatureError(f"VGG19 weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


class VGG19Features(nn.Module):
    """Frozen ImageNet VGG19 features up to ``layer`` (SRGAN's VGG54 is ``relu5_4``).

    Takes ``(N, C, H, W)`` normalised intensities (about 0..1); one channel is repeated to RGB,
    three are used as they are, others are averaged to one first.
    """

    def __init__(self, weights_path: "str | Path", layer: str = "relu5_4") -> None:
        super().__init__()
        names = vgg19_layer_names()
        if layer not in names:
            raise FeatureError(f"VGG19 has no layer {layer!r}; choose one of {names}")
        features = build_vgg19_features()
        state = read_state_dict(weights_path)
        state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k.split(".")[0].isdigit()}
        try:
            features.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FeatureError(
                f"VGG19 weights file {weights_path} does not match torchvision's VGG19 layout: {exc}"
            ) from None
        self.features = features[: names.index(layer) + 1]
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.features.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "VGG19Features":
        super().train(mode)
        self.features.eval()  # always frozen
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            x = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        return self.features((x - self.mean) / self.std)


def make_feature_extractor(config: LossConfig, discriminator: Optional[nn.Module] = None) -> Callable:
    """The content-loss feature function ``(N, C, H, W) -> features`` that ``config`` asks for."""
    if config.feature_extractor == "vgg19":
        if not config.vgg19_weights:
            raise FeatureError(
                "loss.feature_extractor = 'vgg19' needs loss.vgg19_weights: the path of a local VGG19 "
                "weights file (torchvision layout); nothing is downloaded"
            )
        return VGG19Features(config.vgg19_weights, config.vgg19_layer)
    if discriminator is None:
        raise FeatureError("feature_extractor = 'discriminator' needs the discriminator")
    return discriminator.features
