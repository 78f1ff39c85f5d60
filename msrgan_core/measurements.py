"""Can I trust my per-cell features? CellProfiler's measurements on upscaled images against the truth.

For high-resolution images: each is degraded (a :data:`~msrgan_core.evaluate.QUALITY_GRID`
acquisition), upscaled back by the model and by bicubic interpolation, and the images go
through one CellProfiler pipeline headless (``pipelines/measure_nuclei.cppipe``: the same
segmentation and measurements for every image, through :func:`msrgan_core.headless.run_pipeline`).
The nuclei found on each upscaled image are matched to those found on the high-resolution image
by overlap (IoU at least 0.5), and each feature of each matched nucleus is compared with its
high-resolution value: the median absolute and signed (bias) relative errors, Pearson and
Spearman correlation, and the share of the high-resolution nuclei that were matched at all.

Beside the two methods, a *repeat* of the high-resolution image (:func:`repeat_exposure`: its own
noise drawn again and added) goes through the same pipeline: how far a feature moves with noise
no larger than the truth's own gives the scale of what imaging the field again would change (a
rough reference, not a floor), and a feature it moves by much cannot be measured at that noise.
"""
from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tifffile

from .errors import UserError
from .io import atomic_folder, atomic_write
from .options import EVALUATION_PICTURES
from .pictures import pyplot, save_figure

log = logging.getLogger("msrgan")

PIPELINE = "measure_nuclei"
#: the methods compared with the high-resolution image, in the order reports list them
METHODS = ("msrgan", "bicubic")
#: the reference beside them: the high-resolution image with its own noise drawn again (`repeat_exposure`)
REPEAT = "repeat"
COMPARED = METHODS + (REPEAT,)
TRUTH = "high-res"
#: a feature that the repeat moves by this median relative error or more is reported as not repeatable
UNREPEATABLE = 0.2
IOU_MATCH = 0.5
#: the fewest matched nuclei a feature's statistics are computed from
MIN_NUCLEI = 3
#: below this many nuclei on the high-resolution images the figures are said to rest on few
FEW_NUCLEI = 30
#: the features reported, by family; the first of each family is its scatter panel
FEATURES = {
    "size and shape": ["AreaShape_Area", "AreaShape_Perimeter", "AreaShape_FormFactor", "AreaShape_Solidity",
                       "AreaShape_Eccentricity"],
    "intensity": ["Intensity_IntegratedIntensity_DNA", "Intensity_MeanIntensity_DNA", "Intensity_StdIntensity_DNA"],
    "texture": ["Texture_Contrast_DNA_3_00_256", "Texture_Entropy_DNA_3_00_256", "Texture_AngularSecondMoment_DNA_3_00_256"],
    "granularity": ["Granularity_2_DNA", "Granularity_4_DNA", "Granularity_8_DNA"],
}


class FeatureEvaluationError(UserError, ValueError):
    """The inputs cannot be measured (no nuclei, no images, a run that wrote nothing)."""


@dataclass
class FeatureReport:
    """Per-object rows, per-feature summary rows and where they were written."""

    objects: List[dict]
    summary: List[dict]
    files: List[Path]


def match_objects(truth: np.ndarray, test: np.ndarray, threshold: float = IOU_MATCH) -> List[Tuple[int, int, float]]:
    """``(truth label, test label, IoU)`` of the object pairs whose IoU is at least ``threshold``,
    each object in one pair at most.

    With a threshold of 0.5 or more an object can overlap two others that much only at exactly
    0.5 each (a nucleus split in equal halves); the first of them is kept.
    """
    both = (truth > 0) & (test > 0)
    pairs, overlap = np.unique(np.stack([truth[both], test[both]]), axis=1, return_counts=True)
    area_truth = np.bincount(truth.ravel())
    area_test = np.bincount(test.ravel())
    matches, taken_truth, taken_test = [], set(), set()
    for (a, b), inter in zip(pairs.T, overlap):
        iou = inter / (area_truth[a] + area_test[b] - inter)
        if iou >= threshold and a not in taken_truth and b not in taken_test:
            matches.append((int(a), int(b), float(iou)))
            taken_truth.add(a)
            taken_test.add(b)
    return matches


def _as_saved(image: np.ndarray, dtype: np.dtype, unit: float = 1.0) -> np.ndarray:
    """An image in the high-resolution file's own dtype, so CellProfiler scales all of a field's
    images alike; float pixels divided by ``unit`` (:func:`float_unit`)."""
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return (image / unit).astype(np.float32)


def float_unit(images: Iterable[np.ndarray], dtype: np.dtype) -> float:
    """What a field's float images are divided by before CellProfiler reads them: CellProfiler
    takes float pixels as 0..1, so floats on a counts scale (0..4095, say) would be thresholded
    as all foreground. The largest value of all of them (1 where none exceeds it), the same for
    every image of the field, so relative errors and correlations are unchanged."""
    if np.dtype(dtype).kind in "ui":
        return 1.0
    return max([1.0] + [float(np.max(image)) for image in images])


def field_key(index: int) -> str:
    """The file name stem of the ``index``-th field's images in the CellProfiler run: the fields'
    own names could carry what the pipeline's Images rules leave out (``_w2``, another channel)."""
    return f"field{index + 1:05d}"


def repeat_exposure(hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A ``(C, Y, X)`` image with its own noise drawn again and added: a stand-in for a second exposure.

    The noise is Gaussian, of each channel's noise level as scikit-image's wavelet
    ``estimate_sigma`` reads it (:func:`~msrgan_core.metrics.noise_levels`). That reading is dominated by the background, so the brighter
    nuclei's shot noise is under-counted, and the repeat differs from the truth by its noise
    once (a real second exposure: by both exposures' noise) while carrying more of it: a rough
    reference, not a bound.
    """
    from .metrics import noise_levels

    sigma = noise_levels(hr).astype(np.float32)
    return (hr + rng.normal(0.0, 1.0, hr.shape).astype(np.float32) * sigma[:, None, None]).astype(np.float32)


def prepare_images(pairs: Iterable[Tuple[Path, np.ndarray, np.ndarray, np.dtype]], upscaler, scale: int, folder: Path,
                   seed: int = 0, pictures: Optional[Path] = None) -> List[str]:
    """Write ``KEY__high-res.tif``, ``KEY__msrgan.tif``, ``KEY__bicubic.tif`` and ``KEY__repeat.tif``
    for each ``(path, hr, lr, dtype)`` pair (:func:`~msrgan_core.evaluate.degraded_pairs` or
    :func:`~msrgan_core.pairs.registered_pairs`, one channel each), KEY its :func:`field_key`,
    and with ``pictures`` a ``FIELD.png`` there (:func:`~msrgan_core.evaluate.picture`).

    Returns the field names (the files' stems), in the keys' order.
    """
    from .evaluate import image_seed, picture
    from .metrics import upscale_bicubic

    folder.mkdir(parents=True, exist_ok=True)
    fields = []
    for path, hr, lr, dtype in pairs:
        field = Path(path).stem
        outputs = {TRUTH: hr, "msrgan": upscaler.upscale(lr, source=str(path)),
                   "bicubic": upscale_bicubic(lr, scale),
                   REPEAT: repeat_exposure(hr, np.random.default_rng([*image_seed(path, seed), 1]))}
        unit = float_unit([pixels[0] for pixels in outputs.values()], dtype)
        for method, pixels in outputs.items():
            tifffile.imwrite(folder / f"{field_key(len(fields))}__{method}.tif", _as_saved(pixels[0], dtype, unit))
        if pictures is not None:
            picture(pictures / f"{field}.png", hr, lr, outputs, scale)
        fields.append(field)
    return fields


def read_measurements(cp_out: Path) -> Dict[Tuple[str, str], Dict[int, Dict[str, float]]]:
    """``(field, method) -> {object number: {feature: value}}`` from the run's Image.csv and Nuclei.csv."""
    with open(cp_out / "Image.csv", newline="") as fh:
        images = {row["ImageNumber"]: Path(row["FileName_DNA"]).stem.rsplit("__", 1) for row in csv.DictReader(fh)}
    wanted = [f for family in FEATURES.values() for f in family]
    out: Dict[Tuple[str, str], Dict[int, Dict[str, float]]] = {tuple(v): {} for v in images.values()}
    with open(cp_out / "Nuclei.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            field, method = images[row["ImageNumber"]]
            out[(field, method)][int(row["ObjectNumber"])] = {f: float(row[f]) for f in wanted if f in row}
    return out


def compare(fields: Sequence[str], cp_out: Path, methods: Sequence[str] = COMPARED,
            keys: Optional[Sequence[str]] = None) -> List[dict]:
    """One row per high-resolution nucleus and method (``make demo`` measures no repeat): the
    matched nucleus's features beside the truth's. ``keys``: the fields' file name stems in the
    run, where they are not the fields' names (:func:`field_key`)."""
    measured = read_measurements(cp_out)
    rows = []
    for field, key in zip(fields, keys or fields):
        truth_labels = tifffile.imread(cp_out / f"{key}__{TRUTH}_labels.tiff").astype(np.int64)
        truth = measured.get((key, TRUTH), {})
        for method in methods:
            labels = tifffile.imread(cp_out / f"{key}__{method}_labels.tiff").astype(np.int64)
            mine = measured.get((key, method), {})
            matched = {a: (b, iou) for a, b, iou in match_objects(truth_labels, labels)}
            for number, features in truth.items():
                row = {"field": field, "method": method, "object": number}
                if number in matched and matched[number][0] in mine:
                    other, iou = matched[number]
                    row.update(matched_object=other, iou=iou)
                    for name, value in features.items():
                        row[f"{name}"] = value
                        row[f"{name}__{method}"] = mine[other].get(name, np.nan)
                rows.append(row)
    return rows


def summarize(rows: List[dict]) -> List[dict]:
    """Per method (of :data:`COMPARED` that the rows hold) and feature: matched fraction, median
    |relative error|, bias, Pearson, Spearman."""
    from scipy import stats

    with warnings.catch_warnings():  # a feature constant over few nuclei, or zero on all: '-' in the table, not a traceback
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", getattr(stats, "ConstantInputWarning", RuntimeWarning))
        return _summarized(rows, stats)


def _summarized(rows: List[dict], stats) -> List[dict]:
    summary = []
    for method in [m for m in COMPARED if any(r["method"] == m for r in rows)]:
        mine = [r for r in rows if r["method"] == method]
        matched = [r for r in mine if "matched_object" in r]
        fraction = len(matched) / max(1, len(mine))
        for family, names in FEATURES.items():
            for name in names:
                pairs = np.array([(r[name], r[f"{name}__{method}"]) for r in matched if name in r], np.float64)
                pairs = pairs[np.all(np.isfinite(pairs), axis=1)] if len(pairs) else np.zeros((0, 2))
                entry = {"method": method, "family": family, "feature": name, "objects": len(mine),
                         "matched_fraction": fraction, "n": len(pairs)}
                if len(pairs) >= MIN_NUCLEI:
                    truth, test = pairs[:, 0], pairs[:, 1]
                    nonzero = np.abs(truth) > 1e-12
                    relative = (test[nonzero] - truth[nonzero]) / np.abs(truth[nonzero])
                    entry.update(median_abs_rel_error=float(np.median(np.abs(relative))),
                                 bias=float(np.median(relative)),
                                 pearson=float(stats.pearsonr(truth, test)[0]) if np.std(test) > 0 else np.nan,
                                 spearman=float(stats.spearmanr(truth, test)[0]) if np.std(test) > 0 else np.nan)
                summary.append(entry)
    return summary


def verdicts(summary: List[dict]) -> List[str]:
    """Plain sentences: figures resting on fewer than :data:`FEW_NUCLEI` nuclei, each feature where
    msrgan's error is worse than bicubic's, and each that the repeat moves by :data:`UNREPEATABLE`
    or more."""
    by = {(e["method"], e["feature"]): e for e in summary}
    lines = []
    found = max((e["n"] for e in summary if e["method"] == "msrgan"), default=0)
    if found < FEW_NUCLEI:
        lines.append(f"the figures rest on {found} nuclei found and matched: medians and correlations of so few move a "
                     "lot; measure more fields (the pipeline keeps nuclei 16 to 240 high-resolution pixels across: "
                     "smaller ones are left out)")
    few = sorted({e["method"] for e in summary} - {e["method"] for e in summary if e["n"] >= MIN_NUCLEI})
    if few:
        lines.append(f"fewer than {MIN_NUCLEI} nuclei matched for {', '.join(few)} (a '-' in the table): too few for "
                     "statistics; measure more fields")
    for family, names in FEATURES.items():
        for name in names:
            error = {method: by.get((method, name), {}).get("median_abs_rel_error") for method in COMPARED}
            m, b, r = error["msrgan"], error["bicubic"], error[REPEAT]
            if m is not None and b is not None and round(m, 3) > round(b, 3):  # as the table shows them
                lines.append(f"{name} ({family}) is less accurate after msrgan than after bicubic: median error "
                             f"{m:.1%} against {b:.1%}; do not trust it")
            if r is not None and r >= UNREPEATABLE:
                lines.append(f"{name} ({family}) moves by {r:.1%} (median) when the high-resolution image's own noise "
                             f"is drawn again: it is not repeatable at this noise, upscaled or not; do not trust it")
    return lines


def format_summary(summary: List[dict]) -> str:
    def cell(e, key, fmt):
        value = e.get(key)
        return "-" if value is None or not np.isfinite(value) else format(value, fmt)

    lines = [f"{'feature':<42} {'method':<8} {'matched':>7} {'nuclei':>6} {'med |err|':>9} {'bias':>7} {'Pearson':>7} "
             f"{'Spearman':>8}"]
    for e in sorted(summary, key=lambda e: (list(FEATURES).index(e["family"]), e["feature"], COMPARED.index(e["method"]))):
        lines.append(f"{e['feature']:<42} {e['method']:<8} {e['matched_fraction']:>7.1%} {e['n']:>6} "
                     f"{cell(e, 'median_abs_rel_error', '.1%'):>9} {cell(e, 'bias', '+.1%'):>7} {cell(e, 'pearson', '.3f'):>7} "
                     f"{cell(e, 'spearman', '.3f'):>8}")
    return "\n".join(lines)


def scatter_plot(rows: List[dict], destination: Path, title: str) -> Path:
    """One panel per feature family (its first feature): upscaled value against high-resolution value,
    and the repeat's in grey underneath (the spread that the truth's own noise gives)."""
    fig, axes = pyplot().subplots(1, len(FEATURES), figsize=(4.2 * len(FEATURES), 4.2))
    # colour, layer (msrgan's points on top: they are the question) and legend of each method
    style = {"msrgan": ("tab:orange", 3, "msrgan"), "bicubic": ("tab:blue", 2, "bicubic"),
             REPEAT: ("0.55", 1, "repeat (truth, noise drawn again)")}
    for ax, (family, names) in zip(axes, FEATURES.items()):
        name = names[0]
        everything = []
        for method in COMPARED:
            pts = np.array([(r[name], r[f"{name}__{method}"]) for r in rows
                            if r["method"] == method and name in r and f"{name}__{method}" in r], np.float64)
            if len(pts):
                color, layer, label = style[method]
                ax.scatter(pts[:, 0], pts[:, 1], s=7, alpha=0.45, color=color, linewidths=0, label=label, zorder=layer)
                everything.append(pts)
        if everything:
            both = np.concatenate(everything)
            both = both[np.all(np.isfinite(both), axis=1)]
            lo, hi = np.percentile(both, [0.5, 99.5]) if len(both) else (0, 1)
            ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        ax.set_title(f"{family}\n{name}", fontsize=9)
        ax.set_xlabel("on the high-resolution image")
        ax.set_ylabel("on the upscaled image (or the repeat)")
        ax.legend(loc="upper left", fontsize=8, markerscale=3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, destination)


#: the columns of features_summary.csv, whether or not a feature had nuclei enough for its statistics
SUMMARY_COLUMNS = ("method", "family", "feature", "objects", "matched_fraction", "n", "median_abs_rel_error", "bias",
                   "pearson", "spearman")


def write_rows(path: Path, rows: List[dict], columns: Sequence[str] = ()) -> Path:
    """A CSV of ``rows``: ``columns`` first, then every other key the rows hold."""
    fields = list(dict.fromkeys([*columns, *(k for r in rows for k in r)]))
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def evaluate_features(pairs: Iterable[Tuple[Path, np.ndarray, np.ndarray, np.dtype]], upscaler, scale: int, out_dir: Path,
                      name: str, seed: int = 0, cellprofiler: Optional[str] = None) -> FeatureReport:
    """The whole evaluation of ``(path, hr, lr, dtype)`` pairs (see :func:`prepare_images`): images,
    one CellProfiler run, matching, summary, CSVs and the scatter PNG (titled ``name`` and the
    count of images measured: blank fields are left out)."""
    from .headless import run_pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_features_folder(out_dir)
    with atomic_folder(out_dir / FEATURES_RUN) as work, atomic_folder(out_dir / EVALUATION_PICTURES) as pictures:
        (work / RUN_MARKER).write_text("written by msrgan evaluate --features; each run replaces this folder\n")
        fields = prepare_images(pairs, upscaler, scale, work / "images", seed, pictures=pictures)
        if not fields:
            raise FeatureEvaluationError("no high-resolution images to measure")
        cp_out = work / "cellprofiler"
        log.info("msrgan: measuring %d image(s) with CellProfiler (%s) ...", (1 + len(COMPARED)) * len(fields), PIPELINE)
        run_pipeline(PIPELINE, work / "images", cp_out, cellprofiler=cellprofiler)
        rows = compare(fields, cp_out, keys=[field_key(i) for i in range(len(fields))])
        if not rows:
            raise FeatureEvaluationError(f"CellProfiler found no nuclei on the high-resolution images ({len(fields)} "
                                         "field(s)): are they nuclei, in the channel measured (evaluate --nuclei-channel)?")
        summary = summarize(rows)
        files = [write_rows(out_dir / "features_objects.csv", rows),
                 write_rows(out_dir / "features_summary.csv", summary, SUMMARY_COLUMNS),
                 scatter_plot(rows, out_dir / "features_scatter.png", f"{name}: {len(fields)} image(s)"),
                 out_dir / EVALUATION_PICTURES, out_dir / FEATURES_RUN]
    return FeatureReport(objects=rows, summary=summary, files=files)


#: the folder under ``--out`` that keeps what CellProfiler measured (its images, CSVs and labels),
#: replaced as a whole by each run, with :data:`RUN_MARKER` in it
FEATURES_RUN = "features_run"
RUN_MARKER = ".msrgan-features"


def check_features_folder(out_dir: Path) -> None:
    """Refuse an ``--out`` whose :data:`FEATURES_RUN` folder msrgan did not write: a run replaces it."""
    run = Path(out_dir) / FEATURES_RUN
    if run.exists() and not (run / RUN_MARKER).is_file():
        raise FeatureEvaluationError(f"{run} exists and msrgan evaluate --features did not write it (each run "
                                     "replaces that folder): choose another --out")


