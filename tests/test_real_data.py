"""Integration on real screening images from ../shared/data, with the packaged default model."""
from __future__ import annotations

import numpy as np
import pytest

from msrgan_core.evaluate import evaluate_images, summarize
from msrgan_core.config import DegradationConfig
from msrgan_core.inference import Upscaler
from msrgan_core.io import find_images, read_image
from msrgan_core.modelfile import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fidelity():
    return load_model("fidelity")


def test_bbbc039_uint16_field_upscales_on_its_own_intensity_scale(shared_data, fidelity):
    path = find_images([shared_data / "bbbc039" / "images"])[0]
    image, _ = read_image(path)
    lr = image[:, :130, :174]  # a quarter field keeps the test quick
    out = Upscaler(fidelity, device="cpu").upscale(lr)
    assert out.dtype == np.uint16 and out.shape == (1, 520, 696)
    assert out.max() <= 4095 * 1.1  # a 12-bit image stays 12-bit: nothing rescaled to 16 bits
    assert abs(float(out.mean()) - float(lr.mean())) < 0.02 * float(lr.max())


def test_tiled_equals_whole_on_a_real_field(shared_data, fidelity):
    path = sorted((shared_data / "dsb2018_fluorescence").glob("*.png"))[0]
    image, _ = read_image(path)
    assert len(Upscaler(fidelity, device="cpu", tile=100).plan().tiles(image.shape[-2:], fidelity.scale)) > 1, "not tiled"
    whole = Upscaler(fidelity, device="cpu", tile=4096).upscale(image.astype(np.float32))
    tiled = Upscaler(fidelity, device="cpu", tile=100).upscale(image.astype(np.float32))
    assert np.abs(whole - tiled).max() <= 1e-3 * (whole.max() - whole.min())


def test_examplehuman_field_and_evaluation_beat_nearest(shared_data, fidelity):
    paths = find_images([shared_data / "examplehuman" / "*d0.tif"])
    rows = evaluate_images(paths, Upscaler(fidelity, device="cpu"), DegradationConfig.acquisition(method="bin", scale=4),
                           progress=False)
    means = {r["method"]: r for r in summarize(rows)}
    assert means["msrgan"]["psnr"] > means["nearest"]["psnr"]
    assert means["msrgan"]["ssim"] > means["nearest"]["ssim"]
