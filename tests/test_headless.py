"""Real headless CellProfiler runs of the shipped pipelines, and the runner's failure detection.

Every run starts CellProfiler (and its JVM) in a subprocess through
:func:`msrgan_core.headless.run_pipeline`, on small crops of real images written under their own
file names: ExampleFly (inside the CellProfiler package) and ``../shared/data`` (BBBC039, DSB
2018, ExampleHuman). The crops keep each run to seconds while the pipelines' file rules, the
plugin, segmentation and export all run for real.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from msrgan_core.headless import (
    PLUGIN_FILE,
    SHIPPED_PIPELINES,
    HeadlessRunError,
    find_cellprofiler,
    install_plugin,
    plugin_dir,
    resolve_pipeline,
    run_pipeline,
)

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
SCALE = 4
#: objects per image that each pipeline segments, and the images it writes per input
OBJECTS = {"upscale_segment_measure": ["Nuclei"], "compare_with_bicubic": ["NucleiMSRGAN", "NucleiBicubic"],
           "flag_uncertain_nuclei": ["Nuclei"]}
SUFFIXES = {"upscale_segment_measure": ["_msrgan"], "compare_with_bicubic": ["_msrgan", "_bicubic"],
            "flag_uncertain_nuclei": ["_msrgan"]}
#: the shipped pipelines that upscale (measure_nuclei measures images that are upscaled already)
UPSCALING = [p for p in SHIPPED_PIPELINES if p in OBJECTS]
RUN_TIMEOUT_S = 300


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_pixels(path: Path) -> np.ndarray:
    return iio.imread(path) if path.suffix.lower() == ".png" else tifffile.imread(path)


def unit_scale(pixels: np.ndarray) -> np.ndarray:
    """Pixels on CellProfiler's 0..1 scale (integers over their type's maximum)."""
    return pixels.astype(np.float64) / np.iinfo(pixels.dtype).max


def write_crop(source: Path, folder: Path, rows: slice, cols: slice) -> Path:
    """A crop of a real image under the same file name (the pipelines' rules use the names)."""
    target = folder / source.name
    crop = np.ascontiguousarray(read_pixels(source)[rows, cols])
    if target.suffix.lower() == ".png":
        iio.imwrite(target, crop)
    else:
        tifffile.imwrite(target, crop)
    return target


@pytest.fixture(scope="module")
def fly_input(tmp_path_factory, example_fly_images: Path) -> Dict[str, object]:
    """Two ExampleFly fields, 160 x 160 crops of all three channels; only _D is DNA.

    The folder sits inside a hidden folder, as CellProfiler's own ExampleFly images do when
    CellProfiler is installed in ``.venv``, and holds a macOS ``._`` file that is not an image.
    """
    folder = tmp_path_factory.mktemp("fly") / ".venv" / "images"
    folder.mkdir(parents=True)
    for source in sorted(example_fly_images.glob("01_POS0[07][26]_[DFR].TIF")):
        write_crop(source, folder, slice(300, 460), slice(500, 660))
    (folder / "._01_POS002_D.TIF").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not an image")
    dna = sorted(folder.glob("[!.]*_D.TIF"))
    assert [p.name for p in dna] == ["01_POS002_D.TIF", "01_POS076_D.TIF"]
    return {"folder": folder, "dna": dna}


@pytest.fixture(scope="module")
def shared_input(tmp_path_factory, shared_data: Path) -> Dict[str, object]:
    """A BBBC039 field (16-bit, 12-bit data) with its mask, a DSB 2018 PNG and ExampleHuman d0/d1/d2, cropped.

    BBBC039 keeps its layout (``images/``, ``masks/``): the label masks are not DNA images.
    """
    folder = tmp_path_factory.mktemp("shared_in")
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    source = sorted((shared_data / "bbbc039" / "images").glob("*.tif"))[0]
    bbbc = write_crop(source, folder / "images", slice(0, 160), slice(0, 200))
    write_crop(shared_data / "bbbc039" / "masks" / f"{source.stem}.png", folder / "masks", slice(0, 160), slice(0, 200))
    dsb = write_crop(sorted((shared_data / "dsb2018_fluorescence").glob("*.png"))[1], folder, slice(0, 128), slice(0, 128))
    human = [write_crop(p, folder, slice(176, 336), slice(176, 336)) for p in sorted((shared_data / "examplehuman").glob("*.tif"))]
    assert [p.name[-6:] for p in human] == ["d0.tif", "d1.tif", "d2.tif"]
    return {"folder": folder, "dna": sorted([bbbc, dsb, human[0]])}


def check_run(pipeline: str, dna: List[Path], folder: Path, out: Path) -> None:
    """What a run of a shipped pipeline must have written for the DNA images ``dna``."""
    written = {p.name for p in out.iterdir()}
    # one upscaled TIFF per DNA image, 4x its shape, on its intensity scale; none for other channels
    for source in dna:
        pixels = read_pixels(source)
        for suffix in SUFFIXES[pipeline]:
            upscaled = tifffile.imread(out / f"{source.stem}{suffix}.tiff")
            assert upscaled.shape == (SCALE * pixels.shape[0], SCALE * pixels.shape[1]), (source.name, suffix)
            assert unit_scale(upscaled).mean() == pytest.approx(unit_scale(pixels).mean(), rel=0.05), (source.name, suffix)
    for other in {p.stem for p in folder.rglob("*") if p.is_file()} - {p.stem for p in dna}:
        assert not any(name.startswith(other) for name in written), (other, written)

    images = read_csv(out / "Image.csv")
    assert sorted(r["FileName_DNA"] for r in images) == [p.name for p in dna]
    for objects in OBJECTS[pipeline]:
        counts = [float(r[f"Count_{objects}"]) for r in images]
        assert all(c >= 1 for c in counts), (objects, counts)
        rows = read_csv(out / f"{objects}.csv")
        assert len(rows) == sum(counts)
        # measured on the upscaled image: areas in upscaled pixels, intensities on the 0..1 scale
        assert all(float(r["AreaShape_Area"]) >= np.pi * 12 ** 2 for r in rows), objects
        image = "UpscaledMSRGAN" if objects != "NucleiBicubic" else "UpscaledBicubic"
        assert all(0 < float(r[f"Intensity_MeanIntensity_{image}"]) <= 1 for r in rows)
    if pipeline == "flag_uncertain_nuclei":  # every nucleus carries its estimated error; the trusted ones are a subset
        nuclei = read_csv(out / "Nuclei.csv")
        assert all(float(r["Math_RelativeError"]) > 0 for r in nuclei)
        kept = sum(float(r["Math_RelativeError"]) <= 0.1 for r in nuclei)
        assert sum(float(r["Count_TrustedNuclei"]) for r in images) == kept
    if pipeline == "compare_with_bicubic":
        for r in images:  # both branches see the same nuclei: counts side by side, and alike
            msrgan, bicubic = float(r["Count_NucleiMSRGAN"]), float(r["Count_NucleiBicubic"])
            assert abs(msrgan - bicubic) <= max(3.0, 0.5 * bicubic), (r["FileName_DNA"], msrgan, bicubic)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", UPSCALING)
def test_shipped_pipeline_on_example_fly(pipeline, fly_input, cellprofiler_command, tmp_path):
    out = tmp_path / "out"
    result = run_pipeline(PIPELINES / f"{pipeline}.cppipe", fly_input["folder"], out, timeout=RUN_TIMEOUT_S)
    assert result.image_sets == 2
    assert out / "Image.csv" in result.outputs
    check_run(pipeline, fly_input["dna"], fly_input["folder"], out)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", UPSCALING)
def test_shipped_pipeline_on_shared_data(pipeline, shared_input, cellprofiler_command, tmp_path):
    out = tmp_path / "out"
    result = run_pipeline(pipeline, shared_input["folder"], out, timeout=RUN_TIMEOUT_S)
    assert result.image_sets == 3  # BBBC039, DSB and ExampleHuman d0; d1, d2 and the mask are not DNA
    check_run(pipeline, shared_input["dna"], shared_input["folder"], out)


@pytest.mark.slow
def test_first_and_last_image_set_split_a_run(fly_input, cellprofiler_command, tmp_path):
    out = tmp_path / "job2"
    result = run_pipeline("upscale_segment_measure", fly_input["folder"], out, first=2, last=2, timeout=RUN_TIMEOUT_S)
    assert result.image_sets == 1
    assert [r["FileName_DNA"] for r in read_csv(out / "Image.csv")] == ["01_POS076_D.TIF"]
    assert sorted(p.name for p in out.glob("*.tiff")) == ["01_POS076_D_msrgan.tiff"] and not result.replaced
    # another job into the same folder replaces this one's spreadsheets: the result says which
    again = run_pipeline("upscale_segment_measure", fly_input["folder"], out, first=1, last=1, timeout=RUN_TIMEOUT_S)
    assert "Image.csv" in {p.name for p in again.replaced} and "01_POS076_D_msrgan.tiff" not in {p.name for p in again.replaced}
    # a job whose range starts past the input's end fails with a reason, not CellProfiler's IndexError
    with pytest.raises(HeadlessRunError, match="fewer than 3 image sets"):
        run_pipeline("upscale_segment_measure", fly_input["folder"], tmp_path / "job3", first=3, last=4)


# --- failures the runner must not let pass ----------------------------------------------------

@pytest.fixture
def one_fly_image(tmp_path, example_fly_images: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    write_crop(example_fly_images / "01_POS002_D.TIF", folder, slice(300, 364), slice(500, 564))
    return folder


@pytest.fixture
def broken_plugins(tmp_path) -> Path:
    """A plugins folder holding a truncated copy of the plugin, as a failed copy leaves it."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    text = (plugin_dir() / PLUGIN_FILE).read_text()
    cut = text.index("\nclass UpscaleMSRGAN(")  # cut off at the module's class, mid-file, and a line garbled
    (folder / PLUGIN_FILE).write_text(text[:cut] + "\ndef broken(:\n")
    return folder


def cli(argv: List[str]) -> int:
    from msrgan_core.cli import main

    return main(argv)


@pytest.mark.slow
def test_a_plugin_that_fails_to_load_fails_the_run(one_fly_image, broken_plugins, cellprofiler_command, tmp_path, capsys):
    pipeline = PIPELINES / "upscale_segment_measure.cppipe"
    # CellProfiler itself exits 0 and writes no image: its exit status cannot be trusted ...
    raw_out = tmp_path / "raw"
    proc = subprocess.run(
        cellprofiler_command + ["-c", "-r", "-p", str(pipeline), "-i", str(one_fly_image), "-o", str(raw_out),
                                "--plugins-directory", str(broken_plugins)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0
    assert "Could not load upscalemsrgan" in proc.stdout + proc.stderr
    assert not list(raw_out.glob("*.tiff"))
    # ... so the runner reads the log: `msrgan cellprofiler run` exits 1 and says why
    code = cli(["cellprofiler", "run", str(pipeline), "-i", str(one_fly_image), "-o", str(tmp_path / "out"),
                "--plugins-dir", str(broken_plugins), "-q"])
    assert code == 1
    message = capsys.readouterr().err
    assert "could not load the module(s) upscalemsrgan" in message and "SyntaxError" in message


@pytest.mark.slow
def test_no_image_passing_the_rules_fails_the_run(fly_input, cellprofiler_command, tmp_path):
    only_other_channels = tmp_path / "in"
    only_other_channels.mkdir()
    for p in fly_input["folder"].glob("*_[FR].TIF"):
        shutil.copy(p, only_other_channels)
    with pytest.raises(HeadlessRunError, match="no image passed the pipeline's Images/NamesAndTypes rules"):
        run_pipeline("compare_with_bicubic", only_other_channels, tmp_path / "out", timeout=RUN_TIMEOUT_S)


@pytest.mark.slow
def test_a_missing_custom_model_fails_before_the_first_image(one_fly_image, cellprofiler_command, tmp_path):
    text = (PIPELINES / "upscale_segment_measure.cppipe").read_text()
    text = text.replace("Model:Default: fidelity", "Model:Custom model file")
    text = text.replace("Location of the model file:Elsewhere...|", f"Location of the model file:Elsewhere...|{tmp_path}")
    assert f"Elsewhere...|{tmp_path}" in text
    pipeline = tmp_path / "custom.cppipe"
    pipeline.write_text(text)
    with pytest.raises(HeadlessRunError) as caught:
        run_pipeline(pipeline, one_fly_image, tmp_path / "out", timeout=RUN_TIMEOUT_S)
    message = str(caught.value)
    assert "Failed to prepare run for module UpscaleMSRGAN" in message
    assert str(tmp_path / "model.safetensors") in message
    assert not list((tmp_path / "out").glob("*.tiff"))


# --- fast: arguments, plugin installation -----------------------------------------------------

def test_packaged_plugin_folder_holds_the_plugin():
    folder = plugin_dir()
    assert (folder / PLUGIN_FILE).is_file()
    # CellProfiler loads <dir>/[!_]*.py as plugins: nothing but the module itself qualifies
    assert [p.name for p in folder.glob("[!_]*.py")] == [PLUGIN_FILE]


def test_install_plugin_copies_the_module_into_a_plugins_folder(tmp_path, capsys):
    target = install_plugin(tmp_path / "CellProfiler" / "plugins")
    assert target == tmp_path / "CellProfiler" / "plugins" / PLUGIN_FILE
    assert target.read_bytes() == (plugin_dir() / PLUGIN_FILE).read_bytes()
    assert cli(["cellprofiler", "install-plugin", str(tmp_path / "other")]) == 0
    assert "plugins directory" in capsys.readouterr().out and (tmp_path / "other" / PLUGIN_FILE).is_file()
    (tmp_path / "file").write_text("")
    assert cli(["cellprofiler", "install-plugin", str(tmp_path / "file")]) == 1


def test_plugin_dir_command_prints_the_folder(capsys):
    assert cli(["cellprofiler", "plugin-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(plugin_dir())


def test_shipped_pipelines_resolve_by_name():
    for name in SHIPPED_PIPELINES:
        assert resolve_pipeline(name) == PIPELINES / f"{name}.cppipe"
    with pytest.raises(HeadlessRunError, match="shipped pipelines: upscale_segment_measure"):
        resolve_pipeline("no_such_pipeline")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_dir": "missing"}, "input folder .*missing does not exist"),
        ({"first": 3, "last": 2}, "first image set 3 is after last image set 2"),
        ({"first": 0}, "first image set must be >= 1"),
        ({"plugins_dir": "empty"}, "has no upscalemsrgan.py"),
        ({"output_dir": "in/results"}, "is inside the input folder"),
        ({"pipeline": "notes.cppipe"}, "notes.cppipe is not a CellProfiler pipeline"),
        ({"pipeline": "elsewhere/measure_nuclei.cppipe"}, "runs as `msrgan cellprofiler run measure_nuclei`"),
        ({"output_dir": "notes.cppipe"}, "output folder .*notes.cppipe is a file"),
        ({"timeout": 0}, "timeout must be a number of seconds above 0"),
    ],
)
def test_bad_arguments_fail_before_cellprofiler_starts(tmp_path, kwargs, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.cppipe").write_text("my pipeline ideas\n")
    if kwargs.get("pipeline"):  # a file is never swapped for the shipped pipeline of its name
        kwargs = {"pipeline": tmp_path / kwargs["pipeline"]}
    arguments = {"pipeline": "upscale_segment_measure", "input_dir": "in", "output_dir": "out"}
    arguments.update(kwargs)
    for key in ("input_dir", "output_dir", "plugins_dir"):
        if key in arguments:
            arguments[key] = tmp_path / arguments[key]
    with pytest.raises(HeadlessRunError, match=message):
        run_pipeline(cellprofiler="/bin/false", **arguments)


def test_an_unknown_cellprofiler_executable_is_reported():
    with pytest.raises(HeadlessRunError, match="no-such-cellprofiler"):
        find_cellprofiler("no-such-cellprofiler")


def test_progress_lines_one_per_image_set_with_the_time_left():
    from msrgan_core.headless import ImageSetProgress

    lines = []
    progress = ImageSetProgress(lines.append, total=3, first=1)
    for n in (1, 1, 1, 2, 2, 3):
        progress(f"Tue Dec 1 19:32:08 2026: Image # {n}, module Images # 1: CPU_time = 0.00 secs")
    progress("some other line")
    assert [line.split(";")[0] for line in lines] == ["image set 1 (1 of 3)\n", "image set 2 (2 of 3)", "image set 3 (3 of 3)"]
    assert "1 done in" in lines[1] and "s left" in lines[2]


def test_the_runner_counts_the_image_sets_a_module_failed_on(tmp_path):
    from msrgan_core.headless import diagnose

    log = "\n".join([
        "Tue Dec 1 19:32:08 2026: Image # 1, module UpscaleMSRGAN # 5: CPU_time = 0.1 secs",
        "Error detected during run of module UpscaleMSRGAN",
        "ValueError: UpscaleMSRGAN cannot upscale 'DNA' with the model fidelity.safetensors: image 'DNA': 1 x 1 pixels",
        "Tue Dec 1 19:32:09 2026: Image # 2, module UpscaleMSRGAN # 5: CPU_time = 0.1 secs",
        "Error detected during run of module UpscaleMSRGAN",
    ])
    problem = diagnose(log, 1, "", ["UpscaleMSRGAN"], tmp_path, image_sets=2)
    assert problem.startswith("2 module errors in the run") and "UpscaleMSRGAN" in problem and "1 x 1 pixels" in problem


def test_the_runner_says_an_error_said_in_words_and_a_kill(tmp_path):
    from msrgan_core.headless import diagnose

    log = "Tue Dec 1 19:32:08 2026: Image # 1, module Images # 1: CPU_time = 0.00 secs\nERROR: Java heap too small\nbye\n"
    assert diagnose(log, 255, "", ["Images"], tmp_path, image_sets=1) == (
        "exit status 255, done file says 'nothing': ERROR: Java heap too small")
    killed = diagnose("Tue Dec 1 19:32:08 2026: Image # 1, module Images # 1\n", -9, "", ["Images"], tmp_path)
    assert killed.startswith("stopped by SIGKILL (out of memory?") and "exit status" not in killed


def test_a_plugin_the_pipeline_does_not_use_may_fail_to_load(tmp_path):
    """A plugins folder shared with other plugins (CellProfiler-plugins' active_plugins): one whose
    dependency is missing harms no pipeline that does not use it."""
    from msrgan_core.headless import diagnose

    log = "Could not load runcellpose\nModuleNotFoundError: No module named 'cellpose'\n"
    assert diagnose(log, 0, "Complete", ["Images", "UpscaleMSRGAN"], tmp_path, image_sets=2) == ""
    assert "could not load the module(s) runcellpose" in diagnose(log, 0, "Complete", ["RunCellpose"], tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_a_timeout_stops_cellprofiler_started_by_a_wrapper_script(tmp_path):
    """Cluster sites start CellProfiler through module or container wrappers that do not exec it:
    the timeout must stop the wrapper's child, not only the wrapper (whose pipe the child holds)."""
    import time

    wrapper = tmp_path / "cellprofiler"
    wrapper.write_text("#!/bin/sh\necho started\nsleep 60\necho done\n")
    wrapper.chmod(0o755)
    (tmp_path / "in").mkdir()
    start = time.monotonic()
    with pytest.raises(HeadlessRunError, match="within 2 s and was stopped"):
        run_pipeline("measure_nuclei", tmp_path / "in", tmp_path / "out", cellprofiler=str(wrapper), timeout=2)
    assert time.monotonic() - start < 20


def test_a_pipeline_from_a_newer_cellprofiler_is_noted(tmp_path, capsys):
    """CellProfiler loads such a pipeline with a warning in its log, which a quiet run never showed."""
    import sys

    fake = tmp_path / "cellprofiler"  # says what CellProfiler 4.2.8 logs, writes a spreadsheet, and is done
    fake.write_text(f"#!{sys.executable}\nimport sys, pathlib\na = sys.argv\n"
                    "print('WARNING:root:Your pipeline version is 50001 but you are running CellProfiler version 428. "
                    "Loading this pipeline may fail or have unpredictable results.')\n"
                    "pathlib.Path(a[a.index('-o') + 1], 'Nuclei.csv').write_text('x')\n"
                    "pathlib.Path(a[a.index('--done-file') + 1]).write_text('Complete')\n")
    fake.chmod(0o755)
    (tmp_path / "in").mkdir()
    assert cli(["cellprofiler", "run", "measure_nuclei", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                "--cellprofiler", str(fake), "-q"]) == 0
    assert "note: the pipeline was saved by a newer CellProfiler (pipeline version 50001, this CellProfiler 428" in \
        capsys.readouterr().err


def test_pipelines_dir_command_prints_the_shipped_pipelines_folder(capsys):
    assert cli(["cellprofiler", "pipelines-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(PIPELINES)


def test_cellprofiler_runs_in_a_utf8_locale_where_the_job_has_none(monkeypatch):
    """A batch job's C locale made Java read non-ASCII paths as missing files."""
    import locale

    from msrgan_core.headless import _child_environment

    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "ANSI_X3.4-1968")
    assert _child_environment()["LC_ALL"] == "C.UTF-8"
    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "UTF-8")
    assert _child_environment() is None  # the job's own locale, untouched


@pytest.mark.slow
def test_a_run_says_how_many_image_files_the_shipped_rule_left_out(one_fly_image, cellprofiler_command, tmp_path, capsys):
    """A user's nuclei images named like another channel (``_w2``) are passed over by the shipped
    Images rule on purpose; the run says so instead of ending on a smaller count alone."""
    shutil.copy(next(one_fly_image.glob("*.TIF")), one_fly_image / "plate_A01_w2.tif")
    (one_fly_image / "masks").mkdir()  # label images beside the fields, which the rule skips too: not counted
    shutil.copy(next(one_fly_image.glob("*.TIF")), one_fly_image / "masks" / "labels.tif")
    assert cli(["cellprofiler", "run", "measure_nuclei", "-i", str(one_fly_image), "-o", str(tmp_path / "out"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "1 of the 2 image files under" in err and "pipelines-dir" in err
