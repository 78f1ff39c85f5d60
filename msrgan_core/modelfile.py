"""Model files: safetensors weights with self-describing JSON metadata (:mod:`msrgan_core.modelcard`).

Loading never unpickles, and a file loads with no code edits. Resume state (optimisers, step)
lives in separate checkpoint files written by ``train.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import GeneratorConfig, NormalizationConfig
from .io import atomic_write
from .modelcard import (  # noqa: F401 - re-exported: what a model file is, beside how it loads
    CHECKSUM_KEY, DEFAULT_MODELS, FORMAT_VERSION, METADATA_KEY, InferenceDefaults, ModelCard, ModelFileError,
    check_checksum, describe, generator_metadata, gist, packaged_model_path, read_card, read_metadata, resolve_model,
    timestamp, weights_checksum, with_change,
)
from .models import build_generator, influence_radius


@dataclass
class LoadedModel:
    """A generator ready for inference, with its validated card."""

    generator: nn.Module
    card: ModelCard

    @property
    def source(self) -> str:
        return self.card.source

    @property
    def label(self) -> str:
        return self.card.label

    @property
    def metadata(self) -> Dict[str, Any]:
        return self.card.metadata

    @property
    def config(self) -> GeneratorConfig:
        return self.card.generator

    @property
    def scale(self) -> int:
        return self.card.scale

    @property
    def normalization(self) -> NormalizationConfig:
        return self.card.normalization

    @property
    def inference(self) -> InferenceDefaults:
        return self.card.inference

    @property
    def influence_radius(self) -> int:
        """Input pixels of context a tile needs (:func:`msrgan_core.models.influence_radius`): as
        the file records it, or measured once for files that do not."""
        if self.card.influence_radius is None:
            self.card = replace(self.card, influence_radius=influence_radius(self.generator))
        return self.card.influence_radius


def save_model(path: "str | Path", generator: nn.Module, metadata: Dict[str, Any]) -> Path:
    """Write weights and metadata atomically (temporary file, then rename).

    ``metadata`` is merged over what the generator itself says (architecture, scale, channels,
    format and msrgan version); its influence radius is measured unless ``metadata`` gives it. The
    weights' checksum (:func:`weights_checksum`) is written with them, so damage shows at load.
    """
    import json

    path = Path(path)
    meta = generator_metadata(generator.config)
    meta.update(metadata)
    if "influence_radius" not in meta:
        meta["influence_radius"] = influence_radius(generator)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    meta[CHECKSUM_KEY] = weights_checksum(tensors)
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return path


def load_model(name_or_path: "str | Path | None" = None) -> LoadedModel:
    """Load a packaged model by name or a model file by path onto the CPU, in eval mode.

    Raises
    ------
    ModelFileError
        Missing, truncated or foreign file, metadata that does not validate, or weights that do
        not match the architecture.
    """
    card = read_card(name_or_path, check_weights=False)  # checked below on the weights read once
    path = card.source
    generator = build_generator(card.generator)
    try:
        with safe_open(path, framework="pt", device="cpu") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own and OS errors for damaged files
        raise ModelFileError(f"{path}: its weights cannot be read (truncated or damaged?): {gist(exc)}") from None
    check_checksum(card, state)
    mismatch = weights_mismatch(generator.state_dict(), state)
    if not mismatch:
        try:
            generator.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # what the names and shapes do not show (a dtype torch cannot copy)
            mismatch = gist(exc)
    if mismatch:
        net = card.generator
        raise ModelFileError(f"{path}: its weights do not match the network its metadata describes ({net.architecture}, "
                             f"{net.n_blocks} x {net.n_features}, {net.scale}x): {mismatch}; was the file edited, "
                             "or written by another program?")
    generator.eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    return LoadedModel(generator=generator, card=card)


def weights_mismatch(expected: Dict[str, torch.Tensor], found: Dict[str, torch.Tensor]) -> str:
    """How ``found`` weights differ from a network's ``expected`` ones, counted ('' where they fit)."""
    missing = [k for k in expected if k not in found]
    foreign = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    return ", ".join(f"{len(names)} {what} (first: {names[0]})" for names, what in
                     ((missing, "missing"), (foreign, "not of this network"), (reshaped, "of another shape")) if names)


def blend_models(a: LoadedModel, b: LoadedModel, weight: float) -> LoadedModel:
    """Network interpolation: ``weight`` x ``a`` + (1 - ``weight``) x ``b``, weight by weight.

    Between an adversarial model and the fidelity model it was trained on from, this trades
    texture for accuracy without retraining (Wang et al., ESRGAN); it is meaningful only for
    models with a common start, which is for the caller to know. Models whose architecture or
    normalisation differ are a :class:`ModelFileError`. The result's metadata is ``a``'s, named as
    a blend, with a ``blend`` note of both and without ``a``'s validation figures, influence radius
    and uncertainty calibration (they no longer hold).
    """
    if not 0.0 <= float(weight) <= 1.0:
        raise ModelFileError(f"the blend weight must be between 0 and 1, got {weight!r}")
    if a.config != b.config:
        raise ModelFileError(f"cannot blend {a.source} ({a.config}) with {b.source} ({b.config}): the architectures differ")
    if a.normalization != b.normalization:
        raise ModelFileError(f"cannot blend {a.source} ({a.normalization}) "
                             f"with {b.source} ({b.normalization}): the normalisations differ")
    generator = build_generator(a.config)
    mine, theirs = a.generator.state_dict(), b.generator.state_dict()
    generator.load_state_dict({k: torch.lerp(theirs[k].float(), mine[k].float(), float(weight)).to(mine[k].dtype)
                               for k in mine})
    generator.eval().requires_grad_(False)
    meta = {k: v for k, v in a.metadata.items()  # what held for a alone
            if k not in ("validation", "influence_radius", "uncertainty_scale", "uncertainty_calibration")}
    ends = {"a": a.card.provenance(), "b": b.card.provenance()}
    meta["blend"] = {"weight": float(weight), **ends}
    meta["name"] = f"blend {float(weight):g} x {ends['a']['name']} + {1 - float(weight):g} x {ends['b']['name']}"
    card = ModelCard.from_metadata(meta, f"blend of {a.source} and {b.source}")
    return LoadedModel(generator=generator, card=card)


def with_inference_defaults(model: LoadedModel, ensemble: int, match_bins: bool) -> LoadedModel:
    """The same weights, set to run with ``ensemble`` orientations and ``match_bins`` by default.
    What its uncertainty was calibrated with stays said in full (older files left the bins to
    the defaults being replaced)."""
    meta = dict(model.metadata, inference={"ensemble": int(ensemble), "match_bins": bool(match_bins)})
    calibrated_for = model.card.uncertainty_calibrated_for
    if calibrated_for is not None:
        orientations, bins_matched = calibrated_for
        meta["uncertainty_calibration"] = dict(meta["uncertainty_calibration"], orientations=orientations,
                                               match_bins=bins_matched)
    return LoadedModel(generator=model.generator, card=ModelCard.from_metadata(meta, model.source))
