"""End to end through the `msrgan` command in subprocesses: train, info, upscale, evaluate."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from msrgan_core.binning import bin_mean
from msrgan_core.io import read_image
from helpers import smooth_image
from test_train import make_plate

pytestmark = pytest.mark.integration


def msrgan(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "msrgan_core.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_train_info_upscale_evaluate(tmp_path):
    data = make_plate(tmp_path / "plate")
    run = tmp_path / "run"
    msrgan("train", "--out", run, "-q", "--device", "cpu", "--set", f'data.train=["{data}"]',
           "--set", "generator.n_blocks=1", "--set", "generator.n_features=8", "--set", "discriminator.n_features=8",
           "--set", "train.patch_size=32", "--set", "train.batch_size=2", "--set", "train.pretrain_steps=2",
           "--set", "train.gan_steps=0")
    model = run / "fidelity.safetensors"

    info = msrgan("info", model, "--all").stdout
    assert "scale: 4" in info and "generator.n_blocks: 1" in info and "training.steps: 2" in info

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    u16 = np.arange(37 * 53, dtype=np.uint16).reshape(37, 53) % 4000
    tifffile.imwrite(inputs / "a.tif", u16)
    tifffile.imwrite(inputs / "b.tiff", (u16 % 256).astype(np.uint8))
    out = tmp_path / "out"
    msrgan("upscale", inputs, "-o", out, "--model", model, "--device", "cpu", "-q")
    a, _ = read_image(out / "a.tif")
    b, _ = read_image(out / "b.tif")
    assert a.shape == (1, 148, 212) and a.dtype == np.uint16
    assert b.shape == (1, 148, 212) and b.dtype == np.uint8
    assert not list(out.glob(".*.part"))

    # existing outputs are skipped unless --overwrite, so an interrupted batch resumes
    stamp = (out / "a.tif").stat().st_mtime_ns
    again = msrgan("upscale", inputs / "*.tif*", "-o", out, "--model", model, "-q")
    assert "skipped 2 existing" in again.stdout and (out / "a.tif").stat().st_mtime_ns == stamp
    msrgan("upscale", inputs / "a.tif", "-o", out, "--model", model, "-q", "--overwrite")
    assert (out / "a.tif").stat().st_mtime_ns != stamp

    # --match-bins: the output bins back to the input
    matched = tmp_path / "matched"
    msrgan("upscale", inputs / "a.tif", "-o", matched, "--model", model, "-q", "--match-bins", "--ensemble", "2")
    binned_error = {name: np.abs(bin_mean(read_image(folder / "a.tif")[0].astype(np.float32), 4)[0] - u16).mean()
                    for name, folder in [("matched", matched), ("plain", out)]}
    assert binned_error["matched"] < 1.0 and binned_error["plain"] > 10, binned_error

    # set-defaults: a model file that runs that way unless told otherwise
    told = tmp_path / "told.safetensors"
    msrgan("set-defaults", model, "-o", told, "--ensemble", "2", "--match-bins")
    assert "inference.ensemble: 2" in msrgan("info", told, "--all").stdout
    msrgan("upscale", inputs / "a.tif", "-o", tmp_path / "told_default", "--model", told, "-q")
    np.testing.assert_array_equal(read_image(tmp_path / "told_default" / "a.tif")[0], read_image(matched / "a.tif")[0])
    msrgan("upscale", inputs / "a.tif", "-o", tmp_path / "told_off", "--model", told, "-q", "--no-match-bins", "--ensemble", "1")
    np.testing.assert_array_equal(read_image(tmp_path / "told_off" / "a.tif")[0], read_image(out / "a.tif")[0])

    report = tmp_path / "eval.csv"
    result = msrgan("evaluate", "--hr", data, "--model", model, "--csv", report, "-q")
    for method in ("nearest", "bicubic", "lanczos", "msrgan"):
        assert method in result.stdout
    rows = list(csv.DictReader(open(report)))
    means = {r["method"]: r for r in rows if r["image"] == "mean"}
    assert set(means) == {"nearest", "bicubic", "lanczos", "nlm+bicubic", "msrgan"}
    assert len(rows) == 5 * 8 + 5
    assert float(means["bicubic"]["psnr"]) > float(means["nearest"]["psnr"])
    # pixel replication adds blocky edges, interpolation smooths: the HF ratio tells them apart
    assert float(means["nearest"]["hf_ratio"]) > float(means["bicubic"]["hf_ratio"]) > 0
    gains = sorted((float(r["psnr"]) - float(b["psnr"]), r["image"]) for r in rows for b in rows
                   if r["method"] == "msrgan" and b["method"] == "bicubic" and r["image"] == b["image"] != "mean")
    below = sum(gain < 0 for gain, _ in gains)
    assert f"worst {gains[0][0]:+.2f} dB ({gains[0][1]}); below bicubic on {below} of 8 image(s)" in result.stdout


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    missing = msrgan("upscale", tmp_path / "nope.tif", "-o", tmp_path / "o", check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_bytes(b"not a model")
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((20, 20), np.uint8))
    result = msrgan("upscale", tmp_path / "x.tif", "-o", tmp_path / "o", "--model", bad_model, check=False)
    assert result.returncode == 2 and "bad.safetensors" in result.stderr and "Traceback" not in result.stderr
    device = msrgan("upscale", tmp_path / "x.tif", "-o", tmp_path / "o", "--device", "cuda:first", check=False)
    assert device.returncode == 2 and "cuda:N" in device.stderr and "Traceback" not in device.stderr
    absent = msrgan("upscale", tmp_path / "x.tif", "-o", tmp_path / "o", "--model", tmp_path / "gone.safetensors", check=False)
    assert absent.returncode == 2 and "does not exist" in absent.stderr
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((9, 20, 20), np.uint16))
    result = msrgan("upscale", stack, "-o", tmp_path / "o", check=False)
    assert result.returncode == 2 and "stack.tif" in result.stderr and "3-D stack" in result.stderr
    assert not (tmp_path / "o" / "stack.tif").exists()
    for plate in ("plate1", "plate2"):  # one well name on two plates: its figures and pictures would mix
        (tmp_path / plate).mkdir()
        tifffile.imwrite(tmp_path / plate / "A01.tif", smooth_image((64, 64), seed=len(plate)).astype(np.uint16))
    mixed = msrgan("evaluate", "--hr", tmp_path / "plate1", tmp_path / "plate2", "--out", tmp_path / "e", check=False)
    assert mixed.returncode == 2 and "['A01']" in mixed.stderr and not (tmp_path / "e").exists()
    tifffile.imwrite(tmp_path / "small.tif", smooth_image((6, 40)).astype(np.uint16))  # binned 4 x 4: one row
    small = msrgan("evaluate", "--hr", tmp_path / "small.tif", check=False)
    assert small.returncode == 2 and "small.tif" in small.stderr and "at least 8 x 8" in small.stderr


def test_blend_writes_a_model_between_the_packaged_two(tmp_path):
    import torch

    from msrgan_core.modelfile import load_model

    out = tmp_path / "half.safetensors"
    result = msrgan("blend", "perceptual", "fidelity", "--weight", "0.5", "-o", out)
    assert "0.5 x perceptual + 0.5 x fidelity" in result.stdout
    info = msrgan("info", out, "--all").stdout
    assert "blend.weight: 0.5" in info and "name: blend 0.5 x perceptual + 0.5 x fidelity" in info and "validation." not in info
    # created stays the training's date; the blend is a change of its own, and info says so
    changes = load_model(out).metadata["changes"]
    assert [c["what"] for c in changes] == ["blend 0.5 x perceptual + 0.5 x fidelity"]
    assert load_model(out).metadata["created"] == load_model("perceptual").metadata["created"] != changes[0]["at"]
    assert "changed: " in msrgan("info", out).stdout
    half, ends = load_model(out).generator.state_dict(), [load_model(n).generator.state_dict() for n in ("perceptual", "fidelity")]
    torch.testing.assert_close(half["tail.weight"], (ends[0]["tail.weight"] + ends[1]["tail.weight"]) / 2)

    bad = msrgan("blend", "perceptual", "fidelity", "--weight", "2", "-o", tmp_path / "bad.safetensors", check=False)
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.safetensors").exists()

    # the model file to write is refused before any work where it would replace a file (--overwrite: one not an input)
    written = out.read_bytes()
    for model, target, extra, says in [("fidelity", out, [], "exists: pass --overwrite"), (out, out, ["--overwrite"], "is an input"),
                                       (out, tmp_path / "half.tif", [], "a .safetensors file"), (out, tmp_path, [], "is a folder")]:
        refused = msrgan("set-defaults", model, "-o", target, *extra, check=False)
        assert refused.returncode == 2 and says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert out.read_bytes() == written
    again = msrgan("blend", "perceptual", "fidelity", "--weight", "0.25", "-o", out, "--overwrite")
    assert "0.25 x perceptual" in again.stdout and load_model(out).metadata["blend"]["weight"] == 0.25
    folder = msrgan("info", tmp_path, check=False)
    assert folder.returncode == 2 and "is a folder" in folder.stderr


def test_batches_refuse_their_inputs_and_go_on_past_a_bad_file(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a.tif", np.full((12, 12), 7, np.uint16))
    (inputs / "b.tif").write_bytes(b"II*\x00garbage")
    tifffile.imwrite(inputs / "c.tif", np.full((12, 12), 9, np.uint16))
    before = (inputs / "a.tif").read_bytes()
    own = msrgan("upscale", inputs / "a.tif", "-o", inputs, "--overwrite", check=False)
    assert own.returncode == 2 and "is an input" in own.stderr and (inputs / "a.tif").read_bytes() == before
    batch = msrgan("upscale", inputs, "-o", tmp_path / "out", "-q", check=False)
    assert batch.returncode == 2 and "b.tif" in batch.stderr and "Traceback" not in batch.stderr
    assert batch.stderr.count("b.tif") == 1  # said once
    assert "2 image(s) written" in batch.stdout and "1 failed" in batch.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "c.tif"]


def test_one_line_errors_for_the_environment_and_bad_values(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((12, 12), np.uint16))
    (tmp_path / "file").write_text("")
    as_folder = msrgan("upscale", tmp_path / "x.tif", "-o", tmp_path / "file", check=False)
    assert as_folder.returncode == 2 and "is a file" in as_folder.stderr and "Traceback" not in as_folder.stderr
    bogus = msrgan("train", "--out", tmp_path / "run", "--set", "bogus.x=1", check=False)
    assert bogus.returncode == 2 and "no [bogus] section" in bogus.stderr
    small = msrgan("train", "--out", tmp_path / "small", "--set", f'data.train=["{tmp_path / "x.tif"}"]', check=False)
    assert small.returncode == 2 and "no usable training images among 1" in small.stderr and "internal" not in small.stderr
    features = msrgan("evaluate", "--hr", tmp_path / "x.tif", "--features", check=False)
    assert features.returncode == 2 and "--out" in features.stderr
    cell = msrgan("evaluate", "--hr", tmp_path / "x.tif", "--degradation", "bin+7ph", check=False)
    assert cell.returncode == 2 and "bin+300ph" in cell.stderr  # the choices are listed
    for option, value, says in [("--tile", "-3", "at least 0, got -3"), ("--threads", "0", "at least 1, got 0"),
                                ("--threads", "two", "'two' is not a whole number")]:
        count = msrgan("upscale", tmp_path / "x.tif", "-o", tmp_path / "o", option, value, check=False)
        assert count.returncode == 2 and option in count.stderr and says in count.stderr and "internal" not in count.stderr
    sample = msrgan("calibrate", "fidelity", "--hr", tmp_path / "x.tif", "-o", tmp_path / "c.safetensors", "--sample", "-2",
                    check=False)
    assert sample.returncode == 2 and "--sample" in sample.stderr and not (tmp_path / "c.safetensors").exists()
    seed = msrgan("evaluate", "--hr", tmp_path / "x.tif", "--seed", "-1", check=False)
    assert seed.returncode == 2 and "--seed" in seed.stderr and "internal" not in seed.stderr
    # evaluate and calibrate check every image and where they write before the model loads: nothing half done
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not really a TIFF")
    broken = msrgan("evaluate", "--hr", tmp_path / "x.tif", tmp_path / "broken.tif", "--out", tmp_path / "ev", check=False)
    assert broken.returncode == 2 and "broken.tif: the TIFF holds no image" in broken.stderr and not (tmp_path / "ev").exists()
    assert len(broken.stderr.splitlines()) == 1, broken.stderr  # tifffile's own notes stay out of it
    for where, says in [(["--out", tmp_path / "x.tif"], "is a file"), (["--csv", tmp_path], "is a folder")]:
        refused = msrgan("evaluate", "--hr", tmp_path / "x.tif", *where, check=False)
        assert refused.returncode == 2 and says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((2, 12, 12), np.uint16), metadata={"axes": "CYX"})
    wrong = msrgan("evaluate", "--hr", tmp_path / "two.tif", tmp_path / "x.tif", "--features", "--out", tmp_path / "f",
                   "--cellprofiler", tmp_path / "no-cellprofiler", check=False)  # stops before the model loads
    assert "measures the nuclei in channel 1 of each image (1 of 2 hold several): --nuclei-channel N" in wrong.stderr
    assert wrong.returncode == 2 and "no-cellprofiler" in wrong.stderr and not (tmp_path / "f").exists()
    beyond = msrgan("evaluate", "--hr", tmp_path / "two.tif", tmp_path / "x.tif", "--features", "--nuclei-channel", "2",
                    "--out", tmp_path / "g", check=False)
    assert beyond.returncode == 2 and "1 image(s) have fewer channels, e.g. x.tif (1)" in beyond.stderr
    assert not (tmp_path / "g").exists()
    alone = msrgan("evaluate", "--hr", tmp_path / "two.tif", "--nuclei-channel", "2", check=False)
    assert alone.returncode == 2 and "give --features too" in alone.stderr
    table = msrgan("evaluate", "--hr", tmp_path / "x.tif", "--features", "--out", tmp_path / "h", "--csv",
                   tmp_path / "t.csv", check=False)  # it had been ignored in silence
    assert table.returncode == 2 and "with --features the tables are written into --out" in table.stderr
    broken = msrgan("calibrate", "fidelity", "--hr", tmp_path / "broken.tif", "-o", tmp_path / "c.safetensors", check=False)
    assert broken.returncode == 2 and "broken.tif: the TIFF holds no image" in broken.stderr


def test_info_opens_with_a_summary_and_calibrate_writes_a_calibrated_copy(tmp_path):
    summary = msrgan("info", "fidelity").stdout
    assert "msrgan model 'fidelity', 4x" in summary and "runs by default with" in summary and "--all" in summary
    assert "steps from fidelity.safetensors (24000 steps of its own)" in msrgan("info", "perceptual").stdout  # its start
    fields, empty = tmp_path / "hr", tmp_path / "empty"
    fields.mkdir()
    empty.mkdir()
    for seed in range(2):
        tifffile.imwrite(fields / f"f{seed}.tif", smooth_image((64, 64), seed=seed, noise=0.02).astype(np.uint16))
    rng = np.random.default_rng(0)
    tifffile.imwrite(empty / "well_without_cells.tif", rng.poisson(150, (64, 64)).astype(np.uint16))  # noise alone
    tifffile.imwrite(empty / "flat.tif", np.full((64, 64), 150, np.uint16))
    out = tmp_path / "calibrated.safetensors"
    result = msrgan("calibrate", "fidelity", "--hr", fields, empty / "well_without_cells.tif", "--cells", "bin", "bin+300ph",
                    "-o", out, "-q")
    assert "calibrated on 2 image(s)" in result.stdout
    assert "left out" in result.stderr and "well_without_cells.tif: a blank field" in result.stderr
    assert result.stderr.count("well_without_cells.tif") == 1  # once, not once per acquisition
    assert "uncertainty_scale:" in msrgan("info", out, "--all").stdout
    assert "with msrgan" in msrgan("info", out).stdout.split("changed: ")[1].split("uncertainty calibrated on 2 image(s)")[0]
    assert "rests on 8192 output pixels only" in result.stderr  # two 64 x 64 fields: a few nuclei decide it
    averaged = tmp_path / "averaged.safetensors"  # calibrated for 4 orientations: it runs so by default
    result = msrgan("calibrate", "fidelity", "--hr", fields, "--cells", "bin", "--ensemble", "4", "-o", averaged, "-q")
    assert "it runs by default with 4 orientation(s) averaged" in result.stdout
    assert "for a spread over 4 orientation(s) with bins as output" in msrgan("info", averaged).stdout
    tifffile.imwrite(tmp_path / "lr.tif", smooth_image((24, 24)).astype(np.uint16))
    for options, warned in [([], False), (["--ensemble", "8"], True)]:
        run = msrgan("upscale", tmp_path / "lr.tif", "-o", tmp_path / f"up{len(options)}", "--model", averaged,
                     "--uncertainty", "-q", *options)
        assert ("not on the error's scale" in run.stderr) == warned, run.stderr
    nothing = msrgan("calibrate", "fidelity", "--hr", empty, "--cells", "bin", "-o", tmp_path / "n.safetensors", "-q",
                     check=False)
    assert nothing.returncode == 2 and "all 2 image(s) are blank fields" in nothing.stderr
    assert not (tmp_path / "n.safetensors").exists()


def test_each_evaluation_draws_its_own_pictures_alone(tmp_path):
    """A second run into the same --out had left the first run's pictures beside its own table."""
    for name in ("A01", "A02", "A03"):
        tifffile.imwrite(tmp_path / f"{name}.tif",
                         smooth_image((96, 96), seed=ord(name[-1]), low=100, high=3000, noise=0.02).astype(np.uint16))
    msrgan("evaluate", "--hr", tmp_path / "A01.tif", tmp_path / "A02.tif", "--out", tmp_path / "e", "-q")
    assert sorted(p.name for p in (tmp_path / "e" / "side_by_side").iterdir()) == ["A01.png", "A02.png"]
    msrgan("evaluate", "--hr", tmp_path / "A03.tif", "--out", tmp_path / "e", "-q")
    assert sorted(p.name for p in (tmp_path / "e" / "side_by_side").iterdir()) == ["A03.png"]
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["msrgan_evaluation.csv", "side_by_side"]  # no leftovers


def test_a_failed_file_is_said_once_with_or_without_stop_on_error(tmp_path):
    plate = tmp_path / "plate"
    plate.mkdir()
    tifffile.imwrite(plate / "a_nan.tif", np.full((20, 20), np.nan, np.float32))  # its header is fine, its pixels not
    tifffile.imwrite(plate / "b_fine.tif", smooth_image((20, 20)).astype(np.uint16))
    for options in ([], ["--stop-on-error"]):
        out = tmp_path / f"out{len(options)}"
        result = msrgan("upscale", plate, "-o", out, "-q", *options, check=False)
        assert result.returncode == 2 and result.stderr.count("a_nan.tif") == 1, result.stderr
        assert (out / "b_fine.tif").exists() != bool(options)  # --stop-on-error stops at the first failure


def test_model_commands_never_write_over_a_packaged_model_named_by_its_name(tmp_path, monkeypatch, capsys):
    import shutil

    import msrgan_core.modelcard as modelcard
    from msrgan_core.cli import main

    packaged = tmp_path / "weights"
    packaged.mkdir()
    for name in ("fidelity", "perceptual"):
        shutil.copy(modelcard.packaged_model_path(name), packaged / f"{name}.safetensors")
    monkeypatch.setattr(modelcard, "packaged_model_path", lambda name: packaged / f"{name}.safetensors")
    before = (packaged / "fidelity.safetensors").read_bytes()
    for command in (["set-defaults", "fidelity", "--match-bins"], ["blend", "perceptual", "fidelity", "--weight", "0.5"]):
        assert main([*command, "-o", str(packaged / "fidelity.safetensors"), "--overwrite"]) == 2
        assert "is an input: msrgan never writes over its inputs" in capsys.readouterr().err
    assert (packaged / "fidelity.safetensors").read_bytes() == before


def test_info_cut_short_by_its_reader_says_nothing(tmp_path):
    result = subprocess.run(f"{sys.executable} -m msrgan_core.cli info fidelity | head -n 1", shell=True,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("file: ") and result.stderr == ""


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_schedulers_sigterm_stops_a_batch_as_ctrl_c_does(tmp_path, stop):
    """Clean-up runs (no half-written file stays) and the status says which signal; the rerun
    finishes the plate. SIGTERM's default had killed msrgan with its temporary files left."""
    import signal
    import time

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(12):
        tifffile.imwrite(inputs / f"f{i:02d}.tif", smooth_image((256, 256), seed=i, low=100, high=3000).astype(np.uint16))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "msrgan_core.cli", "upscale", str(inputs), "-o", str(out), "-q",
               "--device", "cpu", "--threads", "1", "--uncertainty"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("f*.uncertainty.tif")):
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.02)
        proc.send_signal(getattr(signal, stop))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + getattr(signal, stop).value and f"msrgan: interrupted ({stop})" in err, err
    assert not list(out.glob(".*.part"))
    written = sorted(p.name for p in out.glob("f??.tif"))
    assert 0 < len(written) < 12 and all((out / name.replace(".tif", ".uncertainty.tif")).exists() for name in written)
    msrgan(*command[3:])
    assert len(list(out.glob("f??.tif"))) == 12 and len(list(out.glob("f??.uncertainty.tif"))) == 12


def test_a_signal_ignored_at_start_stays_ignored(monkeypatch):
    """``nohup`` ignores SIGHUP: a job started so must survive its terminal; torchrun's processes
    keep the defaults their launcher expects."""
    import signal

    from msrgan_core.cli import stop_signals_interrupt

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stop_signals_interrupt()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and callable(signal.getsignal(signal.SIGTERM))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        monkeypatch.setenv("WORLD_SIZE", "2")
        stop_signals_interrupt()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
