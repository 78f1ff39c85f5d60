"""msrgan in CellProfiler's own environment: CellProfiler 4.2.8 on Python 3.8 with the pins it
declares, msrgan added by a plain ``pip install`` (``make cp38-venv`` builds ``.venv-cp38``).
pip must leave CellProfiler's packages as they were, and a shipped pipeline runs there headless."""
from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
#: what CellProfiler 4.2.8 declares for the packages msrgan also uses (its wheel's metadata)
CELLPROFILER_PINS = {"scikit-image": "0.18.3", "scipy": "1.9.0"}
#: the headless environment leaves out CellProfiler's GUI and MySQL export
NOT_INSTALLED = ("wxpython", "mysqlclient")
SCALE = 4


def run_in(venv: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``args[0]`` from the venv's ``bin`` folder."""
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, **kwargs)


def installed_versions(venv: Path) -> dict:
    """``{lower-case distribution name: version}`` of everything installed in the venv."""
    script = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name'].lower(): d.version "
              "for d in m.distributions()}))")
    return json.loads(run_in(venv, "python", "-c", script, check=True).stdout)


def test_cellprofilers_pins_hold_beside_msrgan(cp38_env):
    versions = installed_versions(cp38_env)
    assert versions["cellprofiler"] == "4.2.8" and versions["msrgan"] == "0.1.0"
    for name, pinned in CELLPROFILER_PINS.items():
        assert versions[name] == pinned, name
    assert tuple(map(int, versions["tifffile"].split("."))) < (2022, 4, 22)
    assert tuple(map(int, versions["centrosome"].split(".")[:2])) < (1, 3)
    # pip's own check against every requirement CellProfiler declares: only what headless leaves out is missing
    problems = run_in(cp38_env, "pip", "check").stdout.splitlines()
    absent = [line for line in problems if line.endswith(", which is not installed.")]
    assert absent == problems, problems  # no "has requirement X, but you have Y"
    assert {line.split(" requires ")[1].split(",")[0].lower() for line in absent} <= set(NOT_INSTALLED), problems
    # the freeze before msrgan was installed, all of it still there at the same versions
    before = (cp38_env / "freeze-before-msrgan.txt").read_text().splitlines()
    now = set(run_in(cp38_env, "pip", "freeze", check=True).stdout.splitlines())
    assert [line for line in before if line not in now] == []
    # msrgan came from its wheel into site-packages, not from this tree
    where = run_in(cp38_env, "python", "-c", "import msrgan_core; print(msrgan_core.__file__)", check=True,
                   cwd=cp38_env).stdout
    assert "site-packages" in where, where


def test_a_shipped_pipeline_runs_headless_in_cellprofilers_environment(cp38_env, tmp_path):
    """``msrgan cellprofiler run`` from the Python 3.8 environment, on crops of CellProfiler's own
    ExampleFly DNA images from that environment's CellProfiler package."""
    (fly,) = cp38_env.glob("lib/python3.8/site-packages/cellprofiler/data/examples/ExampleFly/images")
    images = tmp_path / "in"
    images.mkdir()
    dna = []
    for source in sorted(fly.glob("01_POS0[07][26]_D.TIF")):
        dna.append(images / source.name)
        tifffile.imwrite(dna[-1], tifffile.imread(source)[300:460, 500:660])
    assert len(dna) == 2
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{cp38_env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    done = run_in(cp38_env, "msrgan", "cellprofiler", "run", "upscale_segment_measure", "-i", str(images),
                  "-o", str(out), "-q", timeout=500, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for source in dna:
        upscaled = tifffile.imread(out / f"{source.stem}_msrgan.tiff")
        assert upscaled.shape == (SCALE * 160, SCALE * 160) and upscaled.dtype == np.uint16
        assert upscaled.max() > 0
    with open(out / "Image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["FileName_DNA"] for r in rows) == [p.name for p in dna]
    assert [int(float(r["Upscale_ScaleFactor_UpscaledMSRGAN"])) for r in rows] == [SCALE, SCALE]
    assert all(float(r["Count_Nuclei"]) >= 1 for r in rows)


def test_a_cellprofiler_without_torch_or_msrgan_hands_the_work_to_msrgan_in_another_environment(cp38_env, tmp_path):
    """As with CellProfiler's app bundles: CellProfiler 4.2.8 on Python 3.8 (``.venv-cp38``) in which
    neither PyTorch nor msrgan can be imported runs a pipeline whose UpscaleMSRGAN hands each image to
    the ``msrgan`` of this project's Python 3.11 environment ("Run msrgan in: Another Python environment")."""
    import sys

    repo = Path(__file__).resolve().parents[1]
    other = Path(sys.executable).parent / "msrgan"  # this environment's msrgan, not .venv-cp38's
    blocked = tmp_path / "blocked"
    for name in ("torch", "msrgan_core"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} cannot be imported here (test)')\n")
    pipeline = (repo / "pipelines" / "upscale_segment_measure.cppipe").read_text()
    assert "Run msrgan in:This Python environment" in pipeline
    pipeline = pipeline.replace("Run msrgan in:This Python environment", "Run msrgan in:Another Python environment")
    pipeline = pipeline.replace("Path to msrgan (or python) in that environment:\n",
                                f"Path to msrgan (or python) in that environment:{other}\n")
    (tmp_path / "elsewhere.cppipe").write_text(pipeline)
    (fly,) = cp38_env.glob("lib/python3.8/site-packages/cellprofiler/data/examples/ExampleFly/images")
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    source = fly / "01_POS002_D.TIF"
    tifffile.imwrite(images / source.name, tifffile.imread(source)[300:428, 500:628])
    env = dict(os.environ, PYTHONPATH=str(blocked))  # CellProfiler's Python only: the plugin drops it for msrgan
    done = run_in(cp38_env, "cellprofiler", "-c", "-r", "-p", str(tmp_path / "elsewhere.cppipe"), "-i", str(images),
                  "-o", str(out), "--plugins-directory", str(repo / "cellprofiler_plugin"), timeout=500, env=env,
                  cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    upscaled = tifffile.imread(out / "01_POS002_D_msrgan.tiff")  # plain CellProfiler exits 0 even without the plugin
    assert upscaled.shape == (SCALE * 128, SCALE * 128) and upscaled.max() > 0
    with open(out / "Image.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert int(float(row["Upscale_ScaleFactor_UpscaledMSRGAN"])) == SCALE
    assert row["Upscale_Model_UpscaledMSRGAN"] == "fidelity.safetensors"
    assert float(row["Count_Nuclei"]) >= 1
