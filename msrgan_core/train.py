"""The training loop, written out: SRResNet pretraining, then adversarial mSRGAN training.

Phase 1 (``pretrain_steps``) minimises the pixel loss; phase 2 (``gan_steps``) continues from
it with the perceptual loss. The same code runs on CUDA and on the CPU (in bf16 mixed precision
where the device computes bf16), and data-parallel across processes when started by ``torchrun``
(NCCL on GPUs, gloo on CPUs).

A run directory holds:

- ``checkpoint.pt``: resume state (weights, optimisers, step), written atomically;
- ``checkpoint_pretrained.pt``: the same at the end of pretraining;
- ``metrics.csv``: validation PSNR/SSIM (and the bicubic baseline) per evaluation;
- ``fidelity.safetensors``: the phase-1 generator with the best validation PSNR;
- ``perceptual.safetensors``: the phase-2 generator at the end of training;
- ``samples/step_NNNNNNN.png``: low resolution | output | truth, for each evaluation;
- ``split.json`` and ``config.json``: what was trained on and how (a resume keeps the split);
- ``.msrgan-train.lock``: held by the process training into the folder (:func:`run_lock`).

With ``train.ema_decay`` > 0, the saved and scored generator is the moving average of its weights.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import errno
import gc
import json
import logging
import math
import platform
import shlex
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import ExperimentConfig, TrainConfig
from .data import Split, load_images, load_pairs, sample_batch, split_files, spread, validation_pairs
from .device import Distributed, cpu_has_bf16, describe_device, launched, reuse_freed_memory, setup_distributed
from .errors import UserError
from .features import make_feature_extractor
from .io import atomic_write, find_images
from .losses import discriminator_loss, perceptual_loss, pixel_loss
from .metrics import image_metrics, upscale_bicubic
from .modelfile import ModelFileError, load_model, save_model, timestamp
from .models import Discriminator, build_generator, count_parameters
from .progress import progress_bar

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("msrgan")

CHECKPOINT = "checkpoint.pt"
PRETRAINED_CHECKPOINT = "checkpoint_pretrained.pt"
METRICS = "metrics.csv"
#: the file a run holds locked while it trains (:func:`run_lock`)
LOCK = ".msrgan-train.lock"
#: what a run makes besides its checkpoint: a folder holding any of them without one holds another
#: run's ends, which a fresh start would mix with its own (a run that ended before its first
#: checkpoint and model file left only its record, which a fresh start replaces)
RUN_FILES = ("fidelity.safetensors", "perceptual.safetensors", PRETRAINED_CHECKPOINT)
LOSS_READ_EVERY = 20  # steps between reads of the training loss on CUDA (each read waits for the GPU)
METRICS_FIELDS = ["step", "phase", "lr", "train_loss", "val_psnr", "val_ssim", "bicubic_psnr", "bicubic_ssim", "seconds"]


class TrainingError(UserError, RuntimeError):
    """A run that cannot start or continue as asked."""


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def learning_rate(step: int, config: ExperimentConfig) -> float:
    """Cosine decay from the phase's rate (``lr``, then ``gan_lr`` or ``lr``) to ``lr_min_fraction`` of it."""
    t = config.train
    if step < t.pretrain_steps:
        progress, length, top = step, t.pretrain_steps, t.lr
    else:
        progress, length, top = step - t.pretrain_steps, t.gan_steps, t.gan_lr or t.lr
    floor = top * t.lr_min_fraction
    return floor + (top - floor) * 0.5 * (1 + math.cos(math.pi * progress / max(1, length)))


class WeightAverage:
    """Exponential moving average of a generator's weights, restarted at the start of each phase.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` over the ``n`` updates since the
    restart, so early on the average follows the fast-moving weights instead of holding on to
    where the phase began.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.updates = 0

    def restart(self, module: nn.Module) -> None:
        self.module.load_state_dict(module.state_dict())
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for mine, theirs in zip(self.module.parameters(), module.parameters()):
            mine.lerp_(theirs.detach(), 1 - decay)
        for mine, theirs in zip(self.module.buffers(), module.buffers()):
            mine.copy_(theirs)
        self.updates += 1


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is the batch of step ``start + i``, drawn from (seed, step, rank) alone.

    So a batch is the same whether the training process draws it or a worker does, and a
    resumed run draws the batches it would have drawn without the stop.
    """

    def __init__(self, images: List[np.ndarray], config: ExperimentConfig, rank: int, start: int, stop: int) -> None:
        self.images, self.config, self.rank = images, config, rank
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, index: int) -> "tuple[torch.Tensor, torch.Tensor]":
        t = self.config.train
        rng = np.random.default_rng([t.seed, self.start + index, self.rank])
        lr, hr = sample_batch(self.images, t.batch_size, t.patch_size, self.config.degradation, rng)
        return torch.from_numpy(lr), torch.from_numpy(hr)


def ignore_stop_signals(_worker: int) -> None:
    """In a batch worker process: Ctrl-C and a scheduler's SIGTERM reach the whole process group,
    but only the main process stops the run (after the step, with a checkpoint) and then ends
    its workers; a worker that died of them first had failed the step under way, checkpoint lost."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_workers(stream) -> None:
    """End the batch worker processes of a :func:`batch_stream` now. They ignore stop signals
    (:func:`ignore_stop_signals`), so left to Python's exit they would be sent SIGTERM and waited
    for without end, as after a failed run whose error escapes."""
    shutdown = getattr(stream, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def batch_stream(batches: StepBatches, workers: int, pin_memory: bool):
    """The batches in step order: drawn here (``workers`` = 0) or ahead by worker processes."""
    if workers == 0 or len(batches) == 0:  # no processes started for a run that has no steps left
        return (batches[i] for i in range(len(batches)))
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                            prefetch_factor=4, pin_memory=pin_memory,
                                            worker_init_fn=ignore_stop_signals))


def initial_weights(config: ExperimentConfig) -> "tuple[Optional[dict], Optional[dict]]":
    """The generator weights named by ``train.init`` and a note of where they came from (or None)."""
    if not config.train.init:
        return None, None
    try:
        model = load_model(config.train.init)
    except ModelFileError as exc:
        raise TrainingError(f"train.init: {exc}") from None
    start_from = ("start from the config it was trained with (--config msrgan_core/configs/default_models.toml "
                  "for the packaged models)")
    if model.config != config.generator:
        def network(g) -> str:
            return f"{g.architecture} {g.n_blocks} x {g.n_features}, {g.scale}x, {g.in_channels} channel(s)"
        raise TrainingError(f"train.init: {Path(model.source).name} is a {network(model.config)} network, and "
                            f"[generator] asks for {network(config.generator)}: {start_from}")
    if model.normalization != config.normalization:
        raise TrainingError(f"train.init: {Path(model.source).name} was trained on {model.normalization} "
                            f"but [normalization] says {config.normalization}: {start_from}")
    return model.generator.state_dict(), model.card.provenance()  # the whole chain: provenance holds its own init


def save_checkpoint(path: Path, state: dict) -> None:
    try:
        with atomic_write(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as exc:  # torch's writer reports a full disk as its own error, not an OSError
        raise TrainingError(f"{path} cannot be written ({' '.join(str(exc).split())[:120]}): is the disk full?") from None


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{path} cannot be read as an msrgan checkpoint ({type(exc).__name__}: {exc})") from None


def bicubic_scores(pairs) -> Dict[str, float]:
    """Mean PSNR/SSIM of bicubic upscaling on the validation pairs: the baseline, computed once."""
    scores = [image_metrics(hr, upscale_bicubic(lr, hr.shape[-1] // lr.shape[-1])) for lr, hr in pairs]
    return {"bicubic_psnr": float(np.mean([m["psnr"] for m in scores])),
            "bicubic_ssim": float(np.mean([m["ssim"] for m in scores]))}


@torch.no_grad()
def evaluate(generator: nn.Module, pairs, device: torch.device) -> "tuple[Dict[str, float], np.ndarray]":
    """Mean PSNR/SSIM of the generator on the validation pairs, and its output for the first pair."""
    generator.eval()
    outputs = [generator(torch.from_numpy(lr)[None].to(device)).float()[0].cpu().numpy() for lr, _ in pairs]
    generator.train()
    scores = [image_metrics(hr, sr) for (_, hr), sr in zip(pairs, outputs)]
    return ({"val_psnr": float(np.mean([m["psnr"] for m in scores])),
             "val_ssim": float(np.mean([m["ssim"] for m in scores]))}, outputs[0])


def save_sample(path: Path, lr: np.ndarray, sr: np.ndarray, hr: np.ndarray) -> None:
    """PNG of nearest-upscaled input | output | truth (first channel, shared 8-bit scaling)."""
    import imageio.v3 as iio

    scale = hr.shape[-1] // lr.shape[-1]
    near = np.repeat(np.repeat(lr[0], scale, axis=0), scale, axis=1)
    row = np.concatenate([near, sr[0], hr[0]], axis=1)
    low, high = np.percentile(hr[0], [0.5, 99.8])
    row8 = np.clip((row - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    with atomic_write(path) as tmp:
        iio.imwrite(tmp, row8, extension=".png")


def folder_name(pattern: str) -> str:
    """The name of a data folder, file or glob as a model file records it: a glob by its deepest
    folder without wildcards (``plate 1/*/`` is ``plate 1``), not ``*``."""
    parts = Path(pattern).parts
    plain = parts[:next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))]
    return plain[-1] if plain else str(pattern)


def model_metadata(config: ExperimentConfig, split, name: str, step: int, metrics: Dict[str, float],
                   device: torch.device, world_size: int, init: Optional[dict] = None) -> dict:
    """What a model file says about its training: for its users, who have neither the run folder
    nor the data folders (so names, not paths)."""
    return {
        "name": name,
        "normalization": dataclasses.asdict(config.normalization),
        "degradation": None if config.data.train_lr else dataclasses.asdict(config.degradation),
        "loss": dataclasses.asdict(config.loss) if name == "perceptual" else {"pixel": config.train.pixel_loss},
        "training": {
            "data": config.data.description or ", ".join(folder_name(p) for p in config.data.train),
            "real_pairs": bool(config.data.train_lr),
            "train_files": len(split.train),
            "val_files": len(split.val),
            "split_by": split.by,
            "well_regex": config.data.well_regex,
            "val_fraction": config.data.val_fraction,
            "steps": step,
            "pretrain_steps": config.train.pretrain_steps,
            "gan_steps": config.train.gan_steps if name == "perceptual" else 0,
            "batch_size": config.train.batch_size,
            "patch_size": config.train.patch_size,
            "seed": config.train.seed,
            "init": init,
            "hardware": f"{describe_device(device)} x {world_size}, {platform.machine()}, "
                        f"{training_precision(config.train, device, adversarial=name == 'perceptual')}",
            "torch": torch.__version__,
        },
        "validation": metrics,
        "created": timestamp(),
        "msrgan_version": __version__,
    }


@dataclasses.dataclass
class Run:
    """A training run: what its set-up made, and the state its steps change.

    Attributes
    ----------
    config : ExperimentConfig
        The experiment being trained.
    out_dir : Path
        The run folder.
    dist : Distributed
        This process's place in a ``torchrun`` job.
    device : torch.device
        Where this process trains.
    split : Split
        Which files train and which validate.
    train_images : list of np.ndarray, each (C, Y, X)
        The normalised training images.
    val_pairs : list of (np.ndarray, np.ndarray)
        The fixed validation pairs, low resolution (C, y, x) and truth (C, Y, X).
    baseline : dict of str to float
        Bicubic PSNR/SSIM on ``val_pairs`` (empty without validation pairs).
    init_note : dict or None
        Where the starting weights came from (``train.init``), for the model files.
    generator, discriminator : nn.Module
        The networks, wrapped in ``DistributedDataParallel`` when ``dist.world_size`` > 1.
    opt_g, opt_d : torch.optim.Optimizer
        Their optimisers.
    features : callable
        The content-loss feature extractor, ``(N, C, H, W) -> features``.
    average : WeightAverage or None
        The moving average of the generator's weights (with ``train.ema_decay`` > 0).
    step : int
        Steps done.
    best_psnr : float
        The best validation PSNR of the pretraining phase so far.
    """

    config: ExperimentConfig
    out_dir: Path
    dist: Distributed
    device: torch.device
    split: Split
    train_images: List[np.ndarray]
    val_pairs: List[Tuple[np.ndarray, np.ndarray]]
    baseline: Dict[str, float]
    init_note: Optional[dict]
    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    features: Callable[[torch.Tensor], torch.Tensor]
    average: Optional[WeightAverage]
    step: int = 0
    best_psnr: float = -math.inf

    @property
    def served(self) -> nn.Module:
        """The generator that is scored and saved: the weight average if there is one."""
        return self.average.module if self.average is not None else unwrap(self.generator)


def train(
    config: ExperimentConfig,
    out_dir: "str | Path",
    resume: bool = False,
    progress: bool = True,
    until_step: Optional[int] = None,
) -> Path:
    """Train (or resume) a run in ``out_dir``; returns ``out_dir``.

    Parameters
    ----------
    config : ExperimentConfig
        What to train, on which data, and how.
    out_dir : str or Path
        The run folder (created if need be).
    resume : bool
        Continue the run that ``out_dir`` holds.
    progress : bool
        Show progress bars (on the main process).
    until_step : int, optional
        Stop early at that step, with a checkpoint, e.g. to fit a cluster job's time limit;
        ``resume`` then continues exactly as if there had been no stop.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    TrainingError
        ``out_dir`` already holds a run and ``resume`` is off, or ``resume`` is on and it holds
        none or the config is not the run's (:func:`check_same_run`); ``train.init`` names an
        unusable model; the loss became non-finite; Ctrl-C or SIGTERM stopped it (with a
        checkpoint: :func:`stop_requests`).
    """
    with run_lock(Path(out_dir)):
        return _train(config, Path(out_dir), resume, progress, until_step)


@contextlib.contextmanager
def run_lock(out_dir: Path):
    """Hold ``out_dir`` for this run: a second process training into it (a job requeued while the
    first still runs) would interleave its metrics and overwrite its checkpoints and models. The
    main process of a ``torchrun`` holds it for all. A POSIX record lock, which the batch workers
    a run forks do not inherit (a lock they kept would outlive a failed run); where the file
    system or the platform has no locks, the run goes on unguarded, with a note. A folder made
    here and left empty (a refused run) is removed again."""
    if not launched().is_main:
        yield
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"{out_dir} is a file: give a folder for the run")
    made, lock = not out_dir.exists(), out_dir / LOCK
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a+")
    except OSError as exc:
        raise TrainingError(f"{out_dir}: the run cannot be written there ({exc.strerror})") from None
    with fh:
        try:
            import fcntl

            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows
            log.info("msrgan: %s is not locked for this run (no file locks here): train into it from one process "
                     "at a time", out_dir)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # no locks on this file system (NFS without lockd, say)
                log.warning("msrgan: %s cannot be locked for this run (%s): train into it from one process at a time",
                            out_dir, exc.strerror)
            else:
                raise TrainingError(f"{out_dir} is being trained into by another process (it holds {lock}): wait "
                                    "for it to end, or train into another folder") from None
        try:
            yield
        finally:
            if made and [p.name for p in out_dir.iterdir()] == [LOCK]:
                lock.unlink()
                out_dir.rmdir()


def _train(config: ExperimentConfig, out_dir: Path, resume: bool, progress: bool, until_step: Optional[int]) -> Path:
    run = set_up_run(config, out_dir, resume, progress)
    tc, dist, device = config.train, run.dist, run.device
    earlier = _prepare_metrics_csv(run.out_dir / METRICS, run.step) if dist.is_main else 0.0
    writer = _tensorboard(run.out_dir) if tc.tensorboard and dist.is_main else None
    autocast = {"pretrain": autocast_for(tc, device), "gan": autocast_for(tc, device, adversarial=True)}
    total = tc.pretrain_steps + tc.gan_steps
    bar = progress_bar(total=total, initial=run.step, desc="training", unit="step", disable=not (progress and dist.is_main))
    started = time.time() - earlier  # a resumed run's seconds go on from its checkpoint's
    stop = total if until_step is None else min(total, int(until_step))
    if resume:
        for stale in run.out_dir.glob(".*.part"):  # left by a kill during a write (checkpoints, model files)
            stale.unlink()
    stream = batch_stream(StepBatches(run.train_images, config, dist.rank, run.step, stop), tc.workers,
                          pin_memory=device.type == "cuda")
    try:
        with stop_requests(dist.world_size == 1) as stopping:
            run_steps(run, stream, stop, autocast, bar, writer, started, stopping)
    finally:  # the batch workers (deaf to stop signals) end here, whatever ended the loop
        stop_workers(stream)
    bar.close()
    if writer is not None:
        writer.close()
    if dist.world_size > 1:  # the DDP wrappers (their reducers hold the group's work) go first, then the group
        run.generator, run.discriminator = unwrap(run.generator), unwrap(run.discriminator)
        del stream
        gc.collect()
        torch.distributed.destroy_process_group()
    if dist.is_main:
        log.info("msrgan: %s", run_summary(run, total))
    if stopping and run.step < total:
        raise TrainingError(f"stopped at step {run.step} of {total} ({stopping[0]}), with a checkpoint: "
                            f"continue with --resume")
    return run.out_dir


def run_summary(run: Run, total: int) -> str:
    """Where the run stands: its model files and how they score against bicubic, or what is left to do."""
    made = [f"{name}.safetensors" for name in ("fidelity", "perceptual") if (run.out_dir / f"{name}.safetensors").exists()]
    where = f"{', '.join(made) or 'no model file yet'} in {run.out_dir}"
    if run.step < total:
        return f"at step {run.step} of {total}: {where}; continue with --resume"
    scores = f"; validation PSNR {run.best_psnr:.2f} dB (pixel-loss phase's best), bicubic " \
             f"{run.baseline['bicubic_psnr']:.2f} dB" if run.val_pairs and math.isfinite(run.best_psnr) else ""
    return (f"done, {total} steps, generator {count_parameters(unwrap(run.generator))} parameters: {where}{scores}; "
            f"next: msrgan evaluate --model {shlex.quote(str(run.out_dir / (made or ['fidelity.safetensors'])[0]))} "
            "--hr HELD_OUT_IMAGES")


@contextlib.contextmanager
def stop_requests(handle: bool):
    """Ctrl-C and a scheduler's SIGTERM ask the loop to stop after the step under way, with a
    checkpoint (the list yielded gets the signal's name); a second one stops at once. Only in
    the main thread of a one-process run: distributed workers keep the default."""
    import signal
    import threading

    asked: List[str] = []
    if not handle or threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def ask(signum, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(signal.Signals(signum).name)
        log.warning("msrgan: %s: stopping after this step, with a checkpoint (again to stop at once)", asked[0])

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_steps(run: Run, stream, stop: int, autocast: dict, bar, writer, started: float, stopping: List[str]) -> None:
    """The training loop from ``run.step`` to ``stop`` (or a stop request: :func:`stop_requests`)."""
    config, tc, dist, device = run.config, run.config.train, run.dist, run.device
    total = tc.pretrain_steps + tc.gan_steps
    loss_value = float("nan")
    while run.step < stop:
        pretraining = run.step < tc.pretrain_steps
        phase = "pretrain" if pretraining else "gan"
        adversarial_starts = run.step == tc.pretrain_steps and run.step > 0
        if run.average is not None and adversarial_starts:
            run.average.restart(unwrap(run.generator))  # the adversarial phase averages only its own weights
        lr_now = learning_rate(run.step, config)
        set_learning_rate((run.opt_g, run.opt_d), lr_now)
        lr_t, hr_t = (t.to(device, non_blocking=True, memory_format=memory_format(device)) for t in next(stream))
        loss, terms = (pretrain_step if pretraining else adversarial_step)(run, lr_t, hr_t, autocast[phase])
        if run.average is not None:
            run.average.update(unwrap(run.generator))
        run.step += 1

        step = run.step
        training_ends = step == total
        phase_ends = step == tc.pretrain_steps or training_ends
        pretrain_ends = step == tc.pretrain_steps and tc.gan_steps > 0
        stop_asked = bool(stopping)  # read once: a request that comes later is served after the next step
        run_stops = step == stop or stop_asked
        eval_due = step % tc.eval_every == 0 or phase_ends
        checkpoint_due = step % tc.checkpoint_every == 0 or run_stops or pretrain_ends
        # Reading the loss waits for the GPU; on CUDA it is read every few steps, so that the
        # next steps queue up meanwhile. A non-finite loss stays non-finite, so it is still caught.
        if device.type != "cuda" or step % LOSS_READ_EVERY == 0 or eval_due or run_stops:
            loss_value = finite_loss(loss, step)
            bar.set_postfix(phase=phase, loss=f"{loss_value:.4g}")
        bar.update(1)
        if writer is not None:
            for name, value in terms.items():
                writer.add_scalar(f"train/{name}", float(value.detach()), step)

        if dist.is_main and eval_due:
            row = {"step": step, "phase": phase, "lr": lr_now, "train_loss": loss_value,
                   "seconds": round(time.time() - started, 1)}
            psnr_now = evaluate_and_save(run, row, writer, training_ends)
            bar.set_postfix(phase=phase, loss=f"{loss_value:.4g}", val_psnr=f"{psnr_now:.2f}")
        if dist.is_main and checkpoint_due:
            save_run_state(run, pretrain_ends)
        if dist.world_size > 1 and (eval_due or checkpoint_due):
            torch.distributed.barrier()
        if stop_asked:
            return


def set_up_run(config: ExperimentConfig, out_dir: Path, resume: bool, progress: bool) -> Run:
    """Devices, data, split, validation pairs and their bicubic baseline, networks, optimisers,
    feature extractor and weight average; on ``resume``, the state of the last checkpoint.

    The parameters are `train`'s; ``progress`` shows a bar while the training images load.
    Writes ``split.json`` and ``config.json`` into ``out_dir``.

    Raises
    ------
    TrainingError
        ``out_dir`` already holds a run and ``resume`` is off, or ``resume`` is on and it holds
        none; ``train.init`` names an unusable model.
    """
    tc = config.train
    dist, device = setup_distributed(tc.device)
    if device.type == "cpu":
        reuse_freed_memory()  # the discriminator's activations at output resolution fault fresh pages otherwise
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise TrainingError(f"{out_dir} already holds a training run: pass --resume to continue it, or use a new folder")
    if resume and not checkpoint_path.exists():
        raise TrainingError(f"--resume: {out_dir} holds no {CHECKPOINT} to continue from")
    leftovers = [name for name in RUN_FILES if (out_dir / name).exists()]
    if leftovers and not resume:
        raise TrainingError(f"{out_dir} holds another run's files ({', '.join(leftovers[:3])}) but no {CHECKPOINT} to "
                            "continue from: train into a new folder, or remove them")
    recorded = recorded_config(out_dir) if resume else None
    if recorded is not None:
        check_same_run(recorded, config, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        log.info("msrgan: training on %s, pixel loss in %s, adversarial in %s (%d process%s)", describe_device(device),
                 training_precision(config.train, device), training_precision(config.train, device, adversarial=True),
                 dist.world_size, "es" if dist.world_size > 1 else "")

    split, train_images, val_pairs = load_data(config, progress and dist.is_main,
                                               recorded_split(out_dir) if resume else None)
    baseline = bicubic_scores(val_pairs) if val_pairs else {}
    generator, discriminator = build_networks(config, device)
    checkpoint = load_checkpoint(checkpoint_path) if resume else None
    if checkpoint is not None and "init_note" in checkpoint:  # the run's start, as it was: the file need not be there
        init_state, init_note = None, json.loads(checkpoint["init_note"])
    else:
        init_state, init_note = initial_weights(config)
    if init_state is not None:
        generator.load_state_dict(init_state)
    run = Run(config, out_dir, dist, device, split, train_images, val_pairs, baseline, init_note,
              generator, discriminator,
              opt_g=torch.optim.Adam(generator.parameters(), lr=tc.lr, betas=(0.9, 0.999)),
              opt_d=torch.optim.Adam(discriminator.parameters(), lr=tc.lr, betas=(0.9, 0.999)),
              features=feature_extractor(config, discriminator, device),
              average=WeightAverage(generator, tc.ema_decay) if tc.ema_decay > 0 else None)
    if checkpoint is not None:
        restore_checkpoint(run, checkpoint)
        check_steps_ahead(run, recorded)
    if dist.is_main:  # once the resume is sure: a refused one leaves the run's record as it was
        write_run_description(out_dir, config, split)
    if dist.world_size > 1:
        run.generator = nn.parallel.DistributedDataParallel(run.generator)
        run.discriminator = nn.parallel.DistributedDataParallel(run.discriminator)
    return run


#: config entries a resumed run may change: where and how it runs, not what it computes (the step
#: counts too, to train longer: :func:`check_steps_ahead`)
RESUMABLE_CHANGES = ("train.device", "train.workers", "train.tensorboard", "train.checkpoint_every",
                     "train.pretrain_steps", "train.gan_steps")


def recorded_config(out_dir: Path) -> Optional[dict]:
    """The config a run was started with (its ``config.json``, :func:`write_run_description`); None
    for a run written before it was recorded."""
    return _run_record(out_dir, "config.json")


def _run_record(out_dir: Path, name: str) -> Optional[dict]:
    """A run's JSON record ``name`` (:func:`write_run_description`); None where the run has none;
    a damaged one is a :class:`TrainingError`."""
    path = out_dir / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise TrainingError(f"--resume: {path} is damaged ({exc}): train into a new folder") from None


def check_same_run(recorded: dict, config: ExperimentConfig, out_dir: Path) -> None:
    """On resume: the config must be the run's own (``recorded``) but for :data:`RESUMABLE_CHANGES`.
    Another seed, data, loss or degradation would continue another run from this one's state."""
    now = json.loads(json.dumps(config.to_dict()))
    changed = [f"{section}.{key} ({recorded.get(section, {}).get(key)!r} -> {value!r})"
               for section, entries in now.items() for key, value in entries.items()
               if recorded.get(section, {}).get(key) != value and f"{section}.{key}" not in RESUMABLE_CHANGES]
    if changed:
        raise TrainingError(f"--resume: the config is not the run's own ({out_dir / 'config.json'}): "
                            f"{', '.join(changed[:4])}{' and more' if len(changed) > 4 else ''}; resume with its config "
                            "and overrides, or train into a new folder")


def check_steps_ahead(run: Run, recorded: Optional[dict]) -> None:
    """On resume with other step counts (to train longer): the checkpoint's step must not be past
    the new end, nor past a new end of pretraining that the run has not reached yet."""
    tc, step = run.config.train, run.step
    was = (recorded or {}).get("train", {})
    pretrained = was.get("pretrain_steps", tc.pretrain_steps)
    skips_pretraining_end = tc.pretrain_steps < step <= pretrained
    if step > tc.pretrain_steps + tc.gan_steps or skips_pretraining_end:
        raise TrainingError(f"--resume: the checkpoint is at step {step}, past the end the steps now set "
                            f"(train.pretrain_steps {tc.pretrain_steps}, train.gan_steps {tc.gan_steps}): "
                            "resume with as many steps as the run had, or more")
    if step > pretrained and tc.pretrain_steps != pretrained:  # the adversarial phase has begun: its start is history
        raise TrainingError(f"--resume: the checkpoint is at step {step}, in the adversarial phase that began after "
                            f"{pretrained} pixel-loss steps: train.pretrain_steps cannot change now (only "
                            "train.gan_steps, to train longer)")


def recorded_split(out_dir: Path) -> Optional[Split]:
    """The split a run was started with (its ``split.json``); None for a run without one."""
    recorded = _run_record(out_dir, "split.json")
    if recorded is None:
        return None
    try:
        return Split(train=[Path(p) for p in recorded["train"]], val=[Path(p) for p in recorded["val"]],
                     by=recorded["by"], val_groups=recorded["val_groups"])
    except (KeyError, TypeError) as exc:
        raise TrainingError(f"--resume: {out_dir / 'split.json'} is damaged ({type(exc).__name__}: {exc}): it says "
                            "which files the run held out; without it, train into a new folder") from None


def check_split_holds(split: Split, files: List[Path]) -> None:
    """On resume: every file of the run's split is still there (a resumed run must not train on
    what it held out, nor score itself on what it trained on); files added since are not used."""
    found, kept = [str(p) for p in files], [str(p) for p in split.train + split.val]
    found_set, kept_set = set(found), set(kept)
    gone = [p for p in kept if p not in found_set]
    if gone:
        raise TrainingError(f"--resume: {len(gone)} file(s) of the run's split (split.json) are no longer found "
                            f"(first: {gone[0]}): restore them, or train into a new folder")
    added = [p for p in found if p not in kept_set]
    if added:
        log.warning("msrgan: %d file(s) found since the run started (first: %s) are not used: a resumed run keeps "
                    "its split (split.json); train into a new folder to use them", len(added), added[0])


def load_data(config: ExperimentConfig, progress: bool, split: Optional[Split] = None
              ) -> "tuple[Split, List[np.ndarray], List[Tuple[np.ndarray, np.ndarray]]]":
    """The split of ``data.train``, its training images and its fixed validation pairs.

    Parameters
    ----------
    config : ExperimentConfig
        Its ``data``, ``normalization``, ``degradation`` and ``generator`` say what to load and how.
    progress : bool
        Show a progress bar while loading the training images.
    split : Split, optional
        A resumed run's own split (:func:`recorded_split`), kept; otherwise drawn from the files found.

    Returns
    -------
    split : Split
        Which files train and which validate.
    train_images : list of np.ndarray, each (C, Y, X), or of RealPair (with ``data.train_lr``)
        The normalised training images, or registered real pairs.
    val_pairs : list of (np.ndarray, np.ndarray)
        Low resolution (C, y, x) and truth (C, Y, X) for at most ``data.max_val_images`` images.
    """
    tc, g_cfg = config.train, config.generator
    files = find_images(config.data.train)
    if split is None:
        split = split_files(files, config.data.well_regex, config.data.val_fraction, tc.seed)
    else:
        check_split_holds(split, files)
    if config.data.train_lr:  # real pairs: the split is the high-resolution files', each takes its partner
        from .pairs import find_pairs

        partner = {hr: lr for lr, hr in find_pairs(config.data.train_lr, files)}

        def load(paths, min_size, show, role="training"):
            return load_pairs([(partner[p], p) for p in paths], config.normalization, g_cfg.in_channels, g_cfg.scale,
                              min_size, config.data.channel_axis, progress=show, role=role)
    else:
        def load(paths, min_size, show, role="training"):
            return load_images(paths, config.normalization, g_cfg.in_channels, min_size, config.data.channel_axis,
                               progress=show, role=role)
    train_images = load(split.train, tc.patch_size, progress)
    val_images = (load(spread(split.val, config.data.max_val_images), g_cfg.scale * 8, False, role="validation")
                  if split.val else [])
    return split, train_images, validation_pairs(scorable(val_images, config), config.degradation, tc.seed)


def scorable(images: list, config: ExperimentConfig) -> list:
    """The validation images that are not blank fields (an empty well, an empty channel), with a
    warning for the rest: as evaluate and calibrate leave them out, since bicubic scores 60 dB and
    more on them and their mean would choose the model by how flat it draws nothing."""
    from .evaluate import blank_channel

    kept = [image for image in images if blank_channel(getattr(image, "hr", image), config.normalization) is None]
    if len(kept) < len(images):
        log.warning("msrgan: %d of the %d validation images are blank fields (an empty well or channel) and are left "
                    "out of validation", len(images) - len(kept), len(images))
    return kept


def write_run_description(out_dir: Path, config: ExperimentConfig, split: Split) -> None:
    """Write ``split.json`` (which files train and which validate) and ``config.json`` into ``out_dir``."""
    records = {"split.json": {"by": split.by, "val_groups": split.val_groups,
                              "train": [str(p) for p in split.train], "val": [str(p) for p in split.val]},
               "config.json": config.to_dict()}
    for name, record in records.items():  # whole or not at all: a resume reads both
        with atomic_write(out_dir / name) as tmp:
            Path(tmp).write_text(json.dumps(record, indent=1))


def build_networks(config: ExperimentConfig, device: torch.device) -> "tuple[nn.Module, Discriminator]":
    """The generator and discriminator on ``device``, their weights drawn from ``train.seed``.

    The global random generator is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        generator = build_generator(config.generator).to(device, memory_format=memory_format(device))
        discriminator = Discriminator(config.discriminator).to(device, memory_format=memory_format(device))
    return generator, discriminator


def memory_format(device: torch.device) -> torch.memory_format:
    """How the networks and batches lie in memory: channels-last on the CPU, as inference runs,
    where oneDNN's convolutions train faster so (docs/training.md); as torch lays them elsewhere."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def feature_extractor(config: ExperimentConfig, discriminator: Discriminator,
                      device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The content-loss feature extractor of ``loss.feature_extractor``, on ``device``.

    One that is part of ``discriminator`` is already there, and stays shared with it.
    """
    features = make_feature_extractor(config.loss, discriminator)
    if isinstance(features, nn.Module) and features is not discriminator.features:
        features = features.to(device)
    return features


def training_precision(train_config: TrainConfig, device: torch.device, adversarial: bool = False) -> str:
    """``bf16`` (mixed: weights, optimiser and losses in fp32) with ``train.mixed_precision`` on
    CUDA, and on a CPU that computes bf16 itself (:func:`~msrgan_core.device.cpu_has_bf16`) in the
    pixel-loss phase; else ``fp32``. The CPU's adversarial phase stays fp32, as the packaged
    ``perceptual`` was trained: in bf16 one such run drew markedly less texture (docs/training.md)."""
    if not train_config.mixed_precision:
        return "fp32"
    return "bf16" if device.type == "cuda" or (cpu_has_bf16() and not adversarial) else "fp32"


def autocast_for(train_config: TrainConfig, device: torch.device,
                 adversarial: bool = False) -> Callable[[], contextlib.AbstractContextManager]:
    """The context for forward passes of a phase: bf16 autocast where :func:`training_precision`
    says so, else none.

    On CUDA it also lets cuDNN time its kernels for the fixed patch shapes and keep the fastest.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if training_precision(train_config, device, adversarial) == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def set_learning_rate(optimizers: "tuple[torch.optim.Optimizer, ...]", lr: float) -> None:
    """Set every parameter group of ``optimizers`` to the learning rate ``lr``."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def pretrain_step(run: Run, lr_t: torch.Tensor, hr_t: torch.Tensor,
                  autocast: Callable[[], contextlib.AbstractContextManager]
                  ) -> "tuple[torch.Tensor, Dict[str, torch.Tensor]]":
    """One step of the generator on the pixel loss.

    Parameters
    ----------
    run : Run
        Its generator and ``opt_g`` take the step.
    lr_t, hr_t : torch.Tensor, shapes (N, C, y, x) and (N, C, Y, X)
        The batch: low-resolution patches and their truth, on ``run.device``.
    autocast : callable
        The context for forward passes (see `autocast_for`).

    Returns
    -------
    loss : torch.Tensor
        The pixel loss, a scalar.
    terms : dict of str to torch.Tensor
        The same as ``{"pixel": loss}``.
    """
    with autocast():
        sr = run.generator(lr_t)
    loss = pixel_loss(sr.float(), hr_t, run.config.train.pixel_loss)
    run.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    run.opt_g.step()
    return loss, {"pixel": loss}


def adversarial_step(run: Run, lr_t: torch.Tensor, hr_t: torch.Tensor,
                     autocast: Callable[[], contextlib.AbstractContextManager]
                     ) -> "tuple[torch.Tensor, Dict[str, torch.Tensor]]":
    """One adversarial step: the generator on the perceptual loss, then the discriminator.

    The discriminator is frozen while the generator's loss is built from its named terms and
    the generator steps; then the discriminator steps on the detached output.

    Parameters
    ----------
    run : Run
        Its networks and optimisers take the step.
    lr_t, hr_t : torch.Tensor, shapes (N, C, y, x) and (N, C, Y, X)
        The batch: low-resolution patches and their truth, on ``run.device``.
    autocast : callable
        The context for forward passes (see `autocast_for`).

    Returns
    -------
    loss : torch.Tensor
        The generator's total loss, a scalar.
    terms : dict of str to torch.Tensor
        The generator's named terms and ``total`` (see `perceptual_loss`), and ``discriminator``.
    """
    tc, raw_d = run.config.train, unwrap(run.discriminator)
    raw_d.requires_grad_(False)
    with autocast():
        sr = run.generator(lr_t)
        fake_logits = raw_d(sr)
    terms = perceptual_loss(sr.float(), hr_t, fake_logits.float(), run.features, run.config.loss, tc.pixel_loss,
                            run.config.generator.scale)
    run.opt_g.zero_grad(set_to_none=True)
    terms["total"].backward()
    run.opt_g.step()

    raw_d.requires_grad_(True)
    with autocast():
        real_logits = run.discriminator(hr_t)
        fake_logits = run.discriminator(sr.detach())
    d_loss = discriminator_loss(real_logits.float(), fake_logits.float())
    run.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    run.opt_d.step()
    terms["discriminator"] = d_loss
    return terms["total"], terms


def finite_loss(loss: torch.Tensor, steps_done: int) -> float:
    """The value of ``loss``, read from the device.

    Raises
    ------
    TrainingError
        The loss is not finite (by step ``steps_done - 1``).
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingError(f"the loss became {value} by step {steps_done - 1}; lower train.lr or check the data")
    return value


def evaluate_and_save(run: Run, row: dict, writer: "Optional[SummaryWriter]", training_ends: bool) -> float:
    """Score the served generator, log the metrics row, save a sample and the model file this step earns.

    In the pretraining phase, ``fidelity.safetensors`` is saved on the best validation PSNR so
    far (on each evaluation, without validation pairs); in the adversarial phase,
    ``perceptual.safetensors`` is saved when training ends.

    Parameters
    ----------
    run : Run
        The run, at the step just done; its ``best_psnr`` is updated.
    row : dict
        The metrics row so far: ``step``, ``phase``, ``lr``, ``train_loss`` and ``seconds``.
    writer : SummaryWriter or None
        Where the validation scores also go (``train.tensorboard``).
    training_ends : bool
        This is the last step of training.

    Returns
    -------
    float
        The validation PSNR (-inf without validation pairs).
    """
    served = run.served
    scores: Dict[str, float] = {}
    if run.val_pairs:
        scores, sample = evaluate(served, run.val_pairs, run.device)
        scores.update(run.baseline)
        low, truth = run.val_pairs[0]
        save_sample(run.out_dir / "samples" / f"step_{run.step:07d}.png", low, sample, truth)
    _append_metrics(run.out_dir / METRICS, {**row, **scores})
    if writer is not None:
        for name, value in scores.items():
            writer.add_scalar(f"val/{name}", value, run.step)
    psnr_now = scores.get("val_psnr", -math.inf)
    pretraining = row["phase"] == "pretrain"
    best_yet = psnr_now > run.best_psnr or not run.val_pairs or run.best_psnr == -math.inf
    if pretraining and best_yet:
        run.best_psnr = max(run.best_psnr, psnr_now)
        save_generator(run, "fidelity", served, scores)
    if not pretraining and training_ends:
        save_generator(run, "perceptual", served, scores)
    return psnr_now


def save_generator(run: Run, name: str, generator: nn.Module, scores: Dict[str, float]) -> None:
    """Save ``generator`` as ``<name>.safetensors`` in the run folder, with its `model_metadata`."""
    save_model(run.out_dir / f"{name}.safetensors", generator,
               model_metadata(run.config, run.split, name, run.step, scores, run.device, run.dist.world_size,
                              run.init_note))


def checkpoint_state(run: Run) -> dict:
    """The resume state of ``run``: step, best PSNR, weights, optimisers, weight average and
    what the run started from."""
    state = {
        "step": run.step, "best_psnr": run.best_psnr,
        "generator": unwrap(run.generator).state_dict(), "discriminator": unwrap(run.discriminator).state_dict(),
        "opt_g": run.opt_g.state_dict(), "opt_d": run.opt_d.state_dict(),
        "init_note": json.dumps(run.init_note),  # where train.init started it, for the model files of a resume
    }
    if run.average is not None:
        state.update(generator_average=run.average.module.state_dict(), average_updates=run.average.updates)
    return state


def restore_checkpoint(run: Run, state: dict) -> None:
    """Put ``run`` in the ``state`` of `checkpoint_state`.

    A checkpoint from a run without the weight average starts the average from its generator.
    """
    try:
        unwrap(run.generator).load_state_dict(state["generator"])
        unwrap(run.discriminator).load_state_dict(state["discriminator"])
    except (RuntimeError, KeyError) as exc:
        raise TrainingError(f"--resume: the checkpoint in {run.out_dir} holds other networks than the config's "
                            f"[generator] and [discriminator] ({' '.join(str(exc).split())[:200]}): resume with the "
                            "config the run started with, or use a new folder") from None
    run.opt_g.load_state_dict(state["opt_g"])
    run.opt_d.load_state_dict(state["opt_d"])
    run.step, run.best_psnr = int(state["step"]), float(state["best_psnr"])
    if run.average is not None and "generator_average" in state:
        run.average.module.load_state_dict(state["generator_average"])
        run.average.updates = int(state["average_updates"])
    elif run.average is not None:
        run.average.restart(unwrap(run.generator))
    if run.dist.is_main:
        log.info("msrgan: resuming %s at step %d", run.out_dir, run.step)


def save_run_state(run: Run, pretrain_ends: bool) -> None:
    """Write ``checkpoint.pt``; at the end of pretraining also ``checkpoint_pretrained.pt``.

    The second lets the adversarial phase be rerun (or tuned) without pretraining again.
    """
    state = checkpoint_state(run)
    save_checkpoint(run.out_dir / CHECKPOINT, state)
    if pretrain_ends:
        save_checkpoint(run.out_dir / PRETRAINED_CHECKPOINT, state)


def _prepare_metrics_csv(path: Path, resume_step: int) -> float:
    """Create the CSV, or on resume drop rows past the checkpoint (they will be logged again);
    returns the training seconds of the last row kept (0 for a new run)."""
    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return float(rows[-1]["seconds"] or 0) if rows else 0.0


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=METRICS_FIELDS, extrasaction="ignore").writerow(row)


def _tensorboard(out_dir: Path) -> "SummaryWriter":
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainingError("train.tensorboard = true needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out_dir / "tensorboard"))
