"""The wheel: built from this tree, installed into a fresh environment, it finds its models,
plugin and shipped pipelines by name, and runs one of them headless through CellProfiler."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    leftover = not (ROOT / "build").exists()  # setuptools builds in the tree: leave it as it was
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                        str(ROOT)], check=True, capture_output=True, timeout=300)
    finally:
        if leftover:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    (built,) = out.glob("msrgan-*.whl")
    return built


def test_the_wheel_holds_models_configs_plugin_and_pipelines(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("msrgan_core/weights/fidelity.safetensors", "msrgan_core/weights/perceptual.safetensors",
                     "msrgan_core/configs/default_models.toml", "cellprofiler_plugin/upscalemsrgan.py",
                     "msrgan_core/pipelines/measure_nuclei.cppipe", "msrgan_core/pipelines/upscale_segment_measure.cppipe"):
        assert expected in names, expected


def test_an_installed_wheel_runs_a_shipped_pipeline_by_name(wheel, example_fly_images, tmp_path):
    """A fresh venv holds msrgan from the wheel alone; its dependencies (CellProfiler, torch) come
    from this environment's site-packages, behind it on the path, so the wheel's msrgan is the one run."""
    env_dir = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, str(wheel)],
                   check=True, capture_output=True, timeout=300)
    Path(target, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    where = subprocess.run([str(python), "-c", "import msrgan_core; print(msrgan_core.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert where.startswith(target), where  # not this tree's editable copy
    images = tmp_path / "in"
    images.mkdir()
    dna = tifffile.imread(example_fly_images / "01_POS002_D.TIF")[300:428, 500:628]
    for method in ("high-res", "msrgan"):
        tifffile.imwrite(images / f"field__{method}.tif", dna)
    env = dict(os.environ, PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([str(python), "-m", "msrgan_core.cli", "cellprofiler", "run", "measure_nuclei",
                           "-i", str(images), "-o", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, timeout=500, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "Nuclei.csv").is_file() and (tmp_path / "out" / "field__msrgan_labels.tiff").is_file()
    labels = tifffile.imread(tmp_path / "out" / "field__high-res_labels.tiff")
    assert labels.max() >= 1 and np.array_equal(labels, tifffile.imread(tmp_path / "out" / "field__msrgan_labels.tiff"))
