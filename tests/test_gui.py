"""CellProfiler's GUI shows UpscaleMSRGAN's settings.

Xvfb serves a private X display; ``tests/gui_driver.py`` runs in the GUI venv (``make gui-venv``:
Debian's wxPython, which has no Linux wheel, and CellProfiler with its ``wx.Point`` fix for
Python >= 3.10), opens the shipped example pipeline with the plugin, selects UpscaleMSRGAN in the
pipeline list and reports the module view's widgets as JSON. The test checks that every setting
is laid out in rows inside the panel and that the screenshot has text where the labels are.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GUI_VENV = ROOT / ".venv-gui"
GUI_PYTHON = GUI_VENV / "bin" / "python"
GUI_STAMP = GUI_VENV / ".installed"
DRIVER = Path(__file__).resolve().parent / "gui_driver.py"
PIPELINE = ROOT / "pipelines" / "upscale_segment_measure.cppipe"
PLUGINS = ROOT / "cellprofiler_plugin"
ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "gui_screenshot.png"
RESULT_PREFIX = "GUI_DRIVER_RESULT "
MODULE = "UpscaleMSRGAN"
MODEL_CHOICES = ["Default: fidelity", "Default: perceptual", "Default: fidelity-clean", "Custom model file"]
DRIVER_TIMEOUT_S = 240  # the driver reports open windows and exits after this
SUBPROCESS_TIMEOUT_S = 300  # then the test kills it
SCREEN = "1600x1000x24"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SUBPROCESS_TIMEOUT_S + 60)]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_gui_environment() -> None:
    """Skip when the GUI environment is not built, except under CI, where that is a failure."""
    missing = []
    if not GUI_STAMP.is_file():
        missing.append(f"{GUI_STAMP.relative_to(ROOT)} (the GUI venv)")
    if shutil.which("Xvfb") is None:
        missing.append("Xvfb (Debian package xvfb)")
    if not missing:
        return
    message = f"GUI test environment missing: {', '.join(missing)}; build it with `make gui-venv`"
    if _in_ci():
        pytest.fail(message + " (CI is set, so the GUI test may not be skipped)")
    pytest.skip(message)


@pytest.fixture
def xvfb_display(tmp_path: Path) -> Iterator[str]:
    """Start Xvfb on a display number it picks itself (``-displayfd``); yield ``":N"``.

    ``-noreset``: without it, GTK failed to open the display in about one start in six here,
    while Xvfb reset itself after a client left.
    """
    _require_gui_environment()
    read_fd, write_fd = os.pipe()
    log = open(tmp_path / "xvfb.log", "wb")
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", SCREEN, "-nolisten", "tcp",
         "-noreset"],
        pass_fds=(write_fd,), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        number = b""
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], 30)
            chunk = os.read(read_fd, 16) if ready else b""
            if not chunk:
                log.flush()
                pytest.fail(
                    "Xvfb did not report a display within 30 s (exit code "
                    f"{proc.poll()}): {(tmp_path / 'xvfb.log').read_text(errors='replace')[-2000:]}"
                )
            number += chunk
        yield ":" + number.decode().strip()
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _run_driver(display: str, tmp_path: Path, screenshot: Path) -> dict[str, Any]:
    """Run the GUI driver in the GUI venv and return its JSON result."""
    # CellProfiler's configuration and its measurement files go under tmp_path: the driver ends
    # with os._exit, so CellProfiler does not clean up after itself.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        DISPLAY=display, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
        XDG_RUNTIME_DIR=str(tmp_path), TMPDIR=str(tmp_path), NO_AT_BRIDGE="1",
        JAVA_HOME=os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64"),
    )
    command = [
        str(GUI_PYTHON), str(DRIVER), "--pipeline", str(PIPELINE), "--plugins", str(PLUGINS),
        "--module", MODULE, "--screenshot", str(screenshot), "--timeout", str(DRIVER_TIMEOUT_S),
    ]
    try:
        proc = subprocess.run(
            command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=SUBPROCESS_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the GUI driver hung for {SUBPROCESS_TIMEOUT_S} s; stderr:\n"
                    f"{(exc.stderr or b'')[-4000:]!r}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert lines, (f"the GUI driver printed no result (exit code {proc.returncode}); stderr:\n"
                   f"{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    assert result["ok"], (f"GUI driver failed: {result.get('error')}\nwindows: "
                          f"{result.get('top_level_windows')}\nstderr:\n{proc.stderr[-4000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return result


def _screenshot_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_module_view_shows_upscalemsrgan_settings(xvfb_display: str, tmp_path: Path) -> None:
    assert PIPELINE.is_file(), f"example pipeline missing: {PIPELINE}"
    screenshot = tmp_path / "gui_screenshot.png"
    result = _run_driver(xvfb_display, tmp_path, screenshot)

    # Whatever the assertions below say, keep the picture for a person to look at.
    assert screenshot.is_file(), f"no screenshot written at {screenshot}"
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACT)

    assert MODULE in result["pipeline_modules"]
    assert result["selected_module"] == MODULE
    settings = result["settings"]
    texts = [s["text"] for s in settings]
    assert texts[:3] == ["Select the input image", "Name the output image", "Model"], texts
    assert any(t.startswith("Tile size") for t in texts) and "Device" in texts, texts
    model = settings[texts.index("Model")]
    assert model["choices"] == MODEL_CHOICES

    panel = result["panel"]
    widgets = {w["name"]: w for w in result["widgets"]}
    pixels = _screenshot_pixels(screenshot)
    shot = result["screenshot_rect"]
    assert pixels.shape[:2] == (shot["height"], shot["width"])
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 16, "the screenshot is blank"

    rows = []
    for setting in settings:
        label = widgets.get(setting["label_name"])
        control = widgets.get(setting["control_name"])
        assert label is not None and control is not None, f"no widgets for {setting['text']!r}"
        # Labels may be word-wrapped by the module view.
        assert " ".join(label["label"].split()) == setting["text"]
        for what, w in (("label", label), ("control", control)):
            assert w["shown"], f"{setting['text']!r}: {what} is hidden"
            assert w["width"] > 0 and w["height"] > 0, f"{setting['text']!r}: {what} has no size"
            assert 0 <= w["x"] and w["x"] + w["width"] <= panel["client_width"], (what, w)
            assert 0 <= w["y"] and w["y"] + w["height"] <= panel["client_height"], (what, w)
        # The control stands to the right of its label, in the same row.
        assert control["x"] >= label["x"] + label["width"], (label, control)
        assert control["y"] < label["y"] + label["height"] and label["y"] < control["y"] + control["height"]
        rows.append(label["y"])
        # The label's text is really drawn: its patch of the screenshot is not one colour.
        x0 = panel["client_x"] + label["x"] - shot["x"]
        y0 = panel["client_y"] + label["y"] - shot["y"]
        patch = pixels[y0:y0 + label["height"], x0:x0 + label["width"]]
        assert patch.size and np.ptp(patch.astype(int)) > 64, f"{setting['text']!r} is not drawn"
    # Without CellProfiler's wx.Point fix every widget sits at (0, 0): the rows must descend.
    assert rows == sorted(rows) and len(set(rows)) == len(rows), rows

    for setting in settings:
        if setting["choices"] and widgets[setting["control_name"]].get("choices") is not None:
            control = widgets[setting["control_name"]]
            assert control["choices"] == setting["choices"], (setting["text"], control)
            assert control["value"] in setting["choices"]
