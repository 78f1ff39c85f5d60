"""UpscaleMSRGAN through cellprofiler_core: a real pipeline, workspace and image set, no mocks.

The module class comes from CellProfiler's own registry, loaded from the packaged plugin folder
(the ``upscale_module_class`` fixture), exactly as CellProfiler loads it.
"""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import CGROUP_CASES, cgroup_tree, tiny_generator
from msrgan_core.inference import Upscaler
from msrgan_core.modelfile import load_model, save_model

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]


# --- a real CellProfiler workspace ----------------------------------------------------------

class Harness:
    """One pipeline with an UpscaleMSRGAN module, and a way to run it on images."""

    def __init__(self, module_class, **settings):
        from cellprofiler_core.image import ImageSetList
        from cellprofiler_core.measurement import Measurements
        from cellprofiler_core.pipeline import Pipeline

        self.pipeline = Pipeline()
        self.module = module_class()
        self.module.set_module_num(1)
        self.module.x_name.value = "DNA"
        self.module.y_name.value = "Upscaled"
        for name, value in settings.items():
            getattr(self.module, name).value = value
        self.pipeline.add_module(self.module)
        self.image_set_list = ImageSetList()
        self.measurements = Measurements(mode="memory")  # no temporary file left behind

    def workspace(self, image, number: int = 0):
        from cellprofiler_core.object import ObjectSet
        from cellprofiler_core.workspace import Workspace

        image_set = self.image_set_list.get_image_set(number)
        image_set.add("DNA", image)
        return Workspace(self.pipeline, self.module, image_set, ObjectSet(), self.measurements, self.image_set_list)

    def run(self, image, number: int = 0):
        workspace = self.workspace(image, number)
        self.module.run(workspace)
        return workspace


def cp_image(pixels, **kwargs):
    from cellprofiler_core.image import Image

    return Image(np.asarray(pixels), **kwargs)


@pytest.fixture(scope="module")
def fly_dna(example_fly_images: Path) -> np.ndarray:
    """A real 96 x 120 crop of an ExampleFly DNA field, on CellProfiler's 0..1 float32 scale."""
    raw = tifffile.imread(example_fly_images / "01_POS002_D.TIF")
    return (raw[300:396, 500:620] / 255.0).astype(np.float32)


@pytest.fixture
def plugin(upscale_module_class):
    """The plugin's Python module (the one CellProfiler imported), for its caches."""
    return sys.modules[upscale_module_class.__module__]


def custom_model(path: Path, **kwargs) -> Path:
    return save_model(path, tiny_generator(**kwargs), {"normalization": {"low": 1.0, "high": 99.8}})


def use_custom(harness: Harness, path: Path) -> None:
    harness.module.model_choice.value = "Custom model file"
    harness.module.custom_model_directory.value = f"Elsewhere...|{path.parent}"
    harness.module.custom_model_file.value = path.name


# --- output ---------------------------------------------------------------------------------

def test_output_is_4x_larger_on_the_input_scale_with_its_mask_and_crop_upscaled(upscale_module_class, fly_dna):
    harness = Harness(upscale_module_class, device="CPU")
    mask = np.ones(fly_dna.shape, bool)
    mask[:10] = False
    crop_mask = np.ones(fly_dna.shape, bool)
    workspace = harness.run(cp_image(fly_dna, mask=mask, crop_mask=crop_mask, scale=255))

    out = workspace.image_set.get_image("Upscaled")
    assert out.pixel_data.shape == (4 * 96, 4 * 120)
    assert out.pixel_data.dtype == fly_dna.dtype
    assert out.has_mask and out.has_crop_mask and not out.has_parent_image  # as Resize: each pixel 4 x 4
    assert out.mask.shape == out.pixel_data.shape and not out.mask[:40].any() and out.mask[40:].all()
    assert out.crop_mask.all() and out.crop_mask.shape == out.pixel_data.shape
    assert out.scale == 255
    # same intensity scale: CellProfiler's 0..1, mean and percentiles close to the input's
    assert 0.0 <= out.pixel_data.min() and out.pixel_data.max() <= 1.0
    assert out.pixel_data.mean() == pytest.approx(fly_dna.mean(), rel=0.03)
    for q in (5, 50, 95):
        assert np.percentile(out.pixel_data, q) == pytest.approx(np.percentile(fly_dna, q), abs=0.03)
    # the packaged model itself, as msrgan_core gives it by default (the model file's own
    # choice of orientations and bin matching), is what the module returns
    expected = Upscaler(load_model("fidelity"), device="cpu").upscale(fly_dna)
    np.testing.assert_allclose(out.pixel_data, np.clip(expected, 0, 1), atol=1e-6)


def test_orientations_and_matched_bins_are_the_librarys(upscale_module_class, fly_dna):
    crop = fly_dna[:48, :64]
    out = Harness(upscale_module_class, device="CPU", orientations="8", match_bins="No").run(cp_image(crop))
    expected = Upscaler(load_model("fidelity"), device="cpu", ensemble=8, match_bins=False).upscale(crop)
    by_default = Upscaler(load_model("fidelity"), device="cpu").upscale(crop)
    got = out.image_set.get_image("Upscaled").pixel_data
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-6)
    assert np.max(np.abs(got - np.clip(by_default, 0, 1))) > 1e-3


@pytest.mark.parametrize("choice", ["Default: fidelity", "Default: perceptual"])
def test_model_default_runs_each_packaged_model_as_its_file_says(upscale_module_class, fly_dna, choice):
    crop = fly_dna[:40, :48]
    harness = Harness(upscale_module_class, device="CPU", model_choice=choice)
    assert harness.module.orientations.value == harness.module.match_bins.value == "Model's default"
    got = harness.run(cp_image(crop)).image_set.get_image("Upscaled").pixel_data
    model = load_model(choice.split(": ")[1])
    said = model.inference
    expected = Upscaler(model, device="cpu", ensemble=said.ensemble, match_bins=said.match_bins).upscale(crop)
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-6)


def test_model_default_follows_a_custom_file_that_asks_for_more(upscale_module_class, fly_dna, tmp_path):
    path = save_model(tmp_path / "asks.safetensors", tiny_generator(), {
        "normalization": {"low": 1.0, "high": 99.8}, "inference": {"ensemble": 2, "match_bins": True}})
    crop = fly_dna[:40, :48]
    harness = Harness(upscale_module_class, device="CPU")
    use_custom(harness, path)
    got = harness.run(cp_image(crop)).image_set.get_image("Upscaled").pixel_data
    model = load_model(path)
    expected = Upscaler(model, device="cpu", ensemble=2, match_bins=True).upscale(crop)
    once = Upscaler(model, device="cpu", ensemble=1, match_bins=False).upscale(crop)
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-6)
    assert np.max(np.abs(got - np.clip(once, 0, 1))) > 1e-4


@pytest.mark.parametrize("output, uncertainty", [("DNA", "UpscaleUncertainty"), ("Upscaled", "Upscaled"), ("Upscaled", "DNA")])
def test_images_the_module_makes_need_names_of_their_own(upscale_module_class, output, uncertainty):
    from cellprofiler_core.setting import ValidationError

    harness = Harness(upscale_module_class, y_name=output, wants_uncertainty=True, uncertainty_name=uncertainty)
    with pytest.raises(ValidationError, match="needs a name other than"):
        harness.module.validate_module(harness.pipeline)
    harness.module.wants_uncertainty.value = False
    if output != "DNA":  # without an uncertainty image its name does not matter
        harness.module.validate_module(harness.pipeline)


def test_create_batch_files_maps_the_model_folder_and_msrgans_path_to_the_cluster(upscale_module_class):
    from cellprofiler.modules.createbatchfiles import CreateBatchFiles

    harness = Harness(upscale_module_class, environment=OTHER, msrgan_path="/Volumes/lab/envs/msrgan/bin/msrgan")
    use_custom(harness, Path("/Volumes/lab/models/mine.safetensors"))
    batch = CreateBatchFiles()
    batch.mappings[0].local_directory.value, batch.mappings[0].remote_directory.value = "/Volumes/lab", "/mnt/lab"
    assert harness.module.prepare_to_create_batch(harness.workspace(cp_image(np.zeros((8, 8)))), batch.alter_path)
    assert harness.module.custom_model_directory.value == "Elsewhere...|/mnt/lab/models"
    assert harness.module.msrgan_path.value == "/mnt/lab/envs/msrgan/bin/msrgan"
    assert harness.module.custom_model_file.value == "mine.safetensors"


def test_integer_pixels_stored_unscaled_stay_integers_on_their_scale(upscale_module_class, fly_dna):
    counts = (fly_dna * 40000).astype(np.uint16)  # as ConvertObjectsToImage or a plugin may store them (convert=False)
    out = Harness(upscale_module_class).run(cp_image(counts, convert=False)).image_set.get_image("Upscaled").pixel_data
    assert out.dtype == np.uint16 and out.shape == (4 * 96, 4 * 120)
    assert out.mean() == pytest.approx(counts.mean(), rel=0.03) and out.max() > 1


def test_fp32_precision_gives_the_libraries_fp32_output_on_every_machine(upscale_module_class, fly_dna):
    out = Harness(upscale_module_class, device="CPU", precision="fp32 on every machine").run(cp_image(fly_dna))
    expected = Upscaler(load_model("fidelity"), device="cpu", precision="fp32").upscale(fly_dna)
    np.testing.assert_allclose(out.image_set.get_image("Upscaled").pixel_data, np.clip(expected, 0, 1), atol=1e-6)


def test_dim_12_bit_image_is_not_stretched(upscale_module_class, fly_dna):
    """A 12-bit image in a 16-bit file sits at 0..0.0625 in CellProfiler; so must its upscaling."""
    dim = (fly_dna * 4095.0 / 65535.0).astype(np.float32)
    out = Harness(upscale_module_class).run(cp_image(dim)).image_set.get_image("Upscaled").pixel_data
    assert out.max() <= dim.max() * 1.15
    assert out.mean() == pytest.approx(dim.mean(), rel=0.03)


def test_identify_primary_objects_runs_on_the_upscaled_image_of_a_masked_input(upscale_module_class, fly_dna):
    """The input's mask and cropping come upscaled, so the nuclei are found as on Resize's output:
    none in the masked strip (a size mismatch would fail here)."""
    from cellprofiler.modules.identifyprimaryobjects import IdentifyPrimaryObjects

    harness = Harness(upscale_module_class)
    mask = np.ones(fly_dna.shape, bool)
    mask[:, :8] = False
    workspace = harness.run(cp_image(fly_dna, mask=mask, crop_mask=np.ones(fly_dna.shape, bool)))
    identify = IdentifyPrimaryObjects()
    identify.set_module_num(2)
    identify.x_name.value = "Upscaled"
    identify.y_name.value = "Nuclei"
    identify.size_range.value = (24, 240)
    harness.pipeline.add_module(identify)
    workspace.set_module(identify)
    identify.run(workspace)
    nuclei = workspace.object_set.get_objects("Nuclei")
    assert nuclei.segmented.shape == (4 * 96, 4 * 120)
    assert nuclei.count >= 3 and not nuclei.segmented[:, :4 * 8].any()


def test_color_image_is_upscaled_channel_by_channel(upscale_module_class, fly_dna):
    rgb = np.stack([fly_dna, fly_dna[::-1], 0.5 * fly_dna], axis=-1).astype(np.float32)
    harness = Harness(upscale_module_class)
    out = harness.run(cp_image(rgb)).image_set.get_image("Upscaled")
    assert out.multichannel and out.pixel_data.shape == (4 * 96, 4 * 120, 3)
    gray = Harness(upscale_module_class).run(cp_image(rgb[..., 1])).image_set.get_image("Upscaled").pixel_data
    np.testing.assert_allclose(out.pixel_data[..., 1], gray, atol=1e-6)


def test_display_data_holds_input_and_output(upscale_module_class, fly_dna):
    harness = Harness(upscale_module_class)
    harness.module.show_window = True
    data = harness.run(cp_image(fly_dna)).display_data
    assert data.x_data.shape == fly_dna.shape and data.y_data.shape == (4 * 96, 4 * 120)
    assert data.model_name == "fidelity.safetensors" and data.device.startswith(("cpu", "cuda"))


# --- errors ---------------------------------------------------------------------------------

def test_3d_image_is_a_clear_error(upscale_module_class, fly_dna):
    stack = np.stack([fly_dna] * 3)
    with pytest.raises(ValueError, match="3-D"):
        Harness(upscale_module_class).run(cp_image(stack, dimensions=3))


def test_nan_pixels_are_a_clear_error_in_the_modules_terms(upscale_module_class, fly_dna):
    pixels = fly_dna.copy()
    pixels[0, 0] = np.nan
    mask = np.ones(pixels.shape, bool)
    mask[0, 0] = False  # masked, yet read
    with pytest.raises(ValueError, match="'DNA': 1 pixel.s. are NaN or infinite, masked or not.*Replace invalid values"):
        Harness(upscale_module_class).run(cp_image(pixels, mask=mask))


def test_wrong_channel_count_is_a_clear_error(upscale_module_class, fly_dna, tmp_path):
    harness = Harness(upscale_module_class)
    use_custom(harness, custom_model(tmp_path / "rgb.safetensors", channels=3))
    with pytest.raises(ValueError, match=r"cannot upscale 'DNA'.*1 channel\(s\).*takes 3"):
        harness.run(cp_image(fly_dna))


@pytest.mark.parametrize("damage", ["missing", "truncated", "foreign", "empty name"])
def test_validate_module_reports_an_unusable_model_file(upscale_module_class, tmp_path, damage):
    from cellprofiler_core.setting import ValidationError

    path = custom_model(tmp_path / "model.safetensors")
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "foreign":
        path.write_bytes(b"\x00" * 64 + b"not a model")
    harness = Harness(upscale_module_class)
    use_custom(harness, path)
    if damage == "empty name":
        harness.module.custom_model_file.value = ""
    with pytest.raises(ValidationError) as caught:
        harness.module.validate_module(harness.pipeline)
    assert caught.value.setting is harness.module.custom_model_file
    message = caught.value.message
    if damage == "empty name":
        assert "Choose a model file" in message
    else:
        assert str(path) in message
        assert {"missing": "does not exist", "truncated": "cannot be used", "foreign": "cannot be used"}[damage] in message
    # a headless run (which does not validate) stops in prepare_run, before any image set
    with pytest.raises(ValidationError):
        harness.module.prepare_run(harness.workspace(cp_image(np.zeros((8, 8), np.float32))))


def test_custom_model_file_is_the_one_used(upscale_module_class, fly_dna, tmp_path):
    """A 2x custom model gives a 2x image: the module never falls back to a packaged model."""
    harness = Harness(upscale_module_class)
    use_custom(harness, custom_model(tmp_path / "two.safetensors", scale=2))
    harness.module.validate_module(harness.pipeline)
    out = harness.run(cp_image(fly_dna)).image_set.get_image("Upscaled").pixel_data
    assert out.shape == (2 * 96, 2 * 120)


def test_model_is_loaded_once_and_reused_across_image_sets(upscale_module_class, plugin, fly_dna, monkeypatch):
    import msrgan_core.modelfile

    calls = []

    def counting_load(path):
        calls.append(path)
        return load_model(path)

    monkeypatch.setattr(msrgan_core.modelfile, "load_model", counting_load)  # the plugin imports it when it runs
    monkeypatch.setattr(plugin, "_UPSCALERS", type(plugin._UPSCALERS)())
    harness = Harness(upscale_module_class, tile_size=64)
    for number in range(3):
        shape = harness.run(cp_image(fly_dna), number).image_set.get_image("Upscaled").pixel_data.shape
        assert shape == (4 * 96, 4 * 120)
    assert len(calls) == 1


def test_an_uncertainty_image_off_the_errors_scale_is_a_warning_in_the_module(upscale_module_class):
    """The library's warning went to a log nobody reads in a headless run (or -q): a pipeline that
    filters nuclei by their uncertainty would filter on the wrong scale."""
    from cellprofiler_core.setting import ValidationError

    Harness(upscale_module_class, device="CPU", wants_uncertainty=True).module.validate_module_warnings(None)
    for settings, says in [({"orientations": "8"}, "calibrated for a spread over 2 orientations with bins as output"),
                           ({"match_bins": "Yes"}, "calibrated for a spread over 2 orientations with bins as output"),
                           ({"model_choice": "Default: fidelity-clean", "match_bins": "No"}, "with bins matched")]:
        harness = Harness(upscale_module_class, device="CPU", wants_uncertainty=True, **settings)
        with pytest.raises(ValidationError, match=says) as caught:
            harness.module.validate_module_warnings(harness.pipeline)
        assert caught.value.setting is harness.module.wants_uncertainty
    Harness(upscale_module_class, device="CPU", orientations="8").module.validate_module_warnings(None)  # no image


def test_gpu_requested_without_cuda_warns_and_runs_on_cpu(upscale_module_class, plugin, fly_dna, caplog):
    from cellprofiler_core.setting import ValidationError

    from msrgan_core.device import resolve_device

    if resolve_device("auto").type == "cuda":
        pytest.skip("a CUDA GPU is present: nothing to warn about")
    harness = Harness(upscale_module_class, device="GPU")
    with pytest.raises(ValidationError, match="No CUDA GPU") as caught:
        harness.module.validate_module_warnings(harness.pipeline)
    assert caught.value.setting is harness.module.device
    plugin._UPSCALERS.clear()  # the warning comes when the model is placed on a device
    with caplog.at_level(logging.WARNING, logger="msrgan"):
        workspace = harness.run(cp_image(fly_dna))
    assert workspace.image_set.get_image("Upscaled").pixel_data.shape == (4 * 96, 4 * 120)
    assert "GPU was requested" in caplog.text


def without(*missing: str) -> str:
    """Python code that makes importing the packages ``missing`` fail, as in a CellProfiler that lacks them,
    then imports the plugin file as CellProfiler does (``upscalemsrgan``), headless."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {missing!r}:
                    raise ImportError("No module named " + repr(name))
                return None

        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(ROOT / "cellprofiler_plugin")!r})
        import cellprofiler_core.preferences as preferences
        preferences.set_headless()
        import upscalemsrgan
        """
    )


@pytest.mark.parametrize("missing", ["msrgan_core", "torch"])
def test_plugin_loads_without_msrgan_and_says_what_to_install(missing):
    """In a CellProfiler without msrgan (or torch) the module still loads, and validation says so."""
    script = without(missing) + textwrap.dedent(
        """
        from cellprofiler_core.pipeline import Pipeline
        from cellprofiler_core.setting import ValidationError

        module = upscalemsrgan.UpscaleMSRGAN()
        try:
            module.validate_module(Pipeline())
        except ValidationError as exc:
            print("VALIDATION:", exc.message)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "VALIDATION: UpscaleMSRGAN needs the msrgan package and PyTorch" in proc.stdout
    assert "pip install msrgan" in proc.stdout and missing in proc.stdout


# --- settings in saved pipelines --------------------------------------------------------------

def load_pipeline(text: str):
    from cellprofiler_core.pipeline import LoadException, Pipeline

    pipeline = Pipeline()
    errors = []
    pipeline.add_listener(lambda caller, event: errors.append(event) if isinstance(event, LoadException) else None)
    pipeline.load(io.StringIO(text))
    return pipeline, errors


def test_settings_round_trip_through_a_saved_pipeline(upscale_module_class, tmp_path):
    harness = Harness(upscale_module_class)
    module = harness.module
    module.x_name.value = "OrigBlue"
    module.y_name.value = "BigBlue"
    module.model_choice.value = "Custom model file"
    module.custom_model_directory.value = f"Elsewhere...|{tmp_path}"
    module.custom_model_file.value = "mine.safetensors"
    module.device.value = "CPU"
    module.tile_size.value = 192
    module.orientations.value = "4"
    module.match_bins.value = "Yes"
    module.precision.value = "fp32 on every machine"
    saved = io.StringIO()
    harness.pipeline.dump(saved, save_image_plane_details=False)

    pipeline, errors = load_pipeline(saved.getvalue())
    assert not errors, [e.error for e in errors]
    (loaded,) = pipeline.modules()
    assert loaded.module_name == "UpscaleMSRGAN"
    assert [s.value_text for s in loaded.settings()] == [s.value_text for s in module.settings()]
    assert loaded.tile_size.value == 192 and loaded.custom_model_directory.custom_path == str(tmp_path)
    assert loaded.orientations.value == "4" and loaded.match_bins.value == "Yes" and loaded.variable_revision_number == 6


def test_load_v1(upscale_module_class):
    """The frozen revision-1 pipeline in tests/data keeps loading (CellProfiler's test_load_v* habit)."""
    pipeline, errors = load_pipeline((DATA / "upscalemsrgan_v1.cppipe").read_text())
    assert not errors, [e.error for e in errors]
    first, second = pipeline.modules()
    assert isinstance(first, upscale_module_class)
    assert first.x_name.value == "OrigBlue" and first.y_name.value == "BigBlue"
    assert first.model_choice.value == "Custom model file"
    assert first.custom_model_directory.dir_choice == "Default Input Folder sub-folder"
    assert first.custom_model_directory.custom_path == "models"
    assert first.custom_model_file.value == "my_microscope.safetensors"
    assert first.device.value == "CPU" and first.tile_size.value == 128
    assert second.model_choice.value == "Default: perceptual" and second.device.value == "GPU"
    assert second.tile_size.value == 0 and second.y_name.value == "BigRed"
    # revision 2's settings: revision-1 pipelines upscale once and leave the output as it is, as they did
    for module in (first, second):
        assert module.orientations.value == "1" and module.match_bins.value == "No"
        assert module.variable_revision_number == 6


def test_load_v2(upscale_module_class):
    """Revision-2 pipelines keep the orientations and bin matching they were saved with."""
    pipeline, errors = load_pipeline((DATA / "upscalemsrgan_v2.cppipe").read_text())
    assert not errors, [e.error for e in errors]
    first, second = pipeline.modules()
    assert first.model_choice.value == "Custom model file" and first.tile_size.value == 128
    assert (first.orientations.value, first.match_bins.value) == ("4", "Yes")
    assert second.model_choice.value == "Default: perceptual" and second.device.value == "GPU"
    assert (second.orientations.value, second.match_bins.value) == ("1", "No")
    for module in (first, second):  # each later revision's settings at their defaults, none shifted
        assert module.threads.value == 0 and module.wants_uncertainty.value is False
        assert module.environment.value == "This Python environment" and module.msrgan_path.value == ""


def test_load_v3(upscale_module_class):
    """Revision-3 pipelines keep their settings and share out the CPU cores automatically (0)."""
    pipeline, errors = load_pipeline((DATA / "upscalemsrgan_v3.cppipe").read_text())
    assert not errors, [e.error for e in errors]
    first, second = pipeline.modules()
    assert (first.orientations.value, first.match_bins.value, first.tile_size.value) == ("4", "Yes", 128)
    assert (second.orientations.value, second.match_bins.value) == ("Model's default", "Model's default")
    for module in (first, second):
        assert module.threads.value == 0 and module.variable_revision_number == 6
        assert module.wants_uncertainty.value is False and module.uncertainty_name.value == "UpscaleUncertainty"


def test_settings_of_another_length_than_their_revision_are_refused_not_shifted(upscale_module_class, plugin):
    """A development state saved revision 2 with 8 values: each would load into the next setting."""
    text = (DATA / "upscalemsrgan_v2.cppipe").read_text().replace("    Make the output bin back to the input?:Yes\n", "", 1)
    _, errors = load_pipeline(text)
    assert errors and "revision 2 with 8 values where that revision has 9" in str(errors[0].error)
    module = upscale_module_class()
    assert len(module.settings()) == plugin.SETTINGS_PER_REVISION[module.variable_revision_number]


def test_load_v4(upscale_module_class):
    """Revision-4 pipelines keep their settings and run msrgan in CellProfiler's own environment, as they did."""
    pipeline, errors = load_pipeline((DATA / "upscalemsrgan_v4.cppipe").read_text())
    assert not errors, [e.error for e in errors]
    first, second = pipeline.modules()
    assert (first.orientations.value, first.match_bins.value, first.tile_size.value) == ("4", "Yes", 128)
    assert first.threads.value == 3 and first.wants_uncertainty.value is False
    assert second.wants_uncertainty.value is True and second.uncertainty_name.value == "RedDoubt"
    assert (second.model_choice.value, second.device.value) == ("Default: perceptual", "GPU")
    for module in (first, second):
        assert module.environment.value == "This Python environment" and module.msrgan_path.value == ""
        assert module.variable_revision_number == 6


def test_load_v5(upscale_module_class):
    """Revision-5 pipelines keep their settings and run in the precision they ran in (automatic)."""
    pipeline, errors = load_pipeline((DATA / "upscalemsrgan_v5.cppipe").read_text())
    assert not errors, [e.error for e in errors]
    first, second = pipeline.modules()
    assert (first.orientations.value, first.match_bins.value, first.threads.value) == ("4", "Yes", 3)
    assert first.environment.value == "Another Python environment"
    assert first.msrgan_path.value == "/opt/msrgan-env/bin/msrgan"
    assert second.wants_uncertainty.value is True and second.uncertainty_name.value == "RedDoubt"
    for module in (first, second):
        assert module.precision.value == "Automatic" and module.variable_revision_number == 6


def test_a_newer_revision_is_refused_with_a_clear_message(upscale_module_class):
    text = (DATA / "upscalemsrgan_v1.cppipe").read_text().replace("variable_revision_number:1|", "variable_revision_number:7|")
    _, errors = load_pipeline(text)
    assert errors and "revision 7, newer than this plugin's revision 6" in str(errors[0].error)


# --- threads, the uncertainty image, the measurements --------------------------------------

def test_cpu_threads_are_shared_among_the_analysis_workers_that_run(plugin, monkeypatch):
    """Workers are counted as CellProfiler started them (one announce address on their command lines):
    a worker's own preferences read the machine's core count, not the user's worker count."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert plugin.worker_threads(3) == 3  # a number the user set is kept
    monkeypatch.setattr(sys, "argv", ["cellprofiler", "-c", "-r"])
    assert plugin.worker_threads(0) is None  # headless: every core the process may use
    monkeypatch.setattr(plugin, "available_cores", lambda: 16)
    address = f"tcp://127.0.0.1:{40000 + os.getpid() % 20000}"
    monkeypatch.setattr(sys, "argv", ["analysis_worker", "--work-announce", address])
    sleep = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    workers = [subprocess.Popen(sleep + ["--work-announce", address], stdin=subprocess.PIPE) for _ in range(3)]
    other = subprocess.Popen(sleep + ["--work-announce", address + "0"], stdin=subprocess.PIPE)  # another analysis
    try:
        assert plugin.analysis_workers() == 3
        assert plugin.worker_threads(0) == 5  # 16 cores // 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a job's policy asks for fewer
        assert plugin.worker_threads(0) == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        workers.pop().communicate(b"")
        assert plugin.worker_threads(0) == 8
    finally:
        for process in workers + [other]:
            process.communicate(b"")


@pytest.mark.parametrize("membership, files, quota", CGROUP_CASES)
def test_plugin_reads_a_cpu_limit_as_msrgan_does(plugin, membership, files, quota, tmp_path, monkeypatch):
    """The plugin's own copy (for a CellProfiler without msrgan) gives msrgan's answer."""
    import msrgan_core.device as device

    root, proc = cgroup_tree(tmp_path, membership, files)
    monkeypatch.setattr(device, "CGROUP_ROOT", root)
    monkeypatch.setattr(device, "CGROUP_MEMBERSHIP", proc)
    monkeypatch.setattr(plugin, "CGROUP_ROOT", str(root))
    monkeypatch.setattr(plugin, "CGROUP_MEMBERSHIP", str(proc))
    assert plugin.cpu_quota() == device.cpu_quota() == quota
    assert plugin.available_cores() == device.available_cores()


def test_uncertainty_image_and_the_scale_and_model_measurements(upscale_module_class, fly_dna):
    crop = fly_dna[:40, :56]
    harness = Harness(upscale_module_class, device="CPU", wants_uncertainty=True, uncertainty_name="Doubt")
    workspace = harness.run(cp_image(crop))
    out, doubt = workspace.image_set.get_image("Upscaled").pixel_data, workspace.image_set.get_image("Doubt").pixel_data
    expected, spread = Upscaler(load_model("fidelity"), device="cpu").upscale(crop, uncertainty=True)
    np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-6)
    np.testing.assert_allclose(doubt, spread, atol=1e-6)
    assert doubt.shape == out.shape and doubt.min() >= 0 and doubt.max() > 0
    m = workspace.measurements
    assert m.get_current_image_measurement("Upscale_ScaleFactor_Upscaled") == 4
    assert m.get_current_image_measurement("Upscale_Model_Upscaled") == "fidelity.safetensors"
    columns = {c[1] for c in harness.module.get_measurement_columns(harness.pipeline)}
    assert columns == {"Upscale_ScaleFactor_Upscaled", "Upscale_Model_Upscaled"}
    plain = Harness(upscale_module_class, device="CPU").run(cp_image(crop))  # off by default: no second image
    assert "Doubt" not in plain.image_set.names and "UpscaleUncertainty" not in plain.image_set.names


# --- msrgan in another Python environment ----------------------------------------------------

OTHER = "Another Python environment"
#: this environment's own msrgan stands in for the other environment's
MSRGAN = Path(sys.executable).with_name("msrgan")


def fake_msrgan(path: Path, body: str) -> Path:
    """A shell script standing in for another environment's msrgan."""
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def upscaled_images(workspace) -> dict:
    return {name: workspace.image_set.get_image(name).pixel_data for name in workspace.image_set.names if name != "DNA"}


def measured(workspace) -> list:
    m = workspace.measurements
    return [m.get_current_image_measurement(f"Upscale_{what}_Upscaled") for what in ("ScaleFactor", "Model")]


@pytest.mark.parametrize("case", ["packaged model, uncertainty", "custom model, every option set, colour"])
def test_another_environment_gives_the_same_images_and_measurements(upscale_module_class, fly_dna, tmp_path, case):
    assert MSRGAN.is_file(), f"{MSRGAN} is missing: install msrgan in this environment (pip install -e .)"
    custom = case.startswith("custom")
    crop = fly_dna[:40, :56]
    settings = dict(device="CPU", wants_uncertainty=True, uncertainty_name="Doubt")
    if custom:  # each option away from its default, so that one not passed on shows
        crop = np.stack([crop, crop[::-1], 0.5 * crop], axis=-1)
        settings = dict(device="CPU", orientations="2", match_bins="Yes", tile_size=32, threads=1,
                        precision="fp32 on every machine")
    here = Harness(upscale_module_class, **settings)
    there = Harness(upscale_module_class, environment=OTHER, msrgan_path=str(MSRGAN), **settings)
    for harness in (here, there):
        harness.module.show_window = True
        if custom:
            use_custom(harness, custom_model(tmp_path / "mine.safetensors"))
    there.module.validate_module(there.pipeline)
    expected, got = here.run(cp_image(crop)), there.run(cp_image(crop))

    want, have = upscaled_images(expected), upscaled_images(got)
    assert have.keys() == want.keys() == ({"Upscaled"} if custom else {"Upscaled", "Doubt"})
    for name, pixels in want.items():
        assert have[name].shape == pixels.shape and have[name].dtype == pixels.dtype
        np.testing.assert_allclose(have[name], pixels, atol=1e-5)
    assert measured(got) == measured(expected) == [4, str(tmp_path / "mine.safetensors") if custom else "fidelity.safetensors"]
    # where it ran, as the other environment's log says: with the threads asked for
    assert got.display_data.device == expected.display_data.device
    assert got.display_data.device == "cpu (1 threads)" or not custom


@pytest.mark.parametrize("problem", ["empty", "missing", "folder", "not executable", "not msrgan", "missing model"])
def test_another_environment_that_cannot_be_used_fails_validation(upscale_module_class, tmp_path, problem):
    from cellprofiler_core.setting import ValidationError

    path = {
        "empty": "",
        "missing": str(tmp_path / "env" / "bin" / "msrgan"),
        "folder": str(tmp_path),
        "not executable": str(tmp_path / "msrgan.txt"),
        "not msrgan": str(fake_msrgan(tmp_path / "python3", 'echo "No module named msrgan_core" >&2\nexit 1\n')),
        "missing model": str(MSRGAN),
    }[problem]
    (tmp_path / "msrgan.txt").write_text("not a program")
    harness = Harness(upscale_module_class, environment=OTHER, msrgan_path=path)
    if problem == "missing model":
        use_custom(harness, tmp_path / "gone.safetensors")
    with pytest.raises(ValidationError) as caught:
        harness.module.validate_module(harness.pipeline)
    setting = harness.module.custom_model_file if problem == "missing model" else harness.module.msrgan_path
    assert caught.value.setting is setting
    message = caught.value.message
    said = {"empty": "which msrgan", "missing": "does not exist", "folder": "is a folder",
            "not executable": "is not executable", "not msrgan": "No module named msrgan_core",
            "missing model": "gone.safetensors does not exist"}
    assert said[problem] in message
    assert path in message or problem in ("empty", "missing model")
    with pytest.raises(ValidationError):  # a headless run (which does not validate) stops before any image set
        harness.module.prepare_run(harness.workspace(cp_image(np.zeros((8, 8), np.float32))))


def test_a_failing_other_environment_is_one_clear_error_and_leaves_no_files(upscale_module_class, fly_dna, tmp_path):
    script = fake_msrgan(tmp_path / "msrgan", f"""\
        if [ "$1" = info ]; then echo "file: /elsewhere/msrgan_core/weights/fidelity.safetensors"; exit 0; fi
        echo "$2" > {tmp_path / "input.txt"}
        echo "Traceback (most recent call last):" >&2
        echo "RuntimeError: the other environment ran out of memory" >&2
        exit 2
        """)
    harness = Harness(upscale_module_class, environment=OTHER, msrgan_path=str(script))
    harness.module.validate_module(harness.pipeline)
    with pytest.raises(ValueError) as caught:
        harness.run(cp_image(fly_dna))
    message = str(caught.value)
    assert message.startswith("UpscaleMSRGAN cannot upscale 'DNA' with the model fidelity.safetensors in another "
                              f"Python environment: msrgan upscale (with {script}) failed with exit status 2")
    assert message.endswith("RuntimeError: the other environment ran out of memory") and "Traceback" not in message
    handed = Path((tmp_path / "input.txt").read_text().strip())
    assert handed.name == "DNA.tif" and not handed.parent.exists()  # the temporary folder is gone


def test_loading_the_plugin_imports_no_torch():
    script = without() + "print('imported:', sorted(m for m in ('torch', 'msrgan_core.inference') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported: []" in proc.stdout


def test_a_cellprofiler_without_torch_or_msrgan_runs_msrgan_in_another_environment(plugin, fly_dna, tmp_path):
    """As in CellProfiler's app bundles: no torch and no msrgan import here; the other environment's python upscales."""
    crop = fly_dna[:40, :48]
    np.save(tmp_path / "crop.npy", crop)
    script = without("torch", "msrgan_core") + textwrap.dedent(
        f"""
        import numpy as np
        from cellprofiler_core.image import Image, ImageSetList
        from cellprofiler_core.measurement import Measurements
        from cellprofiler_core.object import ObjectSet
        from cellprofiler_core.pipeline import Pipeline
        from cellprofiler_core.workspace import Workspace

        pipeline, module = Pipeline(), upscalemsrgan.UpscaleMSRGAN()
        module.set_module_num(1)
        module.x_name.value, module.y_name.value = "DNA", "Upscaled"
        module.environment.value = {OTHER!r}
        module.msrgan_path.value = {sys.executable!r}  # its python: python -m msrgan_core.cli
        module.device.value = "CPU"
        pipeline.add_module(module)
        image_set_list = ImageSetList()
        image_set = image_set_list.get_image_set(0)
        image_set.add("DNA", Image(np.load({str(tmp_path / "crop.npy")!r})))
        workspace = Workspace(pipeline, module, image_set, ObjectSet(), Measurements(mode="memory"), image_set_list)
        module.prepare_run(workspace)
        module.run(workspace)
        np.save({str(tmp_path / "out.npy")!r}, image_set.get_image("Upscaled").pixel_data)
        print("orientations:", upscalemsrgan.ORIENTATIONS_ALL, "cores:", upscalemsrgan.available_cores())
        print("model:", workspace.measurements.get_current_image_measurement("Upscale_Model_Upscaled"))
        print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "msrgan_core")))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from msrgan_core.device import available_cores

    assert f"orientations: {plugin.ORIENTATIONS_ALL} cores: {available_cores()}" in proc.stdout  # its fallbacks agree
    assert "model: fidelity.safetensors" in proc.stdout and "imported: []" in proc.stdout
    expected = Upscaler(load_model("fidelity"), device="cpu").upscale(crop)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.clip(expected, 0, 1), atol=1e-5)


def test_a_runs_model_is_recorded_by_its_path_not_as_the_packaged_one(plugin, tmp_path):
    """A training run names its models as the packaged ones are named: Image.csv must tell them apart."""
    import msrgan_core

    packaged = Path(msrgan_core.__file__).parent / "weights" / "fidelity.safetensors"
    assert plugin.model_record_name(str(packaged)) == "fidelity.safetensors"
    run = tmp_path / "runs" / "plate1" / "fidelity.safetensors"
    assert plugin.model_record_name(str(run)) == str(run)
