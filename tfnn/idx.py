"""The IDX file format MNIST is published in: read (gzip or raw, bounded) and write.

Images stay uint8, exactly the bytes on disk, so a digest of them records what a run
trained on.
"""

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tfnn.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
# Decompression is bounded by what the header declares, and the declaration by this limit
# (the largest MNIST-like file, EMNIST's 700k digits, is 550 MB), so a small gzip bomb or a
# header claiming 2**96 bytes is refused instead of filling memory.
MAX_IDX_BYTES = 1 << 30
_CHUNK_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_KIND = {IMAGES_MAGIC: "IDX unsigned-byte images", LABELS_MAGIC: "IDX unsigned-byte labels"}


def _read_idx(path: str | Path, magic: int, ndim: int) -> np.ndarray:
    path = Path(path)
    try:
        with open(path, "rb") as file:
            # Trust the content, not the name: a mirror may serve an uncompressed file as .gz.
            compressed = file.read(2) == _GZIP_MAGIC
            file.seek(0)
            stream = gzip.GzipFile(fileobj=file, mode="rb") if compressed else file
            try:
                return _read_idx_stream(path, stream, magic, ndim, compressed)
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                raise DataError(f"{path}: corrupt gzip data ({e}); download the file again") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from e


def _read_exactly(stream: BinaryIO, size: int) -> bytearray:
    # Bounded chunks, growing with what arrives: a gzip stream decompresses only what is
    # asked for, and a short file that declares a large size costs only its own bytes.
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(min(_CHUNK_BYTES, size - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def _read_idx_stream(
    path: Path, stream: BinaryIO, magic: int, ndim: int, compressed: bool
) -> np.ndarray:
    header_size = 4 + 4 * ndim
    header = _read_exactly(stream, header_size)
    # Magic first: a short file of the other IDX kind should say "wrong kind", not "too short".
    found = struct.unpack_from(">I", header)[0] if len(header) >= 4 else None
    if found is not None and found != magic:
        note = (
            " (nor gzip data, despite the .gz name)"
            if path.suffix == ".gz" and not compressed
            else ""
        )
        raise DataError(
            f"{path}: wrong magic number 0x{found:08X}, expected 0x{magic:08X} "
            f"({_KIND[magic]}){note}"
        )
    if len(header) < header_size:
        raise DataError(
            f"{path}: {len(header)} bytes is too short for an IDX header ({header_size} "
            "bytes); the file is empty or not IDX"
        )
    shape = struct.unpack_from(f">{ndim}I", header, 4)
    size = math.prod(shape)  # Python integers: no overflow, however large the header says
    if size > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: the header declares {'x'.join(map(str, shape))} = {size} bytes, more "
            f"than the {MAX_IDX_BYTES} bytes allowed per IDX file; the header is wrong or "
            "the file is not MNIST-sized"
        )
    data = _read_exactly(stream, size)
    if len(data) < size:
        raise DataError(
            f"{path}: truncated, header says {shape[0]} items ({header_size + size} bytes) "
            f"but the file has {header_size + len(data)} bytes; download it again"
        )
    extra = len(stream.read(_CHUNK_BYTES))
    if extra:
        amount = f"{extra} bytes" if extra < _CHUNK_BYTES else f"more than {extra - 1} bytes"
        raise DataError(
            f"{path}: {amount} after the {shape[0]} items the header announces; "
            "the header or the file is wrong"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file: (n, rows, cols) uint8, sizes from the header.

    Gzip or raw is decided by the content's first bytes, not the name, so a raw file
    named `.gz` is read as raw; content that is neither valid gzip nor IDX raises
    DataError. At most the bytes the header declares (up to `MAX_IDX_BYTES`) are read.
    """
    return _read_idx(path, IMAGES_MAGIC, 3)


def load_idx_labels(path: str | Path) -> np.ndarray:
    """Read an IDX label file: (n,) uint8; gzip or raw as in `load_idx_images`."""
    return _read_idx(path, LABELS_MAGIC, 1)


def _write_idx(path: str | Path, array: np.ndarray, magic: int, ndim: int) -> None:
    array = np.asarray(array)
    if array.ndim != ndim or array.dtype != np.uint8:
        raise ValueError(f"expected a {ndim}-d uint8 array, got {array.ndim}-d {array.dtype}")
    data = struct.pack(f">I{ndim}I", magic, *array.shape) + array.tobytes()
    path = Path(path)
    # mtime=0 keeps the bytes, and so any checksum of them, reproducible.
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def write_idx_images(path: str | Path, images: np.ndarray) -> None:
    """Write (n, rows, cols) uint8 images as IDX; gzip-compressed if `path` ends in .gz."""
    _write_idx(path, images, IMAGES_MAGIC, 3)


def write_idx_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write (n,) uint8 labels as IDX; gzip-compressed if `path` ends in .gz."""
    _write_idx(path, labels, LABELS_MAGIC, 1)
