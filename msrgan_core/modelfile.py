"""Model files: safetensors weights with self-describing JSON metadata.

A model file holds the generator's weights and, in the safetensors metadata under the key
``msrgan``, a JSON document with the architecture, scale, channels, normalisation,
degradation, training summary, validation metrics and msrgan version. Loading never
unpickles, and a file loads with no code edits. Resume state (optimisers, step) lives in
separate checkpoint files written by ``train.py``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .io import atomic_write
from .config import ConfigError, GeneratorConfig, NormalizationConfig
from .models import build_generator, influence_radius

FORMAT_VERSION = 1
METADATA_KEY = "msrgan"
#: the packaged models, selectable by name instead of a path
DEFAULT_MODELS = ("fidelity", "perceptual")
#: orientations an upscaler may average (:func:`msrgan_core.inference.orientations`)
ENSEMBLES = (1, 2, 4, 8)


class ModelFileError(ValueError):
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


@dataclass
class LoadedModel:
    """A generator ready for inference, with what its file says about it."""

    generator: nn.Module
    metadata: Dict[str, Any]
    source: str

    @property
    def config(self) -> GeneratorConfig:
        return self.generator.config

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def normalization(self) -> NormalizationConfig:
        return NormalizationConfig(**self.metadata.get("normalization", {}))

    @property
    def inference(self) -> InferenceDefaults:
        return InferenceDefaults.from_metadata(self.metadata, self.source)

    @property
    def influence_radius(self) -> int:
        """Input pixels of context a tile needs (:func:`msrgan_core.models.influence_radius`): as
        the file records it, or measured once for files that do not."""
        if "influence_radius" not in self.metadata:
            self.metadata["influence_radius"] = influence_radius(self.generator)
        return int(self.metadata["influence_radius"])


def packaged_model_path(name: str) -> Path:
    """Path of a model shipped inside ``msrgan_core/weights``."""
    return Path(str(resources.files("msrgan_core") / "weights" / f"{name}.safetensors"))


def resolve_model(name_or_path: "str | Path | None") -> Path:
    """A packaged model's name (``fidelity``, ``perceptual``; ``None`` = ``fidelity``) or a path.

    A path that does not exist is an error: a custom model is never replaced by a packaged one.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODELS[0]
    if str(name_or_path) in DEFAULT_MODELS:
        path = packaged_model_path(str(name_or_path))
        if not path.is_file():
            raise ModelFileError(f"the packaged model {name_or_path!r} is missing from {path.parent}: reinstall msrgan")
        return path
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ModelFileError(
            f"model file {path} does not exist (packaged models: {', '.join(DEFAULT_MODELS)})"
        )
    return path


def save_model(path: "str | Path", generator: nn.Module, metadata: Dict[str, Any]) -> Path:
    """Write weights and metadata atomically (temporary file, then rename).

    ``metadata`` is merged over what the generator itself says (architecture, scale, channels,
    format and msrgan version); its influence radius is measured unless ``metadata`` gives it.
    """
    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "msrgan_version": __version__,
        "generator": dataclasses.asdict(generator.config),
        "scale": generator.config.scale,
        "in_channels": generator.config.in_channels,
        "out_channels": generator.config.out_channels,
    }
    meta.update(metadata)
    if "influence_radius" not in meta:
        meta["influence_radius"] = influence_radius(generator)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return path


def read_metadata(path: "str | Path") -> Dict[str, Any]:
    """The JSON metadata of a model file, without reading its weights."""
    path = resolve_model(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except Exception as exc:
        raise ModelFileError(
            f"{path} is not a readable safetensors model file (truncated or damaged?): {exc}"
        ) from None
    if METADATA_KEY not in raw:
        raise ModelFileError(f"{path} is a safetensors file but not an msrgan model (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: its msrgan metadata is not valid JSON ({exc})") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version!r}; this msrgan ({__version__}) reads version {FORMAT_VERSION}"
        )
    return meta


def load_model(name_or_path: "str | Path | None" = None) -> LoadedModel:
    """Load a packaged model by name or a model file by path onto the CPU, in eval mode.

    Raises
    ------
    ModelFileError
        Missing, truncated or foreign file, or weights that do not match the architecture.
    """
    path = resolve_model(name_or_path)
    meta = read_metadata(path)
    InferenceDefaults.from_metadata(meta, path)  # a damaged entry fails here, not at the first image
    try:
        config = GeneratorConfig(**meta["generator"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise ModelFileError(f"{path}: its architecture metadata is invalid ({exc})") from None
    generator = build_generator(config)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise ModelFileError(f"{path}: its weights cannot be read (truncated or damaged?): {exc}") from None
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: its weights do not match its architecture {config}: {exc}") from None
    generator.eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    return LoadedModel(generator=generator, metadata=meta, source=str(path))


def blend_models(adversarial: LoadedModel, fidelity: LoadedModel, weight: float) -> LoadedModel:
    """Network interpolation: ``weight`` x adversarial + (1 - ``weight``) x fidelity, weight by weight.

    Trades some of an adversarial model's texture for its fidelity model's accuracy without
    retraining (Wang et al., ESRGAN). It is meaningful only when the adversarial model was
    trained on from the fidelity one, so the two share an architecture and normalisation;
    anything else is a :class:`ModelFileError`. The result's metadata is the adversarial
    model's, with a ``blend`` note and without its validation figures (they no longer hold).
    """
    if not 0.0 <= float(weight) <= 1.0:
        raise ModelFileError(f"the blend weight must be between 0 and 1, got {weight!r}")
    if adversarial.config != fidelity.config:
        raise ModelFileError(f"cannot blend {adversarial.source} ({adversarial.config}) "
                             f"with {fidelity.source} ({fidelity.config}): the architectures differ")
    if adversarial.normalization != fidelity.normalization:
        raise ModelFileError(f"cannot blend {adversarial.source} ({adversarial.normalization}) "
                             f"with {fidelity.source} ({fidelity.normalization}): the normalisations differ")
    generator = build_generator(adversarial.config)
    mine, theirs = adversarial.generator.state_dict(), fidelity.generator.state_dict()
    generator.load_state_dict({k: torch.lerp(theirs[k].float(), mine[k].float(), float(weight)).to(mine[k].dtype)
                               for k in mine})
    generator.eval().requires_grad_(False)

    def note(model: LoadedModel) -> Dict[str, Any]:
        meta = model.metadata
        return {"model": model.source, "name": meta.get("name"), "created": meta.get("created"),
                "steps": meta.get("training", {}).get("steps")}

    meta = {k: v for k, v in adversarial.metadata.items() if k not in ("validation", "influence_radius")}
    meta["blend"] = {"weight": float(weight), "adversarial": note(adversarial), "fidelity": note(fidelity)}
    return LoadedModel(generator=generator, metadata=meta, source=f"blend of {adversarial.source} and {fidelity.source}")


def with_inference_defaults(model: LoadedModel, ensemble: int, match_bins: bool) -> LoadedModel:
    """The same weights, set to run with ``ensemble`` orientations and ``match_bins`` by default."""
    meta = dict(model.metadata, inference={"ensemble": int(ensemble), "match_bins": bool(match_bins)})
    InferenceDefaults.from_metadata(meta, model.source)
    return LoadedModel(generator=model.generator, metadata=meta, source=model.source)


def describe(meta: Dict[str, Any]) -> str:
    """A readable multi-line summary of model metadata, for ``msrgan info``."""
    lines = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else key, value[key])
        else:
            lines.append(f"{prefix}: {value}")

    walk("", meta)
    return "\n".join(lines)
