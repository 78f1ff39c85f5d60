"""The training loop, written out: SRResNet pretraining, then adversarial mSRGAN training.

Phase 1 (``pretrain_steps``) minimises the pixel loss; phase 2 (``gan_steps``) continues from
it with the perceptual loss. The same code runs on CUDA (bf16 mixed precision) and on the CPU,
and data-parallel across processes when started by ``torchrun`` (NCCL on GPUs, gloo on CPUs).

A run directory holds:

- ``checkpoint.pt``: resume state (weights, optimisers, step), written atomically;
- ``checkpoint_pretrained.pt``: the same at the end of pretraining;
- ``metrics.csv``: validation PSNR/SSIM (and the bicubic baseline) per evaluation;
- ``fidelity.safetensors``: the phase-1 generator with the best validation PSNR;
- ``perceptual.safetensors``: the phase-2 generator at the end of training;
- ``samples/step_NNNNNNN.png``: low resolution | output | truth, for each evaluation;
- ``split.json`` and ``config.json``: what was trained on and how.

With ``train.ema_decay`` > 0, the saved and scored generator is the moving average of its weights.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .config import ExperimentConfig
from .data import load_images, sample_batch, split_files, validation_pairs
from .features import make_feature_extractor
from .device import describe_device, setup_distributed
from .io import atomic_write, find_images
from .losses import discriminator_loss, perceptual_loss, pixel_loss
from .metrics import image_metrics, upscale_bicubic
from .modelfile import ModelFileError, load_model, save_model
from .models import Discriminator, build_generator, count_parameters

log = logging.getLogger("msrgan")

CHECKPOINT = "checkpoint.pt"
PRETRAINED_CHECKPOINT = "checkpoint_pretrained.pt"
LOSS_READ_EVERY = 20  # steps between reads of the training loss on CUDA (each read waits for the GPU)
METRICS_FIELDS = ["step", "phase", "lr", "train_loss", "val_psnr", "val_ssim", "bicubic_psnr", "bicubic_ssim", "seconds"]


class TrainingError(RuntimeError):
    """A run that cannot start or continue as asked."""


def spread(items: list, count: int) -> list:
    """At most ``count`` items, evenly spaced through ``items`` (so every source is represented)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


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


def batch_stream(batches: StepBatches, workers: int, pin_memory: bool):
    """The batches in step order: drawn here (``workers`` = 0) or ahead by worker processes."""
    if workers == 0 or len(batches) == 0:  # no processes started for a run that has no steps left
        return (batches[i] for i in range(len(batches)))
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                            prefetch_factor=4, pin_memory=pin_memory))


def initial_weights(config: ExperimentConfig) -> "tuple[Optional[dict], Optional[dict]]":
    """The generator weights named by ``train.init`` and a note of where they came from (or None)."""
    if not config.train.init:
        return None, None
    try:
        model = load_model(config.train.init)
    except ModelFileError as exc:
        raise TrainingError(f"train.init: {exc}") from None
    if model.config != config.generator:
        raise TrainingError(f"train.init: {model.source} is a {model.config} but [generator] asks for {config.generator}")
    if model.normalization != config.normalization:
        raise TrainingError(f"train.init: {model.source} was trained on {model.normalization} "
                            f"but [normalization] says {config.normalization}")
    meta = model.metadata
    trained = meta.get("training", {})  # the whole chain: where the starting model was trained, and from what
    note = {"model": config.train.init, "name": meta.get("name"), "steps": trained.get("steps"),
            "created": meta.get("created"), "hardware": trained.get("hardware"), "init": trained.get("init")}
    return model.generator.state_dict(), note


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


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


def model_metadata(config: ExperimentConfig, split, name: str, step: int, metrics: Dict[str, float],
                   device: torch.device, world_size: int, init: Optional[dict] = None) -> dict:
    return {
        "name": name,
        "normalization": dataclasses.asdict(config.normalization),
        "degradation": dataclasses.asdict(config.degradation),
        "loss": dataclasses.asdict(config.loss) if name == "perceptual" else {"pixel": config.train.pixel_loss},
        "training": {
            "data": [str(p) for p in config.data.train],
            "train_files": len(split.train),
            "val_files": len(split.val),
            "split_by": split.by,
            "well_regex": config.data.well_regex,
            "val_groups": split.val_groups,
            "steps": step,
            "pretrain_steps": config.train.pretrain_steps,
            "gan_steps": config.train.gan_steps if name == "perceptual" else 0,
            "batch_size": config.train.batch_size,
            "patch_size": config.train.patch_size,
            "seed": config.train.seed,
            "init": init,
            "hardware": f"{describe_device(device)} x {world_size}, {platform.machine()}",
            "torch": torch.__version__,
        },
        "validation": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "msrgan_version": __version__,
    }


def train(
    config: ExperimentConfig,
    out_dir: "str | Path",
    resume: bool = False,
    progress: bool = True,
    until_step: Optional[int] = None,
) -> Path:
    """Train (or resume) a run in ``out_dir``; returns ``out_dir``.

    ``until_step`` stops early at that step, with a checkpoint, e.g. to fit a cluster job's
    time limit; ``resume`` then continues exactly as if there had been no stop.

    Raises
    ------
    TrainingError
        ``out_dir`` already holds a run and ``resume`` is off, or ``resume`` is on and it holds none.
    """
    out_dir = Path(out_dir)
    tc = config.train
    dist, device = setup_distributed(tc.device)
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise TrainingError(f"{out_dir} already holds a training run: pass --resume to continue it, or use a new folder")
    if resume and not checkpoint_path.exists():
        raise TrainingError(f"--resume: {out_dir} holds no {CHECKPOINT} to continue from")
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        log.info("msrgan: training on %s (%d process%s)", describe_device(device), dist.world_size,
                 "es" if dist.world_size > 1 else "")

    files = find_images(config.data.train)
    split = split_files(files, config.data.well_regex, config.data.val_fraction, tc.seed)
    g_cfg = config.generator
    train_images = load_images(split.train, config.normalization, g_cfg.in_channels, tc.patch_size,
                               config.data.channel_axis, progress=progress and dist.is_main)
    val_images = load_images(spread(split.val, config.data.max_val_images), config.normalization, g_cfg.in_channels,
                             g_cfg.scale * 8, config.data.channel_axis) if split.val else []
    val_pairs = validation_pairs(val_images, config.degradation, tc.seed)
    baseline = bicubic_scores(val_pairs) if val_pairs else {}
    if dist.is_main:
        (out_dir / "split.json").write_text(json.dumps(
            {"by": split.by, "val_groups": split.val_groups,
             "train": [str(p) for p in split.train], "val": [str(p) for p in split.val]}, indent=1))
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))

    with torch.random.fork_rng(devices=[]):  # weights drawn from the seed; the global RNG is left alone
        torch.manual_seed(tc.seed)
        generator = build_generator(g_cfg).to(device)
        discriminator = Discriminator(config.discriminator).to(device)
    init_state, init_note = initial_weights(config)
    if init_state is not None:
        generator.load_state_dict(init_state)
    opt_g = torch.optim.Adam(generator.parameters(), lr=tc.lr, betas=(0.9, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=tc.lr, betas=(0.9, 0.999))
    features = make_feature_extractor(config.loss, discriminator)
    if isinstance(features, nn.Module) and features is not discriminator.features:
        features = features.to(device)

    average = WeightAverage(generator, tc.ema_decay) if tc.ema_decay > 0 else None
    step, best_psnr = 0, -math.inf
    if resume:
        state = load_checkpoint(checkpoint_path)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step, best_psnr = int(state["step"]), float(state["best_psnr"])
        if average is not None and "generator_average" in state:
            average.module.load_state_dict(state["generator_average"])
            average.updates = int(state["average_updates"])
        elif average is not None:  # a checkpoint from a run without the average: start it here
            average.restart(generator)
        if dist.is_main:
            log.info("msrgan: resuming %s at step %d", out_dir, step)
    if dist.world_size > 1:
        generator = nn.parallel.DistributedDataParallel(generator)
        discriminator = nn.parallel.DistributedDataParallel(discriminator)

    metrics_path = out_dir / "metrics.csv"
    if dist.is_main:
        _prepare_metrics_csv(metrics_path, step)
    writer = _tensorboard(out_dir) if tc.tensorboard and dist.is_main else None
    use_amp = tc.mixed_precision and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: let cuDNN time and keep its fastest kernels
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    total = tc.pretrain_steps + tc.gan_steps
    bar = tqdm(total=total, initial=step, desc="training", unit="step", disable=not (progress and dist.is_main))
    started, loss_value = time.time(), float("nan")
    raw_d = unwrap(discriminator)

    stop = total if until_step is None else min(total, int(until_step))
    if resume:
        for stale in out_dir.glob(f".{CHECKPOINT}.*.part"):  # left by a kill during a write
            stale.unlink()
    stream = batch_stream(StepBatches(train_images, config, dist.rank, step, stop), tc.workers,
                          pin_memory=device.type == "cuda")
    while step < stop:
        phase = "pretrain" if step < tc.pretrain_steps else "gan"
        if average is not None and step == tc.pretrain_steps and step > 0:
            average.restart(unwrap(generator))  # the adversarial phase averages only its own weights
        lr_now = learning_rate(step, config)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr_now
        lr_t, hr_t = (t.to(device, non_blocking=True) for t in next(stream))

        if phase == "pretrain":
            with autocast():
                sr = generator(lr_t)
            loss = pixel_loss(sr.float(), hr_t, tc.pixel_loss)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            terms = {"pixel": loss}
        else:
            # generator step, discriminator frozen
            raw_d.requires_grad_(False)
            with autocast():
                sr = generator(lr_t)
                fake_logits = raw_d(sr)
            terms = perceptual_loss(sr.float(), hr_t, fake_logits.float(), features, config.loss, tc.pixel_loss)
            opt_g.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt_g.step()
            # discriminator step on the detached output
            raw_d.requires_grad_(True)
            with autocast():
                real_logits = discriminator(hr_t)
                fake_logits = discriminator(sr.detach())
            d_loss = discriminator_loss(real_logits.float(), fake_logits.float())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            terms["discriminator"] = d_loss
            loss = terms["total"]
        if average is not None:
            average.update(unwrap(generator))
        step += 1
        phase_ends = step == tc.pretrain_steps or step == total
        # Reading the loss waits for the GPU; on CUDA it is read every few steps, so that the
        # next steps queue up meanwhile. A non-finite loss stays non-finite, so it is still caught.
        if device.type != "cuda" or step % LOSS_READ_EVERY == 0 or step % tc.eval_every == 0 or phase_ends or step == stop:
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingError(f"the loss became {loss_value} by step {step - 1}; lower train.lr or check the data")
            bar.set_postfix(phase=phase, loss=f"{loss_value:.4g}")
        bar.update(1)
        if writer is not None:
            for name, value in terms.items():
                writer.add_scalar(f"train/{name}", float(value.detach()), step)

        if dist.is_main and (step % tc.eval_every == 0 or phase_ends):
            served = average.module if average is not None else unwrap(generator)  # what gets scored and saved
            row = {"step": step, "phase": phase, "lr": lr_now, "train_loss": loss_value,
                   "seconds": round(time.time() - started, 1)}
            scores = {}
            if val_pairs:
                scores, sample = evaluate(served, val_pairs, device)
                scores.update(baseline)
                save_sample(out_dir / "samples" / f"step_{step:07d}.png", val_pairs[0][0], sample, val_pairs[0][1])
            row.update(scores)
            _append_metrics(metrics_path, row)
            if writer is not None:
                for name, value in scores.items():
                    writer.add_scalar(f"val/{name}", value, step)
            psnr_now = scores.get("val_psnr", -math.inf)
            if phase == "pretrain" and (psnr_now > best_psnr or not val_pairs or best_psnr == -math.inf):
                best_psnr = max(best_psnr, psnr_now)
                save_model(out_dir / "fidelity.safetensors", served,
                           model_metadata(config, split, "fidelity", step, scores, device, dist.world_size, init_note))
            if phase == "gan" and step == total:
                save_model(out_dir / "perceptual.safetensors", served,
                           model_metadata(config, split, "perceptual", step, scores, device, dist.world_size, init_note))
            bar.set_postfix(phase=phase, loss=f"{loss_value:.4g}", val_psnr=f"{psnr_now:.2f}")
        pretrain_ends = step == tc.pretrain_steps and tc.gan_steps > 0
        if dist.is_main and (step % tc.checkpoint_every == 0 or step == stop or pretrain_ends):
            state = {
                "step": step, "best_psnr": best_psnr,
                "generator": unwrap(generator).state_dict(), "discriminator": raw_d.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            }
            if average is not None:
                state.update(generator_average=average.module.state_dict(), average_updates=average.updates)
            save_checkpoint(checkpoint_path, state)
            if pretrain_ends:  # lets the adversarial phase be rerun (or tuned) without pretraining again
                save_checkpoint(out_dir / PRETRAINED_CHECKPOINT, state)
        if dist.world_size > 1 and (step % tc.eval_every == 0 or step % tc.checkpoint_every == 0 or phase_ends or step == stop):
            torch.distributed.barrier()
    bar.close()
    if writer is not None:
        writer.close()
    if dist.world_size > 1:
        torch.distributed.destroy_process_group()
    if dist.is_main:
        log.info("msrgan: at step %d of %d; generator %d parameters; outputs in %s",
                 step, total, count_parameters(unwrap(generator)), out_dir)
    return out_dir


def _prepare_metrics_csv(path: Path, resume_step: int) -> None:
    """Create the CSV, or on resume drop rows past the checkpoint (they will be logged again)."""
    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=METRICS_FIELDS, extrasaction="ignore").writerow(row)


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainingError("train.tensorboard = true needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out_dir / "tensorboard"))


def load_config(path: Optional["str | Path"], overrides: List[str] = ()) -> ExperimentConfig:
    """A config from TOML (or the defaults), with ``section.key=value`` overrides (TOML values)."""
    from .config import ConfigError, tomllib

    base = ExperimentConfig.from_toml(path).to_dict() if path else ExperimentConfig().to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in base:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.pretrain_steps=100")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        base[section][name] = value
    return ExperimentConfig.from_dict(base)
