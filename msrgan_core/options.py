"""The values of the inference options, written once for the library, the command line and the
CellProfiler module. Nothing here imports torch, so building a parser or a module's settings is quick.
"""
from __future__ import annotations

#: where the network runs: ``auto`` is CUDA when present, else the CPU; ``cuda:N`` names one GPU (:func:`device_name`)
DEVICES = ("auto", "cpu", "cuda")

#: inference precisions; ``auto`` is bf16 where the device computes it (GPUs, CPUs with AVX-512 BF16 or
#: AMX), else fp32; fp16 runs on GPUs only
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: orientations an upscaler may average (:func:`msrgan_core.inference.orientations`)
ENSEMBLES = (1, 2, 4, 8)
#: the packaged models, selectable by name instead of a path; the first is the default. ``fidelity-clean``
#: is round 1's 16 x 64 SRResNet, kept for noise-free binned inputs, where it is still the best (README)
DEFAULT_MODELS = ("fidelity", "perceptual", "fidelity-clean")
#: what the command line and the module say of an option left unset
AS_THE_MODEL_SAYS = "as the model file says (msrgan info MODEL)"

#: the acquisitions models are measured on (``benchmarks/quality.py``, ``msrgan evaluate --degradation``):
#: name -> (blur sigma in high-resolution pixels, photons at the 99.8th percentile; 0 = no noise)
QUALITY_GRID = {
    f"{blur_name}{photon_name}": (blur, photons)
    for blur_name, blur in (("bin", 0.0), ("blur1.5+bin", 1.5))
    for photon_name, photons in (("", 0.0), ("+1000ph", 1000.0), ("+300ph", 300.0), ("+100ph", 100.0))
}
#: read noise of the grid's noisy acquisitions, as a fraction of the normalised range
GRID_READ_NOISE = 0.0015
#: the acquisitions ``msrgan calibrate`` measures the uncertainty image's scale on by default
CALIBRATION_CELLS = ("bin", "bin+1000ph", "bin+300ph", "blur1.5+bin+300ph")
#: the folder under ``msrgan evaluate --out`` that holds a picture of each image (``NAME.png``)
EVALUATION_PICTURES = "side_by_side"


def device_name(text: str) -> str:
    """``text`` as a device name the library takes, in lower case: one of :data:`DEVICES`, ``gpu``
    (``cuda``) or ``cuda:N``, the GPU of index N on a machine with several; a one-line ValueError else."""
    name = str(text or "auto").strip().lower().replace("gpu", "cuda", 1)
    kind, colon, index = name.partition(":")
    if kind not in DEVICES or (colon and not (kind == "cuda" and index.isdigit())):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N (the GPU of index N), got {text!r}")
    return f"cuda:{int(index)}" if colon else kind


def uncertainty_orientation_count(ensemble: int) -> int:
    """How many orientations an uncertainty image's spread is taken over for a run averaging
    ``ensemble``: the ensemble's own, or for a single pass the image and its mirror image."""
    return max(int(ensemble), 2)
