"""Many files through one upscaler: a plate, read, upscaled and written at once, file after file.

One thread reads the next images while the network upscales the current one and another thread
writes the previous outputs (two bounded queues, so memory is bounded by a few images, not the
plate). Outputs keep the inputs' order and are written atomically. A file that cannot be read,
upscaled or written is reported with its name and reason, and the others are still done, except
that a full or read-only output file system stops the batch at the first file it fails.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Tuple


from .errors import UserError
from .io import clashes, find_images, read_header, read_image, same_name_tif, stale_parts, write_image
from .progress import progress_bar

log = logging.getLogger("msrgan")

#: images waiting to be upscaled, and outputs waiting to be written
QUEUE_DEPTH = 2


class BatchError(UserError, ValueError):
    """A run that cannot start: bad output folder or file, an output that would replace an input, a name clash."""


#: what an output's uncertainty image is called beside it: ``NAME.uncertainty.tif``
UNCERTAINTY_SUFFIX = ".uncertainty.tif"


@dataclass(frozen=True)
class Job:
    """One input file, the output it becomes and, if asked, the output's uncertainty image."""

    source: Path
    destination: Path
    uncertainty: Optional[Path] = None
    stale: Optional[Path] = None  # an uncertainty image an earlier run left, which the new output makes wrong
    #: replace outputs that exist; without it, one another run (an overlapping job) writes meanwhile is kept
    overwrite: bool = False

    @property
    def outputs(self) -> List[Path]:
        return [self.destination] + ([self.uncertainty] if self.uncertainty else [])


@dataclass
class BatchReport:
    """What a batch did: outputs written, outputs that existed and were skipped, files that failed."""

    written: List[Path] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)  # existing, or written meanwhile by another run
    failed: List[Tuple[Path, str]] = field(default_factory=list)
    #: why the batch stopped before its end (the output's file system takes no more), and how many files it left
    stopped: str = ""
    not_attempted: int = 0

    def summary(self) -> str:
        kept = f"skipped {len(self.skipped)} existing (use --overwrite to redo them), " if self.skipped else ""
        said = f"{len(self.written)} image(s) written, {kept}{len(self.failed)} failed"
        if self.stopped:
            said += (f"; stopped, {self.not_attempted} not attempted: {self.stopped} (what is written is kept: make "
                     "room, then run the same command again to finish)")
        return said


#: write errors of the output's whole file system, not of one file: every later file would fail
#: the same way after its upscaling, so the batch stops at the first
FILE_SYSTEM_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def prepare_output_folder(out_dir: Path) -> Path:
    """Create ``out_dir`` and prove it writable, before any model is loaded."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"output folder {out_dir} is a file: give a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise BatchError(f"output folder {out_dir} cannot be written ({exc.strerror or exc}): choose another") from None
    return out_dir


def check_output_file(path: "str | Path", suffix: str, overwrite: bool = False,
                      inputs: Iterable["str | Path"] = ()) -> Path:
    """Refuse, before any work, a file a command would write (a model file, a package): a folder,
    one not named ``*suffix``, one of ``inputs`` (through links too), an existing file unless
    ``overwrite``, or one whose folder cannot be written (a folder yet to be made: the folder
    above it). Makes no folder: the file's writer does (:func:`~msrgan_core.io.atomic_write`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise BatchError(f"{path} is a folder: name the file to write")
    if not path.name.lower().endswith(suffix):
        raise BatchError(f"{path}: the file to write is a {suffix} file; name it e.g. {path.stem}{suffix}")
    if os.path.realpath(path) in {os.path.realpath(p) for p in inputs}:
        raise BatchError(f"{path} is an input: msrgan never writes over its inputs; choose another name")
    if path.exists() and not overwrite:
        raise BatchError(f"{path} exists: pass --overwrite to replace it")
    folder = path.parent.absolute()
    while not folder.exists():  # made when the file is written (atomic_write), not before: a failed command leaves no folder
        folder = folder.parent
    if not folder.is_dir():
        raise BatchError(f"{path} cannot be written: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise BatchError(f"{path} cannot be written ({exc.strerror or exc}) in {folder}: choose another place") from None
    return path


def remove_stale_parts(folder: Path, names: Iterable[str]) -> int:
    """Delete the hidden ``.NAME.*.part`` files that killed earlier writes of ``names`` left in
    ``folder``; another run's writes under way are left to it (:func:`~msrgan_core.io.stale_parts`)."""
    removed = 0
    for part in stale_parts(folder, names):
        try:
            part.unlink()
            removed += 1
        except FileNotFoundError:  # another run took it meanwhile
            pass
    return removed


def plan(inputs: Iterable["str | Path"], out_dir: "str | Path", overwrite: bool = False,
         uncertainty: bool = False) -> Tuple[List[Job], List[Path]]:
    """The jobs of a batch and the outputs it skips, checked before any work.

    Refuses, before anything runs: an output folder that cannot be written; two inputs that
    would write one output; an output that is (or resolves to, through links) one of the inputs,
    ``overwrite`` or not. Removes what killed earlier runs left half-written. With
    ``uncertainty``, each job also writes ``NAME.uncertainty.tif`` (:data:`UNCERTAINTY_SUFFIX`);
    without it, ``overwrite`` removes such an image where it replaces the output it described.
    An existing output is kept without ``overwrite``, also where its uncertainty image is asked
    for and missing (it may come from another model: a warning says so).

    Returns
    -------
    jobs : list of Job
        The files to upscale, in order.
    skipped : list of Path
        Outputs that exist already (kept, unless ``overwrite``).
    """
    files = find_images(inputs)
    out_dir = prepare_output_folder(Path(out_dir))
    jobs = [Job(source, same_name_tif(source, out_dir),
                same_name_tif(source, out_dir, UNCERTAINTY_SUFFIX) if uncertainty else None) for source in files]
    clashing = clashes(output.name for job in jobs for output in job.outputs)
    if clashing:
        raise BatchError(f"several inputs would write the same output name(s) {clashing}: upscale them into separate folders")
    sources = {os.path.realpath(f) for f in files}
    for output in (output for job in jobs for output in job.outputs):
        if os.path.realpath(output) in sources:
            raise BatchError(f"{output} is an input: msrgan never writes over its inputs; choose another output folder")
    stale = remove_stale_parts(out_dir, (output.name for job in jobs for output in job.outputs))
    if stale:
        log.info("msrgan: removed %d half-written file(s) left by an interrupted run", stale)
    if overwrite:
        return [replace(job, overwrite=True,
                        stale=None if uncertainty else _existing(same_name_tif(job.source, out_dir, UNCERTAINTY_SUFFIX)))
                for job in jobs], []
    incomplete = [job.uncertainty.name for job in jobs
                  if uncertainty and job.destination.exists() and not job.uncertainty.exists()]
    if incomplete:
        log.warning("msrgan: %d output(s) exist without their uncertainty image (e.g. %s), perhaps from another model: "
                    "skipped; --overwrite redoes both", len(incomplete), incomplete[0])
    skipped = [job.destination for job in jobs if job.destination.exists()]
    return [job for job in jobs if not job.destination.exists()], skipped


def _existing(path: Path) -> Optional[Path]:
    return path if path.exists() else None


def check_headers(jobs: List[Job], channel_axis: Optional[int] = None,
                  stop_on_error: bool = False) -> Tuple[List[Job], List[Tuple[Path, str]]]:
    """Read each job's file header (no pixels), before any model loads.

    Returns the jobs whose files msrgan can take, and ``(file, reason)`` for the others; with
    ``stop_on_error`` the first bad file's error is raised instead.
    """
    good, failed = [], []
    for job in jobs:
        try:
            read_header(job.source, channel_axis=channel_axis)
            good.append(job)
        except (UserError, OSError) as exc:
            if stop_on_error:
                raise
            failed.append((job.source, str(exc)))
    return good, failed


_DONE = object()


def upscale_files(upscaler, jobs: List[Job], channel_axis: Optional[int] = None, stop_on_error: bool = False,
                  progress: bool = True, on_failure: Optional[Callable[[str], None]] = None) -> BatchReport:
    """Upscale every job's file into its destination, reading and writing beside the upscaling.

    Parameters
    ----------
    upscaler : msrgan_core.inference.Upscaler
    jobs : list of Job
        From :func:`plan`.
    channel_axis : int, optional
        Channel axis of 3-D files that do not say.
    stop_on_error : bool
        Stop at the first file that fails (its error is raised) instead of going on.
    progress : bool
        A progress bar over files.
    on_failure : callable, optional
        Called with a file's failure, in one line naming it, as it happens (not after the plate);
        not with ``stop_on_error``, whose raised error says it.

    A full or read-only output file system (:data:`FILE_SYSTEM_FULL`) stops the batch at the
    first file it fails, the rest left for a rerun (``stopped``, ``not_attempted``). An error
    that is neither the input's nor the disk's (a defect, memory exhausted) stops the batch and
    is raised; the outputs written so far stay. A job's output that another run (an
    overlapping job) writes after :func:`plan` is skipped, unless the job overwrites: before its
    file is read where it is there by then, else when this run's would replace it.
    """
    report = BatchReport()
    to_upscale: "queue.Queue" = queue.Queue(QUEUE_DEPTH)
    to_write: "queue.Queue" = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()
    errors: List[BaseException] = []  # the first file's failure, with stop_on_error
    crashed: List[BaseException] = []  # the writer's own error, neither the input's nor the disk's
    lock = threading.Lock()

    def failed(job: Job, exc: BaseException) -> None:
        message = str(exc) if any(str(path) in str(exc) for path in (job.source, *job.outputs)) else f"{job.source}: {exc}"
        with lock:
            report.failed.append((job.source, message))
            if stop_on_error and not errors:
                errors.append(exc)
        if on_failure is not None and not stop_on_error:  # with stop_on_error the error raised says it
            on_failure(message)

    def read() -> None:
        for job in jobs:
            if stop.is_set():
                break
            if not job.overwrite and job.destination.exists():  # another run did it since the plan
                with lock:
                    report.skipped.append(job.destination)
                bar.update(1)
                continue
            try:
                to_upscale.put((job, *read_image(job.source, channel_axis=channel_axis)))
            except Exception as exc:  # noqa: BLE001 - handed to the main thread, which says or raises it
                to_upscale.put((job, exc, None))
        to_upscale.put(_DONE)

    def write_one(job: Job, result, layout) -> None:
        deviation = None
        if job.uncertainty is not None:
            result, deviation = result
        # the uncertainty image first, the output last: an output on disk means its job is whole, so
        # a rerun after a kill or a full disk between the two redoes the job instead of skipping it
        # (and replaces the uncertainty image left without its output)
        target = job.uncertainty if deviation is not None else job.destination
        try:
            if deviation is not None:
                write_image(job.uncertainty, deviation, replace(layout, dtype=deviation.dtype, miniswhite=False))
                target = job.destination
            write_image(job.destination, result, layout, replace_existing=job.overwrite)
        except FileExistsError:  # another run (an overlapping job) wrote the output meanwhile: its files stay
            with lock:
                report.skipped.append(job.destination)
            return
        except OSError as exc:
            if target == job.destination and deviation is not None:  # not left to describe an output not there
                job.uncertainty.unlink(missing_ok=True)
            failed(job, OSError(f"{target}: cannot be written ({exc.strerror or exc})"))
            if exc.errno in FILE_SYSTEM_FULL:
                report.stopped = f"{target.parent} takes no more ({exc.strerror or exc})"
            return
        if job.stale is not None:  # an earlier run's, describing the output just replaced
            try:
                job.stale.unlink(missing_ok=True)
                log.info("msrgan: removed %s: it described the output just replaced", job.stale)
            except OSError as exc:
                failed(job, OSError(f"{job.stale}: cannot be removed ({exc.strerror or exc})"))
                return
        report.written.append(job.destination)

    def write() -> None:
        while True:
            item = to_write.get()
            if item is _DONE:
                return
            if crashed or report.stopped:  # take what comes, so that nothing waits on this thread
                continue
            try:
                write_one(*item)
            except Exception as exc:  # noqa: BLE001 - raised in the main thread
                crashed.append(exc)
            bar.update(1)

    bar = progress_bar(total=len(jobs), desc="upscaling", unit="image", disable=not progress)
    reader, writer = threading.Thread(target=read, daemon=True), threading.Thread(target=write, daemon=True)
    reader.start()
    writer.start()
    try:
        while not crashed and not errors and not report.stopped:
            item = to_upscale.get()
            if item is _DONE:
                break
            job, image, layout = item
            try:
                if isinstance(image, Exception):
                    raise image
                to_write.put((job, upscaler.upscale(image, source=str(job.source), uncertainty=job.uncertainty is not None),
                              layout.upscaled(upscaler.scale)))
            except (UserError, OSError) as exc:
                failed(job, exc)
                bar.update(1)
    finally:
        stop.set()
        to_write.put(_DONE)
        writer.join()
        while reader.is_alive():  # let a reader blocked on a full queue finish
            try:
                to_upscale.get_nowait()
            except queue.Empty:
                reader.join(0.05)
        bar.close()
    if crashed or errors:
        raise (crashed or errors)[0]
    if report.stopped:
        report.not_attempted = len(jobs) - len(report.written) - len(report.skipped) - len(report.failed)
    return report


__all__ = ["UNCERTAINTY_SUFFIX", "BatchError", "BatchReport", "Job", "check_headers", "check_output_file", "plan", "prepare_output_folder", "remove_stale_parts", "upscale_files"]
