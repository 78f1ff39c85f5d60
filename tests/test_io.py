"""Reading and writing images: accepted layouts, one-line errors, dtype/layout round trips, atomic writes."""
from __future__ import annotations

import struct
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from msrgan_core import io
from msrgan_core.io import ImageError, ImageLayout, atomic_write, read_header, read_image, to_cyx, write_image


def _pixels(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _error(path, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    assert path.name in message
    return message


# --- accepted images ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_reads_2d_tiff(tmp_path, dtype):
    pixels = _pixels((21, 34), dtype)
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    image, layout = read_image(tmp_path / "a.tif")
    assert image.shape == (1, 21, 34) and image.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image[0], pixels)
    assert layout.channel_axis is None and layout.dtype == np.dtype(dtype)


@pytest.mark.parametrize("compression", ["lzw", "zstd", "zlib"])
def test_reads_compressed_tiff(tmp_path, compression):
    pixels = _pixels((64, 48), np.uint16)  # LZW and zstd need imagecodecs, a dependency of msrgan
    tifffile.imwrite(tmp_path / "a.tif", pixels, compression=compression)
    image, _ = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(image[0], pixels)


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_reads_ome_tiff_channels_first(tmp_path, channels):
    pixels = _pixels((channels, 20, 30), np.uint16)
    tifffile.imwrite(tmp_path / "a.ome.tif", pixels, ome=True, metadata={"axes": "CYX"})
    image, layout = read_image(tmp_path / "a.ome.tif")
    np.testing.assert_array_equal(image, pixels)  # six named channels are channels, not a stack
    assert layout.channel_axis == 0


def test_reads_ome_tiff_with_singleton_axes(tmp_path):
    pixels = _pixels((1, 1, 1, 20, 30), np.uint8)
    tifffile.imwrite(tmp_path / "a.ome.tif", pixels, ome=True, metadata={"axes": "TCZYX"})
    image, layout = read_image(tmp_path / "a.ome.tif")
    np.testing.assert_array_equal(image[0], pixels[0, 0, 0])
    assert layout.channel_axis is None


def _write_bit_packed_tiff(path, pixels, bits):
    """A one-strip gray TIFF whose rows pack ``bits``-bit integers most significant bit first, as
    some cameras write 12- and 14-bit images (tifffile writes no such file)."""
    height, width = pixels.shape
    bit_planes = (pixels[..., None] >> np.arange(bits - 1, -1, -1)) & 1
    strip = np.packbits(bit_planes.reshape(height, width * bits).astype(np.uint8), axis=1).tobytes()
    tags = [(256, width), (257, height), (258, bits), (259, 1), (262, 1), (273, 0), (277, 1), (278, height),
            (279, len(strip))]
    strip_offset = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(struct.pack("<HHII", tag, 4, 1, strip_offset if tag == 273 else value) for tag, value in tags)
    path.write_bytes(b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + struct.pack("<I", 0) + strip)


@pytest.mark.parametrize("bits", [12, 14])
def test_reads_bit_packed_tiff(tmp_path, bits):
    pixels = _pixels((37, 51), np.uint16) >> (16 - bits)  # odd width: rows end inside a byte
    _write_bit_packed_tiff(tmp_path / "a.tif", pixels, bits)
    image, layout = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(image[0], pixels)
    assert layout.dtype == np.uint16


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_reads_channels_last_tiff_named_by_the_file(tmp_path, dtype):
    pixels = _pixels((20, 30, 2), dtype)
    tifffile.imwrite(tmp_path / "a.tif", pixels, metadata={"axes": "YXC"})
    image, layout = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(image, np.moveaxis(pixels, -1, 0))
    assert layout.channel_axis == 2 and image.dtype == np.dtype(dtype)


def test_reads_rgb_tiff_channels_last(tmp_path):
    pixels = _pixels((20, 30, 3), np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", pixels, photometric="rgb")
    image, layout = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(image, np.moveaxis(pixels, -1, 0))
    assert layout.channel_axis == 2


def test_channel_axis_option_for_a_file_without_axes(tmp_path):
    pixels = _pixels((6, 20, 30), np.uint16)
    tifffile.imwrite(tmp_path / "six.tif", pixels, metadata=None)
    assert "stack" in _error(tmp_path / "six.tif")  # six unnamed planes look like a stack...
    image, layout = read_image(tmp_path / "six.tif", channel_axis=0)  # ...unless told they are channels
    np.testing.assert_array_equal(image, pixels)
    assert layout.channel_axis == 0
    with pytest.raises(ImageError, match=r"would make 30 channels of 6 x 20 pixels: is the channel axis 0"):
        read_image(tmp_path / "six.tif", channel_axis=-1)  # the wrong end: more channels than rows left


def test_channel_axis_option_channels_last():
    pixels = _pixels((20, 30, 6), np.uint8)
    image, layout = to_cyx(pixels, "x.tif", channel_axis=-1)
    np.testing.assert_array_equal(image, np.moveaxis(pixels, -1, 0))
    assert layout.channel_axis == 2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_reads_grayscale_png(tmp_path, dtype):
    pixels = _pixels((20, 30), dtype)
    iio.imwrite(tmp_path / "a.png", pixels)
    image, layout = read_image(tmp_path / "a.png")
    assert image.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image[0], pixels)
    assert layout.channel_axis is None


def test_reads_rgb_png_channels_last_and_gray_rgb_as_one_channel(tmp_path):
    rgb = _pixels((20, 30, 3), np.uint8)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    image, layout = read_image(tmp_path / "rgb.png")
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0))
    assert layout.channel_axis == 2
    gray = np.repeat(rgb[..., :1], 3, axis=-1)
    iio.imwrite(tmp_path / "gray.png", gray)
    image, layout = read_image(tmp_path / "gray.png")
    np.testing.assert_array_equal(image, rgb[None, ..., 0])
    assert layout.channel_axis is None


def test_png_alpha_is_dropped_when_constant_and_refused_when_it_varies(tmp_path):
    gray = _pixels((20, 30), np.uint8)
    opaque = np.full_like(gray, 255)
    iio.imwrite(tmp_path / "la.png", np.stack([gray, opaque], axis=-1))
    image, layout = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(image, gray[None])
    assert layout.channel_axis is None
    rgb = _pixels((20, 30, 3), np.uint8)
    iio.imwrite(tmp_path / "rgba.png", np.concatenate([rgb, opaque[..., None]], axis=-1))
    image, layout = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0))
    assert layout.channel_axis == 2
    mask = opaque.copy()
    mask[:5] = 0
    iio.imwrite(tmp_path / "masked.png", np.stack([gray, mask], axis=-1))
    with pytest.raises(ImageError, match=r"masked\.png: its alpha \(transparency\) channel varies"):
        read_image(tmp_path / "masked.png")


def test_png_with_a_colour_lookup_table_is_read_as_its_indices_and_a_gray_palette_as_its_levels(tmp_path):
    from PIL import Image

    values = _pixels((20, 30), np.uint8)
    fire = [channel for i in range(256) for channel in (min(255, 3 * i), max(0, min(255, 3 * i - 255)), 0)]
    indexed = Image.fromarray(values).convert("P")  # ImageJ saves an 8-bit image shown in a LUT so
    indexed.putpalette(fire)
    indexed.save(tmp_path / "fire.png")
    image, layout = read_image(tmp_path / "fire.png")
    np.testing.assert_array_equal(image, values[None])  # the values, not the colours they are shown in
    assert layout.channel_axis is None
    assert read_header(tmp_path / "fire.png") == ((1, 20, 30), layout)
    levels = np.array([0, 40, 90, 200], np.uint8)
    quantised = Image.fromarray((values % 4).astype(np.uint8)).convert("P")
    quantised.putpalette([level for v in levels for level in (v, v, v)])
    quantised.save(tmp_path / "gray.png")
    image, _ = read_image(tmp_path / "gray.png")
    np.testing.assert_array_equal(image, levels[values % 4][None])


# --- rejected images: one line naming the file and the problem ---------------------------

@pytest.mark.parametrize("axes,what", [("ZYX", "3-D stack"), ("TYX", "time series")])
def test_rejects_ome_stacks_and_time_series(tmp_path, axes, what):
    tifffile.imwrite(tmp_path / "s.ome.tif", _pixels((3, 20, 30), np.uint16), ome=True, metadata={"axes": axes})
    assert what in _error(tmp_path / "s.ome.tif")


def test_rejects_unnamed_stack(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", _pixels((10, 20, 30), np.uint8))
    assert "stack" in _error(tmp_path / "s.tif")


def test_rejects_4d(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", _pixels((2, 5, 20, 30), np.uint8))
    assert "dimensions" in _error(tmp_path / "s.tif")


def test_a_tiff_is_refused_from_its_header_before_its_pixels_are_decoded(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "mask.tif", _pixels((20, 30), np.uint8) > 100)  # 1 bit a pixel
    tifffile.imwrite(tmp_path / "stack.tif", _pixels((10, 20, 30), np.uint8))
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda *_, **__: pytest.fail("pixels decoded"))
    assert "pixel type bool is not supported" in _error(tmp_path / "mask.tif")
    assert "stack" in _error(tmp_path / "stack.tif")


def test_rejects_complex(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.ones((20, 30), np.complex64))
    assert "complex" in _error(tmp_path / "c.tif")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rejects_nan_and_inf(tmp_path, bad):
    pixels = _pixels((20, 30), np.float32)
    pixels[2, 3] = bad
    tifffile.imwrite(tmp_path / "n.tif", pixels)
    assert "NaN" in _error(tmp_path / "n.tif")


def test_rejects_empty(tmp_path):
    with pytest.warns(UserWarning):
        tifffile.imwrite(tmp_path / "e.tif", np.zeros((0, 0), np.uint8))
    assert "empty" in _error(tmp_path / "e.tif")
    with pytest.raises(ImageError, match="empty"):
        to_cyx(np.zeros((0, 5), np.uint16), "e2.tif")


def test_rejects_unsupported_pixel_type_and_keeps_every_supported_one():
    for dtype in (np.uint32, np.int64, np.float16, np.bool_, np.complex64):
        with pytest.raises(ImageError, match=r"x\.tif"):
            to_cyx(np.ones((4, 5), dtype), "x.tif")
    for dtype in (np.int8, np.int16, np.int32):  # signed counts stay signed: nothing is converted behind the user's back
        image, layout = to_cyx(np.full((4, 5), -1, dtype), "x.tif")
        assert image.dtype == dtype and layout.dtype == dtype


def test_a_channel_axis_that_contradicts_the_files_axes_is_refused(tmp_path):
    path = tmp_path / "cyx.ome.tif"
    tifffile.imwrite(path, _pixels((5, 16, 16), np.uint16), ome=True, metadata={"axes": "CYX"})
    assert read_image(path)[0].shape == (5, 16, 16)
    assert read_image(path, channel_axis=0)[0].shape == (5, 16, 16)  # agreeing is fine
    with pytest.raises(ImageError, match="axes are CYX.*channel axis given is -1"):
        read_image(path, channel_axis=-1)


def test_a_multi_series_tiff_is_refused_not_cut_to_its_first_series(tmp_path):
    path = tmp_path / "positions.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(_pixels((16, 16), np.uint16))
        tif.write(_pixels((8, 8), np.uint16))
    with pytest.raises(ImageError, match="positions.tif.*2 image series"):
        read_image(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # imageio's plugin search imports old plugins
@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_rejects_non_image_with_image_suffix(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("this is not an image\n")
    says = "is not a PNG file, whatever its name" if suffix == ".png" else "cannot be read"  # not imageio's codec advice
    assert says in _error(path)
    with pytest.raises(ImageError, match=says):
        read_header(path)


@pytest.mark.parametrize("compression", ["jpeg", "lzw", None])
def test_a_tiff_cut_short_is_refused_from_its_header(tmp_path, compression):
    """A JPEG strip cut short decodes without an error into wrong pixels: the file's length says it."""
    whole, cut = tmp_path / "whole.tif", tmp_path / "cut.tif"
    tifffile.imwrite(whole, _pixels((64, 64), np.uint8), compression=compression)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    for read in (read_header, read_image):
        with pytest.raises(ImageError, match="cut.tif: the file is cut short"):
            read(cut)
    read_header(whole), read_image(whole)


def test_an_ome_tiff_cut_short_in_its_trailing_metadata_is_refused(tmp_path):
    """tifffile drops a tag whose value lies past the end with a log line: the pixel size and
    channel names would be lost without an error, for every output made from it."""
    whole, cut = tmp_path / "whole.ome.tif", tmp_path / "cut.ome.tif"
    tifffile.imwrite(whole, _pixels((64, 64), np.uint16), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    cut.write_bytes(whole.read_bytes()[:-150])
    for read in (read_header, read_image):
        with pytest.raises(ImageError, match="cut.ome.tif: the file is cut short"):
            read(cut)
        assert read(whole)[1].pixel_size_um == (0.65, 0.65)


def test_rejects_unsupported_suffix(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8\xff")
    assert "'.jpg'" in _error(path)


def test_rejects_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "missing.tif")


# --- writing ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels,channel_axis,file_shape", [
    (1, None, (20, 30)), (2, 0, (2, 20, 30)), (3, 2, (20, 30, 3)), (2, 2, (20, 30, 2)),
])
def test_write_image_round_trips_dtype_and_layout(tmp_path, dtype, channels, channel_axis, file_shape):
    image = _pixels((channels, 20, 30), dtype)
    path = write_image(tmp_path / "out" / "w.tif", image, ImageLayout(channel_axis=channel_axis, dtype=np.dtype(dtype)))
    raw = tifffile.imread(path)
    assert raw.shape == file_shape and raw.dtype == np.dtype(dtype)
    with tifffile.TiffFile(path) as tif:  # as any reader sees it, not only through tifffile's own description
        pages = [(page.shape, page.samplesperpixel) for page in tif.pages]
    assert pages == ([(file_shape, channels)] if channel_axis == 2 else [((20, 30), 1)] * channels)
    back, layout = read_image(path)
    np.testing.assert_array_equal(back, image)
    assert layout.channel_axis == channel_axis and layout.dtype == np.dtype(dtype)
    assert [p.name for p in path.parent.iterdir()] == ["w.tif"]  # no temporary left behind


def test_read_then_write_keeps_a_channels_last_file_channels_last(tmp_path):
    pixels = _pixels((20, 30, 2), np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", pixels, metadata={"axes": "YXC"})
    image, layout = read_image(tmp_path / "in.tif")
    write_image(tmp_path / "out.tif", image, layout)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), pixels)


@pytest.mark.parametrize("shape, channel_axis", [((1, 20, 30), None), ((3, 20, 30), 0), ((3, 20, 30), 2), ((2, 20, 30), 2)])
def test_an_ome_tiff_name_gets_an_ome_tiff_with_its_pixel_size(tmp_path, shape, channel_axis):
    image = _pixels(shape, np.uint16)
    layout = ImageLayout(channel_axis=channel_axis, dtype=np.dtype(np.uint16), pixel_size_um=(0.5, 0.25))
    path = write_image(tmp_path / "w.ome.tif", image, layout)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome  # two channels last are stored first: OME keeps only RGB samples last
    back, back_layout = read_image(path)
    np.testing.assert_array_equal(back, image)
    assert back_layout.pixel_size_um == pytest.approx((0.5, 0.25))


def test_an_ome_tiffs_channel_names_pass_to_its_output(tmp_path):
    pixels = _pixels((2, 20, 30), np.uint16)
    tifffile.imwrite(tmp_path / "in.ome.tif", pixels, metadata={"axes": "CYX", "Channel": {"Name": ["DNA", "Actin"]}})
    image, layout = read_image(tmp_path / "in.ome.tif")
    assert layout.channel_names == ("DNA", "Actin")
    path = write_image(tmp_path / "out.ome.tif", image, layout)
    with tifffile.TiffFile(path) as tif:
        channels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["Channel"]
        assert [channel["Name"] for channel in channels] == ["DNA", "Actin"]
    tifffile.imwrite(tmp_path / "one.ome.tif", pixels[0], metadata={"axes": "YX", "Channel": {"Name": ["DNA"]}})
    image, layout = read_image(tmp_path / "one.ome.tif")
    with tifffile.TiffFile(write_image(tmp_path / "one_out.ome.tif", image, layout)) as tif:
        assert tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["Channel"]["Name"] == "DNA"
    tifffile.imwrite(tmp_path / "unnamed.ome.tif", pixels, metadata={"axes": "CYX"})
    assert read_image(tmp_path / "unnamed.ome.tif")[1].channel_names is None


def test_an_imagej_hyperstack_gives_an_imagej_hyperstack_where_imagej_can_hold_the_pixel_type(tmp_path, monkeypatch):
    pixels = _pixels((3, 20, 30), np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", pixels, imagej=True, metadata={"axes": "CYX", "unit": "um"},
                     resolution=(1 / 0.5, 1 / 0.5))
    image, layout = read_image(tmp_path / "in.tif")
    assert layout.imagej and layout.pixel_size_um == pytest.approx((0.5, 0.5))
    for dtype in (np.uint16, np.float32, np.int32):  # the output, its uncertainty image, a type ImageJ lacks
        path = write_image(tmp_path / f"{np.dtype(dtype).name}.tif", image.astype(dtype),
                           replace(layout.upscaled(4), dtype=np.dtype(dtype)))
        with tifffile.TiffFile(path) as tif:  # channels stay channels to ImageJ and Bio-Formats (not frames)
            assert tif.is_imagej == (dtype != np.int32)
            if tif.is_imagej:
                assert tif.imagej_metadata["channels"] == 3 and tif.imagej_metadata["unit"] == "um"
        back, back_layout = read_image(path)
        np.testing.assert_array_equal(back, image.astype(dtype))
        assert back_layout.pixel_size_um == pytest.approx((0.125, 0.125))
    monkeypatch.setattr(io, "IMAGEJ_MAX_BYTES", image.nbytes - 1)  # as if over 4 GB: ImageJ TIFFs cannot be BigTIFFs
    with tifffile.TiffFile(write_image(tmp_path / "big.tif", image, layout)) as tif:
        assert not tif.is_imagej


def test_atomic_write_leaves_no_file_on_failure(tmp_path):
    target = tmp_path / "result.tif"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"half written")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_previous_version_on_failure(tmp_path):
    target = tmp_path / "result.tif"
    write_image(target, np.ones((1, 4, 4), np.uint8))
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tifffile.imwrite(tmp, np.zeros((4, 4), np.uint8))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [target]
    np.testing.assert_array_equal(tifffile.imread(target), np.ones((4, 4), np.uint8))


def test_a_pixel_size_the_file_states_badly_is_ignored_not_an_error(tmp_path):
    pixels = _pixels((16, 20), np.uint16)
    tifffile.imwrite(tmp_path / "zero.tif", pixels, resolution=(0, 1, "CENTIMETER"))  # a resolution of 0 pixels a cm
    tifffile.imwrite(tmp_path / "zero.ome.tif", pixels, metadata={"axes": "YX", "PhysicalSizeX": 0, "PhysicalSizeY": 0.3})
    tifffile.imwrite(tmp_path / "unit.ome.tif", pixels, metadata={"axes": "YX", "PhysicalSizeX": 2, "PhysicalSizeY": 2,
                                                                  "PhysicalSizeXUnit": "pc", "PhysicalSizeYUnit": "pc"})
    tifffile.imwrite(tmp_path / "screen.tif", pixels, resolution=(72, 72, "INCH"))  # a writer's default (ExampleHuman)
    for name in ("zero.tif", "zero.ome.tif", "unit.ome.tif", "screen.tif"):
        image, layout = read_image(tmp_path / name)
        np.testing.assert_array_equal(image[0], pixels)
        assert layout.pixel_size_um is None
    tifffile.imwrite(tmp_path / "fine.tif", pixels, resolution=(12700, 12700, "INCH"))  # in inches, yet a microscope's
    assert read_image(tmp_path / "fine.tif")[1].pixel_size_um == pytest.approx((2.0, 2.0))


def test_find_images_takes_folders_globs_and_folders_of_wells(tmp_path):
    from msrgan_core.io import find_images

    plate = tmp_path / "plate"
    for well in ("A01", "A02"):
        (plate / well).mkdir(parents=True)
        tifffile.imwrite(plate / well / "f0.tif", _pixels((8, 8), np.uint16))
    (plate / "A01" / "results.csv").write_text("well,count\n")
    with pytest.raises(ImageError, match="does not look into subfolders; give them, e.g. FOLDER/\\*/"):
        find_images([plate])
    wells = [plate / "A01" / "f0.tif", plate / "A02" / "f0.tif"]
    for pattern in (f"{plate}/*/", f"{plate}/**/*.tif", f"{plate}/*/*"):  # the CSV a glob meets is not an image
        assert find_images([pattern]) == wells, pattern
    with pytest.raises(ImageError, match="no .tif/.tiff/.png images found in .*csv"):
        find_images([f"{plate}/*/*.csv"])
    with pytest.raises(ImageError, match="no input images given"):
        find_images([])


def test_an_ome_tiff_named_tif_stays_an_ome_tiff(tmp_path):
    """Acquisition software names OME-TIFFs .tif too: its output keeps the OME-XML, so the
    channels' names and the pixel size reach Bio-Formats (and CellProfiler)."""
    pixels = _pixels((2, 20, 30), np.uint16)
    tifffile.imwrite(tmp_path / "well.tif", pixels, ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DNA", "GFP"]}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    image, layout = read_image(tmp_path / "well.tif")
    assert layout.ome and layout.channel_names == ("DNA", "GFP")
    with tifffile.TiffFile(write_image(tmp_path / "out.tif", image, layout.upscaled(4))) as tif:
        assert tif.is_ome
        pixels_xml = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert [c["Name"] for c in pixels_xml["Channel"]] == ["DNA", "GFP"] and pixels_xml["PhysicalSizeX"] == 0.125


def test_find_images_takes_a_file_named_twice_once_and_keeps_a_broken_link_to_refuse(tmp_path):
    folder = tmp_path / "plate"
    folder.mkdir()
    for name in ("A01.tif", "A02.tif"):
        tifffile.imwrite(folder / name, _pixels((20, 20), np.uint16))
    (folder / "A03.tif").symlink_to(tmp_path / "gone.tif")  # a link whose file moved
    found = io.find_images([folder, folder / "A01.tif", tmp_path / "plate" / ".." / "plate" / "A02.tif"])
    assert [p.name for p in found] == ["A01.tif", "A02.tif", "A03.tif"]
    with pytest.raises(ImageError, match="A03.tif"):
        read_image(found[2])


@pytest.mark.parametrize("channels, photometric", [(3, "rgb"), (2, "minisblack")])
def test_channels_stored_as_the_samples_of_one_page_come_back_so(tmp_path, channels, photometric):
    """tifffile writes a 3 x Y x X array as one RGB page stored plane by plane: the output is one
    such page too (it had become a page per channel, which other readers see as planes)."""
    pixels = _pixels((channels, 20, 30), np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", pixels, photometric=photometric, planarconfig="separate")
    image, layout = read_image(tmp_path / "in.tif")
    assert layout.planar and image.shape == (channels, 20, 30)
    with tifffile.TiffFile(write_image(tmp_path / "out.tif", image, layout)) as tif:
        assert len(tif.pages) == 1 and tif.pages[0].samplesperpixel == channels
        assert tif.pages[0].planarconfig == 2 and tif.pages[0].photometric == (2 if channels == 3 else 1)
    np.testing.assert_array_equal(read_image(tmp_path / "out.tif")[0], pixels)


def test_an_inverted_tiff_is_read_as_it_shows_and_written_back_as_it_was_stored(tmp_path):
    """MINISWHITE (0 is white): stored 0 on a field of 60000 shows bright nuclei on dark; the
    network must see them bright, and Fiji and CellProfiler the output as they saw the input."""
    stored = np.full((16, 20), 60000, np.uint16)
    stored[4:8, 5:9] = 100  # a nucleus, bright as shown
    tifffile.imwrite(tmp_path / "inverted.tif", stored, photometric="miniswhite")
    image, layout = read_image(tmp_path / "inverted.tif")
    assert layout.miniswhite and image[0, 5, 6] == 65535 - 100 and image[0, 0, 0] == 65535 - 60000
    write_image(tmp_path / "out.tif", image, layout)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.pages[0].photometric.name == "MINISWHITE"
        np.testing.assert_array_equal(tif.asarray(), stored)
    np.testing.assert_array_equal(read_image(tmp_path / "out.tif")[0], image)


def test_an_imagej_hyperstack_keeps_how_fiji_shows_it(tmp_path):
    """A composite of named, coloured channels with display ranges came back as grey channels
    shown one at a time."""
    green = np.zeros((3, 256), np.uint8)
    green[1] = np.arange(256)
    blue = np.roll(green, 1, axis=0)  # the ramp in the third row
    display = {"mode": "composite", "Labels": ["DNA", "Actin"], "Ranges": (0.0, 900.0, 10.0, 2000.0), "LUTs": [blue, green]}
    tifffile.imwrite(tmp_path / "stack.tif", _pixels((2, 16, 20), np.uint16), imagej=True,
                     metadata={"axes": "CYX", **display})
    image, layout = read_image(tmp_path / "stack.tif")
    write_image(tmp_path / "out.tif", np.repeat(np.repeat(image, 2, axis=1), 2, axis=2), layout.upscaled(2))
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        shown = tif.imagej_metadata
    assert shown["mode"] == "composite" and shown["Labels"] == ["DNA", "Actin"]
    assert tuple(shown["Ranges"]) == display["Ranges"]
    assert all(np.array_equal(a, b) for a, b in zip(shown["LUTs"], display["LUTs"]))
