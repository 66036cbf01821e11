"""Images read by eval, stitch, generate, calibrate and search: size checked from the header before anything is
decoded.

A small PNG can declare 50,000 x 50,000 pixels and take gigabytes once decoded (a decompression bomb). The
header is read first and an image larger than `max_pixels` is refused with the limit and the option that raises
it; decoding errors of any kind become one line naming the file.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageTooLargeError, UnreadableFileError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: ~300 MB as RGB, beyond any photo a VQA set holds
RAISE_HINT = ("raise the limit with --max-image-pixels N, max_image_pixels=N in Python, or `max_image_pixels: N` in "
              "a search spec's `search:` section")
# What PIL raises on a broken file, besides OSError: parsers raise SyntaxError, ValueError, struct and zlib errors.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


@dataclass(frozen=True)
class EmbeddedImage:
    """An image held as encoded bytes inside a data file (a parquet shard's {"bytes", "path"} struct), named by
    `where` ("FILE: row N") in messages and outputs; read wherever an image path is."""
    data: bytes
    where: str

    def __str__(self) -> str:
        return self.where


def _source(path):
    """What PIL opens: the file, or a fresh stream over an embedded image's bytes."""
    return io.BytesIO(path.data) if isinstance(path, EmbeddedImage) else path


@contextlib.contextmanager
def _pil_unlimited():
    """PIL's own bomb check, which warns and then raises at a fixed size, off: ours ran first, with the limit the
    user chose."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield Image
    finally:
        Image.MAX_IMAGE_PIXELS = old


def check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"image {path}: {w} x {h} pixels ({w * h / 1e6:.1f} megapixels) is over the limit "
                                 f"of {max_pixels / 1e6:g} megapixels; it was not decoded ({RAISE_HINT})")


def image_size(path: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header only; ImageTooLargeError over `max_pixels` (None: no limit)."""
    with _pil_unlimited() as Image:
        try:
            with Image.open(_source(path)) as im:
                size = im.size
        except DECODE_ERRORS as e:
            raise UnreadableFileError(f"cannot read image {path}: not a readable image ({e})") from e
    check_pixels(path, size, max_pixels)
    return size


def open_rgb(path: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """The image decoded as RGB, after the header's size passed `max_pixels` (None: no limit)."""
    with _pil_unlimited() as Image:
        try:
            with Image.open(_source(path)) as im:
                check_pixels(path, im.size, max_pixels)
                return im.convert("RGB")
        except DECODE_ERRORS as e:
            raise UnreadableFileError(f"cannot read image {path}: not a readable image ({e})") from e
