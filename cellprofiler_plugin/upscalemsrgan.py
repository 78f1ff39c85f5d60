"""
UpscaleMSRGAN
=============

**UpscaleMSRGAN** makes an image 4 times larger in X and Y with mSRGAN, a super-resolution
generative adversarial network trained on fluorescence microscopy images of nuclei. It is a
learned alternative to **Resize** with bicubic interpolation: edges and small structures come
out sharper than interpolation can make them.

Use it before **IdentifyPrimaryObjects** when nuclei (or other objects) are only a few pixels
across, for example in fields acquired with a low-magnification objective. The module only
upscales; segment and measure the upscaled image with the usual modules downstream.

|

============ ============ ===============
Supports 2D? Supports 3D? Respects masks?
============ ============ ===============
YES          NO           YES
============ ============ ===============

See also
^^^^^^^^

See also **Resize**, which upscales by interpolation (choose *Bicubic* and a resizing factor
of 4 to compare the two side by side).

What do I need as input?
^^^^^^^^^^^^^^^^^^^^^^^^

A 2-D grayscale image, typically one fluorescence channel such as a DNA stain, 8-bit, 16-bit
or floating point. A color or multichannel image is upscaled one channel at a time with the
default (one-channel) models. 3-D stacks are not supported: the module reports an error.

The default models learned to undo what a low-magnification acquisition loses: a camera pixel
4 times larger at the sample (4 x 4 binning), the extra blur of a lower-NA objective, and the
shot noise of a short exposure (from about 30 photons at the brightest nuclei to noise-free), on
widefield images of stained nuclei. They do best on similar images; for other stains or
microscopes, fine-tune a custom model on a few of your own high-magnification fields.

What do I get as output?
^^^^^^^^^^^^^^^^^^^^^^^^

A new image, 4 times (the model's scale factor) larger in X and Y, on the input's intensity
scale: the intensities are mapped to the model's range from the input's own percentiles and
mapped back with the same values, then kept within CellProfiler's 0 to 1 range. The input's mask
and cropping, where it has them, come with the output upscaled (each pixel 4 x 4, as **Resize**
upscales them); the network itself reads every pixel, masked or not.

Which model should I use?
^^^^^^^^^^^^^^^^^^^^^^^^^

-  *Default: fidelity*: trained to reproduce the true high-resolution intensities as closely as
   possible (pixel loss). Prefer it whenever the upscaled image is measured or segmented:
   object counts, areas, shapes and intensities.
-  *Default: perceptual*: trained with an adversarial and a perceptual (feature) loss, as in
   SRGAN. Its images look sharper and more natural, but some of the fine texture is invented
   by the network. Prefer it for figures and visual inspection, not for quantification.
-  *Default: fidelity-clean*: the previous, larger network (about 10 times slower), trained on
   noise-free binning. Better than *fidelity* only where the low-magnification image is itself
   nearly noise-free (long exposures, camera binning); on noisy or blurred images it draws noise
   as texture.
-  *Custom model file*: a ``.safetensors`` model trained and exported with ``msrgan train``
   (for example on your own microscope's images). The file describes itself (architecture,
   scale, normalisation), so any msrgan model loads without further settings.

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Image measurements:**

-  *Upscale_ScaleFactor_<output>:* how many times larger in X and Y the output is than its input
   (4 for the packaged models): divide lengths by it and areas by its square to get back to the
   input's pixels.
-  *Upscale_Model_<output>:* the model file that upscaled it: a packaged model by its file name
   (fidelity.safetensors), any other by its path (a training run names its models as the
   packaged ones are named).

Every measurement made in pixels on the upscaled image changes by the scale factor: with a 4x model, lengths, perimeters and diameters are 4 times larger, areas 16 times
larger, and the typical object diameter in **IdentifyPrimaryObjects** must be given in upscaled
pixels (4 times the diameter in the original image). Intensity measurements (mean, median)
stay comparable; integrated intensities grow with the number of pixels (16 times).

Technical notes
^^^^^^^^^^^^^^^

The model is loaded once per CellProfiler worker and reused for every image set. With
*Automatic*, the GPU is used when PyTorch finds a CUDA GPU, otherwise the CPU; when *GPU* is
chosen but no GPU is usable, the module warns and runs on the CPU. On the CPU, the cores are
shared out among CellProfiler's analysis workers. Large images are processed in parts, so no
seams show: on the CPU in full-width strips that carry the network's context from one to the
next, on a GPU in tiles, each with the context the network needs around it; set a tile size when
the GPU runs out of memory (the module already retries with smaller tiles, then on the CPU). The
log says which device, precision and how many threads ran.

The module needs the ``msrgan`` Python package (and PyTorch) installed in the same Python
environment as CellProfiler, or, with *Run msrgan in* set to *Another Python environment*, in
any other Python environment on the same computer: CellProfiler's official app bundles cannot
import PyTorch. The module then writes each image to a temporary file, runs that
environment's ``msrgan upscale`` on it with the same settings and reads the result back, the
same numbers as when it runs in CellProfiler's environment; this starts one process and loads
the model once per image set.

References
^^^^^^^^^^

-  Ledig C, Theis L, Huszar F, et al. (2017) "Photo-realistic single image super-resolution
   using a generative adversarial network." *CVPR 2017*, 4681-4690.
   (`link <https://doi.org/10.1109/CVPR.2017.19>`__)
-  The default models were trained on nuclei images of BBBC039: Caicedo JC, Roth J, Goodman A,
   et al. (2019) "Evaluation of deep learning strategies for nucleus segmentation in
   fluorescence images." *Cytometry A* 95(9):952-965.
   (`link <https://doi.org/10.1002/cyto.a.23863>`__)
-  and on the fluorescence images of the 2018 Data Science Bowl (BBBC038): Caicedo JC,
   Goodman A, Karhohs KW, et al. (2019) "Nucleus segmentation across imaging experiments: the
   2018 Data Science Bowl." *Nature Methods* 16:1247-1253.
   (`link <https://doi.org/10.1038/s41592-019-0612-7>`__)
"""

import functools
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict

import numpy
import tifffile
from cellprofiler_core.image import Image
from cellprofiler_core.module import ImageProcessing
from cellprofiler_core.constants.measurement import COLTYPE_INTEGER, COLTYPE_VARCHAR_PATH_NAME, IMAGE
from cellprofiler_core.setting import Binary, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.text import Directory, Filename, ImageName, Integer, Pathname

# Loading the plugin imports neither PyTorch nor msrgan's inference code: the functions that run
# the network import them when they first run, so that a CellProfiler without them (the official
# app bundles) still loads the module and can run msrgan in another Python environment.
try:
    from msrgan_core.options import ENSEMBLES
except ImportError:  # no msrgan in CellProfiler's environment: the same values, checked by tests/test_plugin_module.py
    ENSEMBLES = (1, 2, 4, 8)

MODEL_FIDELITY = "Default: fidelity"
MODEL_PERCEPTUAL = "Default: perceptual"
MODEL_FIDELITY_CLEAN = "Default: fidelity-clean"
MODEL_CUSTOM = "Custom model file"
MODEL_ALL = [MODEL_FIDELITY, MODEL_PERCEPTUAL, MODEL_FIDELITY_CLEAN, MODEL_CUSTOM]
PACKAGED_MODEL = {MODEL_FIDELITY: "fidelity", MODEL_PERCEPTUAL: "perceptual", MODEL_FIDELITY_CLEAN: "fidelity-clean"}

#: the model file's own choice of orientations and bin matching (msrgan_core.modelcard.InferenceDefaults)
MODEL_DEFAULT = "Model's default"
ORIENTATIONS_ALL = [MODEL_DEFAULT] + [str(n) for n in ENSEMBLES]
MATCH_BINS_ALL = [MODEL_DEFAULT, "Yes", "No"]

DEVICE_AUTOMATIC = "Automatic"
DEVICE_CPU = "CPU"
DEVICE_GPU = "GPU"
DEVICE_ALL = [DEVICE_AUTOMATIC, DEVICE_CPU, DEVICE_GPU]
TORCH_DEVICE = {DEVICE_AUTOMATIC: "auto", DEVICE_CPU: "cpu", DEVICE_GPU: "cuda"}

PRECISION_AUTOMATIC = "Automatic"
PRECISION_FP32 = "fp32 on every machine"
PRECISION_ALL = [PRECISION_AUTOMATIC, PRECISION_FP32]
#: the precision each choice asks msrgan for (``msrgan upscale --precision``)
TORCH_PRECISION = {PRECISION_AUTOMATIC: "auto", PRECISION_FP32: "fp32"}
ENVIRONMENT_HERE = "This Python environment"
ENVIRONMENT_OTHER = "Another Python environment"
ENVIRONMENT_ALL = [ENVIRONMENT_HERE, ENVIRONMENT_OTHER]

INSTALL_HINT = (
    "UpscaleMSRGAN needs the msrgan package and PyTorch in the Python environment that runs "
    "CellProfiler: run 'pip install msrgan' with that environment's pip, then restart CellProfiler; "
    "or install msrgan in another Python environment and choose '{}' in 'Run msrgan in'".format(ENVIRONMENT_OTHER)
)
#: where msrgan's own command line says which model file it loaded (``msrgan info``)
INFO_FILE_LINE = re.compile(r"^file: (.+)$", re.MULTILINE)
#: where ``msrgan upscale``'s log says where the network ran
UPSCALE_DEVICE_LINE = re.compile(r"^msrgan: model .+ on (.+?), \S+ precision", re.MULTILINE)
#: the other environment's messages go to CellProfiler's log under msrgan's own logger
log = logging.getLogger("msrgan")

#: upscalers kept per process (one CellProfiler worker): model, device, tile, orientations, bins -> Upscaler
MAX_CACHED_UPSCALERS = 2
_UPSCALERS = OrderedDict()
#: model files already checked by validate_module: (path, mtime, size) -> error message or None
_CHECKED_MODELS = {}
#: models another environment's msrgan has read: (its executable's key, model, the model file's key) -> file name
_MODELS_ELSEWHERE = {}
_CACHE_LOCK = threading.Lock()


def _file_key(path):
    stat = os.stat(path)
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=None)
def library_problem():
    """None when msrgan's inference code and PyTorch import here; else the ImportError or OSError."""
    try:
        import msrgan_core.inference  # noqa: F401 (it brings PyTorch)
    except (ImportError, OSError) as exc:
        return exc
    return None


def check_model_file(path):
    """Load a model file once to prove it is usable; return None or the reason it is not.

    The answer is cached per file version, so validating the pipeline in the GUI after every
    edit does not reread the weights.
    """
    from msrgan_core.modelfile import ModelFileError, load_model

    key = _file_key(path)
    with _CACHE_LOCK:
        if key in _CHECKED_MODELS:
            return _CHECKED_MODELS[key]
    try:
        load_model(path)
        problem = None
    except ModelFileError as exc:
        problem = str(exc)
    with _CACHE_LOCK:
        _CHECKED_MODELS[key] = problem
    return problem


#: where Linux mounts the control groups, and where a process finds its own
CGROUP_ROOT, CGROUP_MEMBERSHIP = "/sys/fs/cgroup", "/proc/self/cgroup"


def cpu_quota():
    """The cores a CPU limit on this process's control group allows (a container's ``--cpus``), or None.

    Read as :func:`msrgan_core.device.cpu_quota` reads it (see there; the tests hold them to one
    answer), here because CellProfiler's own environment may have neither msrgan nor PyTorch.
    """
    try:
        with open(CGROUP_MEMBERSHIP) as memberships:
            lines = memberships.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: QUOTA PERIOD (or max PERIOD) in cpu.max
            mounts, files = [CGROUP_ROOT], ["cpu.max"]
        elif "cpu" in controllers.split(","):  # v1: the quota (-1: none) and the period in two files
            mounts = [os.path.join(CGROUP_ROOT, controllers), os.path.join(CGROUP_ROOT, "cpu")]
            files = ["cpu.cfs_quota_us", "cpu.cfs_period_us"]
        else:
            continue
        parts = [part for part in group.strip().split("/") if part]
        for mount in mounts:
            for folder in {os.path.join(mount, *parts[:n]) for n in range(len(parts) + 1)}:
                try:
                    words = []
                    for name in files:
                        with open(os.path.join(folder, name)) as file:
                            words += file.read().split()
                    quota, period = int(words[0]), int(words[1])
                except (OSError, ValueError, IndexError):
                    continue
                if quota > 0 and period > 0:
                    limits.append(-(-quota // period))
    return min(limits) if limits else None


def available_cores():
    """The CPU cores this process may use: its affinity (e.g. a cluster job's share), or its CPU quota if fewer.

    Counted as :func:`msrgan_core.device.available_cores` counts them, for the reason above.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = max(1, os.cpu_count() or 1)
    return min(cores, cpu_quota() or cores)


def worker_threads(setting):
    """CPU threads for this process: the setting, or (0) the cores shared out among analysis workers.

    CellProfiler starts each analysis worker with ``--work-announce``; a headless run has none
    and takes every core the process may use, or fewer where ``OMP_NUM_THREADS`` says (None:
    msrgan's own default); a worker takes its share of :func:`available_cores`, or fewer where
    ``OMP_NUM_THREADS`` says.
    """
    if setting > 0:
        return int(setting)
    if "--work-announce" not in sys.argv:
        return None
    share = max(1, available_cores() // analysis_workers())
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()  # fewer where the job's policy says so
    return min(share, int(asked)) if asked.isdigit() and int(asked) > 0 else share


def analysis_workers():
    """How many analysis workers this worker's CellProfiler started: the processes started with its
    ``--work-announce`` address. What the user's preference allows is not what runs (no more
    workers than image sets start), and a worker does not see the preference: CellProfiler hands
    its workers other preferences only, so theirs reads the machine's core count."""
    import psutil

    address = sys.argv[sys.argv.index("--work-announce") + 1:][:1]
    siblings = 0
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "--work-announce" in command and command[command.index("--work-announce") + 1:][:1] == address:
            siblings += 1
    return max(1, siblings)


def get_upscaler(path, device, tile, ensemble=None, match_bins=None, threads=None, precision="auto"):
    """The process's upscaler for this model file and these options, loading the model once.

    Parameters
    ----------
    path : str
        A model file (a packaged model's path included).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    tile : int
        Tile edge in input pixels, 0 for automatic.
    ensemble : int or None
        Orientations averaged (1, 2, 4 or 8); None: the model file's default.
    match_bins : bool or None
        Shift each output block to the mean of its input pixel; None: the model file's default.
    threads : int or None
        CPU threads; None: every core the process may use, or fewer where ``OMP_NUM_THREADS`` says.
    precision : str
        ``auto`` (bf16 where the device computes it) or ``fp32``.
    """
    from msrgan_core.inference import Upscaler
    from msrgan_core.modelfile import load_model

    key = _file_key(path) + (device, int(tile), ensemble, match_bins, threads, precision)
    with _CACHE_LOCK:
        if key in _UPSCALERS:
            _UPSCALERS.move_to_end(key)
            return _UPSCALERS[key]
        upscaler = Upscaler(load_model(path), device=device, tile=int(tile), ensemble=ensemble, match_bins=match_bins,
                            threads=threads, precision=precision)
        _UPSCALERS[key] = upscaler
        while len(_UPSCALERS) > MAX_CACHED_UPSCALERS:
            _UPSCALERS.popitem(last=False)
        return upscaler


def clip_to_input_range(upscaled, pixels):
    """Clip ``upscaled`` in place to CellProfiler's 0..1 range, or to ``pixels``' own range where it goes beyond.

    A network, like bicubic interpolation, can overshoot near bright edges. Integer pixels (an
    image a module stored unscaled, e.g. ConvertObjectsToImage as uint16) are on their own scale,
    and msrgan already kept them within their type.
    """
    if upscaled.dtype.kind != "f":
        return
    low = min(0.0, float(pixels.min()))
    high = max(1.0, float(pixels.max()))
    numpy.clip(upscaled, low, high, out=upscaled)


def upscale_pixels(upscaler, pixels, source, uncertainty=False):
    """Upscale CellProfiler pixel data: ``(Y, X)`` or ``(Y, X, C)`` floats, usually within 0..1.

    Returns pixels of the same dtype, ``scale`` times larger in Y and X, with the same channels,
    clipped by :func:`clip_to_input_range`. With ``uncertainty``, returns the upscaled pixels and
    the uncertainty image (same shape, on the same scale).
    """
    pixels = numpy.asarray(pixels)
    if pixels.ndim == 3:
        results = upscaler.upscale(numpy.moveaxis(pixels, -1, 0), source=source, uncertainty=uncertainty)
        results = [numpy.moveaxis(r, 0, -1) for r in (results if uncertainty else [results])]
    else:
        results = upscaler.upscale(pixels, source=source, uncertainty=uncertainty)
        results = list(results) if uncertainty else [results]
    clip_to_input_range(results[0], pixels)
    return tuple(results) if uncertainty else results[0]


# --- msrgan in another Python environment ------------------------------------------------------

class OtherEnvironmentError(Exception):
    """msrgan in the other Python environment could not start or failed; the message says which and why."""


def check_executable(path):
    """None when ``path`` is a file this process may run; else what is wrong with it, and what to do."""
    what = "the path of msrgan (or python) in the Python environment where msrgan is installed"
    if not path.strip():
        return "Enter {}: in that environment, 'which msrgan' (Windows: 'where msrgan') prints it".format(what)
    if not os.path.exists(path):
        return "{} does not exist: enter {}".format(path, what)
    if os.path.isdir(path):
        return "{} is a folder: enter the msrgan (or python) program itself, in the environment's bin folder " \
               "(Windows: Scripts)".format(path)
    if not os.access(path, os.X_OK):
        return "{} is not executable: enter {}".format(path, what)
    return None


def external_command(path):
    """The command that runs msrgan's command line in another environment, from its ``msrgan`` or its ``python``."""
    if os.path.basename(path).lower().startswith("python"):
        return [path, "-m", "msrgan_core.cli"]
    return [path]


def child_environment():
    """CellProfiler's environment variables, less those that would point another Python at CellProfiler's libraries.

    A frozen CellProfiler (PyInstaller) also sets the library path to its own bundle and keeps
    the user's in ``<NAME>_ORIG``: the other environment gets the user's back.
    """
    env = dict(os.environ)
    for name in ("PYTHONHOME", "PYTHONPATH"):
        env.pop(name, None)
    if getattr(sys, "frozen", False):
        for name in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
            original = env.pop(name + "_ORIG", None)
            if original is None:
                env.pop(name, None)
            else:
                env[name] = original
    return env


def run_elsewhere(command, arguments):
    """Run msrgan's command line ``command + arguments`` in the other environment; returns the finished process.

    Its log (stderr) is passed on to this process's ``msrgan`` logger, so that CellProfiler's
    log says where and how the network ran, as when it runs here. Raises OtherEnvironmentError,
    with the last line of that log, when it cannot start or fails.
    """
    what = "msrgan {} (with {})".format(arguments[0], command[0])
    try:
        proc = subprocess.run(
            command + list(arguments), stdin=subprocess.DEVNULL, capture_output=True, encoding="utf-8",
            errors="replace", env=child_environment(), creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
    except OSError as exc:
        raise OtherEnvironmentError("{} could not start ({})".format(what, exc.strerror or exc)) from None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    for line in lines:
        log.info("%s", line)
    if proc.returncode < 0:
        raise OtherEnvironmentError("{} was killed by signal {}".format(what, -proc.returncode))
    if proc.returncode != 0:
        raise OtherEnvironmentError("{} failed with exit status {}: {}".format(
            what, proc.returncode, lines[-1] if lines else "it printed no error message"))
    return proc


def model_record_name(path):
    """How the ``Upscale_Model`` measurement and the display name a model file: a packaged one
    (in msrgan's ``msrgan_core/weights``) by its file name, any other by its path, since a
    training run names its models as the packaged ones are named."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if os.path.basename(folder) == "weights" and os.path.basename(os.path.dirname(folder)) == "msrgan_core":
        return os.path.basename(path)
    return path


def model_file_elsewhere(command, model):
    """The file name of ``model`` (a packaged model's name or a model file) in the other environment.

    Runs ``msrgan info`` there once per executable and model file version: it proves that
    ``command`` runs msrgan and can read the model, and names the file as the module's
    ``Upscale_Model`` measurement does in CellProfiler's own environment.
    """
    key = (_file_key(command[0]), model, _file_key(model) if os.path.isfile(model) else None)
    with _CACHE_LOCK:
        if key in _MODELS_ELSEWHERE:
            return _MODELS_ELSEWHERE[key]
    proc = run_elsewhere(command, ["info", model])
    found = INFO_FILE_LINE.search(proc.stdout)
    if found is None:
        raise OtherEnvironmentError("'{}' did not say which model file it read: is {} msrgan, or the python of an "
                                    "environment with msrgan installed?".format(" ".join(command + ["info", model]),
                                                                                command[0]))
    name = model_record_name(found.group(1).strip())
    with _CACHE_LOCK:
        _MODELS_ELSEWHERE[key] = name
    return name


def upscale_elsewhere(command, pixels, name, model, device, tile, ensemble=None, match_bins=None, threads=None,
                      precision="auto", uncertainty=False):
    """Upscale CellProfiler pixel data with ``msrgan upscale`` in another Python environment.

    The pixels go to a temporary TIFF as they are (the numbers :func:`upscale_pixels` gives the
    library), channels first; the outputs are read back and clipped alike, so the result is
    :func:`upscale_pixels`' within the rounding of a different thread count. The temporary files
    are removed whatever happens.

    Parameters
    ----------
    command : list of str
        :func:`external_command`.
    pixels : numpy.ndarray
        ``(Y, X)`` or ``(Y, X, C)``.
    name : str
        The image's name in CellProfiler (the temporary file's, which msrgan's messages quote).
    model : str
        A packaged model's name or a model file's path.
    device, tile, ensemble, match_bins, threads, precision
        As :func:`get_upscaler`'s; None leaves the option to the model file or to msrgan.
    uncertainty : bool
        Also return the uncertainty image.

    Returns
    -------
    results : list of numpy.ndarray
        The upscaled pixels, then (with ``uncertainty``) the uncertainty image, each ``(Y * s, X * s)``
        or ``(Y * s, X * s, C)``.
    device : str
        Where the network ran, as the other environment's log says (``cpu (4 threads)``).
    """
    pixels = numpy.asarray(pixels)
    arguments = ["--model", model, "--device", device, "--tile", str(int(tile)), "--stop-on-error", "-q"]
    if ensemble is not None:
        arguments += ["--ensemble", str(ensemble)]
    if match_bins is not None:
        arguments += ["--match-bins" if match_bins else "--no-match-bins"]
    if threads is not None:
        arguments += ["--threads", str(threads)]
    if precision != "auto":
        arguments += ["--precision", precision]
    if uncertainty:
        arguments += ["--uncertainty"]
    with tempfile.TemporaryDirectory(prefix="upscalemsrgan-") as folder:
        source = os.path.join(folder, name + ".tif")
        if pixels.ndim == 3:
            tifffile.imwrite(source, numpy.ascontiguousarray(numpy.moveaxis(pixels, -1, 0)), photometric="minisblack",
                             metadata={"axes": "CYX"})
        else:
            tifffile.imwrite(source, pixels, photometric="minisblack", metadata={"axes": "YX"})
        out = os.path.join(folder, "upscaled")
        proc = run_elsewhere(command, ["upscale", source, "-o", out] + arguments)
        suffixes = [".tif", ".uncertainty.tif"] if uncertainty else [".tif"]
        try:
            results = [tifffile.imread(os.path.join(out, name + suffix)) for suffix in suffixes]
        except (OSError, ValueError) as exc:
            raise OtherEnvironmentError("msrgan upscale (with {}) exited without error but its output cannot be read "
                                        "({}): install in that environment the msrgan this plugin came with".format(
                                            command[0], exc)) from None
    if pixels.ndim == 3:  # one channel comes back as a plane
        results = [numpy.moveaxis(r if r.ndim == 3 else r[numpy.newaxis], 0, -1) for r in results]
    clip_to_input_range(results[0], pixels)
    ran = UPSCALE_DEVICE_LINE.search(proc.stderr)
    return results, ran.group(1) if ran else "another Python environment"


class ExecutablePath(Pathname):
    """A path setting (with CellProfiler's browse button) that must name a program this process may run."""

    def test_valid(self, pipeline):
        problem = check_executable(self.value)
        if problem is not None:
            raise ValidationError(problem, self)


#: how many values each revision of the module's settings saves (a pipeline that says otherwise
#: would load shifted, each value into the next setting)
SETTINGS_PER_REVISION = {1: 7, 2: 9, 3: 9, 4: 12, 5: 14, 6: 15}


def upscaled_masks(image, factor):
    """The mask and cropping of a CellProfiler image, each pixel ``factor`` x ``factor`` pixels (as
    Resize upscales them, nearest neighbour), as keyword arguments of the upscaled ``Image``; a
    cropping not of the image's own size (kept in its parent's frame) is left out."""
    def upscaled(mask):
        return numpy.repeat(numpy.repeat(numpy.asarray(mask, bool), factor, axis=0), factor, axis=1)

    masks = {}
    if image.has_mask:
        masks["mask"] = upscaled(image.mask)
    if image.has_crop_mask and image.crop_mask.shape == image.pixel_data.shape[:2]:
        masks["crop_mask"] = upscaled(image.crop_mask)
    return masks


class UpscaleMSRGAN(ImageProcessing):
    module_name = "UpscaleMSRGAN"

    variable_revision_number = 6

    def create_settings(self):
        super(UpscaleMSRGAN, self).create_settings()

        self.x_name.doc = """\
Select the image to upscale, for example the DNA channel loaded by **NamesAndTypes**. A 2-D
grayscale or color image; 3-D images are not supported."""

        self.y_name.value = "UpscaledMSRGAN"
        self.y_name.doc = """\
Enter the name of the upscaled image. Downstream modules (**IdentifyPrimaryObjects**,
**SaveImages**...) select it by this name. It is 4 times (the model's scale factor) larger in X
and Y than the input."""

        self.model_choice = Choice(
            "Model",
            MODEL_ALL,
            value=MODEL_FIDELITY,
            doc="""\
Choose the network that upscales the image:

-  *{MODEL_FIDELITY}:* reproduces the true intensities as closely as possible. Use it when you
   segment or measure the upscaled image.
-  *{MODEL_PERCEPTUAL}:* trained with an adversarial and a perceptual loss (SRGAN); sharper
   looking, but part of the fine texture is made up by the network. Use it for display, not for
   measurements.
-  *{MODEL_FIDELITY_CLEAN}:* the previous, larger network (about 10 times slower), trained on
   noise-free binning. Best only where the low-magnification image is itself nearly noise-free
   (long exposures, camera binning); on noisy or blurred images it draws noise as texture.
-  *{MODEL_CUSTOM}:* an msrgan model file (``.safetensors``) that you trained or were given,
   for example one fitted to your own microscope.""".format(
                **{
                    "MODEL_FIDELITY": MODEL_FIDELITY,
                    "MODEL_PERCEPTUAL": MODEL_PERCEPTUAL,
                    "MODEL_FIDELITY_CLEAN": MODEL_FIDELITY_CLEAN,
                    "MODEL_CUSTOM": MODEL_CUSTOM,
                }
            ),
        )

        self.custom_model_directory = Directory(
            "Location of the model file",
            allow_metadata=False,
            doc="""\
*(Used only with "{MODEL_CUSTOM}")*

Select the folder that holds the model file: an absolute path (*Elsewhere...*), or a folder
relative to the Default Input or Output Folder, which keeps the pipeline portable to a cluster
where the folders are given on the command line.""".format(
                **{"MODEL_CUSTOM": MODEL_CUSTOM}
            ),
        )

        def get_directory_fn():
            return self.custom_model_directory.get_absolute_path()

        def set_directory_fn(path):
            dir_choice, custom_path = self.custom_model_directory.get_parts_from_path(path)
            self.custom_model_directory.join_parts(dir_choice, custom_path)

        self.custom_model_file = Filename(
            "Model file name",
            "model.safetensors",
            get_directory_fn=get_directory_fn,
            set_directory_fn=set_directory_fn,
            browse_msg="Choose an msrgan model file",
            exts=[("msrgan model (*.safetensors)", "*.safetensors"), ("All files (*.*)", "*.*")],
            doc="""\
*(Used only with "{MODEL_CUSTOM}")*

The msrgan model file (``.safetensors``) in the folder above. Use the browse button to pick
it.""".format(
                **{"MODEL_CUSTOM": MODEL_CUSTOM}
            ),
        )

        self.device = Choice(
            "Device",
            DEVICE_ALL,
            value=DEVICE_AUTOMATIC,
            doc="""\
Choose where the network runs:

-  *{DEVICE_AUTOMATIC}:* the GPU when PyTorch finds a CUDA GPU, otherwise the CPU.
-  *{DEVICE_CPU}:* always the CPU (slower, but leaves the GPU to other programs).
-  *{DEVICE_GPU}:* the CUDA GPU. When none is usable, the module warns and runs on the CPU.""".format(
                **{
                    "DEVICE_AUTOMATIC": DEVICE_AUTOMATIC,
                    "DEVICE_CPU": DEVICE_CPU,
                    "DEVICE_GPU": DEVICE_GPU,
                }
            ),
        )

        self.tile_size = Integer(
            "Tile size (0 = automatic)",
            0,
            minval=0,
            doc="""\
Large images are processed in parts, so that memory use stays bounded and no seams show. Leave 0
to size them to the device's memory (on the CPU, full-width strips that recompute nothing). A
size above 0 processes square tiles of this many input pixels, each with the context the network
needs around it: enter a smaller size (for example 256) if the GPU runs out of memory. The result
does not depend on the tile size.""",
        )

        self.precision = Choice(
            "Precision",
            PRECISION_ALL,
            value=PRECISION_AUTOMATIC,
            doc="""\
-  *{PRECISION_AUTOMATIC}:* the network runs in bf16 where the device computes it itself (CUDA
   GPUs, and CPUs with AVX-512 BF16 or AMX: about twice as fast), in fp32 elsewhere. bf16's
   output differs from fp32's by a fraction of a percent of the range at some pixels (PSNR within
   0.003 dB), so the same image gives slightly different numbers on such a machine and another.
-  *{PRECISION_FP32}:* fp32 everywhere: the same numbers on every machine, for a plate analysed
   on a cluster whose nodes differ.""".format(
                **{"PRECISION_AUTOMATIC": PRECISION_AUTOMATIC, "PRECISION_FP32": PRECISION_FP32}
            ),
        )

        self.orientations = Choice(
            "Orientations averaged",
            ORIENTATIONS_ALL,
            value=MODEL_DEFAULT,
            doc="""\
Upscale the image in this many orientations (2: also mirrored; 4: also turned upside down; 8:
every quarter turn, mirrored or not) and average the results. More orientations are slightly
more accurate (a few hundredths of a dB of PSNR with the default models) and take that many
times longer. *{MODEL_DEFAULT}* (the default) runs as the model file says (``msrgan info``
shows it; files that do not say run once).""".format(**{"MODEL_DEFAULT": MODEL_DEFAULT}),
        )

        self.match_bins = Choice(
            "Make the output bin back to the input?",
            MATCH_BINS_ALL,
            value=MODEL_DEFAULT,
            doc="""\
*Yes* shifts each 4 x 4 block of the output (the model's scale factor) so that its mean equals
the input pixel it came from: binning the output 4 x 4 then gives the input back, and every
object's integrated intensity matches the input's (times 16). This makes the output more
accurate when the input is as clean as a binned high-magnification image, and slightly less
when the input is noisier than that, since the noise the model removed comes back at the
input's scale. *No* keeps the network's output as it is. *{MODEL_DEFAULT}* (the default) does
as the model file says (``msrgan info`` shows it; files that do not say keep the output as it
is).""".format(**{"MODEL_DEFAULT": MODEL_DEFAULT}),
        )

        self.wants_uncertainty = Binary(
            "Also make an uncertainty image?",
            False,
            doc="""\
Select *Yes* to make a second image beside the upscaled one: per pixel, an estimate of the
upscaled image's error, on the same intensity scale (the spread of the network's output when
the input is mirrored or turned; it costs one more pass when the model runs once). Measure it
with **MeasureObjectIntensity** on your nuclei and, for example, filter out with
**FilterObjects** the nuclei whose mean uncertainty is high: their features are the least to be
trusted. See the shipped pipeline ``flag_uncertain_nuclei.cppipe``. Much of it follows edges and
textured nuclei, where errors are largest; beyond that it marks where the network answers
differently for the mirrored image (msrgan's README: "Where not to trust it"). It is on the
error's scale only with the orientations and bin matching its model file was calibrated for (the
packaged models as they run by default; ``msrgan calibrate`` for others): otherwise the module
warns.""",
        )

        self.environment = Choice(
            "Run msrgan in",
            ENVIRONMENT_ALL,
            value=ENVIRONMENT_HERE,
            doc="""\
Choose the Python environment that runs the network:

-  *{ENVIRONMENT_HERE}:* the one running CellProfiler, into which msrgan and PyTorch were
   installed (the default, and the fastest).
-  *{ENVIRONMENT_OTHER}:* a separate Python environment (virtual environment or conda
   environment, Python 3.9 or later) on the same computer, in which ``pip install msrgan`` was
   run. Use it with CellProfiler's official app bundles, or wherever PyTorch cannot be installed
   beside CellProfiler. CellProfiler then needs neither msrgan nor PyTorch: for each image set,
   the module writes the image to a temporary file, runs that environment's ``msrgan upscale``
   on it with the settings above and reads the result back (the same numbers, at the cost of
   starting msrgan and loading the model for every image set).""".format(
                **{"ENVIRONMENT_HERE": ENVIRONMENT_HERE, "ENVIRONMENT_OTHER": ENVIRONMENT_OTHER}
            ),
        )

        self.msrgan_path = ExecutablePath(
            "Path to msrgan (or python) in that environment",
            "",
            doc="""\
*(Used only with "{ENVIRONMENT_OTHER}")*

The ``msrgan`` program of the environment where msrgan is installed: in that environment,
``which msrgan`` (Windows: ``where msrgan``) prints its path, for example
``/home/me/msrgan-env/bin/msrgan`` or ``C:\\Users\\me\\msrgan-env\\Scripts\\msrgan.exe``. The
environment's ``python`` works too (it runs ``python -m msrgan_core.cli``). The environment
need not be activated.""".format(
                **{"ENVIRONMENT_OTHER": ENVIRONMENT_OTHER}
            ),
        )

        self.uncertainty_name = ImageName(
            "Name the uncertainty image",
            "UpscaleUncertainty",
            doc="""\
*(Used only when making an uncertainty image)*

The name of the uncertainty image, as downstream modules select it. It has the upscaled
image's size.""",
        )

        self.threads = Integer(
            "CPU threads (0 = automatic)",
            0,
            minval=0,
            doc="""How many CPU threads the network may use on the CPU. With 0 (the default), a headless run uses
every core the process may run on (fewer where OMP_NUM_THREADS asks for fewer), and in CellProfiler's analysis workers the cores are shared
out among the workers CellProfiler started (at most *File > Preferences > Maximum number of
workers*, and no more than the image sets), so that several
workers do not fight over the same cores. The threads used are written to the log.""",
        )

    def own_settings(self):
        """This module's settings after the input and output image names, in saved order."""
        return [
            self.model_choice,
            self.custom_model_directory,
            self.custom_model_file,
            self.device,
            self.tile_size,
            self.orientations,
            self.match_bins,
            self.threads,
            self.wants_uncertainty,
            self.uncertainty_name,
            self.environment,
            self.msrgan_path,
            self.precision,
        ]

    def settings(self):
        return super(UpscaleMSRGAN, self).settings() + self.own_settings()

    def visible_settings(self):
        result = super(UpscaleMSRGAN, self).visible_settings() + [self.model_choice]
        if self.model_choice.value == MODEL_CUSTOM:
            result += [self.custom_model_directory, self.custom_model_file]
        result += [self.device]
        if self.device.value != DEVICE_GPU:
            result += [self.threads]
        result += [self.precision]
        result += [self.tile_size, self.orientations, self.match_bins, self.wants_uncertainty]
        result += [self.uncertainty_name] if self.wants_uncertainty.value else []
        return result + [self.environment] + ([self.msrgan_path] if self.runs_elsewhere() else [])

    def help_settings(self):
        return super(UpscaleMSRGAN, self).help_settings() + self.own_settings()

    def volumetric(self):
        return False

    def get_measurement_columns(self, pipeline):
        return [
            (IMAGE, "Upscale_ScaleFactor_{}".format(self.y_name.value), COLTYPE_INTEGER),
            (IMAGE, "Upscale_Model_{}".format(self.y_name.value), COLTYPE_VARCHAR_PATH_NAME),
        ]

    def get_categories(self, pipeline, object_name):
        return ["Upscale"] if object_name == IMAGE else []

    def get_measurements(self, pipeline, object_name, category):
        return ["ScaleFactor", "Model"] if object_name == IMAGE and category == "Upscale" else []

    def get_measurement_images(self, pipeline, object_name, category, measurement):
        if object_name == IMAGE and category == "Upscale" and measurement in ("ScaleFactor", "Model"):
            return [self.y_name.value]
        return []

    # --- the model ----------------------------------------------------------------------

    def runs_elsewhere(self):
        return self.environment.value == ENVIRONMENT_OTHER

    def custom_model_path(self):
        """Path of the custom model file; raises ValidationError when there is none."""
        directory = self.custom_model_directory.get_absolute_path()
        path = os.path.join(directory, self.custom_model_file.value)
        if not self.custom_model_file.value.strip():
            raise ValidationError("Choose a model file (.safetensors)", self.custom_model_file)
        if not os.path.isfile(path):
            raise ValidationError(
                "The model file {} does not exist: choose an msrgan .safetensors model file".format(path),
                self.custom_model_file,
            )
        return path

    def model_path(self):
        """Path of the chosen model file in this environment; raises ValidationError when there is none."""
        problem = library_problem()
        if problem is not None:
            raise ValidationError("{} ({}: {})".format(INSTALL_HINT, type(problem).__name__, problem),
                                  self.model_choice)
        from msrgan_core.modelfile import ModelFileError, resolve_model

        if self.model_choice.value in PACKAGED_MODEL:
            try:
                return str(resolve_model(PACKAGED_MODEL[self.model_choice.value]))
            except ModelFileError as exc:
                raise ValidationError(str(exc), self.model_choice)
        return self.custom_model_path()

    def model_elsewhere(self):
        """The command that runs msrgan in the other environment, the model it is given (a packaged
        model's name or the custom file's path), and that model's file name there.

        Raises ValidationError (on the setting to mend) when the path, the model file or that
        environment's msrgan cannot be used.
        """
        self.msrgan_path.test_valid(None)
        model = PACKAGED_MODEL.get(self.model_choice.value) or self.custom_model_path()
        command = external_command(self.msrgan_path.value)
        try:
            return command, model, model_file_elsewhere(command, model)
        except OtherEnvironmentError as exc:
            custom = self.model_choice.value == MODEL_CUSTOM and model in str(exc)
            raise ValidationError(str(exc), self.custom_model_file if custom else self.msrgan_path)

    def validate_module(self, pipeline):
        self.validate_names()
        if self.runs_elsewhere():
            self.model_elsewhere()
            return
        path = self.model_path()
        problem = check_model_file(path)
        if problem is not None:
            setting = self.custom_model_file if self.model_choice.value == MODEL_CUSTOM else self.model_choice
            raise ValidationError("The model file cannot be used: {}".format(problem), setting)

    def validate_names(self):
        """Each image this module makes has a name of its own: the one added last would replace the other."""
        if self.y_name.value == self.x_name.value:
            raise ValidationError("The upscaled image needs a name other than its input's", self.y_name)
        if self.wants_uncertainty.value and self.uncertainty_name.value in (self.x_name.value, self.y_name.value):
            raise ValidationError("The uncertainty image needs a name other than the input's and the upscaled "
                                  "image's", self.uncertainty_name)

    def validate_module_warnings(self, pipeline):
        if self.runs_elsewhere() or library_problem() is not None:
            return  # the other environment's msrgan warns in the log
        problem = self.uncertainty_problem() if self.wants_uncertainty.value else ""
        if problem:  # the log's warning is seen by nobody in a headless or quiet run
            raise ValidationError("The uncertainty image will not be on the error's scale: " + problem,
                                  self.wants_uncertainty)
        if self.device.value != DEVICE_GPU:
            return
        from msrgan_core.device import resolve_device

        if resolve_device("auto").type != "cuda":
            raise ValidationError(
                "No CUDA GPU is usable by PyTorch in this environment: the module will run on the CPU "
                "(install a CUDA build of PyTorch to use the GPU)",
                self.device,
            )

    def uncertainty_problem(self):
        """Why the uncertainty image of the chosen model, run with these settings, is not on the
        output's error scale (the file's calibration holds for its own orientations and bins), or ''."""
        from msrgan_core.modelcard import ModelFileError, read_card

        try:
            card = read_card(self.model_path(), check_weights=False)
        except (ModelFileError, ValidationError):
            return ""  # validate_module says what is wrong with the file
        options = self.inference_options()
        chosen = card.inference.overridden(options["ensemble"], options["match_bins"])
        return card.uncertainty_problem(chosen.ensemble, chosen.match_bins)

    def prepare_to_create_batch(self, workspace, fn_alter_path):
        """CreateBatchFiles: the model folder and msrgan's path as the cluster's nodes see them."""
        self.custom_model_directory.alter_for_create_batch_files(fn_alter_path)
        if self.msrgan_path.value:
            self.msrgan_path.value = fn_alter_path(self.msrgan_path.value)
        return True

    def prepare_run(self, workspace):
        # Headless runs do not validate modules: fail before the first image set, not on it.
        self.validate_module(workspace.pipeline)
        return True

    # --- running ------------------------------------------------------------------------

    def run(self, workspace):
        x_name = self.x_name.value
        y_name = self.y_name.value
        images = workspace.image_set
        x = images.get_image(x_name)
        if x.volumetric:
            raise ValueError(
                "UpscaleMSRGAN upscales 2-D images, but '{}' is a 3-D image {}: process the planes "
                "as 2-D images instead".format(x_name, x.pixel_data.shape)
            )
        bad = x.pixel_data.size - numpy.count_nonzero(numpy.isfinite(x.pixel_data))
        if bad:  # said here, in the module's terms: msrgan's own advice (mask them) does not hold in a pipeline
            raise ValueError("UpscaleMSRGAN cannot upscale '{}': {} pixel(s) are NaN or infinite, masked or not (the "
                             "network reads every pixel); replace them upstream, e.g. ImageMath's 'Replace invalid "
                             "values with 0?'".format(x_name, bad))
        upscale = self.upscale_in_other_environment if self.runs_elsewhere() else self.upscale_here
        results, model_name, device = upscale(x, self.inference_options())
        y_data = results[0]

        factor = y_data.shape[0] // x.pixel_data.shape[0]
        masks = upscaled_masks(x, factor)
        if self.wants_uncertainty.value:
            images.add(self.uncertainty_name.value, Image(results[1], convert=False, dimensions=x.dimensions, **masks))
        workspace.measurements.add_image_measurement("Upscale_ScaleFactor_{}".format(y_name), factor)
        workspace.measurements.add_image_measurement("Upscale_Model_{}".format(y_name), model_name)
        # No parent image, whose mask and cropping have the input's size: the output's own, upscaled.
        y = Image(
            y_data,
            convert=False,
            dimensions=x.dimensions,
            scale=x.scale,
            path_name=x.path_name,
            file_name=x.file_name,
            **masks
        )
        images.add(y_name, y)

        if self.show_window:
            workspace.display_data.x_data = x.pixel_data
            workspace.display_data.y_data = y_data
            workspace.display_data.dimensions = x.dimensions
            workspace.display_data.multichannel = x.multichannel
            workspace.display_data.model_name = model_name
            workspace.display_data.device = device

    def inference_options(self):
        """The settings for how each image runs, as :func:`get_upscaler` and :func:`upscale_elsewhere` take them."""
        return {
            "device": TORCH_DEVICE[self.device.value],
            "tile": self.tile_size.value,
            "ensemble": None if self.orientations.value == MODEL_DEFAULT else int(self.orientations.value),
            "match_bins": None if self.match_bins.value == MODEL_DEFAULT else self.match_bins.value == "Yes",
            "threads": worker_threads(self.threads.value),
            "precision": TORCH_PRECISION[self.precision.value],
        }

    def upscale_here(self, x, options):
        """Upscale the image ``x`` here: the results (upscaled, uncertainty), the model's file name, the device."""
        try:
            path = self.model_path()  # says what to install when msrgan or PyTorch is missing here
        except ValidationError as exc:
            raise ValueError("UpscaleMSRGAN: {}".format(exc.message)) from None
        from msrgan_core.device import describe_device
        from msrgan_core.errors import UserError

        try:
            upscaler = get_upscaler(path, **options)
            results = upscale_pixels(upscaler, x.pixel_data, source="image '{}'".format(self.x_name.value),
                                     uncertainty=self.wants_uncertainty.value)
        except UserError as exc:
            raise ValueError("UpscaleMSRGAN cannot upscale '{}' with the model {}: {}".format(
                self.x_name.value, model_record_name(path), exc)) from exc
        results = list(results) if self.wants_uncertainty.value else [results]
        return results, model_record_name(path), describe_device(upscaler.device)

    def upscale_in_other_environment(self, x, options):
        """Upscale the image ``x`` with msrgan in the other environment; returns as :meth:`upscale_here`."""
        try:
            command, model, model_name = self.model_elsewhere()
        except ValidationError as exc:
            raise ValueError("UpscaleMSRGAN: {}".format(exc.message)) from None
        try:
            results, device = upscale_elsewhere(command, x.pixel_data, self.x_name.value, model,
                                                uncertainty=self.wants_uncertainty.value, **options)
        except OtherEnvironmentError as exc:
            raise ValueError("UpscaleMSRGAN cannot upscale '{}' with the model {} in another Python environment: "
                             "{}".format(self.x_name.value, model_name, exc)) from None
        return results, model_name, device

    def display(self, workspace, figure):
        data = workspace.display_data
        figure.set_subplots((2, 1), dimensions=data.dimensions)
        x_title = "{} ({} x {})".format(self.x_name.value, data.x_data.shape[1], data.x_data.shape[0])
        y_title = "{} ({} x {}, {} on {})".format(
            self.y_name.value, data.y_data.shape[1], data.y_data.shape[0], data.model_name, data.device
        )
        if data.multichannel:
            figure.subplot_imshow_color(0, 0, data.x_data, title=x_title, normalize=None)
            figure.subplot_imshow_color(1, 0, data.y_data, title=y_title, normalize=None)
        else:
            figure.subplot_imshow_grayscale(0, 0, data.x_data, title=x_title)
            figure.subplot_imshow_grayscale(1, 0, data.y_data, title=y_title)

    def upgrade_settings(self, setting_values, variable_revision_number, module_name):
        if variable_revision_number > self.variable_revision_number:
            raise ValueError(
                "This pipeline's UpscaleMSRGAN settings are revision {}, newer than this plugin's "
                "revision {}: update msrgan (pip install -U msrgan) and the plugin file".format(
                    variable_revision_number, self.variable_revision_number
                )
            )
        count = SETTINGS_PER_REVISION.get(variable_revision_number)
        if count != len(setting_values):
            raise ValueError(
                "This pipeline's UpscaleMSRGAN settings are revision {} with {} values where that revision has "
                "{}: it was saved by a development version of the plugin or edited; add the module again".format(
                    variable_revision_number, len(setting_values), count
                )
            )
        # Revision 1 (msrgan 0.1): input, output, model, model folder, model file, device, tile.
        # Revision 2 adds the orientations averaged and whether the output bins back to the input
        # (1 and No: what revision 1 did). Revision 3 adds "Model's default" to both; older
        # pipelines keep the values they were saved with, so they run as they did. Each later
        # revision converts the one before it here.
        if variable_revision_number == 1:
            setting_values = setting_values + ["1", "No"]
            variable_revision_number = 2
        if variable_revision_number == 2:  # revision 3 adds only a choice to two settings
            variable_revision_number = 3
        if variable_revision_number == 3:  # revision 4 adds the CPU threads (0, automatic) and no uncertainty image
            setting_values = setting_values + ["0", "No", "UpscaleUncertainty"]
            variable_revision_number = 4
        if variable_revision_number == 4:  # revision 5 adds where msrgan runs: here, as before
            setting_values = setting_values + [ENVIRONMENT_HERE, ""]
            variable_revision_number = 5
        if variable_revision_number == 5:  # revision 6 adds the precision: automatic, as before
            setting_values = setting_values + [PRECISION_AUTOMATIC]
            variable_revision_number = 6
        return setting_values, variable_revision_number
