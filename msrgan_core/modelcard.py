"""What a model file says about itself, read and checked without its weights (and without torch).

A model file holds the generator's weights and, in the safetensors metadata under the key
``msrgan``, a JSON document: the architecture, scale, channels, normalisation, how it runs by
default, its measured influence radius, and where it came from (data, degradation, training,
validation figures). :func:`read_card` validates all of it once into a :class:`ModelCard`, so a
damaged or inconsistent file fails at load, before any image, and nothing re-parses it later.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from .config import ConfigError, GeneratorConfig, NormalizationConfig
from .errors import UserError
from .options import DEFAULT_MODELS, ENSEMBLES, uncertainty_orientation_count

log = logging.getLogger("msrgan")

FORMAT_VERSION = 1
METADATA_KEY = "msrgan"
#: the metadata entry holding the SHA-256 of a model file's weights (files written before it have none)
CHECKSUM_KEY = "weights_sha256"


class ModelFileError(UserError, ValueError):
    """A model file is missing, damaged, foreign or does not match the code."""


@dataclass(frozen=True)
class InferenceDefaults:
    """How a model runs unless the caller says otherwise: its file's ``inference`` metadata.

    ``ensemble``: orientations averaged (1, 2, 4 or 8); ``match_bins``: shift each output block
    so that binning the output gives the input back. See :class:`msrgan_core.inference.Upscaler`.
    Files without the entry run once, as the network outputs.
    """

    ensemble: int = 1
    match_bins: bool = False

    @classmethod
    def from_metadata(cls, meta: Dict[str, Any], source: "str | Path") -> "InferenceDefaults":
        entry = meta.get("inference", {})
        defaults = cls(**entry) if isinstance(entry, dict) and set(entry) <= {"ensemble", "match_bins"} else None
        if defaults is None or defaults.ensemble not in ENSEMBLES or not isinstance(defaults.match_bins, bool):
            raise ModelFileError(f"{source}: its inference metadata {entry!r} is not "
                                 f"{{'ensemble': one of {ENSEMBLES}, 'match_bins': true or false}}")
        return defaults

    def overridden(self, ensemble: Optional[int] = None, match_bins: Optional[bool] = None) -> "InferenceDefaults":
        """These defaults with what a caller gives in their place (None: the file's own)."""
        return InferenceDefaults(ensemble=self.ensemble if ensemble is None else ensemble,
                                 match_bins=self.match_bins if match_bins is None else bool(match_bins))

    def describe(self) -> str:
        return (f"{self.ensemble} orientation(s) averaged, output bins "
                f"{'matched to the input' if self.match_bins else 'as the network outputs them'}")


@dataclass(frozen=True)
class ModelCard:
    """A model file's metadata, validated.

    Attributes
    ----------
    generator : GeneratorConfig
        The architecture, scale and channels.
    normalization : NormalizationConfig
        The percentiles an image is normalised by before the network sees it.
    inference : InferenceDefaults
        How it runs by default.
    influence_radius : int or None
        Input pixels of context a tile needs (measured when the file was written); None in files
        older than the measurement.
    uncertainty_scale : float
        What the spread over orientations is multiplied by to estimate the error
        (``msrgan calibrate``); 1 where the file was not calibrated.
    metadata : dict
        The whole record, provenance included (``msrgan info --all``).
    source : str
        The file.
    """

    generator: GeneratorConfig
    normalization: NormalizationConfig
    inference: InferenceDefaults
    influence_radius: Optional[int]
    uncertainty_scale: float
    metadata: Dict[str, Any]
    source: str

    @property
    def scale(self) -> int:
        return self.generator.scale

    @classmethod
    def from_metadata(cls, meta: Any, source: "str | Path") -> "ModelCard":
        """Check every entry a model needs to load and run; a :class:`ModelFileError` names the bad one."""
        if not isinstance(meta, dict):
            raise ModelFileError(f"{source}: its msrgan metadata is a JSON {type(meta).__name__}, not an object")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            from . import __version__

            raise ModelFileError(
                f"{source} has model format version {version!r}; this msrgan ({__version__}) reads version {FORMAT_VERSION}"
            )
        try:
            generator = GeneratorConfig(**meta["generator"])
        except (KeyError, TypeError, ConfigError) as exc:
            raise ModelFileError(f"{source}: its architecture metadata is invalid ({exc})") from None
        for key in ("scale", "in_channels", "out_channels"):
            if key in meta and meta[key] != getattr(generator, key):
                raise ModelFileError(f"{source}: its metadata's {key} {meta[key]!r} and its generator's "
                                     f"{getattr(generator, key)!r} do not match: the file was edited or damaged")
        try:
            normalization = NormalizationConfig(**meta.get("normalization", {}))
        except (TypeError, ConfigError) as exc:
            raise ModelFileError(f"{source}: its normalization metadata {meta.get('normalization')!r} is invalid ({exc})") from None
        radius = meta.get("influence_radius")
        if radius is not None and not (_is_whole(radius) and radius >= 0):
            raise ModelFileError(f"{source}: its influence_radius {radius!r} is not a whole number of pixels >= 0")
        scale = meta.get("uncertainty_scale", 1.0)
        if not (_is_number(scale) and scale > 0):
            raise ModelFileError(f"{source}: its uncertainty_scale {scale!r} is not a number > 0")
        check_records(meta, source)
        return cls(generator=generator, normalization=normalization, inference=InferenceDefaults.from_metadata(meta, source),
                   influence_radius=radius, uncertainty_scale=float(scale), metadata=meta, source=str(source))

    @property
    def packaged(self) -> bool:
        """Whether this is one of the models shipped inside ``msrgan_core/weights``."""
        path = Path(self.source)
        return path.parent == packaged_model_path(path.stem).parent

    @property
    def label(self) -> str:
        """How messages name the model: a packaged one by its file name, marked so, any other by
        its path (a training run's ``fidelity.safetensors`` is not the packaged one)."""
        return f"{Path(self.source).name} (packaged)" if self.packaged else str(self.source)

    @property
    def argument(self) -> str:
        """How a command names the model: a packaged one's name, a file's path quoted for a shell,
        ``MODEL.safetensors`` for one not saved (a blend made in memory)."""
        if self.packaged:
            return Path(self.source).stem
        return shlex.quote(self.source) if Path(self.source).is_file() else "MODEL.safetensors"

    @property
    def uncertainty_calibrated_for(self) -> "Optional[tuple[int, bool]]":
        """The orientations the uncertainty's spread was taken over and whether bins were matched,
        when ``msrgan calibrate`` measured its scale (None: never calibrated, the raw spread). Files
        calibrated before match_bins was recorded were calibrated with their own defaults."""
        calibration = self.metadata.get("uncertainty_calibration")
        if not isinstance(calibration, dict):
            return None
        return int(calibration.get("orientations", 2)), bool(calibration.get("match_bins", self.inference.match_bins))

    def uncertainty_problem(self, ensemble: int, match_bins: bool) -> str:
        """Why the uncertainty image of a run with ``ensemble`` orientations and ``match_bins`` is not
        on its output's error scale, or ''.

        The calibration holds for the spread over the orientations and the bins it was measured with
        (a single pass takes its spread over 2): 8 orientations spread more than 2 while their mean
        errs less, and matched bins move the error. On held-out fields `fidelity`'s mean absolute
        error was 0.87 times its mean uncertainty as calibrated, 0.54 with 8 orientations and 1.12
        with bins matched.
        """
        name, calibrated_for = self.label, self.uncertainty_calibrated_for
        if calibrated_for is None:
            return (f"the uncertainty image of {name} is not calibrated: the raw spread over orientations, several times "
                    f"smaller than the error as a rule (msrgan calibrate {self.argument} --hr HELD_OUT_IMAGES -o "
                    "CALIBRATED.safetensors)")
        running = (uncertainty_orientation_count(ensemble), bool(match_bins))
        if running == calibrated_for:
            return ""

        def says(setting: "tuple[int, bool]") -> str:
            return f"a spread over {setting[0]} orientations with bins {'matched' if setting[1] else 'as output'}"
        return (f"the uncertainty image of {name} was calibrated for {says(calibrated_for)}; a run with "
                f"{ensemble} orientation(s) and bins {'matched' if match_bins else 'as output'} takes {says(running)}, "
                "so its uncertainty is not on the error's scale: calibrate the model with those options")

    def provenance(self) -> Dict[str, Any]:
        """Where this model came from, in a few fields: what a model trained or blended from it records."""
        trained = self.metadata.get("training", {})
        return {"model": Path(self.source).name, "name": self.metadata.get("name") or Path(self.source).stem,
                "steps": trained.get("steps"), "created": self.metadata.get("created"),
                "hardware": trained.get("hardware"), "init": trained.get("init")}

    def summary(self) -> str:
        """A plain account for ``msrgan info``: what images it is for, how it runs, its figures."""
        meta, g = self.metadata, self.generator
        trained = meta.get("training", {})
        lines = [f"{self.label}: msrgan model {meta.get('name', '(unnamed)')!r}, {g.scale}x, "
                 f"{g.in_channels} channel(s) in and out"]
        if meta.get("description"):
            lines.append(f"  what: {meta['description']}")
        if trained.get("data"):
            lines.append(f"  trained on: {trained['data']}")
        degradation = meta.get("degradation")
        if isinstance(degradation, dict):
            lines.append(f"  for inputs like: {describe_degradation(degradation)}")
        elif trained.get("real_pairs"):
            lines.append(f"  for inputs like: the low-resolution acquisitions of its {trained.get('train_files')} "
                         "training fields (real pairs, registered)")
        lines.append(f"  network: {g.architecture}, {g.n_blocks} x {g.n_features} features"
                     + (f"; tiles need {self.influence_radius} pixels of context" if self.influence_radius is not None else ""))
        lines.append(f"  runs by default with: {self.inference.describe()}")
        calibration, calibrated_for = meta.get("uncertainty_calibration"), self.uncertainty_calibrated_for
        if calibrated_for:
            orientations, bins = calibrated_for
            lines.append(f"  uncertainty image: the spread over orientations x {self.uncertainty_scale:.2f}, calibrated on "
                         f"{calibration.get('images')} image(s) ({', '.join(calibration.get('degradations', []))}), for "
                         f"a spread over {orientations} orientation(s) with bins {'matched' if bins else 'as output'}")
        else:
            lines.append(f"  uncertainty image: not calibrated: the spread over orientations x {self.uncertainty_scale:g}, "
                         "several times smaller than the error as a rule (msrgan calibrate puts it on the error's scale)")
        if trained:
            start = trained.get("init") if isinstance(trained.get("init"), dict) else None
            lines.append(f"  training: {trained.get('steps')} steps"
                         + (f" from {start.get('model')} ({start.get('steps')} steps of its own)" if start else "")
                         + f", batch {trained.get('batch_size')} of "
                         f"{trained.get('patch_size')}-pixel patches, on {trained.get('hardware')}; "
                         f"split by {trained.get('split_by')} ({trained.get('val_files')} held out)")
        if meta.get("blend"):
            blend = meta["blend"]

            def end(key: str, older: str) -> Any:  # blends before 2026-12-02 named their ends by role
                found = blend.get(key, blend.get(older))
                return found.get("model") if isinstance(found, dict) else found
            lines.append(f"  a blend: {blend.get('weight')} x {end('a', 'adversarial')} + "
                         f"{1 - float(blend.get('weight', 0)):g} x {end('b', 'fidelity')}")
        figures = meta.get("validation") or {}
        if "val_psnr" in figures:
            lines.append(f"  validation (training's own held-out pairs): PSNR {figures['val_psnr']:.2f} dB, "
                         f"bicubic {figures.get('bicubic_psnr', float('nan')):.2f} dB")
        if meta.get("created"):
            lines.append(f"  created: {meta['created']} with msrgan {meta.get('msrgan_version')}")
        for change in meta.get("changes", []):
            lines.append(f"  changed: {change.get('at')} with msrgan {change.get('msrgan_version')}: {change.get('what')}")
        return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: the optional records a model file keeps of its history, and what each must hold where present:
#: ``msrgan info`` and the uncertainty checks read them
RECORDS = {
    "training": (lambda v: isinstance(v, dict), "an object"),
    "validation": (lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()), "an object of numbers"),
    "changes": (lambda v: isinstance(v, list) and all(isinstance(c, dict) for c in v), "a list of objects"),
    "blend": (lambda v: isinstance(v, dict) and _is_number(v.get("weight")), "an object with a weight"),
    "degradation": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "uncertainty_calibration": (
        lambda v: isinstance(v, dict) and _is_whole(v.get("orientations", 2))
        and isinstance(v.get("match_bins", False), bool) and isinstance(v.get("degradations", []), list),
        "an object with whole orientations, a true/false match_bins and a list of degradations"),
}


def check_records(meta: Dict[str, Any], source: "str | Path") -> None:
    """Raise :class:`ModelFileError` where one of a file's :data:`RECORDS` is not what it must be."""
    for key, (valid, what) in RECORDS.items():
        if key in meta and not valid(meta[key]):
            raise ModelFileError(f"{source}: its {key} metadata {meta[key]!r:.80} is not {what}: the file was edited "
                                 "or damaged")


def describe_degradation(d: Dict[str, Any]) -> str:
    """A degradation record in words: ``4 x 4 binning after a blur of 0-2.5 px, 30-100000 photons ...``."""
    def span(values, unit=""):
        low, high = values
        return f"{low:g}{unit}" if low == high else f"{low:g}-{high:g}{unit}"

    parts = [f"{d.get('scale')} x {d.get('scale')} {'binning' if d.get('method') == 'bin' else 'bicubic downsampling'}"]
    if d.get("blur_sigma") and max(d["blur_sigma"]) > 0:
        parts.append(f"blur sigma {span(d['blur_sigma'], ' px')}")
    if d.get("poisson_peak") and max(d["poisson_peak"]) > 0:
        parts.append(f"{span(d['poisson_peak'])} photons at the 99.8th percentile")
    share = d.get("degraded_fraction", 1.0)
    if share < 1:
        parts.append(f"on {100 * share:g}% of patches, the rest plainly binned")
    return ", ".join(parts)


def packaged_model_path(name: str) -> Path:
    """Path of a model shipped inside ``msrgan_core/weights``."""
    return Path(__file__).resolve().parent / "weights" / f"{name}.safetensors"


def resolve_model(name_or_path: "str | Path | None") -> Path:
    """A packaged model's name (``fidelity``, ``perceptual``; ``None`` = ``fidelity``) or a path.

    A path that does not exist is an error: a custom model is never replaced by a packaged one. A
    file named as a packaged model in the working folder is named with a warning, not taken.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODELS[0]
    if not str(name_or_path).strip():  # an unset shell variable, say: never the default model in its place
        raise ModelFileError(f"no model named (an empty name): give a packaged model ({', '.join(DEFAULT_MODELS)}) "
                             "or a model file")
    if str(name_or_path) in DEFAULT_MODELS:
        path = packaged_model_path(str(name_or_path))
        if not path.is_file():
            raise ModelFileError(f"the packaged model {name_or_path!r} is missing from {path.parent}: reinstall msrgan")
        if Path(name_or_path).is_file():
            log.warning("%s: the packaged model of that name runs, not the file of that name in this folder (give ./%s "
                        "for the file)", name_or_path, name_or_path)
        return path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise ModelFileError(f"model file {path} is a folder: give the .safetensors file in it")
    if not path.is_file():
        raise ModelFileError(
            f"model file {path} does not exist (packaged models: {', '.join(DEFAULT_MODELS)})"
        )
    return path


def read_metadata(path: "str | Path") -> Dict[str, Any]:
    """The JSON metadata of a model file, without reading its weights (checked: :func:`read_card`)."""
    return read_card(path).metadata


def read_card(name_or_path: "str | Path | None", check_weights: bool = True) -> ModelCard:
    """The validated card of a packaged model (by name) or a model file (by path); with
    ``check_weights``, its weights read (as numpy, without torch) against their checksum
    (:func:`check_checksum`). A load that reads them anyway checks them there instead."""
    from safetensors import safe_open

    path = resolve_model(name_or_path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own and OS errors for damaged files
        raise ModelFileError(
            f"{path} is not a readable safetensors model file (truncated or damaged?): {gist(exc)}"
        ) from None
    if METADATA_KEY not in raw:
        raise ModelFileError(f"{path} is a safetensors file but not an msrgan model (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: its msrgan metadata is not valid JSON ({exc})") from None
    card = ModelCard.from_metadata(meta, path)
    if check_weights and meta.get(CHECKSUM_KEY) is not None:
        try:
            with safe_open(str(path), framework="numpy") as fh:
                weights = {name: fh.get_tensor(name) for name in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors' own and OS errors for damaged weights
            raise ModelFileError(f"{path}: its weights cannot be read (truncated or damaged?): {gist(exc)}") from None
        check_checksum(card, weights)
    return card


def check_checksum(card: ModelCard, weights: Dict[str, Any]) -> None:
    """Refuse weights whose checksum (:func:`weights_checksum`) is not the one their file was written
    with; files written before checksums pass."""
    saved = card.metadata.get(CHECKSUM_KEY)
    if saved is not None and weights_checksum(weights) != saved:
        raise ModelFileError(f"{card.source}: its weights are damaged (their checksum is not the one written with "
                             "them): copy the file again from its source")


def weights_checksum(tensors: Dict[str, Any]) -> str:
    """SHA-256 over every weight's name, dtype, shape and bytes, in name order: of numpy arrays, or
    of torch tensors (as numpy sees them), so that it is checked without torch."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        array = np.ascontiguousarray(tensor if isinstance(tensor, np.ndarray) else tensor.detach().cpu().numpy())
        digest.update(f"{name}|{array.dtype.name}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def gist(exc: Exception, limit: int = 160) -> str:
    """A library's error in one line of at most about ``limit`` characters (safetensors quotes a
    damaged header whole, torch lists every weight)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def describe(meta: Dict[str, Any]) -> str:
    """Every entry of a model's metadata, one ``key.sub: value`` line each, for ``msrgan info --all``."""
    lines = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else key, value[key])
        else:
            lines.append(f"{prefix}: {value}")

    walk("", meta)
    return "\n".join(lines)


def timestamp() -> str:
    """Now, as model files record when they were made or changed: ``2026-12-08T02:30:00+0000``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def with_change(metadata: Dict[str, Any], what: str) -> Dict[str, Any]:
    """``metadata`` with a line added to its ``changes``: what a command (calibrate, blend,
    set-defaults) did to the file, when and with which msrgan; ``created`` stays the training's."""
    from . import __version__

    change = {"what": what, "at": timestamp(), "msrgan_version": __version__}
    return dict(metadata, changes=[*metadata.get("changes", []), change])


def generator_metadata(config: GeneratorConfig) -> Dict[str, Any]:
    """The entries a generator writes about itself into its model file."""
    from . import __version__

    return {"format_version": FORMAT_VERSION, "msrgan_version": __version__, "generator": dataclasses.asdict(config),
            "scale": config.scale, "in_channels": config.in_channels, "out_channels": config.out_channels}
