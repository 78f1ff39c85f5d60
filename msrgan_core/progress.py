"""Progress bars as msrgan shows them, on a terminal and in a cluster job's log file."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

#: seconds between a bar's lines where its output is not a terminal (a log file): tqdm's 0.1 s
#: redraws would write a line of carriage returns as long as the run
LOG_INTERVAL = 30.0


def progress_bar(iterable=None, *, nested: bool = False, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, and where its stream is not a terminal, a redraw at most every
    :data:`LOG_INTERVAL` seconds and no ``nested`` bar (an image's rows or tiles) at all."""
    stream = kwargs.get("file") or sys.stderr
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: as a log file
        terminal = False
    if not terminal:
        kwargs["disable"] = kwargs.get("disable", False) or nested
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(iterable, **kwargs)
