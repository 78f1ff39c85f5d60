"""The training loop: both phases, exact resume, atomic checkpoints that survive kill -9."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from helpers import smooth_image
from msrgan_core.config import ExperimentConfig, load_config
from msrgan_core.modelfile import load_model, read_metadata
from msrgan_core.train import (
    CHECKPOINT, TrainingError, WeightAverage, learning_rate, load_checkpoint, load_data, train,
)


def make_plate(folder: Path, wells=("A01", "A02", "B01", "B02"), sites=2, shape=(64, 72)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, well in enumerate(wells):
        for site in range(1, sites + 1):
            image = smooth_image(shape, seed=10 * i + site, low=100, high=3000, noise=0.02).astype(np.uint16)
            tifffile.imwrite(folder / f"plate_{well}_s{site}_w1.tif", image)
    return folder


@pytest.mark.parametrize("gan_lr,gan_top", [(0.0, 2e-4), (5e-5, 5e-5)])
def test_each_phase_decays_from_its_own_rate(gan_lr, gan_top):
    config = load_config(None, ["train.pretrain_steps=100", "train.gan_steps=50", "train.lr=2e-4",
                                f"train.gan_lr={gan_lr}", "train.lr_min_fraction=0.1"])
    assert learning_rate(0, config) == pytest.approx(2e-4)
    assert learning_rate(50, config) == pytest.approx(0.5 * (2e-4 + 2e-5))
    assert learning_rate(99, config) == pytest.approx(2e-5, rel=0.01)
    assert learning_rate(100, config) == pytest.approx(gan_top)  # the adversarial phase starts afresh
    assert learning_rate(149, config) == pytest.approx(0.1 * gan_top, rel=0.01)


def tiny_config(data: Path, **train) -> ExperimentConfig:
    overrides = [
        f'data.train=["{data}"]', 'data.well_regex="_(?P<well>[A-P][0-9]{2})_s"', "data.val_fraction=0.25",
        "generator.n_blocks=1", "generator.n_features=8", "discriminator.n_features=8",
        "train.patch_size=32", "train.batch_size=2", "train.pretrain_steps=3", "train.gan_steps=3",
        "train.checkpoint_every=2", "train.eval_every=3", "train.device=\"cpu\"",
    ] + [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, overrides)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_phases_write_models_metrics_samples_and_split(tmp_path):
    data = make_plate(tmp_path / "plate")
    run = train(tiny_config(data), tmp_path / "run", progress=False)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [(r["step"], r["phase"]) for r in rows] == [("3", "pretrain"), ("6", "gan")]
    assert all(np.isfinite(float(r["val_psnr"])) and 0 < float(r["val_ssim"]) <= 1 for r in rows)
    fidelity, perceptual = load_model(run / "fidelity.safetensors"), load_model(run / "perceptual.safetensors")
    assert fidelity.metadata["training"]["split_by"] == "well"
    split = json.loads((run / "split.json").read_text())
    assert len(split["val_groups"]) == 1 and split["val_groups"][0] in ["well " + w for w in ["A01", "A02", "B01", "B02"]]
    assert fidelity.metadata["training"]["val_files"] == len(split["val"])  # the file says how, the run folder which
    assert str(data) not in json.dumps(fidelity.metadata)  # no paths into folders its users do not have
    assert perceptual.metadata["training"]["gan_steps"] == 3 and perceptual.metadata["loss"]["w_adv"] == 0.001
    assert float(perceptual.metadata["validation"]["val_psnr"]) == pytest.approx(float(rows[-1]["val_psnr"]))
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert (run / "checkpoint_pretrained.pt").exists()


def test_resume_continues_exactly(tmp_path):
    data = make_plate(tmp_path / "plate")
    straight = train(tiny_config(data), tmp_path / "straight", progress=False)
    train(tiny_config(data), tmp_path / "stopped", progress=False, until_step=4)
    assert load_checkpoint(tmp_path / "stopped" / CHECKPOINT)["step"] == 4
    metrics = tmp_path / "stopped" / "metrics.csv"  # as if its first steps had taken 1000 s
    rows = list(csv.DictReader(open(metrics)))
    with open(metrics, "w", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writeheader()
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerows([dict(r, seconds="1000.0") for r in rows])
    resumed = train(tiny_config(data), tmp_path / "stopped", resume=True, progress=False)
    a, b = load_checkpoint(straight / CHECKPOINT), load_checkpoint(resumed / CHECKPOINT)
    assert a["step"] == b["step"] == 6
    assert states_equal(a["generator"], b["generator"])
    assert states_equal(a["discriminator"], b["discriminator"])
    rows = list(csv.DictReader(open(resumed / "metrics.csv")))
    assert [r["step"] for r in rows] == ["3", "6"]
    assert float(rows[1]["seconds"]) >= 1000.0  # the run's time goes on from its checkpoint's, not from 0


def test_worker_processes_draw_the_same_batches_as_the_training_process(tmp_path):
    data = make_plate(tmp_path / "plate")
    here = train(tiny_config(data), tmp_path / "here", progress=False)
    workers = train(tiny_config(data, workers=2), tmp_path / "workers", progress=False)
    a, b = load_checkpoint(here / CHECKPOINT), load_checkpoint(workers / CHECKPOINT)
    assert states_equal(a["generator"], b["generator"]) and states_equal(a["discriminator"], b["discriminator"])
    fresh = load_checkpoint(train(tiny_config(data, workers=2, seed=1), tmp_path / "seed1", progress=False) / CHECKPOINT)
    assert not states_equal(a["generator"], fresh["generator"])


def test_weight_average_warms_up_then_holds_its_decay():
    weights = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(weights.weight)
    average = WeightAverage(weights, decay=0.5)
    with torch.no_grad():
        weights.weight.fill_(1.0)
    average.update(weights)  # warm-up decay 1/10: mostly the new weights
    assert float(average.module.weight) == pytest.approx(0.9)
    average.update(weights)  # decay min(0.5, 2/11)
    assert float(average.module.weight) == pytest.approx(0.9 * 2 / 11 + 9 / 11)
    for _ in range(30):
        average.update(weights)
    with torch.no_grad():
        weights.weight.fill_(3.0)
    before = float(average.module.weight)
    average.update(weights)  # warmed up: the decay is capped at 0.5
    assert float(average.module.weight) == pytest.approx(0.5 * before + 0.5 * 3.0)
    average.restart(weights)
    assert float(average.module.weight) == 3.0 and average.updates == 0
    assert not average.module.weight.requires_grad


def test_weight_average_is_what_gets_saved_and_resumes_exactly(tmp_path):
    data = make_plate(tmp_path / "plate")
    straight = train(tiny_config(data, ema_decay=0.9), tmp_path / "straight", progress=False)
    state = load_checkpoint(straight / CHECKPOINT)
    perceptual = load_model(straight / "perceptual.safetensors").generator.state_dict()
    assert states_equal(perceptual, state["generator_average"])
    assert not states_equal(perceptual, state["generator"])  # the average, not the last weights
    assert state["average_updates"] == 3  # restarted when the adversarial phase began
    pretrained = load_checkpoint(straight / "checkpoint_pretrained.pt")
    fidelity = load_model(straight / "fidelity.safetensors").generator.state_dict()
    assert pretrained["average_updates"] == 3 and states_equal(fidelity, pretrained["generator_average"])

    train(tiny_config(data, ema_decay=0.9), tmp_path / "stopped", progress=False, until_step=4)
    resumed = train(tiny_config(data, ema_decay=0.9), tmp_path / "stopped", resume=True, progress=False)
    assert states_equal(load_checkpoint(resumed / CHECKPOINT)["generator_average"], state["generator_average"])


def test_init_fine_tunes_a_model_file_and_records_it(tmp_path):
    data = make_plate(tmp_path / "plate")
    first = train(tiny_config(data, gan_steps=0), tmp_path / "first", progress=False)
    start = load_model(first / "fidelity.safetensors").generator.state_dict()
    tuned = train(tiny_config(data, gan_steps=0, pretrain_steps=1, lr=1e-12, init=f'"{first / "fidelity.safetensors"}"'),
                  tmp_path / "tuned", progress=False)
    weights = load_checkpoint(tuned / CHECKPOINT)["generator"]
    assert all(torch.allclose(weights[k], start[k], atol=1e-9) for k in start)  # began from the file
    fresh = load_checkpoint(train(tiny_config(data, gan_steps=0, pretrain_steps=1, lr=1e-12), tmp_path / "fresh",
                                  progress=False) / CHECKPOINT)["generator"]
    assert not states_equal(fresh, weights)
    meta = read_metadata(tuned / "fidelity.safetensors")["training"]["init"]
    assert meta["model"] == "fidelity.safetensors" and meta["name"] == "fidelity" and meta["steps"] == 3
    assert meta["hardware"] == read_metadata(first / "fidelity.safetensors")["training"]["hardware"]
    again = train(tiny_config(data, gan_steps=0, pretrain_steps=1, lr=1e-12, init=f'"{tuned / "fidelity.safetensors"}"'),
                  tmp_path / "again", progress=False)
    chain = read_metadata(again / "fidelity.safetensors")["training"]["init"]  # each model records its own start
    assert chain["model"] == "fidelity.safetensors" and chain["init"] == meta and meta["init"] is None
    moved = tiny_config(data, gan_steps=0, pretrain_steps=4, init=f'"{tuned / "fidelity.safetensors"}"')
    train(moved, tmp_path / "resumed", progress=False, until_step=2)
    (tuned / "fidelity.safetensors").rename(tmp_path / "elsewhere.safetensors")  # the start is in the checkpoint
    train(moved, tmp_path / "resumed", resume=True, progress=False)
    assert read_metadata(tmp_path / "resumed" / "fidelity.safetensors")["training"]["init"] == chain


def test_init_refuses_a_missing_or_mismatched_model(tmp_path):
    data = make_plate(tmp_path / "plate")
    with pytest.raises(TrainingError, match="train.init: .*nothing.safetensors"):
        train(tiny_config(data, init=f'"{tmp_path / "nothing.safetensors"}"'), tmp_path / "a", progress=False)
    another = r"fidelity.safetensors is a compact 12 x 48, 4x, 1 channel\(s\) network, and \[generator\] asks for .* x 8"
    with pytest.raises(TrainingError, match=f"train.init: {another}.*default_models.toml"):  # the packaged model is another
        train(tiny_config(data, init='"fidelity"'), tmp_path / "b", progress=False)


def test_refuses_to_overwrite_a_run_or_resume_nothing(tmp_path):
    data = make_plate(tmp_path / "plate")
    train(tiny_config(data), tmp_path / "run", progress=False, until_step=2)
    with pytest.raises(TrainingError, match="--resume"):
        train(tiny_config(data), tmp_path / "run", progress=False)
    with pytest.raises(TrainingError, match="no checkpoint.pt"):
        train(tiny_config(data), tmp_path / "empty", resume=True, progress=False)
    assert not (tmp_path / "empty").exists()  # a refused run leaves no folder behind
    train(tiny_config(data), tmp_path / "run", progress=False, resume=True, until_step=4)  # a model file by now
    (tmp_path / "run" / CHECKPOINT).unlink()  # another run's ends, without its checkpoint: not mixed with a new one's
    with pytest.raises(TrainingError, match=r"holds another run's files \(fidelity.safetensors, checkpoint_pretrained.pt\)"):
        train(tiny_config(data, seed=1), tmp_path / "run", progress=False)
    early = tmp_path / "early"  # a run that failed before its first checkpoint and model: started afresh
    train(tiny_config(data), early, progress=False, until_step=1)
    (early / CHECKPOINT).unlink()
    train(tiny_config(data, seed=1), early, progress=False, until_step=1)
    assert json.loads((early / "config.json").read_text())["train"]["seed"] == 1
    (tmp_path / "file").write_text("")
    with pytest.raises(TrainingError, match="file is a file: give a folder"):
        train(tiny_config(data), tmp_path / "file", progress=False)


HOLD_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "a+") as fh:
    fcntl.lockf(fh, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(60)
"""


def test_one_process_at_a_time_trains_into_a_folder(tmp_path):
    from msrgan_core.train import LOCK

    data = make_plate(tmp_path / "plate")
    run = train(tiny_config(data), tmp_path / "run", progress=False, until_step=2)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / LOCK)], stdout=subprocess.PIPE, text=True)
    try:  # as a job still running holds it
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match="being trained into by another process"):
            train(tiny_config(data), run, resume=True, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert load_checkpoint(run / CHECKPOINT)["step"] == 2
    train(tiny_config(data), run, resume=True, progress=False)  # once it has ended
    assert load_checkpoint(run / CHECKPOINT)["step"] == 6


FAILING_RUN = """
import sys
sys.path.insert(0, sys.argv[3])
from test_train import tiny_config
from msrgan_core.train import train
train(tiny_config(sys.argv[1], lr=1e9, workers=2, pretrain_steps=50, checkpoint_every=100, eval_every=100), sys.argv[2],
      progress=False)
"""


def test_a_failed_run_with_batch_workers_exits(tmp_path):
    """Its error escaping, the workers (deaf to stop signals) are ended with it, not waited for forever."""
    from pathlib import Path as P

    data = make_plate(tmp_path / "plate")
    done = subprocess.run([sys.executable, "-c", FAILING_RUN, str(data), str(tmp_path / "run"), str(P(__file__).parent)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "TrainingError: the loss became" in done.stderr, done.stderr[-2000:]


def test_a_resumed_run_keeps_its_split(tmp_path, caplog):
    """Files added since are not used, and a file of the split that is gone stops the resume: a
    held-out image must never become a training image, nor a trained one score the model."""
    import logging

    data = make_plate(tmp_path / "plate")
    run = train(tiny_config(data), tmp_path / "run", progress=False, until_step=2)
    before = json.loads((run / "split.json").read_text())
    for well in ("C01", "C02", "D01", "D02"):  # enough new wells that a split drawn again would differ
        tifffile.imwrite(data / f"plate_{well}_s1_w1.tif", tifffile.imread(data / "plate_A01_s1_w1.tif"))
    with caplog.at_level(logging.WARNING, logger="msrgan"):
        train(tiny_config(data), run, resume=True, progress=False, until_step=4)
    assert json.loads((run / "split.json").read_text()) == before
    assert "4 file(s) found since the run started" in caplog.text
    Path(before["val"][0]).unlink()
    with pytest.raises(TrainingError, match=r"1 file\(s\) of the run's split \(split.json\) are no longer found"):
        train(tiny_config(data), run, resume=True, progress=False)


def test_a_resume_with_another_config_is_refused_and_leaves_the_runs_record(tmp_path):
    data = make_plate(tmp_path / "plate")
    run = train(tiny_config(data), tmp_path / "run", progress=False, until_step=4)
    record = (run / "config.json").read_text()
    with pytest.raises(TrainingError, match=r"not the run's own .*train.seed \(0 -> 3\)"):
        train(tiny_config(data, seed=3), run, resume=True, progress=False)
    shorter = tiny_config(data)
    shorter.train.pretrain_steps, shorter.train.gan_steps = 2, 1  # the checkpoint is at step 4
    with pytest.raises(TrainingError, match="checkpoint is at step 4, past the end"):
        train(shorter, run, resume=True, progress=False)
    rewound = tiny_config(data, pretrain_steps=5)  # step 4 is adversarial: its start cannot move
    with pytest.raises(TrainingError, match="in the adversarial phase that began after 3 pixel-loss steps"):
        train(rewound, run, resume=True, progress=False)
    assert (run / "config.json").read_text() == record
    longer = tiny_config(data)
    longer.train.gan_steps += 2  # training longer is a resume
    train(longer, run, resume=True, progress=False)
    assert load_checkpoint(run / CHECKPOINT)["step"] == longer.train.pretrain_steps + longer.train.gan_steps


def endless_run_command(data: Path, run: Path, checkpoint_every: int, eval_every: int) -> list:
    """``msrgan train`` of a tiny network for 100 000 steps: a run to stop from outside."""
    return [sys.executable, "-m", "msrgan_core.cli", "train", "--out", str(run), "-q",
            "--set", f'data.train=["{data}"]', "--set", "generator.n_blocks=1", "--set", "generator.n_features=8",
            "--set", "discriminator.n_features=8", "--set", "train.patch_size=32", "--set", "train.batch_size=2",
            "--set", "train.pretrain_steps=100000", "--set", "train.gan_steps=0",
            "--set", f"train.checkpoint_every={checkpoint_every}", "--set", f"train.eval_every={eval_every}",
            "--set", 'train.device="cpu"']


def test_ctrl_c_and_sigterm_stop_after_the_step_with_a_checkpoint(tmp_path):
    """Sent to the process, and (as a terminal's Ctrl-C or a scheduler's kill of the job) to its
    whole process group, batch workers included."""
    data = make_plate(tmp_path / "plate")
    run = tmp_path / "run"
    cmd = endless_run_command(data, run, checkpoint_every=100000, eval_every=1)
    for first, signum, workers, group in ((True, signal.SIGINT, 0, False), (False, signal.SIGTERM, 0, False),
                                          (False, signal.SIGINT, 2, True), (False, signal.SIGTERM, 2, True)):
        proc = subprocess.Popen(cmd + ([] if first else ["--resume"]) + ["--set", f"train.workers={workers}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=group)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and not ((run / "metrics.csv").exists() and
                                                   len((run / "metrics.csv").read_text().splitlines()) > 3):
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 2 and "continue with --resume" in err and signal.Signals(signum).name in err, err
        steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv"))]
        assert load_checkpoint(run / CHECKPOINT)["step"] == steps[-1] >= 3  # no checkpoint was due: one was made
        (run / "metrics.csv").unlink()  # the SIGTERM run resumes from it and logs on


def test_kill_9_loses_only_steps_since_the_last_checkpoint(tmp_path):
    data = make_plate(tmp_path / "plate")
    run = tmp_path / "run"
    cmd = endless_run_command(data, run, checkpoint_every=1, eval_every=100000)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (run / CHECKPOINT).exists() and load_checkpoint(run / CHECKPOINT)["step"] >= 3:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-run, perhaps mid-write
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = load_checkpoint(run / CHECKPOINT)  # never corrupt
    assert state["step"] >= 3
    killed_at = state["step"]
    config = load_config(None, [a for a in cmd[cmd.index("--set") + 1::2]])
    config.train.pretrain_steps = killed_at + 2
    train(config, run, resume=True, progress=False)
    assert load_checkpoint(run / CHECKPOINT)["step"] == killed_at + 2
    assert not list(run.glob(f".{CHECKPOINT}.*.part"))
    assert read_metadata(run / "fidelity.safetensors")["name"] == "fidelity"


@pytest.mark.parametrize("native", [False, True])
def test_cpu_training_is_mixed_bf16_only_where_the_cpu_computes_bf16(tmp_path, monkeypatch, native):
    """train.mixed_precision runs the pixel-loss phase's forward passes in bf16 on a CPU with bf16
    instructions (it works, slower, on any CPU), fp32 elsewhere and in the adversarial phase;
    weights and optimiser stay fp32 either way."""
    from msrgan_core import train as training

    monkeypatch.setattr(training, "cpu_has_bf16", lambda: native)
    cpu = torch.device("cpu")
    config = tiny_config(make_plate(tmp_path / "plate"), pretrain_steps=2, gan_steps=2)
    precision = "bf16" if native else "fp32"
    assert training.training_precision(config.train, cpu) == precision
    assert training.training_precision(config.train, cpu, adversarial=True) == "fp32"
    config.train.mixed_precision = False
    assert training.training_precision(config.train, cpu) == "fp32"
    config.train.mixed_precision = True
    autocasts = []  # the dtypes of the autocast contexts entered and enabled
    original = torch.autocast.__enter__
    monkeypatch.setattr(torch.autocast, "__enter__",
                        lambda self: (self._enabled and autocasts.append(self.fast_dtype), original(self))[1])
    run = train(config, tmp_path / "run", progress=False)
    assert autocasts == ([torch.bfloat16] * 2 if native else [])  # one per pixel-loss step, none in the adversarial ones
    state = load_checkpoint(run / CHECKPOINT)
    assert all(v.dtype == torch.float32 for v in state["generator"].values())
    assert all(np.isfinite(v.numpy()).all() for v in state["generator"].values())
    for name, ran in (("fidelity", precision), ("perceptual", "fp32")):
        hardware = read_metadata(run / f"{name}.safetensors")["training"]["hardware"]
        assert "cpu" in hardware and hardware.endswith(ran), (name, hardware)


def test_cpu_training_lays_networks_and_batches_channels_last(tmp_path, monkeypatch):
    """As inference does: oneDNN's convolutions train faster so (docs/training.md)."""
    from msrgan_core import train as training

    seen = []
    for name in ("pretrain_step", "adversarial_step"):
        step = getattr(training, name)

        def recording(run, lr_t, hr_t, autocast, step=step):
            layouts = [t.is_contiguous(memory_format=torch.channels_last) for t in (lr_t, hr_t)]
            layouts += [p.is_contiguous(memory_format=torch.channels_last)
                        for net in (run.generator, run.discriminator) for p in net.parameters() if p.dim() == 4]
            seen.append(all(layouts))
            return step(run, lr_t, hr_t, autocast)
        monkeypatch.setattr(training, name, recording)
    config = tiny_config(make_plate(tmp_path / "plate"), pretrain_steps=2, gan_steps=2)
    train(config, tmp_path / "run", progress=False)
    assert seen == [True] * 4


def test_trains_on_real_pairs_of_acquisitions(tmp_path):
    """data.train_lr: patches come from low-resolution files registered to their partners, and the
    model file says so instead of describing a simulated degradation."""
    from msrgan_core.binning import bin_mean

    for folder in ("hr", "lr"):
        (tmp_path / folder).mkdir()
    for i, well in enumerate(("A01", "A02", "B01", "B02")):
        hr = smooth_image((160, 176), seed=i, low=100, high=3000, noise=0.02)
        name = f"plate_{well}_s1_w1.tif"
        tifffile.imwrite(tmp_path / "hr" / name, hr.astype(np.uint16))
        tifffile.imwrite(tmp_path / "lr" / name, (0.5 * bin_mean(hr[None], 4)[0] + 40).astype(np.uint16))  # another gain
    config = tiny_config(tmp_path / "hr", gan_steps=0)
    config.data.train_lr = [str(tmp_path / "lr")]
    run = train(config, tmp_path / "run", progress=False)
    model = load_model(run / "fidelity.safetensors")
    assert model.metadata["training"]["real_pairs"] is True and model.metadata["degradation"] is None
    assert "real pairs, registered" in model.card.summary()
    # every pair, training and validation, registered: the low-resolution side is the other binned,
    # on one normalised scale (the files' rounding to whole grey levels aside)
    _, pairs, val_pairs = load_data(config, progress=False)
    assert len(pairs) == 3 and len(val_pairs) == 1
    for lr, hr in [(p.lr, p.hr) for p in pairs] + val_pairs:
        assert hr.shape[1:] == (160, 176) and np.abs(bin_mean(hr, 4) - lr).max() < 2e-3


def test_texture_term_trains_at_the_generators_scale_and_is_recorded(tmp_path, monkeypatch):
    """`loss.w_texture` reaches the adversarial steps, with the windows of the run's own scale."""
    from msrgan_core import losses

    scales = []
    texture_loss = losses.texture_loss

    def recording(sr, hr, scale):
        scales.append(scale)
        return texture_loss(sr, hr, scale)
    monkeypatch.setattr(losses, "texture_loss", recording)
    config = load_config(None, [f'data.train=["{make_plate(tmp_path / "plate")}"]', "generator.scale=2",
                                "degradation.scale=2", "generator.n_blocks=1", "generator.n_features=8",
                                "discriminator.n_features=8", "train.patch_size=32", "train.batch_size=2",
                                "train.pretrain_steps=1", "train.gan_steps=2", "train.eval_every=3",
                                "train.device=\"cpu\"", "loss.w_texture=0.5"])
    run = train(config, tmp_path / "run", progress=False)
    assert scales == [2, 2]
    assert read_metadata(run / "perceptual.safetensors")["loss"]["w_texture"] == 0.5


def test_blank_validation_images_are_left_out_with_a_warning(caplog):
    """An empty well scored 61 dB for bicubic (an all-zero one inf): the mean chose the model by
    how flat it draws nothing."""
    import logging

    from msrgan_core.config import ExperimentConfig
    from msrgan_core.train import scorable

    cells = smooth_image((64, 64), seed=3, noise=0.02)[None].astype(np.float32)
    empty_well = np.random.default_rng(0).normal(0.1, 0.01, (1, 64, 64)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="msrgan"):
        kept = scorable([cells, empty_well, np.zeros((1, 64, 64), np.float32)], ExperimentConfig())
    assert len(kept) == 1 and kept[0] is cells
    assert "2 of the 3 validation images are blank fields" in caplog.text
