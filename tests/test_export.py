"""``msrgan export MODEL --bioimageio OUT.zip``: a package bioimageio.spec validates, bioimageio.core
reproduces, and whose ONNX weights give PyTorch's output.

The bioimageio extra pins a pydantic older than CellProfiler's environment has, so the export
runs in a Python that has the extra: this one, or ``.venv-bioimageio`` beside ``.venv``
(docs/bioimageio.md); the test is skipped where neither has it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msrgan_core.cli import main
from msrgan_core.export import EXTRA_MODULES, MissingExtraError, require_extra

REPO = Path(__file__).resolve().parents[1]
EXTRA_VENV_PYTHON = REPO / ".venv-bioimageio" / "bin" / "python"


def extra_python() -> "str | None":
    """A Python with the bioimageio extra, or None."""
    try:
        require_extra()
        return sys.executable
    except MissingExtraError:
        return str(EXTRA_VENV_PYTHON) if EXTRA_VENV_PYTHON.is_file() else None


def run(python: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python args`` with this working tree's msrgan_core first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([python, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
                          check=False)


@pytest.fixture
def without_the_extra(monkeypatch):
    """This process as if the bioimageio extra were not installed (``import`` of each fails)."""
    for module in ["bioimageio", *EXTRA_MODULES]:
        monkeypatch.setitem(sys.modules, module, None)


def test_export_without_the_extra_is_one_line_saying_what_to_install(without_the_extra, tmp_path, capsys):
    out = tmp_path / "fidelity.zip"
    assert main(["export", "fidelity", "--bioimageio", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "pip install 'msrgan[bioimageio]'" in err and "bioimageio.spec" in err and "onnx" in err
    assert main(["export", "fidelity", "--bioimageio", str(tmp_path / "new" / "fidelity.zip")]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())  # nor the folder it would have gone in


def test_a_package_of_a_model_with_other_defaults_says_it_runs_the_network_alone(tmp_path):
    from msrgan_core.export import readme
    from msrgan_core.modelfile import load_model

    model = load_model("fidelity")
    assert "this package runs the network alone" not in readme(model.card, 13, 32)
    averaged = dataclasses.replace(model.card, inference=dataclasses.replace(model.card.inference, ensemble=8, match_bins=True))
    text = readme(averaged, 13, 32)
    assert f"runs by default with {averaged.inference.describe()}; this package runs the network alone" in text


def test_export_refuses_an_existing_package_and_a_name_without_zip(tmp_path, capsys):
    out = tmp_path / "fidelity.zip"
    out.write_bytes(b"an earlier package")
    assert main(["export", "fidelity", "--bioimageio", str(out)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier package"
    assert main(["export", "fidelity", "--bioimageio", str(tmp_path / "fidelity.yaml")]) == 2
    assert ".zip" in capsys.readouterr().err


# Run in the Python with the extra, on the package the CLI wrote (argv[1]; argv[2] a scratch folder): the
# format validation, bioimageio.core's test, what the description says, ONNX against PyTorch (normalised
# here, independently of the export), a tiled prediction against the whole image, and a sample too small.
CHECK = r"""
import json, sys, zipfile
import numpy as np, onnxruntime, torch
from bioimageio.core import Tensor, predict, test_model
from bioimageio.spec import load_description
import msrgan_core
from msrgan_core.export import ExportError, export_bioimageio
from msrgan_core.modelfile import load_model

package = sys.argv[1]
model = load_model("fidelity")
descr = load_description(package)
report = {"format": descr.validation_summary.status, "test": test_model(package, devices=["cpu"]).status}
pre = [p for p in descr.inputs[0].preprocessing if p.id == "scale_range"][0].kwargs
y = descr.outputs[0].axes[2]
report.update(percentiles=[pre.min_percentile, pre.max_percentile], norm_axes=[str(a) for a in pre.axes],
              y_ref=[str(y.size.tensor_id), str(y.size.axis_id)], y_scale=y.scale, halo=getattr(y, "halo", None),
              radius=model.influence_radius, dois=[str(c.doi) for c in descr.cite], license=str(descr.license),
              weights=sorted(k for k, v in descr.weights if v is not None), covers=len(descr.covers))
with zipfile.ZipFile(package) as z:
    names = set(z.namelist())
    z.extract("weights.onnx", sys.argv[2]), z.extract("test_input.npy", sys.argv[2])
    readme = z.read("README.md").decode()
report.update(names=sorted(names), readme_version=f"msrgan {msrgan_core.__version__} wrote this package" in readme,
              readme_figures=f"| this model | {model.metadata['validation']['val_psnr']:.2f} |" in readme)
x = np.load(sys.argv[2] + "/test_input.npy")
low, high = np.percentile(x.astype(np.float64), [model.normalization.low, model.normalization.high])
normalized = ((x - low) / (high - low)).astype(np.float32)
with torch.no_grad():
    expected = model.generator(torch.from_numpy(normalized)).numpy()
session = onnxruntime.InferenceSession(sys.argv[2] + "/weights.onnx", providers=["CPUExecutionProvider"])
(got,) = session.run(None, {session.get_inputs()[0].name: normalized})
report.update(shapes=[list(x.shape), list(got.shape)],
              onnx_error=float(np.abs(got - expected).max() / (expected.max() - expected.min())))
# tiles of 40 x 40 input pixels, padded by the halo: away from the image's border (where bioimageio.core
# mirrors the image), the same as the network run on the whole image
tiled = predict(model=descr, inputs=Tensor(x, dims=("batch", "channel", "y", "x")),
                input_block_shape={"input": {"batch": 1, "channel": 1, "y": 40, "x": 40}})
h = 4 * model.influence_radius
tiled = tiled.members["output"].data.values
report["tiled_error"] = float(np.abs(tiled - expected)[..., h:-h, h:-h].max() / (expected.max() - expected.min()))
try:
    export_bioimageio(model, sys.argv[2] + "/small.zip", sample=np.ones((20, 20)))
except ExportError as exc:
    report["small_sample"] = str(exc)
sparse = np.full((96, 96), 100.0)
sparse[::30, ::30] = 3000.0  # beads: percentiles 1 and 99.8 are both the background
try:
    export_bioimageio(model, sys.argv[2] + "/sparse.zip", sample=sparse)
except ExportError as exc:
    report["sparse_sample"] = str(exc)
print(json.dumps(report))
"""


@pytest.mark.integration
def test_bioimageio_package_validates_reproduces_and_onnx_matches_pytorch(tmp_path):
    python = extra_python()
    if python is None:
        missing = f"no Python with the bioimageio extra (this one, or {EXTRA_VENV_PYTHON}, which make test builds)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(f"{missing}; see docs/bioimageio.md")
    out = tmp_path / "pkg" / "fidelity.zip"
    start = time.monotonic()
    result = run(python, "-m", "msrgan_core.cli", "export", "fidelity", "--bioimageio", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    seconds = time.monotonic() - start
    assert "bioimageio.core test passed" in result.stdout and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["fidelity.zip"]  # no temporary file left beside it

    again = run(python, "-m", "msrgan_core.cli", "export", "fidelity", "--bioimageio", str(out))
    assert again.returncode == 2 and "exists: pass --overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    check = run(python, "-c", CHECK, str(out), str(tmp_path))
    assert check.returncode == 0, check.stderr[-3000:]
    report = json.loads(check.stdout.strip().splitlines()[-1])
    assert report["format"] == "valid-format" and report["test"] == "passed", report
    assert report["percentiles"] == [1.0, 99.8] and report["norm_axes"] == ["y", "x"]
    assert report["y_ref"] == ["input", "y"] and report["y_scale"] == 0.25  # 4x as many, 4x smaller pixels
    assert report["halo"] == 4 * report["radius"] == 52
    assert report["weights"] == ["onnx", "torchscript"] and report["covers"] == 1
    assert {"10.1109/CVPR.2017.19", "10.1002/cyto.a.23863", "10.1038/s41592-019-0612-7"} <= set(report["dois"])
    assert report["license"] == "BSD-3-Clause"
    assert {"README.md", "cover.png", "test_input.npy", "test_output.npy", "weights.onnx", "weights.pt",
            "msrgan_fidelity.safetensors", "rdf.yaml"} <= set(report["names"])
    assert report["readme_version"] and report["readme_figures"]
    assert report["shapes"] == [[1, 1, 64, 64], [1, 1, 256, 256]]
    assert report["onnx_error"] < 1e-4, report["onnx_error"]
    assert report["tiled_error"] < 1e-4, report["tiled_error"]  # the halo is enough context
    assert "smaller than the package's smallest input, 32 x 32" in report["small_sample"]
    assert "nearly all one value" in report["sparse_sample"] and "--sample with objects" in report["sparse_sample"]
    print(f"export {seconds:.0f} s; ONNX vs PyTorch: {report['onnx_error']:.2e} of the range, "
          f"tiled vs whole: {report['tiled_error']:.2e}")


@pytest.mark.integration
def test_the_command_line_and_export_module_import_no_bioimageio_or_onnx():
    python = extra_python() or sys.executable
    probe = ("import sys, msrgan_core.cli, msrgan_core.export; heavy = ('bioimageio', 'onnx', 'onnxruntime', 'onnxscript'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    result = run(python, "-c", probe, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
