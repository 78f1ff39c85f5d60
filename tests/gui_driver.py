"""Drive CellProfiler's GUI: open a pipeline, select one module, report its settings panel.

Run by ``tests/test_gui.py`` with the GUI venv's Python (``make gui-venv``) on an X display
(Xvfb). It starts CellProfiler's wx ``App`` the way ``cellprofiler -p PIPELINE
--plugins-directory DIR`` does, selects the named module in the pipeline list view, walks the
module view's window tree and prints one JSON line (prefixed ``GUI_DRIVER_RESULT``) describing
every setting label and control, then saves a screenshot of the main window as PNG.

This file imports wx, so it is not a pytest module: pytest's own interpreter needs no wx.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

RESULT_PREFIX = "GUI_DRIVER_RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the driver's command line.

    Parameters
    ----------
    argv : list of str or None
        Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    argparse.Namespace
        ``pipeline``, ``plugins``, ``module``, ``screenshot``, ``timeout``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, required=True, help=".cppipe file to open")
    parser.add_argument("--plugins", type=Path, required=True, help="CellProfiler plugins directory")
    parser.add_argument("--module", required=True, help="module name to select, e.g. UpscaleMSRGAN")
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before giving up")
    return parser.parse_args(argv)


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON line on stdout and flush.

    Parameters
    ----------
    result : dict
        JSON-serialisable summary.
    """
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def start_watchdog(timeout: float) -> None:
    """End the process if the GUI hangs, first reporting which windows are open.

    A modal dialog (an error while loading, say) blocks the driver's own callbacks but still
    runs wx's event loop, so ``wx.CallAfter`` reaches it; a hard ``os._exit`` follows in case
    even that never runs.

    Parameters
    ----------
    timeout : float
        Seconds from now.
    """
    import wx

    def report() -> None:
        emit({"ok": False, "error": f"GUI driver timed out after {timeout:.0f} s",
              "top_level_windows": top_level_windows()})
        os._exit(3)

    def soft() -> None:
        wx.CallAfter(report)

    def hard() -> None:
        emit({"ok": False, "error": f"GUI driver hung for {timeout + 15:.0f} s; event loop stuck"})
        os._exit(4)

    for delay, fn in ((timeout, soft), (timeout + 15.0, hard)):
        timer = threading.Timer(delay, fn)
        timer.daemon = True
        timer.start()


def top_level_windows() -> list[dict[str, Any]]:
    """Describe the shown top-level windows (frames and dialogs).

    Returns
    -------
    list of dict
        ``class``, ``title`` and, for dialogs, the text of their static labels.
    """
    import wx

    windows = []
    for w in wx.GetTopLevelWindows():
        if not w.IsShown():
            continue
        entry: dict[str, Any] = {"class": type(w).__name__, "title": w.GetTitle()}
        if isinstance(w, wx.Dialog):
            entry["texts"] = [c.GetLabel() for c in iter_windows(w) if isinstance(c, wx.StaticText)]
        windows.append(entry)
    return windows


def iter_windows(root: Any) -> list[Any]:
    """Return every descendant window of ``root``, depth first.

    Parameters
    ----------
    root : wx.Window

    Returns
    -------
    list of wx.Window
    """
    out = []
    for child in root.GetChildren():
        out.append(child)
        out.extend(iter_windows(child))
    return out


def describe_panel(panel: Any) -> dict[str, Any]:
    """Describe the module view's settings panel and the windows inside it.

    Parameters
    ----------
    panel : wx.lib.scrolledpanel.ScrolledPanel
        The module view's ``module_panel``.

    Returns
    -------
    dict
        ``panel`` (client area's screen origin and size) and ``widgets``: for each descendant its
        class, label (a static text's text or a control's value/choices), whether it is shown on
        screen, and its rectangle relative to the panel's client area.
    """
    import wx

    origin = panel.ClientToScreen(wx.Point(0, 0))
    client = panel.GetClientSize()
    widgets = []
    for w in iter_windows(panel):
        rect = w.GetScreenRect()
        entry: dict[str, Any] = {
            "class": type(w).__name__,
            "name": w.GetName(),
            "label": w.GetLabel(),
            "shown": bool(w.IsShownOnScreen()),
            "x": rect.x - origin.x,
            "y": rect.y - origin.y,
            "width": rect.width,
            "height": rect.height,
        }
        if isinstance(w, wx.ItemContainer):
            entry["choices"] = list(w.GetStrings())
            entry["value"] = w.GetStringSelection()
        elif isinstance(w, wx.TextCtrl):
            entry["value"] = w.GetValue()
        widgets.append(entry)
    return {
        "panel": {"client_x": origin.x, "client_y": origin.y,
                  "client_width": client.width, "client_height": client.height},
        "widgets": widgets,
    }


def save_screenshot(frame: Any, path: Path) -> dict[str, int]:
    """Copy the frame's area of the X screen into a PNG file.

    Parameters
    ----------
    frame : wx.Frame
    path : Path
        PNG file to write; its folder is created.

    Returns
    -------
    dict
        The captured screen rectangle: ``x``, ``y``, ``width``, ``height``.
    """
    import wx

    rect = frame.GetScreenRect()
    display = wx.Display(0).GetGeometry()
    rect = rect.Intersect(display)
    bitmap = wx.Bitmap(rect.width, rect.height)
    memory = wx.MemoryDC(bitmap)
    memory.Blit(0, 0, rect.width, rect.height, wx.ScreenDC(), rect.x, rect.y)
    memory.SelectObject(wx.NullBitmap)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not bitmap.SaveFile(str(path), wx.BITMAP_TYPE_PNG):
        raise OSError(f"wx could not write the screenshot to {path}")
    return {"x": rect.x, "y": rect.y, "width": rect.width, "height": rect.height}


def main(argv: list[str] | None = None) -> int:
    """Start CellProfiler's GUI, select the module, report and exit.

    Parameters
    ----------
    argv : list of str or None
        See :func:`parse_args`.

    Returns
    -------
    int
        2 when it fails before the GUI runs or the GUI's main loop ends early. Otherwise the
        process ends with ``os._exit`` once the result is printed (0 when the module view was
        inspected, 2 on an error, 3 or 4 on a timeout), so no "save changes?" prompt or Java
        shutdown can hang it.
    """
    args = parse_args(argv)
    if not args.pipeline.is_file():
        emit({"ok": False, "error": f"pipeline file not found: {args.pipeline}"})
        return 2

    import matplotlib
    import wx
    from cellprofiler_core.preferences import (
        set_awt_headless,
        set_plugin_directory,
        set_startup_blurb,
        set_telemetry,
        set_telemetry_prompt,
    )

    # As `cellprofiler --plugins-directory DIR -p PIPELINE` does before it opens its window.
    set_awt_headless(True)
    set_plugin_directory(str(args.plugins.resolve()), globally=False)
    # A fresh configuration would otherwise open the modal telemetry question and the welcome
    # window. These write the (test-private) HOME's CellProfiler configuration.
    set_telemetry_prompt(False)
    set_telemetry(False)
    set_startup_blurb(False)
    matplotlib.use("WXAgg")

    start_watchdog(args.timeout)

    import cellprofiler.gui.app

    app = cellprofiler.gui.app.App(0, pipeline_path=str(args.pipeline.resolve()))
    frame = app.frame
    result: dict[str, Any] = {"ok": False, "module": args.module}

    def finish() -> None:
        emit(result)
        os._exit(0 if result["ok"] else 2)

    def select() -> None:
        try:
            frame.SetSize(wx.Display(0).GetClientArea().GetSize())
            frame.SetPosition(wx.Point(0, 0))
            pipeline = frame.pipeline
            result["pipeline_modules"] = [m.module_name for m in pipeline.modules(False)]
            matches = [m for m in pipeline.modules(False) if m.module_name == args.module]
            if not matches:
                result["error"] = (f"{args.module} is not in the loaded pipeline "
                                   f"{args.pipeline}; modules: {result['pipeline_modules']}")
                result["top_level_windows"] = top_level_windows()
                finish()
                return
            frame.pipeline_list_view.select_one_module(matches[0].module_num)
            wx.CallLater(2000, inspect)
        except Exception:
            result["error"] = traceback.format_exc()
            finish()

    def inspect() -> None:
        # Imported once the GUI is up: importing it first runs into a circular import.
        from cellprofiler.gui.utilities.module_view import edit_control_name, text_control_name

        try:
            module_view = frame.module_view
            current = module_view.get_current_module()
            result["selected_module"] = None if current is None else current.module_name
            result["settings"] = [
                {"text": s.text, "class": type(s).__name__,
                 "label_name": text_control_name(s), "control_name": edit_control_name(s),
                 "choices": list(s.choices) if hasattr(s, "choices") else None}
                for s in ([] if current is None else current.visible_settings())
            ]
            result.update(describe_panel(module_view.module_panel))
            result["top_level_windows"] = top_level_windows()
            result["screenshot"] = str(args.screenshot)
            result["screenshot_rect"] = save_screenshot(frame, args.screenshot)
            result["ok"] = True
        except Exception:
            result["error"] = traceback.format_exc()
        finish()

    wx.CallLater(1500, select)
    app.MainLoop()
    result["error"] = "CellProfiler's main loop ended before the module view was inspected"
    emit(result)
    return 2


if __name__ == "__main__":
    sys.exit(main())
