"""Decode one image file into a SIZE x SIZE RGB array with Pillow (the same for every backend).

The resize rule: the image is turned upright (EXIF orientation), its first frame is taken
(animated GIF/WebP), it is converted to RGB (transparent pixels laid on white, 16-bit values
scaled to 8 bits, CMYK/palette/greyscale converted), then the largest centred square is cut out
and resized to SIZE x SIZE with Pillow's antialiased bilinear filter. The aspect ratio is kept;
the borders of the longer side are cropped, as in ImageNet's centre-crop evaluation.
"""

from __future__ import annotations

import errno
import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import not_regular_reason, sniff, special_kind

# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS), made explicit. decode_image
# checks it (or the caller's MAX_PIXELS) itself, right after reading the header and before any
# pixel is decoded. It opens files through Pillow's per-format openers, which do not apply
# Pillow's process-wide limit, so MAX_PIXELS alone decides and no global setting is changed.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageError(ValueError):
    """A file that cannot be embedded; the message says why, for a person.

    Attributes:
        lasting: True when the content itself is at fault (not an image, damaged, empty), so the
            same bytes fail again; False for a passing failure (an I/O error, a limit that may
            be raised), which the next run retries.
    """

    def __init__(self, reason: str, lasting: bool = True):
        super().__init__(reason)
        self.lasting = lasting

    def __reduce__(self):  # kept whole when a decoding process sends it back
        return type(self), (str(self), self.lasting)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def read_bytes(path) -> bytes:
    """Reads a whole regular file; the bytes are both hashed and decoded, so each file is read once.

    The file is opened without waiting (``O_NONBLOCK``) and checked to be a regular file before
    any read, so a named pipe put where an image was listed fails at once instead of waiting
    for a writer forever.

    Raises:
        OSError: as ``open``/``read`` raise it, or ``EINVAL`` for a file that is not regular.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        kind = special_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise OSError(errno.EINVAL, not_regular_reason(kind))
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as fh:
        return fh.read()


def _open(data: bytes, fmt: str) -> Image.Image:
    """Opens ``data`` with Pillow's opener for ``fmt`` (header only, no pixels decoded yet)."""
    Image.init()
    opener = Image.OPEN.get(fmt)
    if opener is None:  # not registered under the sniffed name: Pillow's general open
        return Image.open(io.BytesIO(data))
    return opener[0](io.BytesIO(data), "")


def decode_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes image bytes into a (size, size, 3) uint8 RGB array by the resize rule above.

    Raises:
        ImageError: empty, not an image, damaged or truncated (lasting), or too large (passing:
            MAX_PIXELS may be raised).
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    fmt = sniff(data[:16])
    if fmt is None:
        raise ImageError(
            "not an image: content is not JPEG, PNG, BMP, GIF or WebP "
            f"(starts with {data[:8]!r})"
        )
    try:
        img = _open(data, fmt)
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                f"image too large: {width}x{height} = {width * height:,} pixels, over the "
                f"limit of {max_pixels:,} (decompression-bomb guard); shrink the file or "
                "raise MAX_PIXELS", lasting=False)
        if fmt == "JPEG":
            # Let libjpeg decode at a reduced scale that still covers the output size.
            img.draft("RGB", (size, size))
        img.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, SyntaxError):
        raise ImageError(f"damaged {fmt} file: it starts like {fmt} but Pillow cannot read the "
                         "rest; copy or download it again") from None
    except OSError as err:
        text = str(err)
        if "truncated" in text or "broken data stream" in text or "premature end" in text.lower():
            raise ImageError(f"truncated or damaged {fmt} file: {text}") from None
        raise ImageError(f"cannot decode {fmt} file: {text}") from None
    except MemoryError:
        raise ImageError("cannot decode: MemoryError (out of memory); it is tried again on the "
                         "next run", lasting=False) from None
    except Exception as err:  # Pillow raises many kinds of error for damaged files
        raise ImageError(f"cannot decode {fmt} file: {type(err).__name__}: {err}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a damaged EXIF block must not lose an otherwise good image
        pass
    img = _to_rgb(img)
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(img, dtype=np.uint8)


def load_image(path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file and returns it as a (size, size, 3) uint8 RGB array.

    Args:
        path: the file.
        size: the side of the square output, in pixels.
        max_pixels: larger images are refused (decompression-bomb guard).

    Returns:
        The image after the resize rule of this module.

    Raises:
        ImageError: with a reason a person understands (empty, not an image, truncated,
            too large, unreadable).
    """
    try:
        data = read_bytes(path)
    except OSError as err:
        raise ImageError(f"cannot read: {err.strerror or err}", lasting=False) from None
    return decode_image(data, size, max_pixels)
