"""Real pairs: a field imaged at two magnifications, registered and cropped for `msrgan evaluate --lr`."""
from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import tifffile
from skimage.transform import AffineTransform, warp

from msrgan_core.binning import bin_mean
from msrgan_core.config import NormalizationConfig
from msrgan_core.errors import UserError
from msrgan_core.pairs import (RegistrationError, align, find_pairs, match_intensities, pair_files, register,
                               registered_pair, registered_pairs, SHADING_NOTICE)
from helpers import smooth_image


def sample(seed: int = 0) -> np.ndarray:
    """A 'specimen' seen at high resolution: 640 x 640 pixels of blobs."""
    return smooth_image((640, 640), seed=seed, low=100, high=4000, noise=0.02)


def low_magnification(specimen: np.ndarray, zoom: float = 1.0, degrees: float = 0.0) -> np.ndarray:
    """The whole specimen binned 4 x 4, after turning it and changing its pixel size by ``zoom``
    about its centre (a 10x objective whose pixels are not exactly 4 times the 40x one's)."""
    centre = (np.array(specimen.shape[::-1]) - 1) / 2
    turn = (AffineTransform(translation=-centre) + AffineTransform(scale=1 / zoom, rotation=np.radians(degrees))
            + AffineTransform(translation=centre))
    return bin_mean(warp(specimen, turn, order=3, mode="edge", preserve_range=True)[None], 4)[0]


@pytest.mark.parametrize("offset", [(37, 53), (40, 56), (82, 11), (3, 130)])
def test_a_whole_pixel_offset_is_found_exactly(offset):
    """The field of view of a 40x image lies anywhere in the 10x one, not only on its pixel grid:
    the aligned crop bins to the low-resolution image exactly, for every phase of the 4 x 4 grid."""
    specimen = sample()
    lr = bin_mean(specimen[None], 4)[0]
    hr = specimen[offset[0]:offset[0] + 300, offset[1]:offset[1] + 380]
    registration = register(lr, hr, 4)
    assert registration.pixel_ratio(4) == pytest.approx(4, abs=0.005) and abs(registration.rotation) < 0.05
    lr_crop, hr_crop, resampled = align(lr[None], hr[None], registration, 4)
    assert not resampled and hr_crop.shape[1:] == tuple(4 * np.array(lr_crop.shape[1:]))
    assert lr_crop.shape[1] >= 300 // 4 - 1 and lr_crop.shape[2] >= 380 // 4 - 1  # nothing shared is lost
    np.testing.assert_allclose(bin_mean(hr_crop, 4), lr_crop, rtol=1e-5)


def test_the_low_resolution_field_may_also_lie_inside_the_high_resolution_one():
    specimen = sample(1)
    lr = bin_mean(specimen[None], 4)[0][20:100, 30:120]
    registration = register(lr, specimen, 4)
    lr_crop, hr_crop, _ = align(lr[None], specimen[None], registration, 4)
    assert lr_crop.shape[1:] == lr.shape
    np.testing.assert_allclose(bin_mean(hr_crop, 4), lr_crop, rtol=1e-5)


@pytest.mark.parametrize("zoom,degrees", [(0.99, 0.0), (1.0, 0.6), (1.008, -0.3), (0.95, 1.0), (1.05, -1.0)])
def test_pixel_size_and_rotation_are_measured_and_undone(zoom, degrees):
    """Down to a pixel size ratio 5 % off 4 (4.21 and 3.81), where the field's edges lie 2-3
    low-resolution pixels from where a ratio of 4 puts them."""
    specimen = sample(2)
    lr = low_magnification(specimen, zoom, degrees)
    hr = specimen[200:520, 150:500]
    registration = register(lr, hr, 4)
    assert registration.pixel_ratio(4) == pytest.approx(4 / zoom, abs=0.004)
    assert registration.rotation == pytest.approx(degrees, abs=0.05)
    lr_crop, hr_crop, resampled = align(lr[None], hr[None], registration, 4)
    assert resampled and np.isfinite(hr_crop).all() and lr_crop.shape[1] > 60 and lr_crop.shape[2] > 70
    agreement = np.corrcoef(bin_mean(hr_crop, 4).ravel(), lr_crop.ravel())[0, 1]
    # taken as nominal (no scale, no turn), the same pair agrees worse: the measurement matters
    nominal = type(registration)(offset=registration.offset, matrix=np.eye(2), correlation=1.0, residual=0.0, patches=1)
    lr_n, hr_n, _ = align(lr[None], hr[None], nominal, 4)
    assert agreement > 0.995 and agreement > np.corrcoef(bin_mean(hr_n, 4).ravel(), lr_n.ravel())[0, 1] + 0.01


@pytest.mark.parametrize("turns,mirrored", [(1, False), (2, True), (3, True)])
def test_a_camera_turned_or_mirrored_is_found_and_undone(tmp_path, turns, mirrored):
    """Pairs from two instruments: the high-resolution file is turned and mirrored back to match."""
    specimen = sample(7)
    lr = bin_mean(specimen[None], 4)[0]
    hr = specimen[40:360, 56:376]
    tifffile.imwrite(tmp_path / "lr.tif", lr.astype(np.float32))
    tifffile.imwrite(tmp_path / "hr.tif", np.rot90(hr[:, ::-1] if mirrored else hr, k=turns).astype(np.float32))
    hr_crop, lr_crop, _ = registered_pair(tmp_path / "lr.tif", tmp_path / "hr.tif", NormalizationConfig(), 4)
    np.testing.assert_allclose(hr_crop[0], specimen[40:360, 56:376], rtol=1e-5)  # the very pixels, turned back
    np.testing.assert_allclose(bin_mean(hr_crop, 4), lr_crop, rtol=1e-3, atol=1e-2)


def test_a_large_field_is_oriented_at_half_resolution_in_every_mounting():
    """Large fields are compared binned 2 x 2 once more when the camera mounting is sought; noisy
    (100 photons), with another pixel size, every mounting is still found."""
    from msrgan_core.pairs import ORIENTATION_EDGE, best_orientation, oriented

    specimen = sample(11)
    lr = low_magnification(specimen, zoom=1.02)
    lr = np.random.default_rng(1).poisson(lr / lr.max() * 100).astype(np.float32)
    site = specimen[64:576, 96:608]
    assert min(site.shape) // 4 >= ORIENTATION_EDGE  # the half-resolution search
    for turns, mirrored in itertools.product(range(4), (False, True)):
        hr = np.ascontiguousarray(oriented(site, turns, mirrored))
        assert np.array_equal(oriented(hr, *best_orientation(lr, hr, 4)), site), (turns, mirrored)


def test_fields_that_do_not_match_are_a_one_line_error():
    specimen = sample(3)
    with pytest.raises(RegistrationError, match="not found"):
        register(bin_mean(sample(4)[None], 4)[0], specimen[:256, :256], 4)  # another specimen
    with pytest.raises(RegistrationError, match="neither field lies inside the other"):
        register(bin_mean(specimen[None], 4)[0][:40, :], specimen[:, :200], 4)


def test_intensities_are_put_on_the_high_resolution_scale():
    specimen = sample(5)
    lr = bin_mean(specimen[None], 4)
    matched, shading = match_intensities(0.3 * lr + 250, specimen[None], 4)  # another gain and offset
    np.testing.assert_allclose(matched, lr, rtol=1e-4)
    assert shading == pytest.approx((1, 1), abs=1e-4)


def vignetting(shape, fall: float) -> np.ndarray:
    """A gain falling by ``fall`` from the field's centre to its corners."""
    v, u = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    return 1 - fall * (u ** 2 + v ** 2) / 2


def test_shading_that_differs_between_the_objectives_is_corrected():
    """A 10x objective whose light falls off by 15 % towards the corners: one gain for the field
    would leave the corners 7 % too dark; the gain field puts every pixel back on the truth's scale,
    also where half of the field is empty background (nothing to fit the gain to there)."""
    specimen = sample(6)
    specimen[:, 320:] = 100  # the right half: background
    lr = bin_mean(specimen[None], 4)
    gain = vignetting(lr.shape[1:], 0.15)
    shaded = (lr - 100) * gain * 0.3 + 250  # the camera's offset (100 and 250) is not shaded
    matched, _ = match_intensities(shaded, specimen[None], 4)
    np.testing.assert_allclose(matched, lr, rtol=5e-3)  # both smoothed before the fit: not exact
    _, shading = match_intensities(lr * gain * 0.3, specimen[None], 4)  # the range reported: the shading's
    assert shading == pytest.approx((gain.min() / np.median(gain), gain.max() / np.median(gain)), abs=0.005)
    _, narrow = match_intensities(shaded[:, :24, :24], specimen[None, :96, :96], 4)
    assert narrow == (1.0, 1.0)  # too few pixels for fields: one gain and offset
    with pytest.raises(UserError, match="do not rise with"):
        match_intensities(lr, -specimen[None], 4)  # another channel, or an inverted image


@pytest.mark.parametrize("seed", range(3))
def test_noise_is_not_reported_as_shading(seed):
    """At 300 photons the gain and offset fields trade off against each other (the gain alone
    spanned 0.89-1.07 on these fields); the response at the signal's level stays flat."""
    specimen = sample(seed)
    lr = bin_mean(specimen[None], 4)
    noisy = np.random.default_rng(seed).poisson(lr / lr.max() * 300) * 7.0 + 90
    low, high = match_intensities(noisy, specimen[None], 4)[1]
    assert high - low < 0.02 < SHADING_NOTICE


def test_files_pair_by_name(tmp_path):
    lr = [tmp_path / "lr" / "A01.tif", tmp_path / "lr" / "A02.tif"]
    hr = [tmp_path / "hr" / "A02.tiff", tmp_path / "hr" / "A01.tif"]
    assert pair_files(lr, hr) == [(lr[0], hr[1]), (lr[1], hr[0])]
    with pytest.raises(UserError, match="B01.tif has no partner"):
        pair_files(lr, hr + [tmp_path / "hr" / "B01.tif"])
    with pytest.raises(UserError, match="several files named A01"):
        pair_files(lr, hr + [tmp_path / "hr" / "A01.png"])


def test_one_low_magnification_field_partners_the_sites_named_after_it(tmp_path):
    lr = [tmp_path / "lr" / "A01.tif", tmp_path / "lr" / "A01_s2.tif", tmp_path / "lr" / "A010.tif"]
    hr = [tmp_path / "hr" / n for n in ("A01_s1.tif", "A01_s2.tif", "A01-3.tif", "A01.s4.tif", "A010 s1.tif")]
    assert pair_files(lr, hr) == [(lr[0], hr[0]), (lr[0], hr[2]), (lr[0], hr[3]), (lr[1], hr[1]), (lr[2], hr[4])]
    with pytest.raises(UserError, match="A01x.tif has no partner"):  # no separator: another field
        pair_files(lr, hr + [tmp_path / "hr" / "A01x.tif"])
    # a low-resolution field with no site (the plate imaged at 10x, a few wells at 40x) is left out
    assert pair_files(lr + [tmp_path / "lr" / "A02.tif"], hr) == pair_files(lr, hr)
    # an OME-TIFF's name ends at .ome.tif, as a plain TIFF's at .tif
    ome = [tmp_path / "lr" / "B01.ome.tif"], [tmp_path / "hr" / "B01_s1.ome.tif", tmp_path / "hr" / "B01.s2.ome.tiff"]
    assert pair_files(*ome) == [(ome[0][0], ome[1][0]), (ome[0][0], ome[1][1])]


def test_a_csv_of_pairs_partners_files_whose_names_do_not(tmp_path):
    """ImageXpress numbers the sites of each magnification on its own: the 10x A01_s1_w1 holds the 40x
    A01_s1_w1 to A01_s16_w1, which names cannot say. A CSV of pairs can, its paths relative to it
    or absolute; every high-resolution file needs a row, and a bad row is a one-line error."""
    (tmp_path / "10x").mkdir()
    lr = [tmp_path / "10x" / f"A01_s{i}_w1.tif" for i in (1, 2)]
    for path in lr:
        path.write_bytes(b"")
    hr = [tmp_path / "40x" / f"A01_s{i}_w1.tif" for i in (1, 2, 3)]
    table = tmp_path / "pairs.csv"
    table.write_text("LR, hr\n10x/A01_s1_w1.tif,40x/A01_s1_w1.tif\n10x/A01_s1_w1.tif,40x/A01_s2_w1.tif\n"
                     f"{lr[1]},40x/A01_s3_w1.tif\n10x/A01_s2_w1.tif,40x/B07_s1_w1.tif\n")
    assert find_pairs([table], hr) == [(lr[0], hr[0]), (lr[0], hr[1]), (lr[1], hr[2])]
    with pytest.raises(UserError, match="A01_s3_w1.tif has no partner"):  # by name, the 40x s2 went to the 10x s2
        find_pairs([tmp_path / "10x"], hr)
    with pytest.raises(UserError, match="give it alone"):
        find_pairs([table, tmp_path / "10x"], hr)
    with pytest.raises(UserError, match="lists no low-resolution partner for A02_s1_w1.tif"):
        find_pairs([table], hr + [tmp_path / "40x" / "A02_s1_w1.tif"])
    for text, message in [("low,high\n10x/A01_s1_w1.tif,40x/A01_s1_w1.tif\n", "columns lr and hr .found low, high"),
                          ("lr,hr\n10x/A01_s9_w1.tif,40x/A01_s1_w1.tif\n", "A01_s9_w1.tif, listed for A01_s1_w1.tif, does not exist"),
                          ("lr,hr\n10x/A01_s1_w1.tif,40x/A01_s1_w1.tif\n10x/A01_s2_w1.tif,40x/A01_s1_w1.tif\n",
                           "row 3: 40x/A01_s1_w1.tif is listed with two"),
                          ("lr,hr\n,40x/A01_s1_w1.tif\n", "row 2: both lr and hr"), ("", "found nothing")]:
        table.write_text(text)
        with pytest.raises(UserError, match=message):
            find_pairs([table], hr[:1])


def test_several_sites_inside_one_low_magnification_field_are_each_registered(tmp_path):
    specimen = sample(9)
    tifffile.imwrite(tmp_path / "A01.tif", low_magnification(specimen, zoom=1.005).astype(np.float32))
    sites = {"A01_s1.tif": (slice(40, 296), slice(60, 316)), "A01_s2.tif": (slice(320, 576), slice(300, 620))}
    for name, (rows, cols) in sites.items():
        tifffile.imwrite(tmp_path / name, specimen[rows, cols].astype(np.uint16))
    pairs = pair_files([tmp_path / "A01.tif"], [tmp_path / n for n in sites])
    found = list(registered_pairs(pairs, NormalizationConfig(), 4, progress=False))
    assert [path.name for path, *_ in found] == list(sites)
    for path, hr, lr, _ in found:  # each site's own pixels, on the truth's scale
        assert np.corrcoef(bin_mean(hr, 4).ravel(), lr.ravel())[0, 1] > 0.99


def test_a_pair_that_does_not_agree_once_registered_is_left_out_and_the_others_kept(tmp_path, caplog):
    """Another field can be placed by chance (on real 64-pixel crops it was, at a correlation of 0.4):
    the registered pair's own agreement shows it (true pairs 0.95 and more, even at 30 photons)."""
    specimen, other = sample(11), sample(12)
    crop = (slice(100, 356), slice(120, 376))
    tifffile.imwrite(tmp_path / "A01_hr.tif", specimen[crop].astype(np.uint16))
    tifffile.imwrite(tmp_path / "A02_hr.tif", specimen[crop].astype(np.uint16))
    tifffile.imwrite(tmp_path / "A01.tif", low_magnification(specimen).astype(np.float32))
    mixed = 0.4 * low_magnification(specimen) + 0.6 * low_magnification(other)  # mostly another field
    tifffile.imwrite(tmp_path / "A02.tif", mixed.astype(np.float32))
    pairs = [(tmp_path / "A01.tif", tmp_path / "A01_hr.tif"), (tmp_path / "A02.tif", tmp_path / "A02_hr.tif")]
    with caplog.at_level("WARNING", logger="msrgan"):
        found = list(registered_pairs(pairs, NormalizationConfig(), 4, progress=False))
    assert [path.name for path, *_ in found] == ["A01_hr.tif"]
    assert "left out A02.tif / A02_hr.tif: registered, the fields agree poorly" in caplog.text
    with pytest.raises(UserError, match="none of the 1 image"):
        list(registered_pairs(pairs[1:], NormalizationConfig(), 4, progress=False))


def test_a_multichannel_pair_whose_other_channels_do_not_agree_is_left_out(tmp_path, caplog):
    """Registration uses the first channel; stains saved in another order, or a channel inverted,
    must leave the pair out (named) and the others kept, not be scored or stop the run."""
    specimen, other = sample(13), sample(14)
    crop = (slice(100, 356), slice(120, 376))
    hr = np.stack([specimen[crop], other[crop]]).astype(np.uint16)
    lr = np.stack([low_magnification(specimen), low_magnification(other)]).astype(np.float32)
    cases = {"good": lr, "swapped": np.stack([lr[0], low_magnification(sample(15))]).astype(np.float32),
             "inverted": np.stack([lr[0], lr[1].max() - lr[1]]).astype(np.float32)}
    pairs = []
    for name, low in cases.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", low, metadata={"axes": "CYX"})
        tifffile.imwrite(tmp_path / f"{name}_hr.tif", hr, metadata={"axes": "CYX"})
        pairs.append((tmp_path / f"{name}.tif", tmp_path / f"{name}_hr.tif"))
    with caplog.at_level("WARNING", logger="msrgan"):
        found = list(registered_pairs(pairs, NormalizationConfig(), 4, progress=False))
    assert [path.name for path, *_ in found] == ["good_hr.tif"]
    assert "swapped.tif / swapped_hr.tif: registered on channel 0, channel 1 agrees poorly" in caplog.text
    assert "inverted.tif / inverted_hr.tif: " in caplog.text


def test_a_pair_whose_pixels_are_not_about_4_times_apart_is_left_out(tmp_path, caplog):
    """A 10x field against a 45x one registers (at 4.50), but its truth would be the 45x image
    resampled: not what the model is for."""
    specimen = sample(16)
    tifffile.imwrite(tmp_path / "A01.tif", low_magnification(specimen, zoom=4 / 4.5).astype(np.float32))
    tifffile.imwrite(tmp_path / "A01_hr.tif", specimen[200:520, 150:500].astype(np.uint16))
    with caplog.at_level("WARNING", logger="msrgan"), pytest.raises(UserError, match="none of the 1 image"):
        list(registered_pairs([(tmp_path / "A01.tif", tmp_path / "A01_hr.tif")], NormalizationConfig(), 4, progress=False))
    assert "the pixels are 4.50 times apart, not about 4 (3.64-4.44" in caplog.text


def test_a_fit_of_too_few_patches_is_not_blamed_on_the_optics(tmp_path, monkeypatch, caplog):
    """A genuine 4x pair with two nuclei at an edge fits one patch, whose ratio (3.54) says nothing
    of the objectives."""
    import msrgan_core.pairs as pairs

    specimen = sample(18)
    tifffile.imwrite(tmp_path / "A01.tif", low_magnification(specimen).astype(np.float32))
    tifffile.imwrite(tmp_path / "A01_hr.tif", specimen[200:520, 150:500].astype(np.uint16))
    one_patch = pairs.Registration(offset=np.array([50.0, 37.5]), matrix=4 / 3.54 * np.eye(2), correlation=0.9,
                                   residual=0.0, patches=1)
    monkeypatch.setattr(pairs, "register", lambda lr, hr, scale: one_patch)
    with caplog.at_level("WARNING", logger="msrgan"), pytest.raises(UserError, match="none of the 1 image"):
        list(registered_pairs([(tmp_path / "A01.tif", tmp_path / "A01_hr.tif")], NormalizationConfig(), 4, progress=False))
    assert "too little structure to register: 1 patch(es) held signal" in caplog.text and "objectives" not in caplog.text


def test_a_noisy_pair_of_files_is_registered_as_the_noise_free_one(tmp_path):
    specimen = sample(6)
    clean = low_magnification(specimen, zoom=1.005)
    noisy = np.random.default_rng(0).poisson(clean / clean.max() * 300) * 7.0 + 90  # 300 photons, other gain, offset
    tifffile.imwrite(tmp_path / "hr.tif", specimen[100:400, 120:460].astype(np.uint16))
    found = {}
    for name, lr in [("clean", clean), ("noisy", noisy)]:
        tifffile.imwrite(tmp_path / f"{name}.tif", lr.astype(np.float32))
        found[name] = registered_pair(tmp_path / f"{name}.tif", tmp_path / "hr.tif", NormalizationConfig(), 4)
    (hr_clean, lr_clean, _), (hr_noisy, lr_noisy, dtype) = found["clean"], found["noisy"]
    assert dtype == np.uint16 and hr_noisy.shape == hr_clean.shape and lr_noisy.shape == lr_clean.shape
    # the same pixels within a fraction of one (one pixel off correlates at 0.93 on these blobs)
    assert np.corrcoef(hr_noisy.ravel(), hr_clean.ravel())[0, 1] > 0.99
    assert abs(np.median(lr_noisy) - np.median(lr_clean)) < 0.05 * np.ptp(lr_clean)  # on the truth's scale


@pytest.mark.integration
def test_cli_evaluates_and_calibrates_on_real_pairs(tmp_path):
    from test_cli import msrgan

    for name, seed in [("A01.tif", 7), ("A02.tif", 8)]:
        specimen = sample(seed)
        for folder, image in [("lr", low_magnification(specimen, zoom=0.995)), ("hr", specimen[64:448, 96:480])]:
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / name, image.astype(np.uint16))
    result = msrgan("evaluate", "--hr", tmp_path / "hr", "--lr", tmp_path / "lr", "--out", tmp_path / "scores", "-q")
    assert "real pairs" in result.stdout and "A01.tif registered" in result.stderr and "resampled" in result.stderr
    with open(tmp_path / "scores" / "msrgan_evaluation.csv", newline="") as fh:  # --out holds the figures
        rows = list(csv.DictReader(fh))
    psnr = {(r["image"], r["method"]): float(r["psnr"]) for r in rows}
    for image in ("A01.tif", "A02.tif"):  # registered well enough that upscaling beats pixel replication
        assert psnr[image, "bicubic"] > psnr[image, "nearest"] + 1
    assert sorted(p.name for p in (tmp_path / "scores" / "side_by_side").iterdir()) == ["A01.png", "A02.png"]
    (tmp_path / "10x").mkdir()  # names that do not pair, and a CSV that pairs them: the same figures
    for name in ("A01.tif", "A02.tif"):
        (tmp_path / "lr" / name).rename(tmp_path / "10x" / f"plate1_{name}")
    (tmp_path / "pairs.csv").write_text("lr,hr\n10x/plate1_A01.tif,hr/A01.tif\n10x/plate1_A02.tif,hr/A02.tif\n")
    listed = msrgan("evaluate", "--hr", tmp_path / "hr", "--lr", tmp_path / "pairs.csv", "--csv", tmp_path / "listed.csv", "-q")
    assert "A01.tif registered in plate1_A01.tif" in listed.stderr
    with open(tmp_path / "listed.csv", newline="") as fh:
        assert {(r["image"], r["method"]): float(r["psnr"]) for r in csv.DictReader(fh)} == psnr
    for name in ("A01.tif", "A02.tif"):
        (tmp_path / "10x" / f"plate1_{name}").rename(tmp_path / "lr" / name)
    both = msrgan("evaluate", "--hr", tmp_path / "hr", "--lr", tmp_path / "lr", "--degradation", "bin", check=False)
    assert both.returncode == 2 and "one or the other" in both.stderr
    calibrated = tmp_path / "mine.safetensors"
    result = msrgan("calibrate", "fidelity", "--hr", tmp_path / "hr", "--lr", tmp_path / "lr", "-o", calibrated, "-q")
    assert "calibrated on 2 image(s)" in result.stdout
    assert "calibrated on 2 image(s) (real pairs)" in msrgan("info", calibrated).stdout
    cells = msrgan("calibrate", "fidelity", "--hr", tmp_path / "hr", "--lr", tmp_path / "lr", "--cells", "bin",
                   "-o", tmp_path / "no.safetensors", check=False)
    assert cells.returncode == 2 and "one or the other" in cells.stderr and not (tmp_path / "no.safetensors").exists()


def test_calibrating_on_a_pair_that_is_an_exact_binning_gives_the_binning_cells_scale(tmp_path):
    """Real pairs go through registration, cropping and the intensity fit; when the low-resolution
    file is the high-resolution one binned, none of them may change what calibration measures."""
    from msrgan_core.calibration import calibrate, calibrate_on_pairs
    from msrgan_core.inference import Upscaler
    from msrgan_core.modelfile import load_model

    for folder in ("lr", "hr"):
        (tmp_path / folder).mkdir()
    for name, seed in [("A01.tif", 9), ("A02.tif", 10)]:
        hr = sample(seed)[:160, :192]
        tifffile.imwrite(tmp_path / "hr" / name, hr.astype(np.float32))
        tifffile.imwrite(tmp_path / "lr" / name, bin_mean(hr[None].astype(np.float32), 4)[0])
    upscaler = Upscaler(load_model("fidelity"), device="cpu")
    hr_files, lr_files = sorted((tmp_path / "hr").iterdir()), sorted((tmp_path / "lr").iterdir())
    real = calibrate_on_pairs(upscaler, list(zip(lr_files, hr_files)), progress=False)
    synthetic = calibrate(upscaler, hr_files, cells=["bin"], progress=False)
    assert real["uncertainty_calibration"]["degradations"] == ["real pairs"]
    assert real["uncertainty_calibration"]["images"] == 2
    assert real["uncertainty_scale"] == pytest.approx(synthetic["uncertainty_scale"], rel=1e-3)
