"""Digit photos as PNG files: a header check that needs no TensorFlow, and reading them as
MNIST-shaped images."""

import struct
import zlib
from pathlib import Path

import numpy as np

from tfnn.errors import DataError
from tfnn.mnist import IMAGE_SHAPE

# A digit photo is far smaller; past these, decoding alone could take gigabytes.
MAX_PNG_BYTES = 32 << 20
MAX_PNG_PIXELS = 4096 * 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of a PNG file from its header, without decoding it (nor
    importing TensorFlow); DataError if it is not a PNG or exceeds `MAX_PNG_BYTES` or
    `MAX_PNG_PIXELS` (a small PNG can declare a huge image)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            header = file.read(33)  # the signature and the IHDR chunk
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    if size > MAX_PNG_BYTES:
        raise DataError(f"{path}: {size} bytes, more than the {MAX_PNG_BYTES} allowed for a PNG")
    if (
        len(header) < 33
        or header[:8] != _PNG_SIGNATURE
        or header[12:16] != b"IHDR"
        or zlib.crc32(header[12:29]) != struct.unpack(">I", header[29:33])[0]
    ):
        raise DataError(f"{path}: not a PNG image")
    width, height = struct.unpack(">II", header[16:24])
    if width * height > MAX_PNG_PIXELS:
        raise DataError(
            f"{path}: {width}x{height} pixels, more than the {MAX_PNG_PIXELS} allowed; "
            "scale the image down"
        )
    return height, width


def load_png_images(paths: list[str | Path]) -> np.ndarray:
    """PNG files as (n, 28, 28) uint8 grayscale: colour is converted to gray and other sizes
    are resized by area averaging. MNIST digits are light on dark; dark-on-light images are
    not inverted."""
    import tensorflow as tf  # only here: the IDX readers work without TensorFlow

    images = []
    for path in paths:
        check_png(path)
        try:
            image = tf.io.decode_png(Path(path).read_bytes(), channels=1)
        except OSError as error:
            raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
        except tf.errors.InvalidArgumentError:
            raise DataError(f"{path}: not a PNG image") from None
        if tuple(image.shape[:2]) != IMAGE_SHAPE:
            image = tf.image.resize(image, IMAGE_SHAPE, method="area")
        images.append(np.clip(np.round(image.numpy()[..., 0]), 0, 255).astype(np.uint8))
    return np.stack(images)
