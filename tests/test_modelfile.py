"""Model files: self-describing safetensors, never unpickled, every bad file a ModelFileError."""
from __future__ import annotations

import dataclasses
import json
import re
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import tiny_generator
from msrgan_core.config import NormalizationConfig
from msrgan_core.modelfile import (
    DEFAULT_MODELS, METADATA_KEY, InferenceDefaults, ModelFileError, blend_models, load_model, packaged_model_path,
    read_metadata, resolve_model, save_model, weights_checksum, with_inference_defaults,
)


def _x(seed=0):
    return torch.rand((1, 1, 12, 10), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def saved(tmp_path):
    generator = tiny_generator(scale=2, n_blocks=2, seed=7)
    path = save_model(tmp_path / "m.safetensors", generator, {"normalization": {"low": 2.0, "high": 99.0}, "note": "x"})
    return path, generator


def test_round_trip_gives_identical_outputs(saved):
    path, generator = saved
    loaded = load_model(path)
    assert loaded.scale == 2 and loaded.config == generator.config
    assert not loaded.generator.training
    assert not any(p.requires_grad for p in loaded.generator.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.generator(_x()), generator(_x()))


def test_metadata_describes_the_model(saved):
    path, generator = saved
    meta = read_metadata(path)
    assert meta["generator"]["n_blocks"] == 2 and meta["scale"] == 2
    assert meta["in_channels"] == meta["out_channels"] == 1
    assert meta["note"] == "x" and "msrgan_version" in meta
    assert load_model(path).normalization == NormalizationConfig(low=2.0, high=99.0)
    with safe_open(str(path), framework="pt") as fh:  # plain JSON in string-to-string metadata
        assert json.loads(fh.metadata()[METADATA_KEY]) == meta


def test_save_is_atomic_and_overwrites(saved):
    path, generator = saved
    save_model(path, generator, {"note": "second"})
    assert read_metadata(path)["note"] == "second"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_load_never_unpickles(tmp_path, monkeypatch, saved):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"head.0.weight": Payload()}))
    with pytest.raises(ModelFileError):
        load_model(evil)
    assert not marker.exists()

    torch_file = tmp_path / "torch.safetensors"
    torch.save(tiny_generator().state_dict(), torch_file)
    with pytest.raises(ModelFileError):
        load_model(torch_file)

    def forbidden(*args, **kwargs):
        raise AssertionError("a model file was unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_model(saved[0])


def test_weights_changed_after_saving_are_refused_as_damaged(saved):
    """A changed byte leaves finite weights that run: only the checksum saved with them shows it."""
    path, generator = saved
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a low bit of the last weight: a finite number still
    path.write_bytes(bytes(data))
    for read in (load_model, read_metadata):  # read_metadata: what `msrgan info` reads, without torch
        with pytest.raises(ModelFileError, match="m.safetensors: its weights are damaged"):
            read(path)
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    assert load_model(path).metadata["weights_sha256"] == weights_checksum(generator.state_dict())
    for name in DEFAULT_MODELS:  # the packaged files carry theirs and match it
        assert len(read_metadata(packaged_model_path(name))["weights_sha256"]) == 64


@pytest.mark.parametrize("keep", [0.5, 0.02, 4])
def test_truncated_file(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    size = keep if isinstance(keep, int) else int(len(data) * keep)
    path.write_bytes(data[:size])
    with pytest.raises(ModelFileError, match="m.safetensors"):
        load_model(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not an msrgan model"):
        load_model(path)
    save_file({"weight": torch.zeros(3)}, str(path))  # no metadata at all
    with pytest.raises(ModelFileError, match="not an msrgan model"):
        load_model(path)


def test_missing_custom_path_never_falls_back(tmp_path):
    missing = tmp_path / "my_model.safetensors"
    with pytest.raises(ModelFileError, match="my_model.safetensors.*does not exist"):
        load_model(missing)
    with pytest.raises(ModelFileError):
        resolve_model(str(tmp_path / "fidelity"))  # a path that merely ends like a packaged name
    for empty in ("", " "):  # an unset shell variable: an error, not the default model
        with pytest.raises(ModelFileError, match="no model named"):
            resolve_model(empty)


def test_a_file_named_as_a_packaged_model_is_named_in_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert resolve_model("perceptual") == packaged_model_path("perceptual") and not caplog.records
    (tmp_path / "perceptual").write_bytes(b"a user's model file, saved without its suffix")
    assert resolve_model("perceptual") == packaged_model_path("perceptual")
    assert "give ./perceptual for the file" in caplog.text
    assert resolve_model("./perceptual") == Path("perceptual")


def test_messages_tell_a_runs_model_from_the_packaged_one_of_the_same_name(tmp_path, caplog):
    import logging
    from msrgan_core.inference import Upscaler

    packaged = load_model("fidelity")
    run = tmp_path / "runs" / "plate1"
    run.mkdir(parents=True)
    mine = load_model(save_model(run / "fidelity.safetensors", packaged.generator, packaged.metadata))
    assert packaged.label == "fidelity.safetensors (packaged)" and mine.label == str(run / "fidelity.safetensors")
    with caplog.at_level(logging.INFO, logger="msrgan"):
        Upscaler(mine, device="cpu")
    assert f"model {run / 'fidelity.safetensors'} on cpu" in caplog.text
    assert mine.card.summary().startswith(f"{run / 'fidelity.safetensors'}: msrgan model 'fidelity'")


def test_weights_that_do_not_match_the_metadata(tmp_path, saved):
    path, generator = saved
    counted = 0
    for change in ({"n_blocks": 3}, {"n_features": 16}, {"scale": 4}):
        meta = read_metadata(path)
        meta["generator"].update(change)
        bad = tmp_path / "bad.safetensors"
        tensors = {k: v.contiguous() for k, v in generator.state_dict().items()}
        save_file(tensors, str(bad), metadata={METADATA_KEY: json.dumps(meta)})
        with pytest.raises(ModelFileError, match="do not match") as raised:
            load_model(bad)
        said = str(raised.value)  # counted in one short line, not every weight listed
        assert "\n" not in said and len(said) < 400 + len(str(bad)), said
        if "weights do not match" in said:  # not the scale, which the metadata's own check refuses
            assert re.search(r"\d+ (missing|not of this network|of another shape) \(first: ", said), said
            counted += 1
    assert counted == 2  # the blocks and the features


@pytest.mark.parametrize("meta,message", [
    ({"format_version": 99}, "version 99"),
    ({"format_version": 1, "generator": {"scale": 3}}, "architecture"),
    ({"format_version": 1}, "architecture"),
    ("{not json", "JSON"),
])
def test_bad_metadata(tmp_path, saved, meta, message):
    _, generator = saved
    path = tmp_path / "bad_meta.safetensors"
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(path), metadata={METADATA_KEY: raw})
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


@pytest.mark.parametrize("record", [
    {"validation": {"val_psnr": "x"}}, {"training": "a string"}, {"changes": [1]},
    {"uncertainty_calibration": {"orientations": "two"}}, {"uncertainty_calibration": {"match_bins": "yes"}},
    {"blend": {"weight": "half"}},
])
def test_a_damaged_history_record_is_a_bad_file_not_a_crash(tmp_path, saved, record):
    """What msrgan info and the uncertainty checks read is checked at load, as the weights are."""
    path, generator = saved
    bad = tmp_path / "edited.safetensors"
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(bad),
              metadata={METADATA_KEY: json.dumps(dict(read_metadata(path), **record))})
    key = next(iter(record))
    with pytest.raises(ModelFileError, match=f"edited.safetensors: its {key} metadata .* is not"):
        load_model(bad)


def test_a_blend_written_by_an_older_msrgan_still_loads(tmp_path, saved):
    """Blends of 2026-11-30 to 12-01 named their ends by role."""
    path, generator = saved
    older = tmp_path / "old_blend.safetensors"
    record = {"weight": 0.8, "adversarial": {"model": "perceptual.safetensors"}, "fidelity": {"model": "fidelity.safetensors"}}
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(older),
              metadata={METADATA_KEY: json.dumps(dict(read_metadata(path), blend=record))})
    assert "a blend: 0.8 x perceptual.safetensors + 0.2 x fidelity.safetensors" in load_model(older).card.summary()


def test_inference_defaults_are_written_read_and_checked(tmp_path, saved):
    path, generator = saved
    plain = load_model(path)
    assert plain.inference == InferenceDefaults(ensemble=1, match_bins=False)  # files that do not say run once
    set_ = with_inference_defaults(plain, 4, True)
    reloaded = load_model(save_model(tmp_path / "set.safetensors", set_.generator, set_.metadata))
    assert reloaded.inference == InferenceDefaults(ensemble=4, match_bins=True)
    assert reloaded.metadata["note"] == "x" and reloaded.normalization == plain.normalization
    with torch.no_grad():
        assert torch.equal(reloaded.generator(_x()), plain.generator(_x()))  # the same weights
    with pytest.raises(ModelFileError, match="one of"):
        with_inference_defaults(plain, 3, True)
    for entry in ({"ensemble": 3}, {"match_bins": "yes"}, {"orientations": 2}, [2, True]):
        bad = tmp_path / "bad_inference.safetensors"
        save_model(bad, generator, {"normalization": {"low": 2.0, "high": 99.0}, "inference": entry})
        with pytest.raises(ModelFileError, match="bad_inference.safetensors: its inference metadata"):
            load_model(bad)


def _pair(tmp_path, **kwargs):
    norm = {"normalization": {"low": 2.0, "high": 99.0}}
    fid = save_model(tmp_path / "f.safetensors", tiny_generator(scale=2, n_blocks=2, seed=1), {**norm, "name": "fidelity"})
    adv = save_model(tmp_path / "a.safetensors", tiny_generator(scale=2, n_blocks=2, seed=2, **kwargs),
                     {**norm, "name": "perceptual", "validation": {"val_psnr": 30.0}, "training": {"steps": 9}})
    return load_model(adv), load_model(fid)


def test_blend_is_the_weighted_mean_of_the_weights_and_says_so(tmp_path):
    adv, fid = _pair(tmp_path)
    blended = blend_models(adv, fid, 0.75)
    a, f, b = adv.generator.state_dict(), fid.generator.state_dict(), blended.generator.state_dict()
    assert not torch.equal(a["tail.weight"], f["tail.weight"])
    for key in a:
        torch.testing.assert_close(b[key], 0.75 * a[key] + 0.25 * f[key])
    with torch.no_grad():  # the two ends are the models themselves
        assert torch.equal(blend_models(adv, fid, 1.0).generator(_x()), adv.generator(_x()))
        assert torch.equal(blend_models(adv, fid, 0.0).generator(_x()), fid.generator(_x()))
    # written and read back like any model: the adversarial model's metadata named as a blend, a blend note, no stale figures
    reloaded = load_model(save_model(tmp_path / "b.safetensors", blended.generator, blended.metadata))
    meta = reloaded.metadata
    assert meta["name"] == "blend 0.75 x perceptual + 0.25 x fidelity" and meta["training"]["steps"] == 9
    assert "validation" not in meta
    assert meta["blend"]["weight"] == 0.75 and meta["blend"]["a"]["steps"] == 9 and meta["blend"]["a"]["name"] == "perceptual"
    assert meta["blend"]["b"]["model"] == "f.safetensors"  # the file's name: no path into the blender's folders
    assert reloaded.normalization == NormalizationConfig(low=2.0, high=99.0)
    with torch.no_grad():
        assert torch.equal(reloaded.generator(_x()), blended.generator(_x()))


def test_blend_refuses_models_that_do_not_match_and_weights_outside_0_1(tmp_path):
    adv, fid = _pair(tmp_path / "same")
    for weight in (-0.1, 1.5):
        with pytest.raises(ModelFileError, match="between 0 and 1"):
            blend_models(adv, fid, weight)
    wider, fid = _pair(tmp_path / "wider", n_features=16)
    with pytest.raises(ModelFileError, match="architectures differ"):
        blend_models(wider, fid, 0.5)
    other = save_model(tmp_path / "o.safetensors", tiny_generator(scale=2, n_blocks=2, seed=3),
                       {"normalization": {"low": 0.0, "high": 100.0}})
    with pytest.raises(ModelFileError, match="normalisations differ"):
        blend_models(adv, load_model(other), 0.5)


@pytest.mark.parametrize("name,defaults", [("fidelity", (1, False)), ("perceptual", (1, False)), ("fidelity-clean", (1, True))])
def test_packaged_models_load_by_name(name, defaults):
    loaded = load_model(name)
    assert loaded.source == str(packaged_model_path(name))
    assert loaded.scale == 4 and loaded.config.in_channels == 1
    assert loaded.inference == InferenceDefaults(*defaults)  # as benchmarks/quality.py measures them
    with torch.no_grad():
        assert loaded.generator(_x()).shape == (1, 1, 48, 40)


def test_default_model_is_fidelity():
    assert resolve_model(None) == packaged_model_path("fidelity")


# --- the card: validated once, summarised for people -----------------------------------------

@pytest.mark.parametrize("change,message", [
    (lambda m: [m], "JSON list, not an object"),
    (lambda m: dict(m, normalization={"low": 99, "high": 1}), "normalization metadata"),
    (lambda m: dict(m, normalization="1-99.8"), "normalization metadata"),
    (lambda m: dict(m, scale=8), "scale 8 and its generator's 4 do not match"),
    (lambda m: dict(m, influence_radius=-3), "influence_radius -3"),
])
def test_damaged_metadata_fails_at_load_naming_the_entry(tmp_path, change, message):
    from msrgan_core.modelcard import read_card

    path = save_model(tmp_path / "m.safetensors", tiny_generator(scale=4), {})
    meta = change(read_metadata(path))
    bad = tmp_path / "bad.safetensors"
    tensors = {k: v.contiguous() for k, v in load_model(path).generator.state_dict().items()}
    save_file(tensors, str(bad), metadata={METADATA_KEY: json.dumps(meta)})
    for reader in (read_card, load_model):
        with pytest.raises(ModelFileError, match=message):
            reader(bad)


def test_card_summary_says_what_images_it_is_for_and_how_it_runs(tmp_path):
    from msrgan_core.modelcard import read_card

    meta = {"name": "fidelity", "training": {"data": "BBBC039 (CC0)", "steps": 12, "hardware": "cpu (2 threads) x 1"},
            "degradation": {"method": "bin", "scale": 4, "blur_sigma": [0.0, 2.5], "poisson_peak": [30.0, 100000.0],
                            "degraded_fraction": 0.8},
            "inference": {"ensemble": 2, "match_bins": False}, "validation": {"val_psnr": 35.5, "bicubic_psnr": 32.7}}
    path = save_model(tmp_path / "m.safetensors", tiny_generator(scale=4, architecture="compact"), meta)
    card = read_card(path)
    text = card.summary()
    for expected in ("'fidelity', 4x", "BBBC039 (CC0)", "blur sigma 0-2.5 px", "30-100000 photons", "compact",
                     "2 orientation(s) averaged", "35.50 dB", "context"):
        assert expected in text, expected
    assert card.influence_radius == load_model(path).influence_radius > 0
    assert card.provenance()["model"] == "m.safetensors" and card.provenance()["steps"] == 12


def test_model_info_reads_no_torch(tmp_path):
    """`msrgan info` and the parser answer at once: torch is imported only by commands that run a network."""
    import subprocess
    import sys

    code = ("import sys; from msrgan_core import cli; cli.build_parser(); "
            "from msrgan_core.modelcard import read_card; read_card('fidelity').summary(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_uncertainty_calibration_holds_for_the_run_it_was_measured_on():
    """The packaged files were calibrated at their defaults; another ensemble or bins setting, or
    a blend (whose weights were never calibrated), is said not to be on the error's scale."""
    from msrgan_core.modelfile import blend_models, load_model

    fidelity, perceptual = load_model("fidelity"), load_model("perceptual")
    assert fidelity.card.uncertainty_calibrated_for == (2, False)
    assert fidelity.card.uncertainty_problem(1, False) == "" and fidelity.card.uncertainty_problem(2, False) == ""
    assert "takes a spread over 8 orientations" in fidelity.card.uncertainty_problem(8, False)
    assert "bins matched" in fidelity.card.uncertainty_problem(1, True)
    clean = load_model("fidelity-clean")  # calibrated before match_bins was recorded: at its own defaults (matched)
    assert clean.card.uncertainty_calibrated_for == (2, True) and clean.card.uncertainty_problem(1, True) == ""
    for model, bins in ((fidelity, True), (clean, False)):  # set to run otherwise: still calibrated as it was
        told = with_inference_defaults(model, 1, bins)
        assert told.card.uncertainty_calibrated_for == model.card.uncertainty_calibrated_for
        assert "bins" in told.card.uncertainty_problem(1, bins)
    blend = blend_models(perceptual, fidelity, 0.0)
    assert blend.card.uncertainty_calibrated_for is None and blend.card.uncertainty_scale == 1.0
    assert "not calibrated" in blend.card.uncertainty_problem(1, False)
    assert "msrgan calibrate MODEL.safetensors --hr" in blend.card.uncertainty_problem(1, False)  # a blend not saved yet
    uncalibrated = dataclasses.replace(fidelity.card, metadata={k: v for k, v in fidelity.metadata.items()
                                                                 if k != "uncertainty_calibration"})
    assert "msrgan calibrate fidelity --hr" in uncalibrated.uncertainty_problem(1, False)  # a command that runs
    assert "uncertainty image: not calibrated" in blend.card.summary()
