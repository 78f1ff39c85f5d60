"""Real pairs: one field imaged at low and at high magnification, registered for evaluation.

A synthetic degradation is a model of a microscope; a few wells imaged both ways are the
microscope. :func:`registered_pairs` turns such files into what :func:`~msrgan_core.evaluate.
degraded_pairs` yields for synthetic ones, so ``msrgan evaluate --lr`` scores real acquisitions
with the same code: each low-resolution field is located in its high-resolution partner (or the
other way round; the partner turned or mirrored if that matches better), both are cropped to the
area they share, the high-resolution crop is put on
the low-resolution pixel grid, and the low-resolution field is put on the high-resolution one's
intensity scale.

Coordinates are pixel centres (pixel ``i`` covers ``[i - 0.5, i + 0.5]``). The high-resolution
image binned ``scale x scale`` (``B``) is mapped into the low-resolution one (``A``) by an affine
``a = t + M b``: a whole-pixel search by normalised cross-correlation (over pixel size ratios a
few % either side of ``scale``), then sub-pixel shifts of a 3 x 3 grid of patches, fitted, and
where the fit is not a whole-pixel shift, measured again on the high-resolution image resampled
by it. ``M`` is the identity when the pixel sizes are exactly ``scale`` apart; a nominal 10x/40x
pair rarely is, and over a field of 500 pixels a 1 % difference moves the edges by 5 pixels, so
it is measured, and the high-resolution image resampled when it matters.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .binning import bin_mean
from .config import NormalizationConfig
from .errors import UserError
from .io import OME_SUFFIXES, clashes, find_images, read_image

log = logging.getLogger("msrgan")

#: the whole-pixel search needs at least this normalised cross-correlation to call a field found
MIN_CORRELATION = 0.3
#: registered, the low-resolution field must correlate at least this well with the high-resolution
#: one binned. Measured on held-out BBBC039 fields (true pairs against other fields and 2x binnings,
#: both of which the whole-pixel search can place by chance on 64-pixel crops): true pairs 0.98 at
#: 100 photons with or without a blur of 1.5 pixels and 0.95 at 30 photons; wrong ones 0.08-0.50
MIN_AGREEMENT = 0.7
#: a patch whose shift disagrees with the fit by more than this (low-resolution pixels) is dropped
#: (background patches have no shift to measure)
MAX_PATCH_RESIDUAL = 0.5
#: resample the high-resolution image when the fit puts some pixel this far (high-resolution pixels)
#: from where one whole-pixel shift puts it; otherwise crop it, so its pixels reach the comparison
#: untouched. Measured on held-out BBBC039 fields (benchmarks/pairs.py): resampled onto the grid, a
#: field agrees with the truth at 55-60 dB; left up to half a pixel off, it cost msrgan 2.9 dB
MAX_CROP_DRIFT = 0.1
#: the spline that resamples the high-resolution image (cubic)
SPLINE_ORDER = 3
#: Gaussian smoothing (low-resolution pixels) of both images before their intensities are matched
MATCH_SMOOTHING = 4.0
#: degree of the polynomial gain and offset fields that match the two acquisitions' shading (2: vignetting)
SHADING_DEGREE = 2
#: the gain field stays within this factor of its median (the fit extrapolates over empty background)
MAX_SHADING = 2.0
#: a shared area narrower than this (low-resolution pixels) gets one gain and offset: on 16 x 16
#: pixels at 300 photons the fields fitted noise (smoothed error 0.86 % of the range against 0.63 %)
MIN_SHADING_FIELD = 32
#: a corrected shading spanning more than this is printed. Unshaded pairs at 300 photons read 0.5-1.1 %
#: (6 test fields of 160 x 160 pixels); the gain field alone, which noise trades against the offset's, 5-14 %
SHADING_NOTICE = 0.05
#: the shared area must be at least this many low-resolution pixels on each side
MIN_SHARED = 16
#: a binned high-resolution field this wide (low-resolution pixels) is compared with its partner
#: at half the resolution when its camera mounting is sought (:func:`best_orientation`)
ORIENTATION_EDGE = 128
#: patches with signal below which a fit's pixel size ratio says more of the fit than of the optics
MIN_RATIO_PATCHES = 3
#: what may follow a low-resolution file's name in the names of the high-resolution fields inside it
SITE_SEPARATORS = "_-. "
#: low-resolution pixels per binned high-resolution pixel (``scale`` over the pixel size ratio) that
#: the whole-pixel search tries: ratios of 3.70 to 4.35 at 4x, for nominal 10x and 40x objectives
#: a few % from 4. Beyond 1 % from the truth the search's correlation falls (on a test specimen
#: turned by 1 degree: 0.73 at 2 %, 0.34 at 5 %, 0.11 at 10 % off), so the steps are 2 %
ZOOMS = np.round(np.arange(0.92, 1.081, 0.02), 2)
#: times the patches are measured again on the high-resolution image resampled by the fit so far:
#: at a ratio of 4.2 and a turn of 1 degree (clean binning, 30 fields) once left the rotation
#: within 0.93-1.03 degrees, twice within 0.98-1.01
REMEASURES = 2


class RegistrationError(UserError):
    """A low- and high-resolution image that could not be matched."""


@dataclass(frozen=True)
class Registration:
    """Where the binned high-resolution image lies in the low-resolution one: ``a = t + M b``.

    ``offset`` is ``t`` and ``matrix`` ``M`` (``(y, x)`` order), ``correlation`` the whole-pixel
    search's normalised cross-correlation, ``residual`` the RMS distance (low-resolution pixels) of
    the patches' shifts from the fit, over ``patches`` patches.
    """

    offset: np.ndarray
    matrix: np.ndarray
    correlation: float
    residual: float
    patches: int

    def pixel_ratio(self, scale: int) -> float:
        """The low-resolution pixel over the high-resolution one, as measured (``scale`` if nominal)."""
        return float(scale / np.sqrt(abs(np.linalg.det(self.matrix))))

    @property
    def rotation(self) -> float:
        """Degrees the high-resolution field is turned against the low-resolution one."""
        return float(np.degrees(np.arctan2(self.matrix[1, 0] - self.matrix[0, 1], self.matrix[0, 0] + self.matrix[1, 1])))

    def describe(self, scale: int) -> str:
        return (f"offset ({self.offset[0]:.2f}, {self.offset[1]:.2f}) low-resolution px, pixel size ratio "
                f"{self.pixel_ratio(scale):.4f}, rotation {self.rotation:.2f} deg, correlation {self.correlation:.2f}, "
                f"residual {self.residual:.2f} px over {self.patches} patch(es)")


def _few(names: Sequence[str]) -> str:
    """The first three names, and how many more: for an error that names files."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def file_name(path: "str | Path") -> str:
    """A file's name without its suffix, ``.ome.tif`` counted as one: what pairs files by name."""
    name = Path(path).name
    ome = next((suffix for suffix in OME_SUFFIXES if name.lower().endswith(suffix)), None)
    return name[:-len(ome)] if ome else Path(path).stem


def pair_files(lr_paths: Sequence[Path], hr_paths: Sequence[Path]) -> List[Tuple[Path, Path]]:
    """``(low, high)`` resolution files matched by file name without its suffix (:func:`file_name`):
    a high-resolution file partners the low-resolution one of its name, or else the one whose name,
    followed by one of :data:`SITE_SEPARATORS`, begins its own (the longest such), so one
    low-magnification field can hold several high-magnification ones. In the order of ``lr_paths``;
    a high-resolution file without a partner is an error that names it, low-resolution files
    without one (the rest of a plate imaged at low magnification) are left out with a note."""
    for name, paths in (("--lr", lr_paths), ("--hr", hr_paths)):
        twice = clashes(file_name(p) for p in paths)
        if twice:
            raise UserError(f"{name} has several files named {twice[0]} (other suffixes or folders): pairs are made by name")
    lr_by_name = {file_name(p): Path(p) for p in lr_paths}

    def partner(name: str) -> Optional[Path]:
        holders = [lr for lr in lr_by_name if name == lr or (name.startswith(lr) and name[len(lr)] in SITE_SEPARATORS)]
        return lr_by_name[max(holders, key=len)] if holders else None

    partners = {Path(p): partner(file_name(p)) for p in hr_paths}
    alone = sorted(hr.name for hr, lr in partners.items() if lr is None)
    if alone:
        raise UserError(f"--lr and --hr files are paired by name, and {_few(alone)} has no partner: give each "
                        "high-resolution field the name of the low-resolution one it lies in, alone or followed by "
                        "_, -, . or a space and more (A01.tif holds A01_s1.tif, A01_s2.tif)")
    unused = sorted(p.name for p in lr_by_name.values() if p not in partners.values())
    if unused:
        log.info("msrgan: %d low-resolution file(s) hold no high-resolution field and are left out (%s)",
                 len(unused), _few(unused))
    return [(lr, hr) for lr in lr_by_name.values() for hr, holder in partners.items() if holder == lr]


def pairs_from_csv(path: Path, hr_paths: Sequence[Path]) -> List[Tuple[Path, Path]]:
    """``(low, high)`` resolution files as a CSV lists them, for names that do not pair by
    themselves (a 10x ``A01_s1_w1.tif`` holding the 40x ``A01_s3_w1.tif``): a header row with the
    columns ``lr`` and ``hr``, then a row per high-resolution file, each path absolute or relative to
    the CSV's folder. In the order of ``hr_paths``, each of which needs a row; rows for other files
    are left out. A bad file or row is an error that names it."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path}: cannot be read as a CSV of pairs: {error}") from None
    if not {"lr", "hr"} <= set(header):
        raise UserError(f"{path}: a CSV of pairs needs a header row with the columns lr and hr "
                        f"(found {', '.join(header) or 'nothing'})")
    partner = {}
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        low, high = (row["lr"] or "").strip(), (row["hr"] or "").strip()
        if not low or not high:
            raise UserError(f"{path}, row {number}: both lr and hr must be given")
        lr, hr = (path.parent / low).resolve(), (path.parent / high).resolve()
        if partner.get(hr, lr) != lr:
            raise UserError(f"{path}, row {number}: {high} is listed with two low-resolution files")
        partner[hr] = lr
    pairs, missing = [], []
    for hr in map(Path, hr_paths):
        lr = partner.get(hr.resolve())
        if lr is None:
            missing.append(hr.name)
        elif not lr.is_file():
            raise UserError(f"{path}: {lr}, listed for {hr.name}, does not exist")
        else:
            pairs.append((lr, hr))
    if missing:
        raise UserError(f"{path} lists no low-resolution partner for {_few(missing)}: add a row (lr, hr) for each high-resolution file")
    return pairs


def find_pairs(lr: Sequence["str | Path"], hr_paths: Sequence[Path]) -> List[Tuple[Path, Path]]:
    """The ``(low, high)`` pairs that ``--lr`` (or ``data.train_lr``) gives for ``hr_paths``: one CSV
    file of pairs (:func:`pairs_from_csv`), else low-resolution images paired by name (:func:`pair_files`)."""
    tables = [Path(item) for item in lr if Path(item).suffix.lower() == ".csv"]
    if tables and len(lr) > 1:
        raise UserError(f"{tables[0]}: a CSV of pairs names every low-resolution file itself: give it alone")
    return pairs_from_csv(tables[0], hr_paths) if tables else pair_files(find_images(lr), hr_paths)


def _standardized(image: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance; pixels outside a resampled field (NaN) at the mean."""
    image = np.asarray(image, np.float64)
    return np.nan_to_num((image - np.nanmean(image)) / (np.nanstd(image) or 1.0))


def _whole_pixel_offset(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, float]:
    """``t`` of ``a = t + b`` in whole pixels, by normalised cross-correlation of the smaller image's
    centre (an eighth trimmed from each side) inside the larger one; and the correlation."""
    from skimage.feature import match_template

    swap = a.size < b.size  # the template is the smaller image
    big, small = (b, a) if swap else (a, b)
    trim = np.array(small.shape) // 8
    template = small[trim[0]:small.shape[0] - trim[0], trim[1]:small.shape[1] - trim[1]]
    if template.shape[0] > big.shape[0] or template.shape[1] > big.shape[1]:
        raise RegistrationError(f"neither field lies inside the other ({a.shape[0]} x {a.shape[1]} low-resolution pixels, "
                                f"{b.shape[0]} x {b.shape[1]} binned high-resolution ones): crop them to the area they share")
    score = match_template(big, template)
    peak = np.array(np.unravel_index(int(np.argmax(score)), score.shape))
    found = float(score[tuple(peak)])
    # template pixel `trim` sits at `peak` of the big image
    offset = (trim - peak) if swap else (peak - trim)
    return offset.astype(np.float64), found


def _patch_grid(start: np.ndarray, stop: np.ndarray, grid: int = 3) -> Tuple[List[np.ndarray], int]:
    """Top-left corners of up to ``grid x grid`` square patches spread over ``[start, stop)``, and
    their common edge."""
    edge = int(min(stop - start) // grid)
    if edge < MIN_SHARED:
        edge, grid = int(min(stop - start)), 1
    corners = [(start + (stop - start - edge) * np.array([i, j]) / max(grid - 1, 1)).astype(int)
               for i in range(grid) for j in range(grid)]
    return corners, edge


def oriented(image: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """A ``(..., Y, X)`` image mirrored left to right (if ``mirrored``), then turned ``turns`` quarter turns."""
    return np.rot90(image[..., ::-1] if mirrored else image, k=turns, axes=(-2, -1))


def best_orientation(lr: np.ndarray, hr: np.ndarray, scale: int) -> Tuple[int, bool]:
    """Of the eight ways a camera can be mounted (quarter turns, mirror image), the one under which
    the ``(Y, X)`` high-resolution image, binned, correlates best with the low-resolution one:
    pairs from two instruments need not share one. A turn or a mirror image shows at any
    resolution, so where the binned field is at least :data:`ORIENTATION_EDGE` pixels on a side,
    both are compared binned 2 x 2 again: a quarter of the work."""
    a, b = _standardized(lr), _standardized(bin_mean(hr[None], scale)[0])
    if min(b.shape) >= ORIENTATION_EDGE:
        a, b = bin_mean(a[None], 2)[0], bin_mean(b[None], 2)[0]
    best, found = (0, False), -np.inf
    for mirrored in (False, True):
        for turns in range(4):
            try:
                _, correlation = _whole_pixel_offset(a, np.ascontiguousarray(oriented(b, turns, mirrored)))
            except RegistrationError:  # this way round, neither field fits inside the other
                continue
            if correlation > found:
                best, found = (turns, mirrored), correlation
    return best


def _zoomed_offset(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """``t, z, correlation`` of ``a = t + z b``: ``z`` the one of :data:`ZOOMS` under which ``b``,
    resampled, correlates best with ``a`` (:func:`_whole_pixel_offset`, ``t`` in whole pixels)."""
    from scipy import ndimage

    best, failure = None, None
    for zoom in ZOOMS:
        shape = tuple(int(n) for n in np.floor((np.array(b.shape) - 1) * zoom) + 1)  # samples b at j / zoom
        zoomed = b if zoom == 1 else ndimage.affine_transform(b, [1 / zoom, 1 / zoom], output_shape=shape, order=1)
        try:
            offset, correlation = _whole_pixel_offset(a, zoomed)
        except RegistrationError as error:
            failure = failure or error
            continue
        if best is None or correlation > best[2]:
            best = (offset, float(zoom), correlation)
    if best is None:
        raise failure
    return best


def register(lr: np.ndarray, hr: np.ndarray, scale: int) -> Registration:
    """Locate a ``(Y, X)`` high-resolution image in a ``(Y, X)`` low-resolution one (see the module).

    A whole-pixel search over the pixel size ratios of :data:`ZOOMS` places the field; then, per
    patch of a 3 x 3 grid over the shared area, phase correlation gives the shift to a fraction
    of a pixel, biased by the binned images' aliasing by up to a high-resolution pixel; the
    high-resolution pixels around it are then tried, each binned exactly as a camera with
    ``scale`` times larger pixels would (:func:`_settled_shift`), which removes the bias. The
    patches are measured twice, the second time each where the first fit puts it, so that the
    edges of a field whose pixel size ratio or rotation moves them by pixels are measured where
    they are. Where the fit is not one whole-pixel shift, they are measured :data:`REMEASURES`
    times more on the high-resolution image resampled by the fit so far: patches whose pixels
    differ in size bias their shifts.
    """
    a = _standardized(lr)
    b = _standardized(bin_mean(hr[None], scale)[0])
    offset, zoom, correlation = _zoomed_offset(a, b)
    if correlation < MIN_CORRELATION:
        raise RegistrationError(f"the high-resolution field was not found in the low-resolution one (best correlation "
                                f"{correlation:.2f}): are they the same field, with pixels about {scale} times apart, "
                                "and does the smaller lie inside the other (but for an eighth of it at each side)? "
                                "If it sticks out further, crop both to the area they share")
    matrix, shift = zoom * np.eye(2), offset
    for _ in range(2):
        centres, targets = _patch_positions(lr, hr, a, b, matrix, shift, scale)
        matrix, shift, residual, used = _fit(centres, targets, matrix)
    for _ in range(REMEASURES):
        if _whole_shift(lr.shape, hr.shape, matrix, shift, scale)[1] <= MAX_CROP_DRIFT:
            break
        # measured on patches whose pixel sizes differ, the shifts are biased: measure again on the
        # high-resolution image resampled by this fit, and compose the two maps
        straight, whole = _straightened(hr[None], matrix, shift, scale)
        b2 = _standardized(bin_mean(straight, scale)[0])
        try:
            centres, targets = _patch_positions(lr, straight[0], a, b2, np.eye(2), whole / scale, scale)
        except RegistrationError:  # too little of the resampled field to measure on: keep the fit
            break
        correction, moved, residual, used = _fit(centres, targets, np.eye(2))
        # straight's binned pixel b2 = shift + matrix b - whole / scale, and a = moved + correction b2
        matrix, shift = correction @ matrix, moved + correction @ (shift - whole / scale)
    return Registration(offset=shift, matrix=matrix, correlation=correlation, residual=residual, patches=used)


def _patch_positions(lr: np.ndarray, hr: np.ndarray, a: np.ndarray, b: np.ndarray, matrix: np.ndarray,
                     shift: np.ndarray, scale: int) -> Tuple[np.ndarray, np.ndarray]:
    """Patch centres in the binned high-resolution image and where each lies in the low-resolution
    one, measured (see :func:`register`) starting from ``a = shift + matrix b``."""
    from skimage.registration import phase_cross_correlation

    # the binned image's pixels that map inside the low-resolution one, one in from the edges
    inverse = np.linalg.inv(matrix)
    ends = np.array(a.shape) - 2
    corners = np.array([[1, 1], [1, ends[1]], [ends[0], 1], ends], np.float64)
    back = (corners - shift) @ inverse.T  # top-left, top-right, bottom-left, bottom-right
    start = np.maximum(1, np.ceil([max(back[0, 0], back[1, 0]), max(back[0, 1], back[2, 1])])).astype(int)
    stop = np.minimum(np.array(b.shape) - 1, np.floor([min(back[2, 0], back[3, 0]), min(back[1, 1], back[3, 1])]) + 1).astype(int)
    if min(stop - start) < MIN_SHARED:
        raise RegistrationError(f"the fields share only {max(0, min(stop - start))} low-resolution pixels across; "
                                f"at least {MIN_SHARED} are needed")
    centres, targets = [], []
    patch_corners, edge = _patch_grid(start, stop)
    window = np.outer(np.hanning(edge), np.hanning(edge))
    half = (edge - 1) / 2
    for corner in patch_corners:
        at = np.rint(shift + matrix @ (corner + half) - half).astype(int)  # the patch's corner in the low-resolution image
        if np.any(at < 0) or np.any(at + edge > np.array(a.shape)):
            continue
        bp = b[corner[0]:corner[0] + edge, corner[1]:corner[1] + edge]
        ap = a[at[0]:at[0] + edge, at[1]:at[1] + edge]
        if bp.std() == 0 or ap.std() == 0:
            continue
        found, _, _ = phase_cross_correlation((ap - ap.mean()) * window, (bp - bp.mean()) * window,
                                              upsample_factor=20, normalization=None)
        # low-resolution pixel i of the patch shows the high-resolution block from scale * i - settled
        settled = _settled_shift(lr, hr, at, edge, scale * (at - corner + found), scale)
        if settled is None:
            continue
        target = at + half
        centres.append(target - settled / scale)
        targets.append(target)
    if not centres:
        raise RegistrationError("the shared area is flat: nothing to register on")
    return np.array(centres), np.array(targets)


def _settled_shift(lr: np.ndarray, hr: np.ndarray, corner: np.ndarray, edge: int, guess: np.ndarray,
                   scale: int, reach: int = 2) -> Optional[np.ndarray]:
    """The shift (high-resolution pixels, to a fraction of one) under which the ``edge``-pixel
    low-resolution patch at ``corner`` agrees best with the binned high-resolution pixels: whole
    shifts within ``reach`` of ``guess`` are tried and the best refined by a parabola per axis.
    None if the patch leaves the high-resolution image."""
    patch = lr[corner[0]:corner[0] + edge, corner[1]:corner[1] + edge]
    centre = np.rint(guess).astype(int)
    steps = range(-reach - 1, reach + 2)
    scores = np.full((len(steps), len(steps)), -np.inf)
    for i, dy in enumerate(steps):
        for j, dx in enumerate(steps):
            start = scale * corner - centre - [dy, dx]
            if np.any(start < 0) or np.any(start + scale * edge > hr.shape):
                continue
            scores[i, j] = _agreement(patch, hr[start[0]:start[0] + scale * edge, start[1]:start[1] + scale * edge], scale)
    inner = scores[1:-1, 1:-1]  # the best within reach; its neighbours for the parabola
    if not np.isfinite(inner).any():
        return None
    i, j = np.array(np.unravel_index(int(np.argmax(inner)), inner.shape)) + 1
    settled = centre + np.array([steps[i], steps[j]], np.float64)
    for axis, (low, mid, high) in enumerate([(scores[i - 1, j], scores[i, j], scores[i + 1, j]),
                                             (scores[i, j - 1], scores[i, j], scores[i, j + 1])]):
        curve = low - 2 * mid + high
        if np.isfinite(curve) and curve < 0:
            settled[axis] += float(np.clip((low - high) / (2 * curve), -0.5, 0.5))
    return settled


def _fit(centres: np.ndarray, targets: np.ndarray, prior: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float, int]:
    """``M, t`` of ``targets = t + M centres`` by least squares (with fewer than four points, a
    shift alone with ``M = prior``), dropping the worst point while it lies more than
    :data:`MAX_PATCH_RESIDUAL` off."""
    keep = np.ones(len(centres), bool)
    while True:
        c, t = centres[keep], targets[keep]
        if len(c) >= 4:
            design = np.column_stack([c, np.ones(len(c))])
            solution, *_ = np.linalg.lstsq(design, t, rcond=None)
            matrix, shift = solution[:2].T, solution[2]
        else:
            matrix, shift = prior, np.median(t - c @ prior.T, axis=0)
        errors = np.linalg.norm(targets - (centres @ matrix.T + shift), axis=1)
        worst = int(np.argmax(np.where(keep, errors, -1)))
        if errors[worst] <= MAX_PATCH_RESIDUAL or keep.sum() <= 1:
            return matrix, shift, float(np.sqrt(np.mean(errors[keep] ** 2))), int(keep.sum())
        keep[worst] = False


def _whole_shift(lr_shape: Tuple[int, ...], hr_shape: Tuple[int, ...], matrix: np.ndarray, offset: np.ndarray,
                 scale: int) -> Tuple[np.ndarray, float]:
    """The one whole-pixel shift (high-resolution pixels) that fits the middle of the shared area
    under ``a = offset + matrix b``, and how far (high-resolution pixels) the fit puts some pixel
    of that area from where the shift puts it."""
    inverse = np.linalg.inv(matrix)
    first, stop = _blocks(lr_shape[-2:], hr_shape[-2:], np.rint(scale * offset).astype(int), scale)
    corners = np.array([[y, x] for y in (first[0], stop[0] - 1) for x in (first[1], stop[1] - 1)], np.float64)
    middle = corners.mean(axis=0)
    shift = np.rint(scale * (middle - inverse @ (middle - offset))).astype(int)
    exact = (corners - offset) @ inverse.T  # binned pixels
    return shift, float(scale * np.abs(exact - (corners - shift / scale)).max())


def _straightened(hr: np.ndarray, matrix: np.ndarray, offset: np.ndarray, scale: int) -> Tuple[np.ndarray, np.ndarray]:
    """``hr`` (``(C, Y, X)``) resampled (:data:`SPLINE_ORDER`) so that its binning maps into the
    low-resolution image by a whole number of high-resolution pixels: with ``h = (scale - 1) / 2``
    and ``t'`` the offset rounded to ``1 / scale``, pixel ``y''`` comes from
    ``M^-1 (y'' - h) + scale M^-1 (t' - t) + h``. Returns it (pixels from outside the field NaN)
    and ``scale t'``."""
    from skimage.transform import AffineTransform, warp

    inverse = np.linalg.inv(matrix)
    centre = np.full(2, (scale - 1) / 2)
    shift = np.rint(scale * offset)
    constant = centre - inverse @ centre + inverse @ (shift - scale * offset)
    transform = np.eye(3)
    transform[:2, :2], transform[:2, 2] = inverse[::-1, ::-1], constant[::-1]  # warp works in (x, y)
    transform = AffineTransform(matrix=transform)
    inside = warp(np.ones(hr.shape[1:]), transform, order=0, mode="constant", cval=0.0) > 0.5
    planes = [warp(np.asarray(plane, np.float64), transform, order=SPLINE_ORDER, mode="edge", preserve_range=True)
              for plane in hr]
    return np.where(inside, np.stack(planes), np.nan), shift.astype(int)


def _blocks(lr_shape: Tuple[int, int], hr_shape: Tuple[int, int], shift: np.ndarray, scale: int) -> Tuple[np.ndarray, np.ndarray]:
    """First and last-plus-one low-resolution pixel (``(y, x)``) whose block, from ``scale * i - shift``
    in the high-resolution image, lies inside it."""
    first = np.maximum(0, -(-shift // scale))
    stop = np.minimum(lr_shape, (np.array(hr_shape) + shift) // scale)
    return first, stop


def _crop(hr: np.ndarray, first: np.ndarray, stop: np.ndarray, shift: np.ndarray, scale: int) -> np.ndarray:
    start, size = scale * first - shift, scale * np.maximum(stop - first, 0)
    return hr[..., start[0]:start[0] + size[0], start[1]:start[1] + size[1]]


def _agreement(lr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """Pearson correlation of a ``(Y, X)`` image with a ``(scale Y, scale X)`` one binned (NaN blocks left out)."""
    binned = bin_mean(hr[None], scale)[0]
    keep = np.isfinite(binned)
    return float(np.corrcoef(lr[keep], binned[keep])[0, 1]) if keep.sum() > 2 else -1.0


def align(lr: np.ndarray, hr: np.ndarray, registration: Registration, scale: int) -> Tuple[np.ndarray, np.ndarray, bool]:
    """``(C, Y, X)`` images cropped to the area they share, the high-resolution one on the
    low-resolution pixel grid (``scale`` times its size); and whether it had to be resampled.

    The high-resolution image is cropped, its pixels untouched, when one whole-pixel shift puts
    every pixel of the shared area within :data:`MAX_CROP_DRIFT` of where the fit puts it;
    otherwise it is first resampled onto the low-resolution grid (:func:`_straightened`). Of the
    shift and its neighbours (two pixels either way), the one whose binning agrees best with the
    low-resolution image is kept.
    """
    matrix, offset = registration.matrix, registration.offset
    shift, drift = _whole_shift(lr.shape[-2:], hr.shape[-2:], matrix, offset, scale)
    resampled = drift > MAX_CROP_DRIFT
    if resampled:
        hr, shift = _straightened(hr, matrix, offset, scale)
    first, stop = _blocks(lr.shape[-2:], hr.shape[-2:], shift, scale)
    inner = first + 1, stop - 1  # holds for every candidate within scale - 1 pixels
    candidates = [shift + np.array([dy, dx]) for dy in range(-2, 3) for dx in range(-2, 3)]
    shift = max(candidates, key=lambda c: _agreement(lr[0, inner[0][0]:inner[1][0], inner[0][1]:inner[1][1]],
                                                     _crop(hr[0], *inner, c, scale), scale))
    first, stop = _blocks(lr.shape[-2:], hr.shape[-2:], shift, scale)
    if resampled:  # leave out edge rows and columns that reach beyond the field
        while np.any(stop - first >= MIN_SHARED):
            blocks = np.isfinite(bin_mean(_crop(hr[:1], first, stop, shift, scale), scale)[0])
            if blocks.all():
                break
            trimmed = (first + [not blocks[0].all(), not blocks[:, 0].all()],
                       stop - [not blocks[-1].all(), not blocks[:, -1].all()])
            if np.array_equal(trimmed[0], first) and np.array_equal(trimmed[1], stop):
                raise RegistrationError("the resampled high-resolution field has a hole in it: the fit is not a plain map")
            first, stop = trimmed
    if np.any(stop - first < MIN_SHARED):
        raise RegistrationError(f"the fields share only {max(0, int(min(stop - first)))} low-resolution pixels across; "
                                f"at least {MIN_SHARED} are needed")
    return (lr[:, first[0]:stop[0], first[1]:stop[1]].astype(np.float32),
            _crop(hr, first, stop, shift, scale).astype(np.float32), bool(resampled))


def shading_terms(shape: Tuple[int, int], degree: int = SHADING_DEGREE) -> List[np.ndarray]:
    """The monomials ``u**i * v**j`` (``i + j <= degree``) over a ``shape`` field, ``u`` and ``v``
    running from -1 to 1 across it: the smooth fields :func:`match_intensities` fits."""
    v, u = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    return [u ** i * v ** j for i in range(degree + 1) for j in range(degree + 1 - i)]


def match_intensities(lr: np.ndarray, hr: np.ndarray, scale: int) -> Tuple[np.ndarray, Tuple[float, float]]:
    """``lr`` (``(C, Y, X)``) mapped, per channel, onto the intensity scale of ``hr`` binned onto its
    grid, and the range of the relative shading it corrected: the fitted response to the
    bright half's median intensity, lowest and highest over its median.

    Two acquisitions differ in exposure, gain and offset, and two objectives in how the light falls
    off towards the field's edges (vignetting, uneven illumination): the map is the least-squares
    fit of ``lr`` as a gain field times binned ``hr`` plus an offset field (polynomials of degree
    :data:`SHADING_DEGREE` over the field), inverted, so every method starts from the same input on
    the truth's scale. Both images are smoothed first (:data:`MATCH_SMOOTHING`): at scales larger
    than the optics' blur a lower-NA objective's image and the binned truth differ only in
    intensity, and the noise averages out. Unsmoothed, the blur lowered the fitted gain and so
    sharpened every input (benchmarks/pairs.py, blur 1.5 pixels and 300 photons: bicubic scored
    0.16 dB above the pair cut where it was made, msrgan 0.25 dB below; smoothed over 2 pixels
    +0.07 / -0.08, over 4 pixels +0.01 / -0.08). With one gain and offset for the whole field, a
    10x objective whose light falls off by 15 % towards its field's corners cost msrgan 0.35-0.76
    dB (benchmarks/pairs.py); the fields recover it within 0.01 dB and move no figure where the
    shading is the same. Where the fit has nothing to go by (empty background), the gain is held
    within :data:`MAX_SHADING` of its median over the bright half of the truth's range, where the
    range returned is also taken."""
    from scipy import ndimage

    binned = bin_mean(hr, scale)
    terms = shading_terms(lr.shape[1:], SHADING_DEGREE if min(lr.shape[1:]) >= MIN_SHADING_FIELD else 0)
    out = np.empty_like(lr, dtype=np.float32)
    low, high = 1.0, 1.0
    for c in range(lr.shape[0]):
        x = ndimage.gaussian_filter(binned[c].astype(np.float64), MATCH_SMOOTHING).ravel()
        y = ndimage.gaussian_filter(lr[c].astype(np.float64), MATCH_SMOOTHING).ravel()
        if np.ptp(x) == 0:  # a flat truth: nothing to fit a gain to
            out[c] = lr[c] - float(np.mean(y - x))
            continue
        design = np.stack([x * t.ravel() for t in terms] + [t.ravel() for t in terms], axis=1)
        coefficients = np.linalg.lstsq(design, y, rcond=None)[0]
        gain = sum(k * t for k, t in zip(coefficients[:len(terms)], terms))
        offset = sum(k * t for k, t in zip(coefficients[len(terms):], terms))
        signal = (x > (x.min() + x.max()) / 2).reshape(gain.shape)  # where the gain is seen, not extrapolated
        median = float(np.median(gain[signal]))
        if median <= 0:
            raise RegistrationError("the low-resolution field's intensities do not rise with the high-resolution "
                                    "one's: is one of them inverted or a different channel?")
        gain = np.clip(gain, median / MAX_SHADING, median * MAX_SHADING)
        # the shading as seen at the signal's level: gain and offset fields trade off against each
        # other where the truth varies little, and noise moves either alone more than their sum
        seen = gain[signal] * np.median(x[signal.ravel()]) + offset[signal]
        seen /= np.median(seen)
        low, high = min(low, float(seen.min())), max(high, float(seen.max()))
        out[c] = (lr[c] - offset) / gain
    return out, (low, high)


def registered_pair(lr_path: Path, hr_path: Path, normalization: NormalizationConfig, scale: int,
                    channel_axis: Optional[int] = None, channel: Optional[int] = None,
                    log_level: int = logging.INFO) -> Tuple[np.ndarray, np.ndarray, np.dtype]:
    """``(hr, lr, dtype)`` of one real pair, as :func:`~msrgan_core.evaluate.degraded_pair` gives a
    synthetic one: aligned, cropped to the area both show, ``lr`` on ``hr``'s intensity scale; only
    channel ``channel`` (from 0) where given. Registration uses the first channel kept; what it
    found is logged at ``log_level``."""
    from .evaluate import check_not_blank

    lr, _ = read_image(lr_path, channel_axis=channel_axis)
    hr, _ = read_image(hr_path, channel_axis=channel_axis)
    if lr.shape[0] != hr.shape[0]:
        raise UserError(f"{lr_path.name} has {lr.shape[0]} channel(s) and {hr_path.name} {hr.shape[0]}: a pair must have the same")
    if channel is not None:
        lr, hr = lr[channel:channel + 1], hr[channel:channel + 1]
    check_not_blank(hr.astype(np.float32), normalization, hr_path)
    turns, mirrored = best_orientation(lr[0], hr[0], scale)
    if turns or mirrored:
        hr = np.ascontiguousarray(oriented(hr, turns, mirrored))
        log.log(log_level, "msrgan: %s %s to match %s", hr_path.name,
                " and ".join(filter(None, ["mirrored" if mirrored else "", f"turned {90 * turns} deg" if turns else ""])),
                lr_path.name)
    try:  # every error of the pair names both files
        registration = register(lr[0], hr[0], scale)
        ratio = registration.pixel_ratio(scale)
        least, most = scale / (ZOOMS.max() + 0.02), scale / (ZOOMS.min() - 0.02)  # the search's ratios, a step beyond
        if not least <= ratio <= most and registration.patches < MIN_RATIO_PATCHES:  # a fit of one or two patches
            raise RegistrationError(f"too little structure to register: {registration.patches} patch(es) held signal, "
                                    f"and their fit puts the pixels {ratio:.2f} times apart; a field with nuclei across "
                                    "it registers")
        if not least <= ratio <= most:  # else the truth would be the high-resolution image resampled far
            raise RegistrationError(f"the pixels are {ratio:.2f} times apart, not about {scale} ({least:.2f}-{most:.2f}; "
                                    f"{registration.describe(scale)}): are these the objectives the model is for?")
        lr_crop, hr_crop, resampled = align(lr, hr, registration, scale)
        agreement = _agreement(lr_crop[0], hr_crop[0], scale)
        if agreement < MIN_AGREEMENT:
            raise RegistrationError(f"registered, the fields agree poorly (correlation {agreement:.2f} of the low-resolution "
                                    f"field with the high-resolution one binned; {registration.describe(scale)}): are "
                                    f"they the same field, with pixels about {scale} times apart?")
        for c in range(1, lr_crop.shape[0]):  # registered on the first channel: each other must agree as well
            agreement = _agreement(lr_crop[c], hr_crop[c], scale)
            if agreement < MIN_AGREEMENT:
                raise RegistrationError(f"registered on channel 0, channel {c} agrees poorly (correlation {agreement:.2f} "
                                        "of the low-resolution field with the high-resolution one binned): are the "
                                        "channels in the same order in both files?")
        matched, (low, high) = match_intensities(lr_crop, hr_crop, scale)
    except UserError as error:
        raise type(error)(f"{lr_path.name} / {hr_path.name}: {error}") from None
    log.log(log_level, "msrgan: %s registered in %s: %s; %d x %d low-resolution pixels shared%s", hr_path.name,
             lr_path.name, registration.describe(scale), lr_crop.shape[1], lr_crop.shape[2],
             ", the high-resolution image resampled" if resampled else "")
    if registration.residual > MAX_PATCH_RESIDUAL / 2:
        log.warning("msrgan: %s: the registration fits loosely (%s): the comparison may be unfair to every method",
                    hr_path.name, registration.describe(scale))
    if high - low > SHADING_NOTICE:
        log.log(log_level, "msrgan: %s: the two acquisitions' shading differs: the low-resolution field's relative "
                "intensity at the signal's level runs from %.2f to %.2f over the shared area (corrected)", hr_path.name, low, high)
    return hr_crop, matched, hr.dtype


def registered_pairs(pairs: Sequence[Tuple[Path, Path]], normalization: NormalizationConfig, scale: int,
                     channel_axis: Optional[int] = None, channel: Optional[int] = None, desc: str = "registering",
                     progress: bool = True) -> Iterator[Tuple[Path, np.ndarray, np.ndarray, np.dtype]]:
    """``(high-resolution path, hr, lr, dtype)`` of :func:`registered_pair` for each ``(low, high)``
    pair of files (:func:`find_pairs`), with a progress bar; blank fields and pairs that cannot be
    registered are left out, each with a warning."""
    from .evaluate import without_blanks

    def make(pair: Tuple[Path, Path]):
        lr_path, hr_path = pair
        return (hr_path, *registered_pair(lr_path, hr_path, normalization, scale, channel_axis, channel))

    return without_blanks(list(pairs), make, desc, progress, also=(RegistrationError,))
