"""The benchmark scripts start: each imports what it names and prints its usage.

They run for minutes on real data, so the suite does not run them; a benchmark that no longer
imports (a helper renamed in ``quality.py``, say) fails here instead of when someone next needs it.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.integration
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_prints_its_usage(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")


def test_the_quality_grid_is_drawn_one_panel_per_dataset(tmp_path):
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("quality", BENCHMARKS[0].parent / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    rows = [{"cell": cell, "dataset": dataset, "image": image, "method": method, "psnr": psnr + (image == "b"),
             "ssim": 0.9, "hf_ratio": 1.0}
            for cell in ("bin", "bin+300ph", "blur1.5+bin") for dataset in ("BBBC039", "DSB2018") for image in "ab"
            for method, psnr in [("bicubic", 30.0), ("lanczos", 30.2), ("nlm+bicubic", 30.1), ("fidelity", 32.5),
                                 ("perceptual", 31.0)]]
    table = quality.summarize(rows)
    assert [e["vs_best"] for e in table if e["method"] == "fidelity"] == pytest.approx([2.3] * 6)
    quality.plot_grid(table, ["fidelity", "perceptual"], tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as picture:
        assert picture.format == "PNG" and picture.size == (660, 770)  # 6 x (2 x 3.2 + 0.6) inches at 110 dpi: two panels


def test_the_held_out_split_is_refused_where_the_data_is_not_what_the_model_trained_on(tmp_path):
    """The split is made again from the files found: one file more or less moves every later one,
    and the 'held-out' images would be partly training images."""
    import importlib.util

    import numpy as np
    import tifffile

    spec = importlib.util.spec_from_file_location("quality", BENCHMARKS[0].parent / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    data = tmp_path / "bbbc039_mirror"  # a folder name holding a dataset's name takes nothing of the other's
    for folder, count in [("bbbc039/images", 6), ("dsb2018_fluorescence", 4)]:
        (data / folder).mkdir(parents=True)
        for i in range(count):
            tifffile.imwrite(data / folder / f"IXMtest_A{i:02d}_s1_w1.tif", np.zeros((8, 8), np.uint16))
    training = {"well_regex": None, "val_fraction": 0.2, "seed": 0, "train_files": 8, "val_files": 2}
    held_out = quality.validation_files(data, {"training": training})
    assert sum(map(len, held_out.values())) == 2
    assert all(p.parent.name == "images" for p in held_out["BBBC039"])
    assert all(p.parent.name == "dsb2018_fluorescence" for p in held_out["DSB2018"])
    with pytest.raises(SystemExit, match="split 8 / 2 .*recorded 9 / 2"):
        quality.validation_files(data, {"training": dict(training, train_files=9)})
