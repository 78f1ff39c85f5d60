"""The values of the inference options, written once for the library, the command line and the
CellProfiler module. Nothing here imports torch, so building a parser or a module's settings is quick.
"""
from __future__ import annotations

#: where the network runs: ``auto`` is CUDA when present, else the CPU
DEVICES = ("auto", "cpu", "cuda")
#: inference precisions; ``auto`` is bf16 on GPUs that support it, else fp32 (the CPU always runs fp32)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: orientations an upscaler may average (:func:`msrgan_core.inference.orientations`)
ENSEMBLES = (1, 2, 4, 8)
#: the packaged models, selectable by name instead of a path; the first is the default
DEFAULT_MODELS = ("fidelity", "perceptual")
#: what the command line and the module say of an option left unset
AS_THE_MODEL_SAYS = "as the model file says (msrgan info MODEL)"
