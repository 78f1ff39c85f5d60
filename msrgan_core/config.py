"""Configuration dataclasses: one per concern, validated, loadable from TOML.

Every error quotes the bad value, so a typo in a config file is found from the message alone.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import UserError
from .options import device_name

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.8 to 3.10
    import tomli as tomllib


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


#: generator architectures (:func:`msrgan_core.models.build_generator`)
ARCHITECTURES = ("srresnet", "compact")


@dataclass
class GeneratorConfig:
    """The generator: SRGAN's SRResNet, or a compact network that works at input resolution only.

    Attributes
    ----------
    architecture : str
        ``srresnet`` (SRGAN's: residual blocks, then upsampling stages at 2x and 4x resolution
        and a 9 x 9 tail at output resolution) or ``compact`` (plain 3 x 3 convolutions, all at
        input resolution, and a pixel-shuffle tail: 10 to 20 times cheaper per pixel).
    scale : int
        Upscaling factor: 2, 4 or 8.
    in_channels, out_channels : int
        Image channels in and out (1 for one fluorescence channel).
    n_blocks : int
        ``srresnet``: residual blocks of two convolutions (SRGAN: 16). ``compact``: 3 x 3
        convolution layers before the tail (12 for the packaged models).
    n_features : int
        Feature maps per convolution (SRGAN: 64); ``compact`` needs a multiple of 8, which the
        CPU's vector units and a GPU's tensor cores take whole.
    batch_norm : bool
        ``srresnet`` only: batch normalisation inside residual blocks (SRGAN: yes; EDSR showed it
        hurts SR, so off).
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
    architecture: str = "srresnet"

    def __post_init__(self) -> None:
        _check(self.architecture in ARCHITECTURES,
               f"generator.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        _check(self.scale in (2, 4, 8), f"generator.scale must be 2, 4 or 8, got {self.scale!r}")
        _check(self.in_channels >= 1, f"generator.in_channels must be >= 1, got {self.in_channels!r}")
        _check(self.out_channels >= 1, f"generator.out_channels must be >= 1, got {self.out_channels!r}")
        _check(self.n_blocks >= 1, f"generator.n_blocks must be >= 1, got {self.n_blocks!r}")
        _check(self.n_features >= 4, f"generator.n_features must be >= 4, got {self.n_features!r}")
        _check(self.architecture != "compact" or self.n_features % 8 == 0,
               f"generator.n_features of a compact generator must be a multiple of 8, got {self.n_features!r}")
        _check(self.architecture != "compact" or not self.batch_norm,
               "generator.batch_norm is for srresnet only; a compact generator has none")
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
#: the range fields of [degradation]: each a [low, high] pair
DEGRADATION_RANGES = ("blur_sigma", "poisson_peak", "gaussian_sigma", "background")
#: the objective fields of [degradation]: set all four to derive blur_sigma from the optics
OPTICS_FIELDS = ("na_high", "na_low", "wavelength_um", "pixel_size_um")


#: the blur sigma range (high-resolution pixels) training draws from unless told otherwise
DEFAULT_BLUR_SIGMA = (0.0, 2.5)
#: what the optics of a config may be: no objective's NA is above this; emission wavelengths and
#: pixel sizes at the sample, in micrometres (460 is nanometres, 6.5 a camera's pixel unmagnified)
MAX_NA = 1.7
WAVELENGTHS_UM = (0.3, 1.2)
PIXEL_SIZES_UM = (0.02, 5.0)


@dataclass
class DegradationConfig:
    """How low-resolution training inputs are made from high-resolution images: a simulated
    low-magnification acquisition (see ``docs/degradation.md``).

    Each patch is, in order: shifted by a sub-pixel amount (optional), blurred by the extra
    point-spread function of a lower-NA objective, binned (or bicubic-downsampled), and given
    shot noise, background and read noise. The defaults span what screening microscopes record,
    from 30 photons at the brightest nuclei to noise-free, and from no extra blur to that of a
    0.3-NA objective beside a 0.95-NA one; narrow them to your own microscope in a config.

    Attributes
    ----------
    method : str
        ``bin`` (k x k mean binning: a camera with k-times larger pixels) or ``bicubic``.
    scale : int
        Downsampling factor; must equal the generator's scale.
    blur_sigma : tuple of float
        Gaussian blur sigma (high-resolution pixels) drawn uniformly from this range before
        downsampling; ``(0, 0)`` disables it. Derived from the optics when they are given.
    na_high, na_low, wavelength_um, pixel_size_um : float
        The two objectives' numerical apertures, the emission wavelength (micrometres) and the
        high-resolution pixel size at the sample (micrometres). When all four are given (> 0),
        ``blur_sigma`` is set to :func:`msrgan_core.degradation.optical_blur_sigma` of them.
    poisson_peak : tuple of float
        Photons at a normalised intensity of 1 (the image's 99.8th percentile), drawn
        log-uniformly from this range; ``(0, 0)`` disables shot noise.
    background : tuple of float
        Background light, as a fraction of the peak's photons, drawn uniformly: its shot noise
        reaches the background and dim cells, as in a real exposure. ``(0, 0)``: none.
    gaussian_sigma : tuple of float
        Read-noise sigma on normalised intensities, drawn uniformly; ``(0, 0)`` disables it.
    noise_free_fraction : float
        Share of the degraded patches that get no noise at all (blur only).
    shift : float
        Largest sub-pixel shift (high-resolution pixels, each axis, uniform) of the image before
        it is blurred and binned, as between two acquisitions that are not registered; the target
        stays where it is. 0: none.
    degraded_fraction : float
        Share of patches that get the shift, blur and noise above; the rest are plainly
        downsampled, so the model stays sharp on clean inputs while it learns noisy ones.
    """

    method: str = "bin"
    scale: int = 4
    blur_sigma: tuple = DEFAULT_BLUR_SIGMA
    poisson_peak: tuple = (30.0, 100000.0)
    gaussian_sigma: tuple = (0.0, 0.005)
    background: tuple = (0.0, 0.0)
    noise_free_fraction: float = 0.0
    shift: float = 0.0
    degraded_fraction: float = 1.0
    na_high: float = 0.0
    na_low: float = 0.0
    wavelength_um: float = 0.0
    pixel_size_um: float = 0.0

    @classmethod
    def acquisition(cls, method: str = "bin", scale: int = 4, blur: float = 0.0, photons: float = 0.0,
                    read_noise: float = 0.0) -> "DegradationConfig":
        """One fixed acquisition, nothing drawn at random but the noise itself: ``blur`` sigma
        (high-resolution pixels), ``photons`` at a normalised intensity of 1 (0: no shot noise)
        and ``read_noise`` (normalised). With the defaults, plain ``method`` downsampling."""
        return cls(method=method, scale=scale, blur_sigma=(blur, blur), poisson_peak=(photons, photons),
                   gaussian_sigma=(read_noise, read_noise))

    def __post_init__(self) -> None:
        _check(
            self.method in DEGRADATION_METHODS,
            f"degradation.method must be one of {DEGRADATION_METHODS}, got {self.method!r}",
        )
        _check(self.scale in (2, 4, 8), f"degradation.scale must be 2, 4 or 8, got {self.scale!r}")
        for name in DEGRADATION_RANGES:
            try:
                value = tuple(float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                value = ()  # a single number or words: reported below with the value
            _check(
                len(value) == 2 and 0.0 <= value[0] <= value[1],
                f"degradation.{name} must be a range [low, high] with 0 <= low <= high, got {getattr(self, name)!r}",
            )
            setattr(self, name, value)
        for name in ("degraded_fraction", "noise_free_fraction"):
            value = getattr(self, name)
            _check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
                f"degradation.{name} must be a number from 0 to 1, got {value!r}",
            )
            setattr(self, name, float(value))
        _check(self.shift >= 0, f"degradation.shift must be >= 0 high-resolution pixels, got {self.shift!r}")
        optics = {name: getattr(self, name) for name in OPTICS_FIELDS}
        if any(optics.values()):
            _check(all(v > 0 for v in optics.values()),
                   f"degradation: give all of {', '.join(OPTICS_FIELDS)} (> 0) to derive the blur, got {optics}")
            _check(self.na_low < self.na_high,
                   f"degradation.na_low ({self.na_low}) must be below na_high ({self.na_high})")
            _check(self.na_high <= MAX_NA, f"degradation.na_high ({self.na_high}) is beyond any objective's "
                   f"(oil immersion: 1.4-1.5, at most {MAX_NA})")
            for name, (low, high), unit in (("wavelength_um", WAVELENGTHS_UM, "an emission wavelength"),
                                            ("pixel_size_um", PIXEL_SIZES_UM, "a pixel size at the sample")):
                _check(low <= getattr(self, name) <= high, f"degradation.{name} ({getattr(self, name)}) is not "
                       f"{unit} in micrometres ({low}-{high}): nanometres, or the camera's pixel unmagnified?")
            from .degradation import optical_blur_sigma

            sigma = optical_blur_sigma(**optics)
            _check(self.blur_sigma in (DEFAULT_BLUR_SIGMA, (sigma, sigma)),
                   f"degradation: give the optics (one blur, sigma {sigma:.2f} px) or blur_sigma (a range, such as "
                   f"[{max(sigma - 0.5, 0):.1f}, {sigma + 0.5:.1f}]), not both: the optics had replaced "
                   f"blur_sigma {list(self.blur_sigma)}")
            self.blur_sigma = (sigma, sigma)
        _check(not 0 == self.poisson_peak[0] < self.poisson_peak[1],
               f"degradation.poisson_peak {list(self.poisson_peak)}: photons are drawn log-uniformly, so a range "
               "from 0 is mostly under 10 photons; for noise-free patches among noisy ones set noise_free_fraction")


FEATURE_EXTRACTORS = ("discriminator", "vgg19")
#: the texture term's window (``losses.texture_loss``), in low-resolution pixels a side
TEXTURE_WINDOW = 4


@dataclass
class LossConfig:
    """Perceptual loss ``w_pixel * pixel + w_content * content + w_adv * adversarial + w_texture * texture``.

    SRGAN's values: content loss on deep features rescaled by 1/12.75 (0.006 on a squared
    error), adversarial weight 1e-3; the pixel MSE keeps the output's intensities honest for
    quantification (mSRGAN). ``texture`` (off by default) asks for the truth's amount of fine
    detail in each window of ``TEXTURE_WINDOW`` low-resolution pixels a side (``losses.texture_loss``).

    Attributes
    ----------
    feature_extractor : str
        ``discriminator`` (the discriminator's own features: no external weights) or ``vgg19``
        (ImageNet VGG19 read from ``vgg19_weights``, a local torchvision state-dict file).
    """

    w_pixel: float = 1.0
    w_content: float = 0.006
    w_adv: float = 1e-3
    w_texture: float = 0.0
    feature_extractor: str = "discriminator"
    vgg19_weights: Optional[str] = None
    vgg19_layer: str = "relu5_4"

    def __post_init__(self) -> None:
        for name in ("w_pixel", "w_content", "w_adv", "w_texture"):
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
    train_lr : list of str
        Files, folders or globs of low-resolution acquisitions of the ``train`` fields, paired by
        file name, or one CSV file of pairs (columns ``lr``, ``hr``). When given, training patches are cut from these real pairs, registered as
        ``msrgan evaluate --lr`` registers them, and ``[degradation]`` is not used (but its
        ``scale``); the split is still made over ``train``.
    well_regex : str or None
        Regular expression whose group ``well`` (or first group) names the well in a file name,
        or else in the name of its folder or the one above (a plate saved one folder per well);
        files it names a well for are split by well, the others by file.
    val_fraction : float
        Fraction of wells (or files) held out for validation.
    channel_axis : int or None
        Channel axis of multi-channel files when the file does not say.
    description : str
        What the images are, for the model file (its users have not seen the folders): e.g.
        "BBBC039 U2OS nuclei, Hoechst, 20x (CC0)". Empty: the folders' names.
    """

    train: list = field(default_factory=list)
    train_lr: list = field(default_factory=list)
    well_regex: Optional[str] = None
    val_fraction: float = 0.2
    channel_axis: Optional[int] = None
    max_val_images: int = 16
    description: str = ""

    def __post_init__(self) -> None:
        _check(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        _check(self.max_val_images >= 1, f"data.max_val_images must be >= 1, got {self.max_val_images!r}")
        if isinstance(self.train, str):
            self.train = [self.train]
        if isinstance(self.train_lr, str):
            self.train_lr = [self.train_lr]
        for key in ("train", "train_lr"):
            value = getattr(self, key)
            _check(isinstance(value, list) and all(isinstance(p, str) for p in value),
                   f"data.{key} must be a list of files, folders or globs, e.g. [\"plate1/\"], got {value!r}")
        _check(self.channel_axis in (None, 0, -1, 2) and not isinstance(self.channel_axis, bool),
               f"data.channel_axis must be 0 (channels first) or -1 (last), got {self.channel_axis!r}")
        if self.well_regex is not None:
            _check(isinstance(self.well_regex, str), f"data.well_regex must be a string, got {self.well_regex!r}")
            try:
                re.compile(self.well_regex)
            except re.error as exc:
                raise ConfigError(f"data.well_regex {self.well_regex!r} is not a regular expression ({exc})") from None
        # "$MSRGAN_DATA/bbbc039/images": the data folder differs between machines
        self.train = [os.path.expandvars(str(p)) for p in self.train]
        self.train_lr = [os.path.expandvars(str(p)) for p in self.train_lr]


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
        _check(0 <= self.lr_min_fraction <= 1, f"train.lr_min_fraction must be in [0, 1], got {self.lr_min_fraction!r}")
        _check(self.seed >= 0, f"train.seed must be >= 0, got {self.seed!r}")
        _check(self.gan_lr >= 0, f"train.gan_lr must be >= 0 (0: the same as lr), got {self.gan_lr!r}")
        _check(0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1) (0: no average), got {self.ema_decay!r}")
        _check(self.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {self.checkpoint_every!r}")
        _check(self.eval_every >= 1, f"train.eval_every must be >= 1, got {self.eval_every!r}")
        _check(self.pixel_loss in ("l1", "mse"), f"train.pixel_loss must be 'l1' or 'mse', got {self.pixel_loss!r}")
        try:
            self.device = device_name(self.device)
        except ValueError as error:
            raise ConfigError(f"train.{error}") from None
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
            self.loss.w_texture == 0 or self.train.patch_size >= TEXTURE_WINDOW * self.generator.scale,
            f"loss.w_texture needs train.patch_size of at least {TEXTURE_WINDOW} x the scale "
            f"({TEXTURE_WINDOW * self.generator.scale}): its windows are {TEXTURE_WINDOW} x {TEXTURE_WINDOW} "
            f"low-resolution pixels; got {self.train.patch_size}",
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
    _check(isinstance(values, dict), f"[{name}] must be a table of settings (section.key = value), got {values!r}")
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


#: how --set values are written, for errors about them
TOML_HINT = "--set takes TOML values: true and false in lower case, text in quotes, lists as [0.5, 2.0] or [\"/a\", \"/b\"]"


def load_config(path: Optional["str | Path"], overrides: "list[str] | tuple" = ()) -> ExperimentConfig:
    """A config from TOML (or the defaults), with ``section.key=value`` overrides (TOML values).

    Overriding ``data.train`` (or ``train_lr``) without ``data.description`` empties the
    description, so that a model trained on other images does not carry the config's words
    about its own (a fine-tune of ``default_models.toml`` had said it was trained on BBBC039)."""
    base = ExperimentConfig.from_toml(path).to_dict() if path else ExperimentConfig().to_dict()
    unparsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.pretrain_steps=100")
        if section not in base:
            raise ConfigError(f"override {item!r}: there is no [{section}] section; the sections are {', '.join(base)}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:  # plain words are taken as text; a list or table that is not TOML, not
            if raw.lstrip().startswith(("[", "{")):
                raise ConfigError(f"override {item!r}: {raw.strip()} is not a TOML list or table ({TOML_HINT})") from None
            value = raw
            unparsed.append(key.strip())
        base[section][name] = value
    given = {item.partition("=")[0].strip() for item in overrides}
    if given & {"data.train", "data.train_lr"} and "data.description" not in given:
        base["data"]["description"] = ""  # the config's words are about its own images: the folders' names say these
    try:
        return ExperimentConfig.from_dict(base)
    except ConfigError as exc:
        if unparsed:  # True for true, say: taken as text
            raise ConfigError(f"{exc} ({', '.join(unparsed)} did not read as a TOML value, so it was taken as text: "
                              f"{TOML_HINT})") from None
        raise
