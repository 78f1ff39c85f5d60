"""Property-based tests (hypothesis): the reader over random shapes, types and axis orders, and
tiling over random image and tile sizes. Each draws its cases from a fixed database-free seed."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import tiny_model
from msrgan_core.inference import Upscaler, axis_tiles
from msrgan_core.io import SUPPORTED_DTYPES, ImageError, read_image, write_image

FAST = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(dtype=st.sampled_from(SUPPORTED_DTYPES), channels=st.integers(1, 4), height=st.integers(2, 19),
       width=st.integers(2, 19), axes=st.sampled_from(["CYX", "YXC", "YX"]))
def test_a_written_image_reads_back_as_it_was(tmp_path_factory, dtype, channels, height, width, axes):
    rng = np.random.default_rng(height * 31 + width)
    if np.dtype(dtype).kind == "f":
        cyx = rng.normal(0, 100, (channels, height, width)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        cyx = rng.integers(info.min, info.max, (channels, height, width), endpoint=True).astype(dtype)
    if axes == "YX":
        cyx = cyx[:1]
    array = {"CYX": cyx, "YXC": np.moveaxis(cyx, 0, -1), "YX": cyx[0]}[axes]
    path = tmp_path_factory.mktemp("io") / "image.tif"
    tifffile.imwrite(path, array, metadata={"axes": axes}, photometric="minisblack")
    image, layout = read_image(path)
    np.testing.assert_array_equal(image, cyx)
    assert image.dtype == dtype
    again = path.with_name("again.tif")
    write_image(again, image, layout)  # and writes back in the file's own layout (a lone channel axis dropped)
    np.testing.assert_array_equal(tifffile.imread(again), array if channels > 1 or axes == "YX" else cyx[0])


@FAST
@given(shape=st.lists(st.integers(1, 6), min_size=3, max_size=5), dtype=st.sampled_from(SUPPORTED_DTYPES))
def test_stacks_and_series_are_refused_or_read_never_cut(tmp_path_factory, shape, dtype):
    """A file with more planes than channels either reads whole or fails with a message naming it."""
    array = np.zeros(shape, dtype)
    path = tmp_path_factory.mktemp("stack") / "stack.tif"
    tifffile.imwrite(path, array)
    try:
        image, _ = read_image(path)
    except ImageError as exc:
        assert "stack.tif" in str(exc)
    else:
        assert image.size == array.size  # nothing dropped


@FAST
@given(length=st.integers(1, 400), core=st.integers(1, 200), margin=st.integers(0, 40))
def test_tile_cores_partition_any_axis(length, core, margin):
    tiles = axis_tiles(length, core, margin)
    covered = np.zeros(length, int)
    for s0, s1, c0, c1 in tiles:
        assert 0 <= s0 <= c0 < c1 <= s1 <= length and c1 - c0 <= core
        assert c0 - s0 == min(margin, c0) and s1 - c1 == min(margin, length - c1)
        covered[c0:c1] += 1
    assert np.all(covered == 1)


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m"), scale=2, n_blocks=3, seed=9, architecture="compact")


@FAST
@given(height=st.integers(2, 70), width=st.integers(2, 70), tile=st.integers(1, 60))
def test_tiled_equals_untiled_for_any_size_and_tile(compact, height, width, tile):
    image = np.random.default_rng(height * 71 + width).random((height, width)).astype(np.float32)
    whole = Upscaler(compact, device="cpu", tile=100_000).upscale(image)
    tiled = Upscaler(compact, device="cpu", tile=tile).upscale(image)
    assert tiled.shape == (2 * height, 2 * width)
    assert np.max(np.abs(tiled - whole)) <= 1e-3 * max(1e-6, float(whole.max() - whole.min()))
