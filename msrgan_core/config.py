"""Configuration dataclasses: one per concern, validated, loadable from TOML.

Every error quotes the bad value, so a typo in a config file is found from the message alone.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.9/3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class GeneratorConfig:
    """SRResNet-style generator.

    Attributes
    ----------
    scale : int
        Upscaling factor: 2, 4 or 8.
    in_channels, out_channels : int
        Image channels in and out (1 for one fluorescence channel).
    n_blocks : int
        Residual blocks (SRGAN: 16).
    n_features : int
        Feature maps per convolution (SRGAN: 64).
    batch_norm : bool
        Batch normalisation inside residual blocks (SRGAN: yes; EDSR showed it hurts SR, so off).
    input_skip : bool
        Add the bicubic upsampling of the input to the output, so the network learns the residual
        detail only. Needs ``in_channels == out_channels``.
    """

    scale: int = 4
    in_channels: int = 1
    out_channels: int = 1
    n_blocks: int = 16
    n_features: int = 64
    batch_norm: bool = False
    input_skip: bool = True

    def __post_init__(self) -> None:
        _check(self.scale in (2, 4, 8), f"generator.scale must be 2, 4 or 8, got {self.scale!r}")
        _check(self.in_channels >= 1, f"generator.in_channels must be >= 1, got {self.in_channels!r}")
        _check(self.out_channels >= 1, f"generator.out_channels must be >= 1, got {self.out_channels!r}")
        _check(self.n_blocks >= 1, f"generator.n_blocks must be >= 1, got {self.n_blocks!r}")
        _check(self.n_features >= 4, f"generator.n_features must be >= 4, got {self.n_features!r}")
        _check(
            not self.input_skip or self.in_channels == self.out_channels,
            f"generator.input_skip needs in_channels == out_channels, got {self.in_channels} and {self.out_channels}",
        )


@dataclass
class DiscriminatorConfig:
    """SRGAN's VGG-style discriminator; ``n_features`` is the width of its first block."""

    in_channels: int = 1
    n_features: int = 64

    def __post_init__(self) -> None:
        _check(self.in_channels >= 1, f"discriminator.in_channels must be >= 1, got {self.in_channels!r}")
        _check(self.n_features >= 4, f"discriminator.n_features must be >= 4, got {self.n_features!r}")


@dataclass
class NormalizationConfig:
    """Per-image percentile normalisation (CARE's 1 - 99.8 by default)."""

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.low < self.high <= 100.0,
            f"normalization needs 0 <= low < high <= 100, got low={self.low!r} high={self.high!r}",
        )


DEGRADATION_METHODS = ("bin", "bicubic")


@dataclass
class DegradationConfig:
    """How low-resolution training inputs are made from high-resolution images.

    Attributes
    ----------
    method : str
        ``bin`` (k x k mean binning: a camera with k-times larger pixels) or ``bicubic``.
    scale : int
        Downsampling factor; must equal the generator's scale.
    blur_sigma : tuple of float
        Gaussian blur sigma (in high-resolution pixels) drawn uniformly from this range before
        downsampling; ``(0, 0)`` disables it.
    poisson_peak : tuple of float
        Photon count of a normalised intensity of 1, drawn log-uniformly from this range;
        ``(0, 0)`` disables shot noise.
    gaussian_sigma : tuple of float
        Read-noise sigma on normalised intensities, drawn uniformly; ``(0, 0)`` disables it.
    degraded_fraction : float
        Share of patches that get the blur and noise above; the rest are plainly downsampled,
        so the model stays sharp on clean inputs while it learns to tolerate noisy ones.
    """

    method: str = "bin"
    scale: int = 4
    blur_sigma: tuple = (0.0, 0.0)
    poisson_peak: tuple = (0.0, 0.0)
    gaussian_sigma: tuple = (0.0, 0.0)
    degraded_fraction: float = 1.0

    def __post_init__(self) -> None:
        _check(
            self.method in DEGRADATION_METHODS,
            f"degradation.method must be one of {DEGRADATION_METHODS}, got {self.method!r}",
        )
        _check(self.scale in (2, 4, 8), f"degradation.scale must be 2, 4 or 8, got {self.scale!r}")
        for name in ("blur_sigma", "poisson_peak", "gaussian_sigma"):
            try:
                value = tuple(float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                value = ()  # a single number or words: reported below with the value
            _check(
                len(value) == 2 and 0.0 <= value[0] <= value[1],
                f"degradation.{name} must be a range [low, high] with 0 <= low <= high, got {getattr(self, name)!r}",
            )
            setattr(self, name, value)
        _check(
            isinstance(self.degraded_fraction, (int, float)) and not isinstance(self.degraded_fraction, bool)
            and 0.0 <= self.degraded_fraction <= 1.0,
            f"degradation.degraded_fraction must be a number from 0 to 1, got {self.degraded_fraction!r}",
        )
        self.degraded_fraction = float(self.degraded_fraction)


FEATURE_EXTRACTORS = ("discriminator", "vgg19")


@dataclass
class LossConfig:
    """Perceptual loss ``w_pixel * pixel + w_content * content + w_adv * adversarial``.

    SRGAN's values: content loss on deep features rescaled by 1/12.75 (0.006 on a squared
    error), adversarial weight 1e-3; the pixel MSE keeps the output's intensities honest for
    quantification (mSRGAN).

    Attributes
    ----------
    feature_extractor : str
        ``discriminator`` (the discriminator's own features: no external weights) or ``vgg19``
        (ImageNet VGG19 read from ``vgg19_weights``, a local torchvision state-dict file).
    """

    w_pixel: float = 1.0
    w_content: float = 0.006
    w_adv: float = 1e-3
    feature_extractor: str = "discriminator"
    vgg19_weights: Optional[str] = None
    vgg19_layer: str = "relu5_4"

    def __post_init__(self) -> None:
        for name in ("w_pixel", "w_content", "w_adv"):
            _check(getattr(self, name) >= 0, f"loss.{name} must be >= 0, got {getattr(self, name)!r}")
        _check(
            self.feature_extractor in FEATURE_EXTRACTORS,
            f"loss.feature_extractor must be one of {FEATURE_EXTRACTORS}, got {self.feature_extractor!r}",
        )


@dataclass
class DataConfig:
    """Training images and how they are split.

    Attributes
    ----------
    train : list of str
        Files, folders or globs of high-resolution images.
    well_regex : str or None
        Regular expression whose group ``well`` (or first group) names the well in a file name;
        when every file matches, the validation split is made by well, else by file.
    val_fraction : float
        Fraction of wells (or files) held out for validation.
    channel_axis : int or None
        Channel axis of multi-channel files when the file does not say.
    """

    train: list = field(default_factory=list)
    well_regex: Optional[str] = None
    val_fraction: float = 0.2
    channel_axis: Optional[int] = None
    max_val_images: int = 16

    def __post_init__(self) -> None:
        _check(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if isinstance(self.train, str):
            self.train = [self.train]
        # "$MSRGAN_DATA/bbbc039/images": the data folder differs between machines
        self.train = [os.path.expandvars(str(p)) for p in self.train]


@dataclass
class TrainConfig:
    """The training run: two phases as in SRGAN.

    ``pretrain_steps`` of pixel loss (SRResNet), then ``gan_steps`` of the full perceptual loss
    starting from the pretrained generator. Each phase decays its learning rate (``lr``, and
    ``gan_lr`` for the adversarial phase; 0 = ``lr``) along a cosine to ``lr_min_fraction`` of it.
    ``init`` starts the generator from a model file or packaged model name (``fidelity``)
    instead of random weights: fine-tuning. Its architecture and normalisation must match.
    ``ema_decay`` > 0 keeps an exponential moving average of the generator's weights in each
    phase; the saved models and the validation figures are then the average's.
    ``workers`` > 0 draws batches ahead in that many worker processes (to keep a GPU busy);
    batch ``n`` is the same whichever process draws it, so results do not depend on it.
    """

    patch_size: int = 96
    batch_size: int = 16
    pretrain_steps: int = 1000
    gan_steps: int = 1000
    lr: float = 1e-4
    gan_lr: float = 0.0
    lr_min_fraction: float = 0.1
    ema_decay: float = 0.0
    init: str = ""
    pixel_loss: str = "l1"
    checkpoint_every: int = 100
    eval_every: int = 200
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    tensorboard: bool = False
    workers: int = 0

    def __post_init__(self) -> None:
        _check(self.patch_size >= 16, f"train.patch_size must be >= 16, got {self.patch_size!r}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size!r}")
        _check(self.pretrain_steps >= 0, f"train.pretrain_steps must be >= 0, got {self.pretrain_steps!r}")
        _check(self.gan_steps >= 0, f"train.gan_steps must be >= 0, got {self.gan_steps!r}")
        _check(self.pretrain_steps + self.gan_steps >= 1, "train needs pretrain_steps + gan_steps >= 1")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr!r}")
        _check(self.gan_lr >= 0, f"train.gan_lr must be >= 0 (0: the same as lr), got {self.gan_lr!r}")
        _check(0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1) (0: no average), got {self.ema_decay!r}")
        _check(self.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {self.checkpoint_every!r}")
        _check(self.eval_every >= 1, f"train.eval_every must be >= 1, got {self.eval_every!r}")
        _check(self.pixel_loss in ("l1", "mse"), f"train.pixel_loss must be 'l1' or 'mse', got {self.pixel_loss!r}")
        _check(self.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {self.device!r}")
        _check(self.workers >= 0, f"train.workers must be >= 0 (0: draw batches in the training process), got {self.workers!r}")


@dataclass
class ExperimentConfig:
    """Everything a training run needs; one TOML file with a table per field."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(
            self.generator.scale == self.degradation.scale,
            f"generator.scale ({self.generator.scale}) must equal degradation.scale ({self.degradation.scale})",
        )
        _check(
            self.train.patch_size % self.generator.scale == 0,
            f"train.patch_size ({self.train.patch_size}) must be a multiple of the scale ({self.generator.scale})",
        )
        _check(
            self.discriminator.in_channels == self.generator.out_channels,
            f"discriminator.in_channels ({self.discriminator.in_channels}) must equal "
            f"generator.out_channels ({self.generator.out_channels})",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(sections)
        _check(not unknown, f"unknown config section(s) {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for name, fld in sections.items():
            section_cls = fld.default_factory  # type: ignore[misc]
            values = data.get(name, {})
            kwargs[name] = from_section(section_cls, values, name)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: "str | Path") -> "ExperimentConfig":
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data)


def from_section(section_cls: Any, values: dict, name: str) -> Any:
    """Build one config dataclass from a dict, rejecting unknown keys by name."""
    known = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - known
    _check(not unknown, f"unknown key(s) {sorted(unknown)} in [{name}]; expected some of {sorted(known)}")
    for fld in dataclasses.fields(section_cls):  # TOML has types: "16" or 2.5 for an int is a typo
        if fld.name in values and fld.default is not dataclasses.MISSING and fld.default is not None:
            value, default = values[fld.name], fld.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (list, tuple)) if isinstance(default, tuple) else isinstance(value, type(default))
            _check(ok, f"{name}.{fld.name} must be of type {type(default).__name__}, got {value!r}")
    return section_cls(**values)
