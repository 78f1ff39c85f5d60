"""Fixtures shared by the test modules."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    return Path(os.environ.get("MSRGAN_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$MSRGAN_DATA``): skipped when absent, a failure under CI=true."""
    path = _shared_data()
    if not (path / "bbbc039" / "images").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the real data folder {path} is missing")
        pytest.skip(f"real data folder {path} is absent (set MSRGAN_DATA)")
    return path


# --- CellProfiler (tests/test_plugin_module.py, tests/test_headless.py) ----------------------

def _cellprofiler_missing(what: str) -> None:
    """Skip when CellProfiler is not installed here, except under CI=true, where that fails."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {what}")
    pytest.skip(what)


@pytest.fixture(scope="session")
def upscale_module_class():
    """The UpscaleMSRGAN class as CellProfiler itself loads it from the packaged plugin folder.

    Headless preferences, the plugins directory set to ``cellprofiler_plugin/`` and CellProfiler's
    module registry filled, so that pipelines naming UpscaleMSRGAN load as they do in CellProfiler.
    """
    import importlib.util

    if importlib.util.find_spec("cellprofiler") is None or importlib.util.find_spec("cellprofiler_core") is None:
        _cellprofiler_missing("CellProfiler 4.2 (cellprofiler, cellprofiler_core) is not installed")
    import cellprofiler_core.preferences as preferences
    from cellprofiler_core.utilities.core.modules import fill_modules, get_module_class

    from msrgan_core.headless import plugin_dir

    preferences.set_headless()
    preferences.set_plugin_directory(str(plugin_dir()), globally=False)
    fill_modules()
    return get_module_class("UpscaleMSRGAN")


@pytest.fixture(scope="session")
def example_fly_images() -> Path:
    """The ExampleFly images folder inside the installed CellProfiler package."""
    import importlib.util

    spec = importlib.util.find_spec("cellprofiler")
    if spec is None or not spec.submodule_search_locations:
        _cellprofiler_missing("CellProfiler is not installed, so its ExampleFly images are absent")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "examples" / "ExampleFly" / "images"
    assert sorted(folder.glob("*_D.TIF")), f"no ExampleFly DNA images in {folder}"
    return folder


@pytest.fixture(scope="session")
def cp38_env() -> Path:
    """``.venv-cp38``: CellProfiler 4.2.8 on Python 3.8 with msrgan pip-installed (``make cp38-venv``).

    Skipped when it has not been built, a failure under CI=true (``make test`` builds it).
    """
    env = REPO / ".venv-cp38"
    if not (env / ".installed").is_file():
        _cellprofiler_missing(f"{env} is not built (make cp38-venv)")
    return env


@pytest.fixture(scope="session")
def cellprofiler_command() -> "list[str]":
    """The command that starts headless CellProfiler (skips, or fails under CI, without one or Java)."""
    import shutil

    from msrgan_core.headless import HeadlessRunError, find_cellprofiler

    try:
        command = find_cellprofiler()
    except HeadlessRunError as exc:
        _cellprofiler_missing(str(exc))
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        _cellprofiler_missing("no Java (java on PATH or JAVA_HOME) for headless CellProfiler")
    return command
