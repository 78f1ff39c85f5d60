"""The shipped CellProfiler pipelines (``*.cppipe``), installed as ``msrgan_core.pipelines``.

Not Python: this file only lets the folder travel inside the package, so that
``msrgan cellprofiler run NAME`` finds a shipped pipeline from an installed wheel too.
"""
