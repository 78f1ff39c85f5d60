"""Plates through one upscaler: every file tried, inputs never overwritten, outputs in order and whole."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import smooth_image, tiny_model
from msrgan_core.batch import BatchError, check_headers, plan, upscale_files
from msrgan_core.inference import Upscaler
from msrgan_core.io import ImageError, read_image


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    return Upscaler(tiny_model(tmp_path_factory.mktemp("m"), scale=2, seed=1), device="cpu")


def _plate(folder, count=4, bad=()):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"f{i}.tif"
        if i in bad:
            path.write_bytes(b"II*\x00 not really a TIFF")
        else:
            tifffile.imwrite(path, smooth_image((20 + i, 24), seed=i).astype(np.uint16))
    return folder


def test_a_bad_file_is_reported_and_the_others_are_written(upscaler, tmp_path):
    inputs = _plate(tmp_path / "in", count=5, bad=(1,))
    jobs, skipped = plan([inputs], tmp_path / "out")
    assert len(jobs) == 5 and not skipped
    report = upscale_files(upscaler, jobs, progress=False)
    assert [p.name for p in report.written] == ["f0.tif", "f2.tif", "f3.tif", "f4.tif"]  # in order
    (failed, reason), = report.failed
    assert failed.name == "f1.tif" and "f1.tif" in reason
    assert "4 image(s) written" in report.summary() and "1 failed" in report.summary()
    for path in report.written:
        source, _ = read_image(inputs / path.name)
        assert read_image(path)[0].shape == (1, 2 * source.shape[1], 2 * source.shape[2])
    assert not list((tmp_path / "out").glob(".*.part"))
    with pytest.raises(ImageError, match="f1.tif"):  # --stop-on-error: the first failure is the error
        upscale_files(upscaler, plan([inputs], tmp_path / "again")[0], stop_on_error=True, progress=False)


def test_files_msrgan_cannot_take_are_refused_from_their_headers_before_the_model_loads(tmp_path, capsys):
    from msrgan_core.cli import main

    inputs = _plate(tmp_path / "in", count=2, bad=(1,))
    tifffile.imwrite(inputs / "stack.tif", np.zeros((9, 20, 24), np.uint16))
    tifffile.imwrite(inputs / "tiny.tif", np.zeros((1, 1), np.uint16))
    tifffile.imwrite(inputs / "complex.tif", np.zeros((20, 24), np.complex64))
    good, failed = check_headers(plan([inputs], tmp_path / "out")[0])
    assert [job.source.name for job in good] == ["f0.tif"]
    reasons = dict((path.name, reason) for path, reason in failed)
    assert sorted(reasons) == ["complex.tif", "f1.tif", "stack.tif", "tiny.tif"]
    assert "3-D stack of 9 planes" in reasons["stack.tif"] and "1 x 1 pixels" in reasons["tiny.tif"]
    assert "holds no image" in reasons["f1.tif"] and "complex" in reasons["complex.tif"]
    with pytest.raises(ImageError, match="complex.tif"):
        check_headers(plan([inputs], tmp_path / "out")[0], stop_on_error=True)
    # the model is never loaded when no file can be taken: its absence is not what the user hears
    missing_model = tmp_path / "no_such_model.safetensors"
    assert main(["upscale", str(inputs / "stack.tif"), str(inputs / "tiny.tif"), "-o", str(tmp_path / "out"),
                 "--model", str(missing_model), "-q"]) == 2
    err = capsys.readouterr().err
    assert "stack.tif" in err and "tiny.tif" in err and "no_such_model" not in err


def test_an_output_that_is_an_input_is_refused_before_any_work(upscaler, tmp_path):
    inputs = _plate(tmp_path / "in", count=2)
    before = (inputs / "f0.tif").read_bytes()
    for overwrite in (False, True):
        with pytest.raises(BatchError, match="is an input"):
            plan([inputs / "f0.tif"], inputs, overwrite=overwrite)
    link = tmp_path / "link"
    link.symlink_to(inputs)  # the same folder by another name
    with pytest.raises(BatchError, match="is an input"):
        plan([inputs / "f0.tif"], link, overwrite=True)
    assert (inputs / "f0.tif").read_bytes() == before


def test_output_folder_problems_and_clashes_are_one_line_errors(tmp_path):
    inputs = _plate(tmp_path / "in", count=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BatchError, match="is a file"):
        plan([inputs], tmp_path / "file")
    other = _plate(tmp_path / "other", count=1)
    with pytest.raises(BatchError, match="same output name"):
        plan([inputs, other], tmp_path / "out")


def test_stale_parts_of_a_killed_run_are_removed_and_existing_outputs_skipped(upscaler, tmp_path):
    inputs = _plate(tmp_path / "in", count=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".f0.tif.abc123.part").write_bytes(b"half")
    (out / ".unrelated.part").write_bytes(b"not ours")
    tifffile.imwrite(out / "f1.tif", np.zeros((4, 4), np.uint16))
    jobs, skipped = plan([inputs], out)
    assert [j.source.name for j in jobs] == ["f0.tif"] and [p.name for p in skipped] == ["f1.tif"]
    assert not (out / ".f0.tif.abc123.part").exists() and (out / ".unrelated.part").exists()


def test_uncertainty_images_are_written_beside_the_outputs(upscaler, tmp_path):
    inputs = _plate(tmp_path / "in", count=2)
    jobs, _ = plan([inputs], tmp_path / "out", uncertainty=True)
    upscale_files(upscaler, jobs, progress=False)
    for job in jobs:
        out, spread = tifffile.imread(job.destination), tifffile.imread(job.uncertainty)
        assert job.uncertainty.name == job.source.stem + ".uncertainty.tif"
        assert spread.shape == out.shape and spread.dtype == np.float32 and out.dtype == np.uint16


def test_a_read_only_output_folder_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import errno

    import msrgan_core.batch as batch

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(batch.tempfile, "TemporaryFile", read_only)  # root ignores chmod: say it as the kernel would
    with pytest.raises(BatchError, match=r"cannot be written \(Read-only file system\): choose another"):
        plan([_plate(tmp_path / "in", count=1)], tmp_path / "out")


def test_a_full_disk_stops_the_batch_at_its_first_file_and_leaves_nothing_half_written(upscaler, tmp_path, monkeypatch):
    """Every later file would be upscaled only to fail the same way: the rest is left for a rerun."""
    import errno

    import msrgan_core.io as io

    real_imwrite = io.tifffile.imwrite

    def disk_full(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00partial")  # some bytes reach the temporary file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    inputs = _plate(tmp_path / "in", count=3)
    jobs, _ = plan([inputs], tmp_path / "out")
    monkeypatch.setattr(io.tifffile, "imwrite", disk_full)
    report = upscale_files(upscaler, jobs, progress=False)
    assert not report.written and report.failed == [(jobs[0].source, f"{jobs[0].destination}: cannot be written "
                                                                      "(No space left on device)")]
    assert report.not_attempted == 2 and "takes no more (No space left on device)" in report.summary()
    assert "2 not attempted" in report.summary() and "run the same command again" in report.summary()
    assert not list((tmp_path / "out").iterdir())  # no output, no .part
    monkeypatch.setattr(io.tifffile, "imwrite", real_imwrite)  # space again: the rerun writes them all
    assert len(upscale_files(upscaler, plan([inputs], tmp_path / "out")[0], progress=False).written) == 3


@pytest.mark.parametrize("full_at", ["f0.tif", "f0.uncertainty.tif"])
def test_a_job_whose_writes_fail_leaves_neither_file_and_the_rerun_redoes_it(upscaler, tmp_path, monkeypatch, full_at):
    """The uncertainty image is written first and the output last, and removed when the output
    fails: an output on disk means a whole job (a kill between the two writes had left an output
    that every rerun skipped, its uncertainty image missing for good)."""
    import errno

    import msrgan_core.io as io

    real_imwrite = io.tifffile.imwrite

    def full_at_f0(path, *args, **kwargs):
        if Path(path).name.startswith(f".{full_at}."):
            raise OSError(errno.EIO, "Input/output error")  # this file's: the batch goes on
        return real_imwrite(path, *args, **kwargs)

    inputs = _plate(tmp_path / "in", count=2)
    jobs, _ = plan([inputs], tmp_path / "out", uncertainty=True)
    monkeypatch.setattr(io.tifffile, "imwrite", full_at_f0)
    report = upscale_files(upscaler, jobs, progress=False)
    (failed, reason), = report.failed
    assert failed.name == "f0.tif" and reason == f"{tmp_path / 'out' / full_at}: cannot be written (Input/output error)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f1.tif", "f1.uncertainty.tif"]
    monkeypatch.setattr(io.tifffile, "imwrite", real_imwrite)
    jobs, skipped = plan([inputs], tmp_path / "out", uncertainty=True)
    assert [job.source.name for job in jobs] == ["f0.tif"] and [p.name for p in skipped] == ["f1.tif"]
    tifffile.imwrite(tmp_path / "out" / "f0.uncertainty.tif", np.zeros((4, 4), np.float32))  # a kill's leftover
    assert [p.name for p in upscale_files(upscaler, jobs, progress=False).written] == ["f0.tif"]
    assert tifffile.imread(tmp_path / "out" / "f0.uncertainty.tif").shape == tifffile.imread(tmp_path / "out" / "f0.tif").shape


def test_outputs_are_compressed_as_their_inputs_never_with_loss(upscaler, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    pixels = smooth_image((20, 24), seed=3).astype(np.uint16)
    tifffile.imwrite(inputs / "plain.tif", pixels)
    tifffile.imwrite(inputs / "lzw.tif", pixels, compression="lzw")
    tifffile.imwrite(inputs / "jpeg.tif", (pixels >> 8).astype(np.uint8), compression="jpeg")  # lossy
    report = upscale_files(upscaler, plan([inputs], tmp_path / "out", uncertainty=True)[0], progress=False)
    assert len(report.written) == 3 and not report.failed
    for name, codec in [("plain", "NONE"), ("lzw", "LZW"), ("jpeg", "ADOBE_DEFLATE")]:
        for output in (f"{name}.tif", f"{name}.uncertainty.tif"):
            with tifffile.TiffFile(tmp_path / "out" / output) as tif:
                page = tif.pages[0]  # integers compressed after differences of neighbours, or not compressed at all;
                # float images never with the floating-point predictor (3), which Bio-Formats, so CellProfiler, cannot read
                predictor = 2 if codec != "NONE" and page.dtype.kind in "iu" else 1
                assert (page.compression.name, int(page.predictor)) == (codec, predictor), output
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "lzw.tif")[0], read_image(tmp_path / "out" / "plain.tif")[0])


def test_outputs_carry_the_inputs_pixel_size_divided_by_the_scale(upscaler, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    pixels = smooth_image((20, 24), seed=4).astype(np.uint16)
    # ImageJ saves pixels per micron with no TIFF unit; an OME-TIFF says it in its XML
    tifffile.imwrite(inputs / "imagej.tif", pixels, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "\\u00B5m"})
    tifffile.imwrite(inputs / "ome.ome.tif", pixels, metadata={"axes": "YX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.5})
    tifffile.imwrite(inputs / "plain.tif", pixels)  # no size
    report = upscale_files(upscaler, plan([inputs], tmp_path / "out", uncertainty=True)[0], progress=False)
    assert len(report.written) == 3 and not report.failed
    for name, size in [("imagej", (0.65, 0.65)), ("ome.ome", (0.5, 0.325)), ("plain", None)]:
        read = read_image(inputs / f"{name}.tif")[1].pixel_size_um
        assert read is None if size is None else read == pytest.approx(size, rel=1e-6)
        uncertainty = "ome.uncertainty.ome.tif" if name == "ome.ome" else f"{name}.uncertainty.tif"  # OME: its name says so
        for output in (f"{name}.tif", uncertainty):
            with tifffile.TiffFile(tmp_path / "out" / output) as tif:  # as ImageJ and Bio-Formats read it
                tags = tif.pages[0].tags
                if size is None:
                    assert tags["ResolutionUnit"].value == 1, output  # none
                    continue
                per_unit = [numerator / denominator for numerator, denominator in
                            (tags["YResolution"].value, tags["XResolution"].value)]
                if name == "imagej":  # ImageJ's way, as it came: pixels per micron, the unit in its description
                    assert tif.is_imagej and tif.imagej_metadata["unit"] == "um", output
                    assert tags["ResolutionUnit"].value == 1, output
                    assert per_unit == pytest.approx([2 / s for s in size], rel=1e-5), output
                    continue
                assert tags["ResolutionUnit"].value == 3, output  # centimetre
                assert per_unit == pytest.approx([1e4 * 2 / s for s in size], rel=1e-5), output  # 2x: the toy model's scale; rationals
                if output.endswith(".ome.tif"):  # an OME reader (Bio-Formats, so Fiji) takes it from the XML
                    pixels_xml = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
                    assert (pixels_xml["PhysicalSizeY"], pixels_xml["PhysicalSizeX"]) == pytest.approx([s / 2 for s in size])
                    assert pixels_xml["PhysicalSizeXUnit"] == "\u00b5m"


def test_each_failure_is_said_as_it_happens_not_after_the_plate(upscaler, tmp_path):
    inputs = _plate(tmp_path / "in", count=4, bad=(0,))
    said, upscaled_before = [], []

    class Counting:  # the upscaler, counting the images it has upscaled
        scale, calls = upscaler.scale, 0

        def upscale(self, image, **kwargs):
            Counting.calls += 1
            return upscaler.upscale(image, **kwargs)

    report = upscale_files(Counting(), plan([inputs], tmp_path / "out")[0], progress=False,
                           on_failure=lambda reason: (said.append(reason), upscaled_before.append(Counting.calls)))
    assert len(said) == 1 and "f0.tif" in said[0] and said == [reason for _, reason in report.failed]
    assert upscaled_before == [0] and Counting.calls == 3  # said before the other three were upscaled


def test_an_unexpected_error_in_the_writer_stops_the_batch_instead_of_hanging(upscaler, tmp_path, monkeypatch):
    """A defect or exhausted memory while writing (not the disk's OSError) is raised in the caller;
    the batch had waited forever on the writer's full queue."""
    import msrgan_core.batch as batch

    real = batch.write_image

    def broken(path, *args, **kwargs):
        if path.name == "f1.tif":
            raise MemoryError("no room for the output")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(batch, "write_image", broken)
    inputs = _plate(tmp_path / "in", count=6)
    finished = []

    def run():
        try:
            upscale_files(upscaler, plan([inputs], tmp_path / "out")[0], progress=False)
        except MemoryError as error:
            finished.append(error)

    import threading

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and len(finished) == 1
    assert (tmp_path / "out" / "f0.tif").exists() and not (tmp_path / "out" / "f1.tif").exists()


def test_existing_outputs_are_never_replaced_without_overwrite_and_overwrite_leaves_no_stale_uncertainty(upscaler, tmp_path, caplog):
    inputs = _plate(tmp_path / "in", count=2)
    out = tmp_path / "out"
    upscale_files(upscaler, plan([inputs], out)[0], progress=False)
    before = (out / "f0.tif").read_bytes()
    with caplog.at_level("WARNING", logger="msrgan"):
        jobs, skipped = plan([inputs], out, uncertainty=True)  # outputs of another run, without uncertainty images
    assert not jobs and [p.name for p in skipped] == ["f0.tif", "f1.tif"]
    assert "2 output(s) exist without their uncertainty image (e.g. f0.uncertainty.tif)" in caplog.text
    upscale_files(upscaler, plan([inputs], out, overwrite=True, uncertainty=True)[0], progress=False)
    assert (out / "f0.uncertainty.tif").exists()
    jobs, _ = plan([inputs], out, overwrite=True)  # now without: the old uncertainty images would describe old outputs
    assert [job.stale.name for job in jobs] == ["f0.uncertainty.tif", "f1.uncertainty.tif"]
    upscale_files(upscaler, jobs, progress=False)
    assert not list(out.glob("*.uncertainty.tif")) and (out / "f0.tif").read_bytes() == before


def test_part_files_are_matched_by_name_not_as_patterns(tmp_path):
    from msrgan_core.batch import remove_stale_parts

    (tmp_path / ".w[1].tif.abc.part").write_bytes(b"half")
    (tmp_path / ".w1.tif.xyz.part").write_bytes(b"another file's")
    assert remove_stale_parts(tmp_path, ["w[1].tif"]) == 1
    assert (tmp_path / ".w1.tif.xyz.part").exists() and not (tmp_path / ".w[1].tif.abc.part").exists()


def test_an_overlapping_run_neither_removes_the_others_writes_nor_redoes_its_outputs(upscaler, tmp_path):
    """Two jobs on one plate (a requeue while the first still runs): a part file its writer holds
    stays, an output written after the plan is skipped, and one that appears while a file is being
    written is kept, not replaced."""
    import fcntl

    from msrgan_core.io import atomic_write

    inputs = _plate(tmp_path / "in", count=3)
    out = tmp_path / "out"
    out.mkdir()
    live = out / ".f0.tif.live01.part"
    with open(live, "wb") as writing:  # another process's write under way
        fcntl.flock(writing.fileno(), fcntl.LOCK_EX)
        (out / ".f0.tif.dead01.part").write_bytes(b"a killed run's")
        jobs, _ = plan([inputs], out)
        assert live.exists() and not (out / ".f0.tif.dead01.part").exists()
    tifffile.imwrite(out / "f1.tif", np.full((4, 4), 7, np.uint16))  # the other run finished f1 meanwhile
    report = upscale_files(upscaler, jobs, progress=False)
    assert [p.name for p in report.skipped] == ["f1.tif"] and sorted(p.name for p in report.written) == ["f0.tif", "f2.tif"]
    assert np.all(tifffile.imread(out / "f1.tif") == 7)
    with pytest.raises(FileExistsError, match="written meanwhile by another run"):
        with atomic_write(out / "f2.tif", replace_existing=False) as tmp:
            Path(tmp).write_bytes(b"this run's")
    assert (out / "f2.tif").read_bytes() != b"this run's" and not list(out.glob(".f2.tif.*.part"))


def test_progress_bars_in_a_log_file_are_few_lines_and_not_nested(tmp_path):
    """A cluster job's log: tqdm's 0.1 s redraws had written a line of carriage returns as long as
    the run, and each image's rows or tiles a bar of their own."""
    import io as stdio

    from msrgan_core.progress import LOG_INTERVAL, progress_bar

    log_file = stdio.StringIO()  # not a terminal
    outer, inner = progress_bar(total=3, file=log_file), progress_bar(total=3, file=log_file, nested=True)
    assert outer.mininterval == LOG_INTERVAL and not outer.disable and inner.disable
    for _ in range(3):
        outer.update(1)
    outer.close()
    assert log_file.getvalue().count("\r") <= 3  # the start, the end and at most one redraw between
    with open(tmp_path / "tty", "w") as not_a_tty:  # a file: not a terminal either
        assert progress_bar(total=1, file=not_a_tty, nested=True).disable
