"""CellProfiler plugin folder: point CellProfiler's plugins directory here."""
