"""Read and write microscopy images, keeping their axes and dtype.

Images travel through msrgan as ``(C, Y, X)`` arrays. ``read_image`` accepts 8- and 16-bit
(and float) TIFF, OME-TIFF and PNG files that hold one 2-D plane, or several channels of one
plane, and rejects anything else (3-D stacks, time series, complex, empty or NaN data) with one
line naming the file and what is wrong.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import glob
import inspect
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import tifffile

try:  # the lock that tells a live writer's temporary file from a killed one's (POSIX)
    import fcntl
except ImportError:  # Windows: every leftover is taken for a killed run's
    fcntl = None

from .errors import UserError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
#: names that say a TIFF carries OME-XML; msrgan writes its outputs under them as OME-TIFFs
OME_SUFFIXES = (".ome.tif", ".ome.tiff")
#: the pixel types msrgan reads, upscales and writes back in the same type
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int8, np.int16, np.int32, np.float32, np.float64)
#: more channels than this on an axis that the file does not name means "a stack", not channels
MAX_UNNAMED_CHANNELS = 4
#: the smallest image edge msrgan takes, in pixels
MIN_EDGE = 2


class ImageError(UserError, ValueError):
    """An image msrgan cannot take; the message names the file and the problem."""


@dataclass
class ImageLayout:
    """Where the channels of a file were, so the output is written the same way.

    Attributes
    ----------
    channel_axis : int or None
        Axis of the channels in the file's squeezed array (``None``: a 2-D image).
    dtype : numpy.dtype
        The file's dtype; outputs are written back in it.
    compression : str or None
        How outputs are compressed (tifffile's name; always lossless): a compressed file's own
        codec where it is lossless, deflate (``zlib``) where it is lossy or a PNG's; None for an
        uncompressed file (:func:`output_compression`).
    pixel_size_um : (float, float) or None
        The height and width of a pixel at the sample, in micrometres, where the file says
        (:func:`_pixel_size_um`); None where it does not.
    channel_names : tuple of str, or None
        The channels' names where an OME-TIFF gives one to each (:func:`_ome_channel_names`); an
        OME-TIFF output carries them.
    ome : bool
        The file is an OME-TIFF, whatever its name: the output is written as one too.
    planar : bool
        The channels were the samples of one TIFF page stored plane by plane (planar configuration
        "separate", as tifffile writes a 3 x Y x X array): the output is one such page too, not a
        page per channel.
    imagej : bool
        The file is an ImageJ TIFF (a hyperstack's channels are channels to ImageJ and to
        Bio-Formats, so to CellProfiler, and its pixel size is in ImageJ's unit); the output is
        written as one too where ImageJ can hold it (:func:`write_image`).
    miniswhite : bool
        The TIFF stores its intensities inverted (photometric MINISWHITE: 0 is white); unsigned
        integer pixels are read as the intensities they show (the largest value minus the stored
        one) and written back stored as they came.
    imagej_display : dict or None
        An ImageJ TIFF's display settings (composite mode, channel labels, display ranges, colour
        tables; :data:`IMAGEJ_DISPLAY`), written back into an ImageJ output so Fiji shows it alike.
    """

    channel_axis: Optional[int]
    dtype: np.dtype
    compression: Optional[str] = None
    pixel_size_um: Optional[Tuple[float, float]] = None
    channel_names: Optional[Tuple[str, ...]] = None
    ome: bool = False
    planar: bool = False
    imagej: bool = False
    miniswhite: bool = False
    imagej_display: Optional[dict] = field(default=None, compare=False)  # colour tables are arrays

    def upscaled(self, scale: int) -> "ImageLayout":
        """The layout of this image's upscaled output: pixels ``scale`` times smaller."""
        if self.pixel_size_um is None:
            return self
        return replace(self, pixel_size_um=(self.pixel_size_um[0] / scale, self.pixel_size_um[1] / scale))


#: TIFF codecs that lose nothing, by tifffile's COMPRESSION names, and the name tifffile writes them by
LOSSLESS_CODECS = {"LZW": "lzw", "ADOBE_DEFLATE": "zlib", "DEFLATE": "zlib", "ZSTD": "zstd", "LZMA": "lzma",
                   "PACKBITS": "packbits"}
#: micrometres in a unit of length, by the names TIFF, ImageJ and OME files give it
MICROMETRES = {
    "INCH": 25400.0, "CENTIMETER": 1e4, "MILLIMETER": 1e3, "MICROMETER": 1.0,  # TIFF's ResolutionUnit
    "inch": 25400.0, "cm": 1e4, "mm": 1e3, "millimeter": 1e3, "micron": 1.0, "microns": 1.0, "um": 1.0,
    "\u00b5m": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "nanometer": 1e-3,
}


def read_image(path: "str | Path", channel_axis: Optional[int] = None) -> "tuple[np.ndarray, ImageLayout]":
    """Read one 2-D image, grayscale or multi-channel.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff`` (OME-TIFF included) or ``.png`` file.
    channel_axis : int, optional
        Axis of the channels in a 3-D array (0 = channels first, -1 or 2 = channels last) when
        the file does not name its axes; by default a TIFF's own axes are used, and an unnamed
        axis of at most 4 planes counts as channels.

    Returns
    -------
    image : numpy.ndarray, shape (C, Y, X)
        The pixels in the file's dtype.
    layout : ImageLayout
        How to write an output the same way.
    """
    path = _check_name(path)
    with _reading(path):
        if path.suffix.lower() == ".png":
            array, axes, stored = _read_png(path), None, PNG_STORAGE
        else:
            array, axes, stored = _read_tiff(path, channel_axis)
    image, layout = to_cyx(array, path, axes=axes, channel_axis=channel_axis)
    layout = replace(layout, **stored)
    return _shown(image, layout), layout


def _shown(pixels: np.ndarray, layout: ImageLayout) -> np.ndarray:
    """Stored unsigned pixels of an inverted (MINISWHITE) TIFF as the intensities they show, or
    the other way round (the largest value minus each); other pixels as they are."""
    if layout.miniswhite and pixels.dtype.kind == "u":
        return np.iinfo(pixels.dtype).max - pixels
    return pixels


#: an ImageJ TIFF's display settings an output keeps, and per channel how many values each holds
IMAGEJ_DISPLAY = {"mode": None, "Labels": 1, "Ranges": 2, "LUTs": 1}


#: what a PNG's layout says of its storage: deflate, as its pixels were
PNG_STORAGE = {"compression": "zlib"}


def _tiff_storage(tif: "tifffile.TiffFile", series: "tifffile.TiffPageSeries") -> dict:
    """What a TIFF's layout says of its storage (:class:`ImageLayout`'s fields): its codec (as
    the output's compression), its pixel size, its channels' names and whether ImageJ wrote it.
    An OME-TIFF's metadata is parsed once for both."""
    ome_pixels = _ome_pixels(tif)
    return {"compression": output_compression(_codec(series)), "pixel_size_um": _pixel_size_um(tif, ome_pixels),
            "channel_names": _ome_channel_names(ome_pixels), "ome": bool(tif.is_ome), "imagej": bool(tif.is_imagej),
            "planar": len(series.pages) == 1 and series.axes.startswith("S"),
            "miniswhite": getattr(series.keyframe.photometric, "name", None) == "MINISWHITE",
            "imagej_display": _imagej_display(tif)}


def _imagej_display(tif: "tifffile.TiffFile") -> Optional[dict]:
    """An ImageJ TIFF's display settings (:data:`IMAGEJ_DISPLAY`), or None (none, or not ImageJ's)."""
    settings = (tif.imagej_metadata or {}) if tif.is_imagej else {}
    return {k: v for k, v in settings.items() if k in IMAGEJ_DISPLAY} or None


def output_compression(codec: Optional[str]) -> Optional[str]:
    """How to compress the output of a file compressed by ``codec`` (tifffile's COMPRESSION name,
    e.g. ``LZW``; None or ``NONE``: not compressed): the same codec where it loses nothing, else
    deflate. An output is never compressed with loss, and an uncompressed input's is not compressed."""
    if codec in (None, "NONE"):
        return None
    return LOSSLESS_CODECS.get(codec, "zlib")


def read_header(path: "str | Path", channel_axis: Optional[int] = None) -> "tuple[tuple[int, int, int], ImageLayout]":
    """The ``(C, Y, X)`` shape and layout :func:`read_image` would give, from the file's header.

    Reads no pixels, so a batch can refuse what it cannot take before any model is loaded: the
    same one-line errors as :func:`read_image` except for NaN pixels and damaged pixel data.
    A PNG stored as RGB counts its three channels here even where they turn out to be equal, and an
    alpha channel counts as one.
    """
    path = _check_name(path)
    with _reading(path):
        if path.suffix.lower() == ".png":
            import imageio.v3 as iio

            _check_png(path)
            props = iio.improps(path)
            shape = props.shape[:2] if _has_lookup_table(path) else props.shape  # the indices
            dtype, axes, stored = props.dtype, None, PNG_STORAGE
        else:
            with _open_tiff(path) as tif:
                series = _one_series(tif, path)
                _check_whole(tif, series, path)
                shape, dtype, axes, stored = series.shape, series.dtype, series.axes, _tiff_storage(tif, series)
    squeezed, layout = plane_layout(shape, dtype, path, axes, channel_axis)
    layout = replace(layout, **stored)
    if layout.channel_axis is None:
        return (1, *squeezed), layout
    plane = [n for i, n in enumerate(squeezed) if i != layout.channel_axis]
    return (squeezed[layout.channel_axis], *plane), layout


def _check_name(path: "str | Path") -> Path:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path} is a folder: give an image file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: unsupported file type {suffix!r}; msrgan reads {', '.join(IMAGE_SUFFIXES)}")
    return path


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the many exception types of tifffile/imageio on damaged files into one-line ImageErrors."""
    try:
        yield
    except ImageError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())  # one line, even for libraries' multi-line messages
        raise ImageError(f"{path}: cannot be read as an image ({type(exc).__name__}: {detail})") from None


def _check_png(path: Path) -> None:
    """Refuse a file named ``.png`` that is not one (imageio's error would advise installing codecs)."""
    with open(path, "rb") as fh:
        start = fh.read(8)
    if start != b"\x89PNG\r\n\x1a\n":
        raise ImageError(f"{path}: is not a PNG file, whatever its name (it begins {start[:4]!r})")


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    _check_png(path)
    if _has_lookup_table(path):  # the indices are the pixel values, the table only colours them
        from PIL import Image

        with Image.open(path) as image:
            return np.array(image)
    array = np.asarray(iio.imread(path))
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # gray or RGB with an alpha channel
        alpha = array[..., -1]
        if not np.all(alpha == alpha.flat[0]):
            raise ImageError(f"{path}: its alpha (transparency) channel varies; msrgan upscales intensities, "
                             "not transparency: save the image without alpha")
        array = array[..., :-1] if array.shape[-1] == 4 else array[..., 0]  # a constant alpha carries nothing
    if array.ndim == 3 and array.shape[-1] == 3:
        if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
            array = array[..., 0]  # grayscale stored as RGB
    return array


def _has_lookup_table(path: Path) -> bool:
    """Whether a PNG is indexed with a palette that is not gray: a lookup table that only colours
    the pixel values, as ImageJ saves an 8-bit image shown in one, so its indices are the image
    (tifffile likewise reads a palette TIFF as its indices). A gray palette's levels are the pixel
    values themselves."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode != "P":
            return False
        rgb = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(np.any(rgb != rgb[:, :1]))


class _TiffNotes(logging.Handler):
    """Keeps what tifffile logs of a file it reads anyway (a tag whose value lies past the end)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.notes: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(record.getMessage())


@contextlib.contextmanager
def _open_tiff(path: Path) -> Iterator["tifffile.TiffFile"]:
    """tifffile's TiffFile of ``path``, refused as cut short where a tag's value lies past the
    file's end: tifffile drops such a tag with a log line (an OME-TIFF copied short of its
    trailing OME-XML loses its pixel size and channel names without an error)."""
    logger, notes = logging.getLogger("tifffile"), _TiffNotes()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(notes)
    if logger.getEffectiveLevel() > logging.WARNING:  # heard here, still not shown
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:
        with tifffile.TiffFile(path) as tif:
            cut = next((note for note in notes.notes if "invalid value offset" in note), None)
            if cut is not None:
                raise ImageError(f"{path}: the file is cut short (a tag's value lies past its end, "
                                 f"{tif.filehandle.size} bytes): copy it again from the source")
            yield tif
    finally:
        logger.removeHandler(notes)
        logger.setLevel(level)
        logger.propagate = propagate


def _read_tiff(path: Path, channel_axis: Optional[int]) -> "tuple[np.ndarray, str, dict]":
    """The pixels, tifffile's axes letters and what the layout says of its storage
    (:func:`_tiff_storage`) of a TIFF."""
    with _open_tiff(path) as tif:
        series = _one_series(tif, path)
        plane_layout(series.shape, series.dtype, path, series.axes, channel_axis)  # refused before its pixels are decoded
        _check_whole(tif, series, path)
        return series.asarray(), series.axes, _tiff_storage(tif, series)


def _check_whole(tif: "tifffile.TiffFile", series: "tifffile.TiffPageSeries", path: Path) -> None:
    """Refuse a TIFF cut short (a copy or transfer that stopped): some codecs (JPEG) decode the
    part that is there and fill the rest without an error, so the pixels alone do not show it."""
    size = tif.filehandle.size
    for page in series.pages:
        if page is None:  # a page the series names but the file lacks: reading its pixels says so
            continue
        ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts) if count]
        if ends and max(ends) > size:
            raise ImageError(f"{path}: the file is cut short ({size} bytes, its pixels run to byte {max(ends)}): "
                             "copy it again from the source")


def _pixel_size_um(tif: "tifffile.TiffFile", ome_pixels) -> Optional[Tuple[float, float]]:
    """A TIFF's pixel height and width at the sample in micrometres: from its OME metadata
    (PhysicalSizeY/X of ``ome_pixels``, :func:`_ome_pixels`), else its resolution tags in the unit ImageJ's metadata names (ImageJ saves
    pixels per micron with no TIFF unit) or the TIFF's own (inch or centimetre). None where the
    file does not say (no tags, resolution without a unit, a screen's 72 or 96 dpi) or says it in
    a way not understood: metadata never makes an image unreadable."""
    try:
        size = _ome_pixel_size_um(ome_pixels)
        if size is None:
            size = _tagged_pixel_size_um(tif)
    except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError):
        return None
    if size is None or not all(np.isfinite(size)) or min(size) <= 0:
        return None
    return size


def _ome_channel_names(pixels) -> Optional[Tuple[str, ...]]:
    """The channels' names an OME-TIFF's ``Pixels`` element (:func:`_ome_pixels`) gives, one to
    each channel; None where there is none (not an OME-TIFF, unreadable metadata) or a channel
    has no name."""
    if pixels is None:
        return None
    names = tuple(e.attrib.get("Name") for e in pixels if e.tag.endswith("}Channel"))
    return names if names and all(names) else None


def _ome_pixels(tif: "tifffile.TiffFile"):
    """The first image's ``Pixels`` element of an OME-TIFF's metadata; None where the file is not
    an OME-TIFF or its metadata cannot be read."""
    import xml.etree.ElementTree as ElementTree

    if not tif.is_ome:
        return None
    try:
        return next(e for e in ElementTree.fromstring(tif.ome_metadata).iter() if e.tag.endswith("}Pixels"))
    except (ElementTree.ParseError, StopIteration, TypeError):
        return None


def _ome_pixel_size_um(pixels) -> Optional[Tuple[float, float]]:
    if pixels is None or "PhysicalSizeX" not in pixels.attrib or "PhysicalSizeY" not in pixels.attrib:
        return None
    y, x = (float(pixels.attrib[f"PhysicalSize{a}"]) * MICROMETRES[pixels.attrib.get(f"PhysicalSize{a}Unit", "um")]
            for a in "YX")
    return y, x


#: resolutions in dots per inch that writers put in every TIFF they save (screen defaults): no microscope's pixel
SCREEN_DPI = {72.0, 96.0}


def _tagged_pixel_size_um(tif: "tifffile.TiffFile") -> Optional[Tuple[float, float]]:
    tags = tif.pages[0].tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    if isinstance(unit, str):
        unit = unit.replace("\\u00B5", "\u00b5").replace("\\u00b5", "\u00b5")  # ImageJ writes µ as an escape
    else:
        unit = getattr(tags["ResolutionUnit"].value, "name", None) if "ResolutionUnit" in tags else "INCH"
    if unit not in MICROMETRES:
        return None
    (y_pixels, y_units), (x_pixels, x_units) = tags["YResolution"].value, tags["XResolution"].value
    if unit == "INCH" and {y_pixels / y_units, x_pixels / x_units} <= SCREEN_DPI:
        return None  # a writer's default, not a size at the sample (ExampleHuman's fields carry 72 dpi)
    return y_units / y_pixels * MICROMETRES[unit], x_units / x_pixels * MICROMETRES[unit]


def _codec(series: "tifffile.TiffPageSeries") -> Optional[str]:
    """tifffile's name of the codec that compresses a series (``NONE``, ``LZW`` ...)."""
    return getattr(series.keyframe.compression, "name", None)


def _one_series(tif: "tifffile.TiffFile", path: Path) -> "tifffile.TiffPageSeries":
    if not tif.series:
        raise ImageError(f"{path}: the TIFF holds no image")
    if len(tif.series) > 1:
        raise ImageError(f"{path}: holds {len(tif.series)} image series (positions or views of a multi-series "
                         "file); msrgan upscales one image per file: save each series as its own file")
    return tif.series[0]


def to_cyx(
    array: np.ndarray,
    source: "str | Path" = "image",
    axes: Optional[str] = None,
    channel_axis: Optional[int] = None,
) -> "tuple[np.ndarray, ImageLayout]":
    """Check an array and bring it to ``(C, Y, X)``.

    Parameters
    ----------
    array : numpy.ndarray
        2-D ``(Y, X)`` or 3-D with one channel axis, possibly with extra singleton axes.
    source : str or Path
        What to call the image in error messages (its file name).
    axes : str, optional
        tifffile's axes letters for ``array`` (``Y``, ``X``, ``C``/``S`` channels, ``Z``, ``T``...).
    channel_axis : int, optional
        Channel axis of a 3-D array whose axes are not named.

    Returns
    -------
    image : numpy.ndarray, shape (C, Y, X)
    layout : ImageLayout
    """
    array = np.asarray(array)
    if not array.dtype.isnative:  # big-endian pixels (FITS, raw files read with np.fromfile): the same values
        array = array.astype(array.dtype.newbyteorder("="))
    squeezed, layout = plane_layout(array.shape, array.dtype, source, axes, channel_axis)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ImageError(f"{source}: {bad} pixel(s) are NaN or infinite; fill or mask them before upscaling")
    if array.dtype.kind == "f" and array.size:  # the network works in float32: its range must fit one
        lowest, largest = float(array.min()), float(array.max())
        if max(abs(lowest), abs(largest), largest - lowest) > np.finfo(np.float32).max:
            raise ImageError(f"{source}: values from {lowest:.3g} to {largest:.3g} are beyond what msrgan computes in "
                             f"(float32, up to {np.finfo(np.float32).max:.3g}): scale the image down first")
    array = array.reshape(squeezed)
    if layout.channel_axis is None:
        return array[np.newaxis], layout
    return np.ascontiguousarray(np.moveaxis(array, layout.channel_axis, 0)), layout


def plane_layout(
    shape: "tuple[int, ...]",
    dtype: np.dtype,
    source: "str | Path" = "image",
    axes: Optional[str] = None,
    channel_axis: Optional[int] = None,
) -> "tuple[tuple[int, ...], ImageLayout]":
    """What :func:`to_cyx` makes of an array of this shape and dtype, from the shape alone.

    Raises the same one-line :class:`ImageError` for empty, complex, unsupported, 3-D, time-series
    and too-small images (not for NaN pixels, which only the pixels show).

    Returns
    -------
    squeezed : tuple of int
        The shape without its extra singleton axes (2-D, or 3-D with the channel axis).
    layout : ImageLayout
    """
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) == 0:
        raise ImageError(f"{source}: the image is empty (shape {tuple(shape)})")
    if dtype.kind == "c":
        raise ImageError(f"{source}: complex pixels ({dtype}) are not supported; save the magnitude instead")
    if dtype == np.bool_ or dtype not in SUPPORTED_DTYPES:
        names = ", ".join(np.dtype(t).name for t in SUPPORTED_DTYPES)
        raise ImageError(f"{source}: pixel type {dtype} is not supported; msrgan takes {names}")

    named_by_file = False
    if axes is not None and len(axes) == len(shape):
        keep = [i for i, n in enumerate(shape) if n > 1 or axes[i] in "YX"]
        axes = "".join(axes[i] for i in keep)
        shape = tuple(shape[i] for i in keep)
        for letter, what in (("T", "a time series"), ("Z", "a 3-D stack")):
            if letter in axes:
                raise ImageError(
                    f"{source}: is {what} ({shape[axes.index(letter)]} planes along {letter}); "
                    "msrgan upscales single 2-D planes: save each plane as its own file"
                )
        named = [i for i, a in enumerate(axes) if a in "CS"]
        if len(named) == 1 and len(shape) == 3:
            if channel_axis is not None and channel_axis % 3 != named[0]:
                raise ImageError(f"{source}: its axes are {axes}, channels on axis {named[0]}, but the channel axis "
                                 f"given is {channel_axis}: leave the channel axis out for files that name their axes")
            channel_axis, named_by_file = named[0], True
    else:
        shape = tuple(n for n in shape if n > 1) or (1, 1)

    if len(shape) == 2:
        _check_plane(shape, source)
        return shape, ImageLayout(channel_axis=None, dtype=dtype)
    if len(shape) != 3:
        raise ImageError(f"{source}: has {len(shape)} dimensions {shape}; msrgan takes 2-D images, grayscale or multi-channel")
    if channel_axis is None:
        if shape[-1] <= MAX_UNNAMED_CHANNELS:
            channel_axis = 2
        elif shape[0] <= MAX_UNNAMED_CHANNELS:
            channel_axis = 0
        else:
            raise ImageError(
                f"{source}: looks like a 3-D stack of {shape[0]} planes {shape}; msrgan upscales "
                "2-D images: save each plane as its own file, or give the channel axis if these are channels"
            )
    channel_axis = channel_axis % 3
    if channel_axis == 1:
        raise ImageError(f"{source}: channel axis 1 of {shape} is not supported; channels go first or last")
    other = 2 - channel_axis  # the other end: channels there would leave a plane of the given axis's length
    if not named_by_file and shape[channel_axis] > MAX_UNNAMED_CHANNELS and shape[other] < shape[channel_axis]:
        raise ImageError(f"{source}: channel axis {channel_axis} of {shape} would make {shape[channel_axis]} channels of "
                         f"{' x '.join(str(n) for i, n in enumerate(shape) if i != channel_axis)} pixels: "
                         f"is the channel axis {other}, or is it a stack of planes?")
    _check_plane(tuple(n for i, n in enumerate(shape) if i != channel_axis), source)
    return shape, ImageLayout(channel_axis=channel_axis, dtype=dtype)


def _check_plane(plane: "tuple[int, int]", source: "str | Path") -> None:
    if min(plane) < MIN_EDGE:
        raise ImageError(f"{source}: the image is {plane[0]} x {plane[1]} pixels; msrgan needs at least {MIN_EDGE} x {MIN_EDGE}")


def from_cyx(image: np.ndarray, layout: ImageLayout) -> np.ndarray:
    """Undo :func:`to_cyx`: ``(C, Y, X)`` back to the file's own axis order."""
    if layout.channel_axis is None:
        return image[0]
    return np.moveaxis(image, 0, layout.channel_axis)


def write_image(path: "str | Path", image: np.ndarray, layout: Optional[ImageLayout] = None,
                replace_existing: bool = True) -> Path:
    """Write a ``(C, Y, X)`` image as TIFF atomically: to a temporary name, then renamed.

    An interrupted write never leaves a half-written file under ``path``. The file is stored as
    ``layout`` says (axis order, dtype, compression, pixel size): as an OME-TIFF under an
    ``.ome.tif`` name or for an OME-TIFF's layout (pixel size and channel names in its XML), as an ImageJ TIFF for an ImageJ
    file's layout where ImageJ can hold the pixels, else as a plain TIFF. Without
    ``replace_existing``, a file another run wrote at ``path`` meanwhile is kept and
    :class:`FileExistsError` raised (:func:`atomic_write`).
    """
    path = Path(path)
    layout = layout or ImageLayout(channel_axis=None if image.shape[0] == 1 else 0, dtype=image.dtype)
    ome = layout.ome or path.name.lower().endswith(OME_SUFFIXES)
    array = from_cyx(image, layout)
    if array.ndim == 2:
        axes = "YX"
    else:
        axes = "CYX" if layout.channel_axis == 0 else "YXC"
    planar = layout.planar and axes == "CYX" and not ome
    samples = array.shape[-1] if axes == "YXC" else array.shape[0] if planar else 1  # channels stored as a page's samples
    photometric = "rgb" if samples == 3 else "miniswhite" if layout.miniswhite else "minisblack"
    array = _shown(array, layout) if photometric == "miniswhite" else array  # stored inverted, as it came
    if ome and axes == "YXC" and photometric != "rgb":  # OME stores only RGB samples channels-last
        array, axes = np.moveaxis(array, -1, 0), "CYX"
    imagej = (layout.imagej and not ome and axes in ("YX", "CYX") and array.dtype in IMAGEJ_DTYPES
              and array.nbytes <= IMAGEJ_MAX_BYTES)
    metadata, options = {"axes": axes}, {}
    if axes == "YXC":  # one page of interleaved samples, as the file was, not a stack of pages Y x C pixels each
        options.update(planarconfig="contig")
    if planar:  # one page of C samples, plane by plane, as the file was
        options.update(planarconfig="separate")
    if layout.compression is not None:  # integers after differences of neighbours (the codec allowing); floats
        # without tifffile's floating-point predictor, which Bio-Formats (so CellProfiler and Fiji) cannot read
        options.update(compression=layout.compression,
                       predictor=layout.compression != "packbits" and array.dtype.kind in "iu")
    if imagej and layout.imagej_display:  # as Fiji showed the input, where they fit the channels
        metadata.update({k: v for k, v in layout.imagej_display.items()
                         if IMAGEJ_DISPLAY[k] is None or len(v) == IMAGEJ_DISPLAY[k] * image.shape[0]})
    if layout.pixel_size_um is not None:
        options.update(_resolution_tags(layout.pixel_size_um, per_micrometre=imagej))
        if imagej:  # ImageJ's own way: pixels per unit, the unit in its description
            metadata.update(unit="um")
        if ome:  # OME readers (Bio-Formats, so Fiji) take the size from the OME-XML, not the tags
            metadata.update(PhysicalSizeY=layout.pixel_size_um[0], PhysicalSizeYUnit="\u00b5m",
                            PhysicalSizeX=layout.pixel_size_um[1], PhysicalSizeXUnit="\u00b5m")
    if ome and axes != "YXC" and layout.channel_names and len(layout.channel_names) == image.shape[0]:
        metadata.update(Channel={"Name": list(layout.channel_names)})
    with atomic_write(path, replace_existing) as tmp:
        tifffile.imwrite(tmp, array, photometric=photometric, ome=ome, imagej=imagej, metadata=metadata, **options)
    return path


#: the pixel types an ImageJ TIFF holds (tifffile writes no other)
IMAGEJ_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32))
#: the largest output written as an ImageJ TIFF, which cannot be a BigTIFF: tifffile's own limit
#: for a classic TIFF (4 GB less 32 MB for metadata); a larger one is a plain BigTIFF
IMAGEJ_MAX_BYTES = 2**32 - 2**25


#: whether this tifffile takes the resolution's unit as an argument of its own (since 2022.7) or in the tuple
_RESOLUTION_UNIT_ARGUMENT = "resolutionunit" in inspect.signature(tifffile.TiffWriter.write).parameters


def _resolution_tags(pixel_size_um: Tuple[float, float], per_micrometre: bool = False) -> dict:
    """tifffile's arguments for resolution tags in pixels per centimetre, which ImageJ, Bio-Formats
    (and so CellProfiler) read as the pixel size; or in pixels per micrometre with no TIFF unit,
    as an ImageJ TIFF holds them (its description names the unit)."""
    unit, per_um = (None, 1.0) if per_micrometre else ("CENTIMETER", 1e4)
    per_unit = (per_um / pixel_size_um[1], per_um / pixel_size_um[0])  # X, then Y
    if _RESOLUTION_UNIT_ARGUMENT:
        return {"resolution": per_unit, "resolutionunit": unit or "NONE"}
    return {"resolution": (*per_unit, unit)}


@contextlib.contextmanager
def atomic_write(path: "str | Path", replace_existing: bool = True) -> Iterator[str]:
    """Yield a temporary name beside ``path``; rename it to ``path`` only if the block succeeds.

    A crash or ``kill -9`` mid-write leaves ``path`` as it was (absent or the previous
    version) and at worst a hidden ``.part`` file, never a half-written ``path``. The writer
    holds the ``.part`` file locked while it writes (:func:`stale_parts` leaves such ones to it).
    Without ``replace_existing``, a ``path`` that appeared meanwhile (another run's) is kept and
    :class:`FileExistsError` raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        _hold(fd)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if replace_existing:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    finally:
        os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _publish_new(tmp: str, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` unless a file holds it already (FileExistsError)."""
    try:
        os.link(tmp, path)  # fails where the name is taken, atomically
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "written meanwhile by another run", str(path)) from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(errno.EEXIST, "written meanwhile by another run", str(path)) from None
        os.replace(tmp, path)


def stale_parts(folder: Path, names: Iterable[str]) -> List[Path]:
    """The hidden ``.NAME.*.part`` files in ``folder`` of the files ``names`` that no live writer
    holds (:func:`atomic_write`): what killed runs left, not what another run is writing now.
    One listing of the folder, however many names."""
    wanted, found = set(names), []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".part") \
                    and entry.name[1:-len(".part")].rpartition(".")[0] in wanted and not _held(entry.path):
                found.append(Path(entry.path))
    return found


def _hold(fd: int) -> None:
    """Lock a file being written, where locks are to be had (not on every network file system)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass


def _held(path: str) -> bool:
    """Whether a live writer holds ``path`` locked (never, where locks are not to be had)."""
    if fcntl is None:
        return False
    try:
        with open(path, "rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
    except OSError:  # gone meanwhile, or not ours to read
        return False
    return False


@contextlib.contextmanager
def atomic_folder(destination: "str | Path") -> Iterator[Path]:
    """Yield a new hidden folder beside ``destination`` to fill; it replaces ``destination`` whole
    (:func:`replace_folder`) only if the block succeeds, and is removed otherwise: no run's files
    mix with an earlier or a failed run's."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        yield work
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp's 0700 would keep others on a shared server out
        replace_folder(work, destination)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _umask() -> int:
    """The process's umask: the permissions a file made the usual way would lack (mkstemp and
    mkdtemp make theirs private)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def replace_folder(new: Path, destination: Path) -> Path:
    """Put the folder ``new`` where ``destination`` is, the old one removed only once the new one is in place."""
    old = destination.with_name(f".{destination.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if destination.exists():
        os.replace(destination, old)
    os.replace(new, destination)
    shutil.rmtree(old, ignore_errors=True)
    return destination


def clashes(names: Iterable[str]) -> List[str]:
    """The names that occur more than once, sorted: files that would write (or be reported
    under) the same name."""
    return sorted(name for name, count in collections.Counter(names).items() if count > 1)


def find_images(inputs: Iterable["str | Path"]) -> List[Path]:
    """Expand files, folders and glob patterns (``**`` for any depth) into a sorted list of image
    files. A folder gives the images in it (not in its subfolders), a pattern the images it
    matches; a file named on its own is taken whatever its type (and refused on reading).

    Raises
    ------
    ImageError
        When an input names nothing, or nothing readable is found.
    """
    inputs = [str(item) for item in inputs]
    if not inputs:
        raise ImageError("no input images given")
    found: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = _images_in(path)
        elif path.is_file():
            matches = [path]
        else:
            named = [Path(p) for p in sorted(glob.glob(item, recursive=True))]
            if not named:
                raise ImageError(f"{item}: no such file, folder or matching pattern")
            matches = [image for p in named for image in (_images_in(p) if p.is_dir() else [p] if _is_image_name(p) else [])]
        found.extend(matches)
    first_names: Dict[str, Path] = {}  # a file named twice (its folder and itself, two spellings) once
    for path in found:
        first_names.setdefault(os.path.abspath(path), path)
    unique = list(first_names.values())
    if not unique:
        nested = any(_is_image_name(p) for item in inputs if Path(item).is_dir() for p in Path(item).glob("*/*"))
        hint = ": msrgan does not look into subfolders; give them, e.g. FOLDER/*/ or FOLDER/**/*.tif" if nested else ""
        raise ImageError(f"no {'/'.join(IMAGE_SUFFIXES)} images found in {', '.join(inputs)}{hint}")
    return unique


def _images_in(folder: Path) -> List[Path]:
    """The images in ``folder``, a broken link among them (refused on reading, not passed over)."""
    return [p for p in sorted(folder.iterdir()) if _is_image_name(p) and not p.is_dir()]


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def same_name_tif(path: Path, out_dir: Path, suffix: str = ".tif") -> Path:
    """``out_dir/<input stem><suffix>``; an OME-TIFF keeps ``.ome.tif`` at the end of its names, where
    OME-TIFF readers look for it: ``a.ome.tif`` gives ``a.ome.tif`` and ``a.uncertainty.ome.tif``."""
    stem = Path(path).stem
    if stem.lower().endswith(".ome") and suffix.lower().endswith(".tif") and suffix.lower() != ".tif":
        return Path(out_dir) / (stem[:-4] + suffix[:-4] + stem[-4:] + ".tif")
    return Path(out_dir) / (stem + suffix)
