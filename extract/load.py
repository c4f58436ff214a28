"""Decode one image file into a SIZE x SIZE RGB array, and batch many through ``tf.data``.

The resize rule: the image is turned upright (EXIF orientation), its first frame is taken
(animated GIF/WebP), it is converted to RGB (transparent pixels laid on white, 16-bit values
scaled to 8 bits, CMYK/palette/greyscale converted), then the largest centred square is cut out
and resized to SIZE x SIZE with Pillow's antialiased bilinear filter. The aspect ratio is kept;
the borders of the longer side are cropped, as in ImageNet's centre-crop evaluation.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import sniff

# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS), made explicit. load_image
# checks it (or the caller's MAX_PIXELS) itself, right after reading the header and before any
# pixel is decoded, so Pillow's global check is turned off to let MAX_PIXELS raise the limit.
DEFAULT_MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """A file that cannot be embedded; the message says why, for a person."""


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


def load_image(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
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
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise ImageError(f"cannot read: {err.strerror or err}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    fmt = sniff(data[:16])
    if fmt is None:
        raise ImageError(
            "not an image: content is not JPEG, PNG, BMP, GIF or WebP "
            f"(starts with {data[:8]!r})"
        )
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                f"image too large: {width}x{height} = {width * height:,} pixels, over the "
                f"limit of {max_pixels:,} (decompression-bomb guard); shrink the file or "
                "raise MAX_PIXELS"
            )
        if fmt == "JPEG":
            # Let libjpeg decode at a reduced scale that still covers the output size.
            img.draft("RGB", (size, size))
        img.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"damaged {fmt} file: it starts like {fmt} but Pillow cannot read the "
                         "rest; copy or download it again") from None
    except OSError as err:
        text = str(err)
        if "truncated" in text or "broken data stream" in text or "premature end" in text.lower():
            raise ImageError(f"truncated or damaged {fmt} file: {text}") from None
        raise ImageError(f"cannot decode {fmt} file: {text}") from None
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


def make_dataset(paths: list[str], size: int, batch: int, preprocess, max_pixels: int):
    """Builds a ``tf.data`` pipeline of preprocessed batches over ``paths``, in order.

    Files are decoded and resized in parallel and the next batches are prefetched while the
    model runs, so memory stays bounded by a few batches whatever the number of files.

    Args:
        paths: absolute file paths.
        size: output side in pixels.
        batch: images per batch.
        preprocess: the backbone's ``preprocess_input`` (applied to float32 RGB 0..255).
        max_pixels: see :func:`load_image`.

    Returns:
        A dataset of ``(images float32 (b, size, size, 3), errors string (b,))``; an image that
        could not be loaded is all zeros and its error is non-empty.
    """
    import tensorflow as tf

    blank = np.zeros((size, size, 3), np.uint8)

    def _load(index):
        try:
            return load_image(paths[int(index)], size, max_pixels), b""
        except ImageError as err:
            return blank, str(err).encode()
        except Exception as err:  # never let one file end the run
            return blank, f"cannot decode: {type(err).__name__}: {err}".encode()

    def _map(index):
        image, error = tf.numpy_function(_load, [index], (tf.uint8, tf.string), stateful=False)
        image.set_shape((size, size, 3))
        error.set_shape(())
        return image, error

    ds = tf.data.Dataset.range(len(paths))
    ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch)
    ds = ds.map(lambda x, e: (preprocess(tf.cast(x, tf.float32)), e))
    # No autotuning: with it, deleting the finished iterator waited for the autotuner's next
    # wake-up (0.6-3 s at the end of a run, measured); parallel decoding two batches ahead keeps
    # the model as busy without it (decoding is ~2% of the model's time at 224 px).
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)
