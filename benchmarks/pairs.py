"""What registering a pair of acquisitions costs `msrgan evaluate --lr`, on the held-out BBBC039 fields.

    python benchmarks/pairs.py [--data ../shared/data] [--model fidelity] [--cells bin bin+300ph blur1.5+bin+300ph]
                               [--limit N]

A user checks a model on a few wells imaged at both magnifications (docs/degradation.md); msrgan
must then find each high-magnification field in its low-magnification partner. Here each
held-out field plays the specimen: its central part is the "40x" field, the whole field degraded
as a grid cell (on the whole image, so the noise is the quality grid's) is the "10x" one, with
another gain and offset. Scored these ways, per cell:

- *known*: the pair cut where it was made, on the truth's intensity scale (no registration);
- *registered*: the same two files through ``msrgan evaluate --lr``'s registration, cropping and
  intensity match;
- *10x shaded 15%*: the 10x objective's light falls off by 15 % from its field's centre to its
  corners (its camera offset does not), and the 40x one's not at all, so the two acquisitions'
  shading differs over the field they share;
- *4.02x, 0.3 deg*: the 10x field's pixels 0.5 % larger than 4 times the 40x ones and turned by
  0.3 degrees, as nominal objectives and a re-seated camera give. Simulated by resampling the
  specimen (cubic spline) before degrading it. *known*: the truth is cut from that resampled
  specimen where the 10x pixels lie; *registered*: the truth is the untouched 40x field, which
  msrgan finds, resamples and crops. *4.2x, 1 deg*: the same 5 % off and turned by a degree,
  which moves the 40x field's edges by 2-3 10x pixels from where a ratio of 4 puts them.

Prints mean PSNR per method and msrgan's gain over the best classical method; equal figures in
a known and a registered row mean registration loses nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from skimage.transform import AffineTransform, warp
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import add_held_out_arguments, held_out_upscaler, run  # noqa: E402 - the quality benchmark's held-out split

from msrgan_core.evaluate import grid_degradation, image_seed, low_resolution, score_pairs, summarize  # noqa: E402
from msrgan_core.io import read_image  # noqa: E402
from msrgan_core.metrics import CLASSICAL  # noqa: E402
from msrgan_core.pairs import registered_pair  # noqa: E402

SCALE = 4
#: where the "40x" field starts in the specimen, and its size (high-resolution pixels)
CORNER, SIZE = (40, 56), (384, 512)
#: name: (the 10x field's pixel size over 4 times the 40x one's, its turn in degrees, registered?,
#: how far the 10x objective's light falls off from its field's centre to its corners)
VARIANTS = {"known": (1.0, 0.0, False, 0.0), "registered": (1.0, 0.0, True, 0.0),
            "known, 4.02x, 0.3 deg": (0.995, 0.3, False, 0.0), "registered, 4.02x, 0.3 deg": (0.995, 0.3, True, 0.0),
            "known, 4.2x, 1 deg": (0.952, 1.0, False, 0.0), "registered, 4.2x, 1 deg": (0.952, 1.0, True, 0.0),
            "registered, 10x shaded 15%": (1.0, 0.0, True, 0.15)}


def vignetted(image: np.ndarray, fall: float) -> np.ndarray:
    """A ``(Y, X)`` image whose gain falls by ``fall`` from its centre to its corners, quadratically."""
    v, u = np.meshgrid(np.linspace(-1, 1, image.shape[0]), np.linspace(-1, 1, image.shape[1]), indexing="ij")
    return image * (1 - fall * (u ** 2 + v ** 2) / 2)


def turned(image: np.ndarray, zoom: float, degrees: float) -> np.ndarray:
    """A ``(C, Y, X)`` image with pixels ``zoom`` times larger, turned by ``degrees`` about its centre."""
    if zoom == 1.0 and degrees == 0.0:
        return image
    centre = (np.array(image.shape[:0:-1]) - 1) / 2
    transform = (AffineTransform(translation=-centre) + AffineTransform(scale=1 / zoom, rotation=np.radians(degrees))
                 + AffineTransform(translation=centre))
    return np.stack([warp(plane, transform, order=3, mode="edge", preserve_range=True) for plane in image]).astype(np.float32)


def pairs(paths, cell: str, variant: str, normalization, folder: Path):
    """``(path, hr, lr, dtype)`` of each field for one variant (see the module)."""
    degradation = grid_degradation(cell, SCALE)
    zoom, degrees, registered, fall = VARIANTS[variant]
    for path in paths:
        image, _ = read_image(path)
        specimen = image[:1].astype(np.float32)
        seen = turned(specimen, zoom, degrees)  # the specimen as the 10x objective and camera see it
        lr = low_resolution(seen, normalization, degradation, np.random.default_rng(image_seed(path)), image.dtype)
        if not registered:  # the truth cut from the same resampled specimen, where the 10x field's pixels lie
            y, x = CORNER[0] // SCALE, CORNER[1] // SCALE
            hr = seen[:, CORNER[0]:CORNER[0] + SIZE[0], CORNER[1]:CORNER[1] + SIZE[1]]
            yield path, hr, lr[:, y:y + SIZE[0] // SCALE, x:x + SIZE[1] // SCALE], image.dtype
            continue
        hr = specimen[:, CORNER[0]:CORNER[0] + SIZE[0], CORNER[1]:CORNER[1] + SIZE[1]]
        exposed = 0.6 * vignetted(lr[0], fall) + 150  # another exposure, shading and camera offset
        tifffile.imwrite(folder / "lr.tif", np.rint(exposed).astype(np.uint16))  # a 16-bit camera's counts
        tifffile.imwrite(folder / "hr.tif", hr[0].astype(image.dtype))
        yield (path, *registered_pair(folder / "lr.tif", folder / "hr.tif", normalization, SCALE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_held_out_arguments(parser, ["bin", "bin+300ph", "blur1.5+bin+300ph"])
    args = parser.parse_args()
    upscaler, paths = held_out_upscaler(args)
    print(f"{Path(upscaler.model.source).name} ({upscaler.options}); {len(paths)} held-out BBBC039 fields, "
          f"a {SIZE[0]} x {SIZE[1]} field of each imaged both ways")
    print(f"{'cell':<18} {'pair':<27} {'bicubic':>8} {'lanczos':>8} {'nlm+bic':>8} {'msrgan':>8} {'over best':>9} "
          f"{'below bicubic':>13}")
    with tempfile.TemporaryDirectory() as folder:
        for cell in args.cells:
            for variant in VARIANTS:
                made = pairs(tqdm(paths, desc=f"{cell}, {variant}", leave=False), cell, variant,
                             upscaler.model.normalization, Path(folder))
                rows = score_pairs(made, upscaler, SCALE)
                mean = {r["method"]: r["psnr"] for r in summarize(rows)}
                psnr = {(r["image"], r["method"]): r["psnr"] for r in rows}
                below = sum(psnr[image, "msrgan"] < psnr[image, "bicubic"] for image, m in psnr if m == "msrgan")
                best = max(mean[name] for name in CLASSICAL)
                print(f"{cell:<18} {variant:<27} {mean['bicubic']:>8.2f} {mean['lanczos']:>8.2f} "
                      f"{mean['nlm+bicubic']:>8.2f} {mean['msrgan']:>8.2f} {mean['msrgan'] - best:>+9.2f} "
                      f"{below:>6} of {len(paths)}")


if __name__ == "__main__":
    run(main)
