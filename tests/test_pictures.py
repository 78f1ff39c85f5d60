"""The side-by-side picture shows the region that has most in it, every panel on the truth's
display range, and each output's difference from the truth where it differs."""
import numpy as np
from PIL import Image

from msrgan_core.pictures import _CAPTION, _GAP, busiest_window, side_by_side


def test_the_busiest_window_holds_the_structure():
    truth = np.zeros((200, 300))
    truth[120:180, 200:260] = np.random.default_rng(0).random((60, 60))
    rows, cols = busiest_window(truth, 64)
    assert rows.stop - rows.start == 64 and cols.stop - cols.start == 64
    inside = np.zeros_like(truth, bool)
    inside[rows, cols] = True
    assert inside[120:180, 200:260].mean() > 0.5  # most of the structure is in the window
    rows, cols = busiest_window(truth[:40, :50], 64)  # a smaller image is shown whole
    assert (rows, cols) == (slice(0, 40), slice(0, 40))


def test_panels_show_input_outputs_truth_and_the_differences(tmp_path):
    rng = np.random.default_rng(1)
    truth = rng.random((64, 64)) * 1000 + 100
    low = truth.reshape(16, 4, 16, 4).mean(axis=(1, 3))
    wrong = truth.copy()
    wrong[8:24, 40:56] += 300  # drawn where the truth has nothing of it
    png = side_by_side(tmp_path / "a" / "pair.png", low, 4, "input", [("exact", truth), ("wrong", wrong)], truth, edge=64)
    assert png.exists() and not list(png.parent.glob(".*.part"))
    canvas = np.asarray(Image.open(png))
    assert canvas.shape == (2 * (64 + _CAPTION) + _GAP, 4 * 64 + 3 * _GAP)

    def panel(column: int, row: int = 0) -> np.ndarray:
        top = _CAPTION + row * (64 + _CAPTION + _GAP)
        left = column * (64 + _GAP)
        return canvas[top:top + 64, left:left + 64].astype(float)

    lo, hi = np.percentile(truth, [0.5, 99.8])
    expected = np.rint(np.clip((truth - lo) / (hi - lo), 0, 1) * 255)
    np.testing.assert_array_equal(panel(3), expected)  # the truth
    np.testing.assert_array_equal(panel(1), expected)  # an exact output looks the same
    np.testing.assert_array_equal(panel(0), np.rint(np.clip((np.kron(low, np.ones((4, 4))) - lo) / (hi - lo), 0, 1) * 255))
    assert panel(1, row=1).max() == 0  # no difference from the truth: black
    difference = panel(2, row=1)
    assert difference[8:24, 40:56].min() > 0 and difference.sum() == difference[8:24, 40:56].sum()
    assert np.all(panel(0, row=1) == 255) and np.all(panel(3, row=1) == 255)  # nothing beneath input and truth


def test_a_multichannel_picture_is_labelled_with_the_channel_it_shows(monkeypatch, tmp_path):
    """The PSNR beside the first channel had been taken over all channels under one range."""
    import msrgan_core.pictures as pictures
    from msrgan_core.evaluate import picture
    from msrgan_core.metrics import psnr, true_range

    rng = np.random.default_rng(0)
    hr = np.stack([rng.uniform(0, 100, (32, 32)), rng.uniform(0, 5000, (32, 32))]).astype(np.float32)
    outputs = {"bicubic": hr + rng.normal(0, 4, hr.shape).astype(np.float32),
               "msrgan": hr + rng.normal(0, 1, hr.shape).astype(np.float32)}
    said = {}
    monkeypatch.setattr(pictures, "side_by_side", lambda destination, lr, scale, title, shown, truth: said.update(shown))
    picture(tmp_path / "p.png", hr, hr[:, ::4, ::4], outputs, 4)
    for method in ("bicubic", "msrgan"):
        label = next(k for k in said if k.startswith(method))
        assert label == f"{method} {psnr(hr[:1], outputs[method][:1], true_range(hr[:1])):.1f} dB"
