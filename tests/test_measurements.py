"""Per-nucleus agreement: matching by overlap, the summary statistics, and a CellProfiler run end to end."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from msrgan_core.measurements import (
    FEATURES, REPEAT, FeatureEvaluationError, float_unit, match_objects, repeat_exposure, summarize, verdicts,
)
from msrgan_core.metrics import matched_f1


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int64)
    for n, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = n
    return labels


def test_objects_match_by_iou_and_agree_with_f1():
    truth = _discs((64, 64), [(15, 15), (15, 48), (48, 30)], 8)
    test = _discs((64, 64), [(16, 15), (48, 31), (15, 56)], 8)  # two close, one shifted off by 8
    matches = match_objects(truth, test)
    assert [(a, b) for a, b, _ in matches] == [(1, 1), (3, 2)]
    assert all(0.5 <= iou <= 1 for _, _, iou in matches)
    assert 2 * len(matches) / 6 == pytest.approx(matched_f1(truth, test))  # as F1 counts (IoU > 0.5 there, >= here)


def test_a_nucleus_split_in_equal_halves_matches_one_half_only():
    truth = np.zeros((16, 16), np.int64)
    truth[4:8, 2:12] = 1  # 40 pixels
    test = truth.copy()
    test[4:8, 7:12] = 2  # two halves of 20: each overlaps the nucleus at IoU 0.5 exactly
    assert [(a, b, iou) for a, b, iou in match_objects(truth, test)] == [(1, 1, 0.5)]
    assert [(a, b) for a, b, _ in match_objects(test, truth)] == [(1, 1)]


def test_summary_statistics_on_known_values():
    rows = []
    for i in range(1, 41):
        base = {"field": "f", "object": i}
        rows.append({**base, "method": "msrgan", "matched_object": i, "iou": 0.9,
                     "AreaShape_Area": 100.0 * i, "AreaShape_Area__msrgan": 110.0 * i})  # +10 % everywhere
        if i % 2:
            rows.append({**base, "method": "bicubic", "matched_object": i, "iou": 0.7,
                         "AreaShape_Area": 100.0 * i, "AreaShape_Area__bicubic": 100.0 * i * (0.8 if i % 4 == 1 else 1.2)})
        else:
            rows.append({**base, "method": "bicubic"})  # not matched
    by = {(e["method"], e["feature"]): e for e in summarize(rows)}
    m, b = by[("msrgan", "AreaShape_Area")], by[("bicubic", "AreaShape_Area")]
    assert m["matched_fraction"] == 1.0 and b["matched_fraction"] == 0.5
    assert m["median_abs_rel_error"] == pytest.approx(0.1) and m["bias"] == pytest.approx(0.1)
    assert m["pearson"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert b["median_abs_rel_error"] == pytest.approx(0.2) and abs(b["bias"]) <= 0.2
    assert not verdicts(summarize(rows))  # msrgan's 10 % beats bicubic's 20 %: nothing to warn of
    worse = [dict(r, AreaShape_Area__msrgan=r["AreaShape_Area"] * 1.5) if r["method"] == "msrgan" else r for r in rows]
    assert any("AreaShape_Area" in line and "less accurate" in line for line in verdicts(summarize(worse)))
    few = [r for r in rows if r["object"] <= 12]  # a 20x field through a pipeline for 16-240-pixel nuclei
    assert any(line.startswith("the figures rest on 12 nuclei") for line in verdicts(summarize(few)))


def test_repeat_draws_each_channels_own_noise_again():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    clean = 1000 + 800 * np.exp(-((yy - 128) ** 2 + (xx - 100) ** 2) / 900.0)  # smooth: only the noise is fine-scale
    noise = np.array([4.0, 20.0])[:, None, None]
    image = (clean + rng.normal(0, 1, (2, 256, 256)) * noise).astype(np.float32)
    repeat = repeat_exposure(image, np.random.default_rng(0))
    assert repeat.shape == image.shape and repeat.dtype == np.float32
    drawn = (repeat - image).reshape(2, -1)
    assert np.allclose(drawn.std(axis=1), noise.ravel(), rtol=0.1) and np.all(np.abs(drawn.mean(axis=1)) < 0.5)
    assert np.corrcoef(drawn[0], (image - clean)[0].ravel())[0, 1] < 0.02  # drawn again, not the image's own noise
    assert np.array_equal(repeat, repeat_exposure(image, np.random.default_rng(0)))


def test_a_feature_the_repeat_moves_is_reported_as_not_repeatable():
    def rows(repeat_error):
        out = []
        for i in range(1, 41):
            base = {"field": "f", "object": i, "matched_object": i, "iou": 0.9, "Granularity_8_DNA": 10.0 * i}
            jitter = 1 + (repeat_error if i % 2 else -repeat_error)
            out += [{**base, "method": "msrgan", "Granularity_8_DNA__msrgan": 10.0 * i * 1.05},
                    {**base, "method": "bicubic", "Granularity_8_DNA__bicubic": 10.0 * i * 1.10},
                    {**base, "method": REPEAT, f"Granularity_8_DNA__{REPEAT}": 10.0 * i * jitter}]
        return out

    summary = summarize(rows(0.3))
    assert [e["method"] for e in summary if e["feature"] == "Granularity_8_DNA"] == ["msrgan", "bicubic", REPEAT]
    assert [line for line in verdicts(summary) if "Granularity_8_DNA" in line and "not repeatable" in line]
    assert not verdicts(summarize(rows(0.05)))


@pytest.mark.slow
def test_features_end_to_end_through_cellprofiler(shared_data, cellprofiler_command, tmp_path):
    from msrgan_core.evaluate import degraded_pairs, grid_degradation
    from msrgan_core.inference import Upscaler
    from msrgan_core.measurements import evaluate_features
    from msrgan_core.modelfile import load_model

    source = sorted((shared_data / "bbbc039" / "images").glob("*.tif"))[0]
    crop = tmp_path / "in" / f"{source.stem}_w2.tif"  # a name the pipeline's Images rules would leave out
    crop.parent.mkdir()
    tifffile.imwrite(crop, tifffile.imread(source)[:256, :256])
    (tmp_path / "out" / "features_run").mkdir(parents=True)  # not msrgan's: refused, not replaced
    with pytest.raises(FeatureEvaluationError, match="did not write it"):
        evaluate_features([], None, 4, tmp_path / "out", name="test")
    (tmp_path / "out" / "features_run").rmdir()
    upscaler = Upscaler(load_model("fidelity"), device="cpu")
    pairs = degraded_pairs([crop], upscaler.model.normalization, grid_degradation("bin"), channel=0, progress=False)
    report = evaluate_features(pairs, upscaler, 4, tmp_path / "out", name="test")
    assert [p.name for p in report.files] == ["features_objects.csv", "features_summary.csv", "features_scatter.png",
                                              "side_by_side", "features_run"]
    assert [p.name for p in report.files[-2].iterdir()] == [f"{crop.stem}.png"]  # a picture to look at too
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in sorted(report.files)]  # no work left
    assert len(list((report.files[-1] / "cellprofiler").glob("*_labels.tiff"))) == 4  # what CellProfiler measured, kept
    by = {(e["method"], e["feature"]): e for e in report.summary}
    assert set(FEATURES["size and shape"]) <= {f for _, f in by}
    for method in ("msrgan", "bicubic", REPEAT):
        area = by[(method, "AreaShape_Area")]
        assert area["matched_fraction"] > 0.5 and area["spearman"] > 0.8  # nuclei are found and sized alike
    assert by[(REPEAT, "AreaShape_Area")]["median_abs_rel_error"] < by[("bicubic", "AreaShape_Area")]["median_abs_rel_error"]
    with open(tmp_path / "out" / "features_objects.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"msrgan", "bicubic", REPEAT} and all(r["field"] == crop.stem for r in rows)


def test_compare_reads_only_the_methods_it_is_given(tmp_path):
    """``make demo`` measures msrgan and bicubic and no repeat: comparing those must not look for one."""
    from msrgan_core.measurements import METHODS, TRUTH, compare

    truth = _discs((64, 64), [(15, 15), (48, 30)], 8)
    shifted = _discs((64, 64), [(16, 15), (48, 31)], 8)
    names = [TRUTH, *METHODS]
    for method, labels in zip(names, [truth, shifted, truth]):
        tifffile.imwrite(tmp_path / f"f__{method}_labels.tiff", labels.astype(np.uint16))
    with open(tmp_path / "Image.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["ImageNumber", "FileName_DNA"]] + [[i + 1, f"f__{m}.tif"] for i, m in enumerate(names)])
    with open(tmp_path / "Nuclei.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["ImageNumber", "ObjectNumber", "AreaShape_Area"]]
                                 + [[i + 1, n, 200.0 + i] for i in range(len(names)) for n in (1, 2)])
    rows = compare(["f"], tmp_path, METHODS)
    assert {r["method"] for r in rows} == set(METHODS) and len(rows) == 4
    assert all(r["AreaShape_Area__bicubic"] == 202.0 for r in rows if r["method"] == "bicubic")
    with pytest.raises(FileNotFoundError):  # the default compares the repeat too, which this run lacks
        compare(["f"], tmp_path)


def test_float_fields_on_a_counts_scale_reach_cellprofiler_within_0_1_all_alike():
    """CellProfiler takes float pixels as 0..1: counts (0..4095) would be all foreground."""
    from msrgan_core.measurements import _as_saved

    truth, upscaled = np.array([[0.0, 4095.0]]), np.array([[10.0, 4200.0]])  # an overshoot above the truth
    unit = float_unit([truth, upscaled], np.float32)
    saved = [_as_saved(image, np.float32, unit) for image in (truth, upscaled)]
    assert unit == 4200.0 and max(s.max() for s in saved) == 1.0
    assert saved[1][0, 1] / saved[0][0, 1] == pytest.approx(4200 / 4095)  # relative errors unchanged
    assert float_unit([np.array([[0.2, 0.9]])], np.float32) == 1.0  # 0..1 floats as they are
    assert float_unit([upscaled], np.uint16) == 1.0  # integers: CellProfiler scales them by their type


def test_the_channel_measured_is_the_one_asked_for(tmp_path):
    """Nuclei in the second channel of a two-channel field (a blank first one, e.g. a marker not
    expressed in the well) are what ``--nuclei-channel 2`` evaluates; the first is refused as blank."""
    from msrgan_core.config import NormalizationConfig
    from msrgan_core.evaluate import BlankField, degraded_pair, grid_degradation

    nuclei = (100 + 3000 * (_discs((66, 70), [(20, 20), (45, 50)], 9) > 0)).astype(np.uint16)
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.stack([np.full_like(nuclei, 100), nuclei]), metadata={"axes": "CYX"})
    hr, lr, dtype = degraded_pair(path, NormalizationConfig(), grid_degradation("bin"), channel=1)
    assert hr.shape == (1, 64, 68) and lr.shape == (1, 16, 17) and dtype == np.uint16
    np.testing.assert_array_equal(hr[0], nuclei[:64, :68])
    with pytest.raises(BlankField, match="two.tif"):
        degraded_pair(path, NormalizationConfig(), grid_degradation("bin"), channel=0)
