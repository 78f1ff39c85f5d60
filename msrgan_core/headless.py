"""Run CellProfiler pipelines headless with the UpscaleMSRGAN plugin, and fail when they fail.

``cellprofiler -c -r`` exits 0 when a plugin cannot be imported: it logs the traceback,
drops the modules it could not build and runs what is left of the pipeline, writing nothing.
:func:`run_pipeline` runs CellProfiler as a subprocess (msrgan never imports CellProfiler),
reads its log and its done file and looks at what it wrote, and raises
:class:`HeadlessRunError` naming the cause instead. The same module also installs the plugin
into a CellProfiler plugins folder (``msrgan cellprofiler`` in ``cli.py``).
"""
from __future__ import annotations

import importlib.util
import locale
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import UserError

#: the plugin's file; CellProfiler loads ``<plugins dir>/*.py`` whose class matches the file name
PLUGIN_FILE = "upscalemsrgan.py"
#: pipelines shipped in the source tree's ``pipelines/`` folder, selectable by name
SHIPPED_PIPELINES = ("upscale_segment_measure", "compare_with_bicubic", "flag_uncertain_nuclei", "measure_nuclei")
#: lines of CellProfiler's log quoted in an error
LOG_TAIL_LINES = 40

# What CellProfiler 4.2 logs when things go wrong (cellprofiler_core.utilities.core.modules,
# cellprofiler_core.pipeline).
_COULD_NOT_LOAD = re.compile(r"^(?:Could not load|Failed to load) (\S+)\s*$")
_COULD_NOT_LOAD_LIST = re.compile(r"could not load these modules: (.+)$")
_FAILED_PIPELINE = "Failed to load pipeline"
_RUN_ERROR = re.compile(r"(Error detected during run of module \S+|Failed to prepare run for module \S+)")
_NO_IMAGES = "Empty image set list"
_NEWER_PIPELINE = re.compile(r"Your pipeline version is (\S+) but you are running CellProfiler version (\S+)")
_SAYS_ERROR = re.compile(r"\b(error|fatal)\b", re.IGNORECASE)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit)\b.*:")
_IMAGE_SET = re.compile(r"Image # (\d+), module ")
_MODULE_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9_]*):\[module_num:\d+")


class HeadlessRunError(UserError, RuntimeError):
    """A headless CellProfiler run failed; the message says why and quotes the log's end.

    Attributes
    ----------
    log : str
        CellProfiler's whole output (stdout and stderr).
    """

    def __init__(self, message: str, log: str = "") -> None:
        if log:
            tail = "\n".join(log.rstrip().splitlines()[-LOG_TAIL_LINES:])
            message = f"{message}\n--- last lines of the CellProfiler log ---\n{tail}"
        super().__init__(message)
        self.log = log


@dataclass
class RunResult:
    """What a successful headless run did.

    Attributes
    ----------
    command : list of str
        The command line that ran.
    log : str
        CellProfiler's output.
    outputs : list of Path
        Files created or changed under the output folder, sorted.
    image_sets : int
        Image sets that ran.
    seconds : float
        Wall-clock time.
    replaced : list of Path
        Those of ``outputs`` that were there before the run (another run's spreadsheets, say).
    newer : str
        What the log says of a pipeline saved by a newer CellProfiler (:func:`newer_pipeline`), or ''.
    """

    command: List[str]
    log: str
    outputs: List[Path] = field(default_factory=list)
    image_sets: int = 0
    seconds: float = 0.0
    replaced: List[Path] = field(default_factory=list)
    newer: str = ""


# --- where things are -----------------------------------------------------------------------

def plugin_dir() -> Path:
    """The packaged plugin folder: point CellProfiler's plugins directory here."""
    spec = importlib.util.find_spec("cellprofiler_plugin")
    if spec is None or not spec.submodule_search_locations:
        raise HeadlessRunError("the cellprofiler_plugin package is not installed: reinstall msrgan")
    return Path(list(spec.submodule_search_locations)[0])


def pipelines_dir() -> Path:
    """The shipped pipelines' folder (``pipelines/`` in the source tree, ``msrgan_core/pipelines`` in a wheel)."""
    from . import pipelines

    return Path(pipelines.__file__).resolve().parent


def resolve_pipeline(name_or_path: "str | Path") -> Path:
    """A pipeline file, or the name of a shipped one (``compare_with_bicubic``...)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name in SHIPPED_PIPELINES:
        shipped = pipelines_dir() / f"{name}.cppipe"
        if shipped.is_file():
            return shipped
        raise HeadlessRunError(f"the shipped pipeline {name!r} is missing from {shipped.parent}: reinstall msrgan")
    if path.stem in SHIPPED_PIPELINES:  # a file is never replaced by the shipped one silently: say how to ask for it
        raise HeadlessRunError(f"pipeline {name_or_path} does not exist; the shipped pipeline of that name runs as "
                               f"`msrgan cellprofiler run {path.stem}`")
    raise HeadlessRunError(
        f"pipeline {name_or_path} does not exist (shipped pipelines: {', '.join(SHIPPED_PIPELINES)})"
    )


def image_files_under(folder: Path) -> int:
    """The TIFF and PNG files CellProfiler finds under ``folder`` that the shipped pipelines' Images
    rule could take: not hidden, not in a folder named mask or masks (the rule's other clauses leave
    out files named like the other channels of multi-channel sets; see ``pipelines/*.cppipe``)."""
    count = 0
    for root, folders, files in os.walk(folder):
        if Path(root).name.lower() in ("mask", "masks"):
            continue
        count += sum(not name.startswith(".") and Path(name).suffix.lower() in (".tif", ".tiff", ".png") for name in files)
    return count


def find_cellprofiler(executable: Optional[str] = None) -> List[str]:
    """The command that starts CellProfiler.

    In order: ``executable``, the ``MSRGAN_CELLPROFILER`` environment variable, a
    ``cellprofiler`` script beside this Python, ``cellprofiler`` on the PATH, and
    ``python -m cellprofiler`` when this Python has CellProfiler installed.
    """
    explicit = executable or os.environ.get("MSRGAN_CELLPROFILER")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise HeadlessRunError(f"CellProfiler executable {explicit!r} was not found or is not executable")
        return [found]
    beside = Path(sys.executable).parent / ("cellprofiler.exe" if os.name == "nt" else "cellprofiler")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    on_path = shutil.which("cellprofiler")
    if on_path:
        return [on_path]
    if importlib.util.find_spec("cellprofiler") is not None:
        return [sys.executable, "-m", "cellprofiler"]
    raise HeadlessRunError(
        "CellProfiler was not found: install CellProfiler 4.2.x in this Python environment, put its "
        "`cellprofiler` command on the PATH, or name it with --cellprofiler / MSRGAN_CELLPROFILER"
    )


#: how the files CellProfiler runs begin: a .cppipe text pipeline, a .cpproj project (HDF5)
PIPELINE_HEADERS = (b"CellProfiler Pipeline", b"\x89HDF")


def pipeline_modules(pipeline: Path) -> List[str]:
    """Names of the modules in a ``.cppipe`` text pipeline (empty for a project file); a file of
    neither kind is a :class:`HeadlessRunError`."""
    try:
        data = Path(pipeline).read_bytes()
    except OSError as exc:
        raise HeadlessRunError(f"pipeline {pipeline} cannot be read: {exc}") from None
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(PIPELINE_HEADERS):  # after a byte-order mark, blank lines
        raise HeadlessRunError(f"{pipeline} is not a CellProfiler pipeline (a .cppipe file begins 'CellProfiler "
                               "Pipeline'; a .cpproj project is also taken): export it with File > Export > Pipeline")
    text = data.decode("utf-8", errors="replace")
    return [m.group(1) for m in map(_MODULE_HEADER.match, text.splitlines()) if m]


# --- running --------------------------------------------------------------------------------

def _snapshot(folder: Path) -> Dict[Path, Tuple[int, int]]:
    if not folder.is_dir():
        return {}
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def run_pipeline(
    pipeline: "str | Path",
    input_dir: "str | Path",
    output_dir: "str | Path",
    plugins_dir: "str | Path | None" = None,
    first: Optional[int] = None,
    last: Optional[int] = None,
    cellprofiler: Optional[str] = None,
    timeout: Optional[float] = None,
    echo: Optional[Callable[[str], None]] = None,
) -> RunResult:
    """Run ``cellprofiler -c -r`` on a pipeline and check that it really ran.

    Parameters
    ----------
    pipeline : str or Path
        A ``.cppipe`` file, or the name of a shipped pipeline.
    input_dir : str or Path
        The default input folder (``-i``); CellProfiler takes every file under it, and the
        pipeline's Images and NamesAndTypes rules pick the images.
    output_dir : str or Path
        The default output folder (``-o``), created when missing.
    plugins_dir : str or Path, optional
        CellProfiler plugins folder; by default the packaged one holding UpscaleMSRGAN.
    first, last : int, optional
        First and last image set to run (1-based, inclusive; ``-f``/``-l``), to split a plate
        across jobs.
    cellprofiler : str, optional
        The CellProfiler executable; see :func:`find_cellprofiler`.
    timeout : float, optional
        Seconds after which CellProfiler is killed and the run fails.
    echo : callable, optional
        Called with each line of CellProfiler's output as it comes (e.g. ``sys.stderr.write``).

    Returns
    -------
    RunResult

    Raises
    ------
    HeadlessRunError
        A bad argument; or a plugin or pipeline module that failed to load, a module error,
        no image passing the pipeline's rules, a non-zero exit, a timeout, or a run that wrote
        nothing under ``output_dir``.
    """
    pipeline = resolve_pipeline(pipeline)
    input_dir, output_dir = Path(input_dir).expanduser(), Path(output_dir).expanduser()
    plugins = Path(plugins_dir).expanduser() if plugins_dir is not None else plugin_dir()
    if not input_dir.is_dir():
        raise HeadlessRunError(f"input folder {input_dir} does not exist or is not a folder")
    if not plugins.is_dir():
        raise HeadlessRunError(f"plugins folder {plugins} does not exist")
    if input_dir.resolve() in (output_dir.resolve(), *output_dir.resolve().parents):
        raise HeadlessRunError(
            f"output folder {output_dir} is inside the input folder {input_dir}: CellProfiler reads every file "
            "under the input folder, so a later run would take this run's outputs as inputs; choose another one"
        )
    modules = pipeline_modules(pipeline)
    if "UpscaleMSRGAN" in modules and not (plugins / PLUGIN_FILE).is_file():
        raise HeadlessRunError(
            f"{pipeline} uses UpscaleMSRGAN but the plugins folder {plugins} has no {PLUGIN_FILE}: "
            "run `msrgan cellprofiler install-plugin` into it, or leave the plugins folder out"
        )
    for name, value in (("first", first), ("last", last)):
        if value is not None and int(value) < 1:
            raise HeadlessRunError(f"{name} image set must be >= 1, got {value}")
    if first is not None and last is not None and int(first) > int(last):
        raise HeadlessRunError(f"first image set {first} is after last image set {last}")

    if output_dir.exists() and not output_dir.is_dir():
        raise HeadlessRunError(f"output folder {output_dir} is a file: give a folder with -o")
    if timeout is not None and not timeout > 0:
        raise HeadlessRunError(f"timeout must be a number of seconds above 0, got {timeout}")
    start_cellprofiler = find_cellprofiler(cellprofiler)  # before the output folder is made: a failure leaves none
    output_dir.mkdir(parents=True, exist_ok=True)
    before = _snapshot(output_dir)
    with tempfile.TemporaryDirectory(prefix="msrgan-cp-") as tmp:
        done_file = Path(tmp) / "done.txt"
        command = start_cellprofiler + [
            "-c", "-r",
            "-p", str(pipeline.resolve()),
            "-i", str(input_dir.resolve()),
            "-o", str(output_dir.resolve()),
            "--plugins-directory", str(plugins.resolve()),
            "--done-file", str(done_file),
        ]
        if first is not None:
            command += ["-f", str(int(first))]
        if last is not None:
            command += ["-l", str(int(last))]
        start = time.monotonic()
        returncode, log, timed_out = _run(command, timeout, echo)
        seconds = time.monotonic() - start
        done = done_file.read_text().strip() if done_file.is_file() else ""

    if timed_out:
        raise HeadlessRunError(f"CellProfiler did not finish {pipeline.name} within {timeout:g} s and was stopped", log)
    image_sets = len(set(_IMAGE_SET.findall(log)))
    problem = diagnose(log, returncode, done, modules, plugins, image_sets=image_sets, first=first)
    newer = newer_pipeline(log)
    if problem:
        raise HeadlessRunError(f"CellProfiler run of {pipeline.name} failed: {problem}" + (f"; {newer}" if newer else ""),
                               log)
    after = _snapshot(output_dir)
    outputs = sorted(p for p, stamp in after.items() if before.get(p) != stamp)
    if not outputs:
        raise HeadlessRunError(
            f"CellProfiler ran {pipeline.name} ({image_sets} image set(s)) but wrote nothing in {output_dir}: "
            "the pipeline has no SaveImages/ExportToSpreadsheet output, or they were skipped",
            log,
        )
    return RunResult(command=command, log=log, outputs=outputs, image_sets=image_sets, seconds=seconds,
                     replaced=[p for p in outputs if p in before], newer=newer)


class ImageSetProgress:
    """Turns CellProfiler's per-module log lines into one line per image set begun, with an ETA.

    CellProfiler logs ``Image # N, module ...`` for each module it runs; each new ``N`` means the
    image set before it is done. ``total`` (known from ``-f``/``-l``) gives the time left.
    """

    def __init__(self, write: Callable[[str], None], total: Optional[int] = None, first: int = 1) -> None:
        self.write, self.total, self.first = write, total, first
        self.started = time.monotonic()
        self.current: Optional[int] = None

    def __call__(self, line: str) -> None:
        match = _IMAGE_SET.search(line)
        if not match or int(match.group(1)) == self.current:
            return
        self.current = int(match.group(1))
        done = self.current - self.first
        elapsed = time.monotonic() - self.started
        text = f"image set {self.current}" + (f" ({done + 1} of {self.total})" if self.total else "")
        if done > 0:
            each = elapsed / done
            text += f"; {done} done in {elapsed:.0f} s, {each:.1f} s each"
            if self.total:
                text += f", about {max(0.0, (self.total - done) * each):.0f} s left"
        self.write(text + "\n")


def _run(command: Sequence[str], timeout: Optional[float], echo: Optional[Callable[[str], None]]) -> Tuple[int, str, bool]:
    """Run a command, collecting (and optionally echoing) its merged output; bounded by ``timeout``."""
    try:  # its own process group: a timeout or Ctrl-C stops a wrapper script's CellProfiler too
        proc = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=_child_environment(), start_new_session=os.name == "posix",
        )
    except OSError as exc:
        raise HeadlessRunError(f"CellProfiler could not be started ({' '.join(command[:3])}): {exc}") from None
    timed_out = threading.Event()

    def kill() -> None:
        if os.name == "posix":
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            proc.kill()

    def stop() -> None:
        timed_out.set()
        kill()

    timer = threading.Timer(timeout, stop) if timeout else None
    if timer:
        timer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                echo(line)
        returncode = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None or timed_out.is_set():
            kill()
            proc.wait()
    return returncode, "".join(lines), timed_out.is_set()


def _child_environment() -> Optional[Dict[str, str]]:
    """CellProfiler's environment: this one, in a UTF-8 locale where this one is not (a batch job's
    C or POSIX locale), so that Java finds files whose paths are not ASCII; None: unchanged."""
    if locale.getpreferredencoding(False).replace("-", "").lower() == "utf8":
        return None
    return dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")


def newer_pipeline(log: str) -> str:
    """What CellProfiler's log says of a pipeline saved by a newer CellProfiler than the one that ran
    it (it loads such a pipeline with a warning, and may run it wrongly); '' where it says nothing."""
    match = _NEWER_PIPELINE.search(log)
    if not match:
        return ""
    return (f"the pipeline was saved by a newer CellProfiler (pipeline version {match.group(1)}, this CellProfiler "
            f"{match.group(2)}): its settings may have loaded wrongly; run it with that CellProfiler, or rebuild it "
            "in this one")


def ended(returncode: int) -> str:
    """How a process ended, in words: ``exit status 1``, or the signal that stopped it."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"stopped by {name}" + (" (out of memory? a job's memory limit or the system's out-of-memory killer sends it)"
                                   if -returncode == signal.SIGKILL else "")


def diagnose(
    log: str,
    returncode: int,
    done: str,
    modules: Sequence[str],
    plugins: Path,
    image_sets: int = 0,
    first: Optional[int] = None,
) -> str:
    """The reason a CellProfiler run failed, from its log, exit status and done file; '' if none.

    A module that could not be loaded counts when the pipeline uses it (CellProfiler logs it but
    runs the rest of the pipeline); other plugins of the folder ``plugins`` that fail do not.
    ``image_sets`` (how many ran) and ``first`` (``-f``) explain a range beyond the input.
    """
    wanted = {m.lower() for m in modules}  # another plugin of the folder failing to load harms nothing
    failed_modules = []
    for line in log.splitlines():
        line = line.strip()
        match = _COULD_NOT_LOAD.match(line)
        names = [match.group(1)] if match else []
        listed = _COULD_NOT_LOAD_LIST.search(line)
        if listed:
            names += [n.strip() for n in listed.group(1).split(",")]
        for name in names:
            if name.rsplit(".", 1)[-1].lower() in wanted and name not in failed_modules:
                failed_modules.append(name)
    exceptions = [line.strip() for line in log.splitlines() if _EXCEPTION_LINE.match(line.strip())]
    if failed_modules:
        cause = next((e for e in exceptions if "MySQLdb" not in e), "")
        return (
            f"CellProfiler could not load the module(s) {', '.join(failed_modules)} from {plugins}"
            + (f" ({cause})" if cause else "")
            + "; it ignored them and ran nothing useful. Is msrgan (with torch) installed in CellProfiler's "
            "Python environment?"
        )
    if _FAILED_PIPELINE in log:
        cause = exceptions[-1] if exceptions else "see the log"
        return f"the pipeline could not be loaded ({cause})"
    if _NO_IMAGES in log:
        return "no image passed the pipeline's Images/NamesAndTypes rules: check the input folder and the rules"
    run_errors = _RUN_ERROR.findall(log)
    if image_sets == 0 and first is not None and first > 1 and not run_errors:
        return f"no image set was run: the input has fewer than {first} image sets (first image set {first})"
    if returncode != 0 or done != "Complete":
        what = run_errors[0] if run_errors else f"{ended(returncode)}, done file says {done or 'nothing'!r}"
        if len(run_errors) > 1:
            what = f"{len(run_errors)} module errors in the run; the first: {what}"
        cause = next((e for e in reversed(exceptions) if "MySQLdb" not in e), "")
        if not cause and not run_errors:  # an error CellProfiler or Java said in words, not as an exception
            cause = next((line.strip() for line in reversed(log.splitlines()) if _SAYS_ERROR.search(line)), "")
        return what + (f": {cause}" if cause else "")
    return ""


# --- installing the plugin ------------------------------------------------------------------

def install_plugin(dest_dir: "str | Path") -> Path:
    """Copy the UpscaleMSRGAN plugin file into a CellProfiler plugins folder (created if needed).

    The plugin imports msrgan, so msrgan must also be installed in the Python environment that
    runs CellProfiler. Returns the installed file.
    """
    dest_dir = Path(dest_dir).expanduser()
    if dest_dir.exists() and not dest_dir.is_dir():
        raise HeadlessRunError(f"{dest_dir} is a file, not a plugins folder")
    source = plugin_dir() / PLUGIN_FILE
    if not source.is_file():
        raise HeadlessRunError(f"the plugin file {source} is missing: reinstall msrgan")
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / PLUGIN_FILE
    if target.resolve() != source.resolve():
        shutil.copyfile(source, target)
    return target


__all__ = [
    "HeadlessRunError", "PLUGIN_FILE", "RunResult", "SHIPPED_PIPELINES",
    "diagnose", "find_cellprofiler", "install_plugin", "pipeline_modules", "plugin_dir", "pipelines_dir",
    "resolve_pipeline", "run_pipeline",
]
