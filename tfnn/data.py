"""MNIST loading: IDX files from a local directory, or tensorflow-datasets.

Every data problem raises `DataError` with a one-line message that names the file (or
dataset) and the problem. Images stay uint8 until `preprocess`, so the arrays are exactly
the bytes on disk and `MnistArrays.digest()` can record what a run trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import socket
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DATA_DIR_HINT = (
    "pass a local directory holding the four MNIST IDX files instead "
    "(--data-dir DIR or the TFNN_DATA_DIR environment variable)"
)

# Decompression is bounded by what the header declares, and the declaration by this limit
# (the largest MNIST-like file, EMNIST's 700k digits, is 550 MB), so a small gzip bomb or a
# header claiming 2**96 bytes is refused instead of filling memory.
MAX_IDX_BYTES = 1 << 30
_CHUNK_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
# A digit photo is far smaller; past these, decoding alone could take gigabytes.
MAX_PNG_BYTES = 32 << 20
MAX_PNG_PIXELS = 4096 * 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_KIND = {IMAGES_MAGIC: "IDX unsigned-byte images", LABELS_MAGIC: "IDX unsigned-byte labels"}


class DataError(ValueError):
    """A dataset is missing, unreadable or malformed; the message says which and why."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class MnistArrays:
    """Raw MNIST splits: images (n, 28, 28) uint8, labels (n,) uint8, and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def digest(self) -> str:
        """Sha256 hex of the four arrays (shape, dtype and bytes), independent of `source`."""
        h = hashlib.sha256()
        for a in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(f"{a.shape}{a.dtype.str};".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"MnistArrays(train={self.train_images.shape}, test={self.test_images.shape}, "
            f"source={self.source!r})"
        )


# --- IDX files ------------------------------------------------------------------------------


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


def _check_split(
    images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str
) -> None:
    if len(images) == 0:
        raise DataError(f"{images_name}: empty set (0 images); need at least one image")
    if images.shape[1:] != IMAGE_SHAPE:
        found, want = "x".join(map(str, images.shape[1:])), "x".join(map(str, IMAGE_SHAPE))
        raise DataError(f"{images_name}: images are {found}, expected {want} (MNIST)")
    if len(images) != len(labels):
        raise DataError(
            f"{labels_name}: {len(labels)} labels but {images_name} has {len(images)} images; "
            "use files from the same split"
        )
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{labels_name}: label {labels[i]} at index {i} is outside 0-{NUM_CLASSES - 1}"
        )


def _find(directory: Path, name: str) -> Path:
    # The compressed file wins if both exist: it is what the mirrors publish.
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{n}[.gz]" for n in MNIST_FILES)
    raise DataError(f"{directory / name}[.gz]: not found; the directory must hold {expected}")


def load_mnist_idx(directory: str | Path) -> MnistArrays:
    """Load the four canonical MNIST IDX files (each .gz or raw) from `directory`.

    Counts come from the headers (any n > 0); images must be 28x28, labels 0-9.
    """
    try:
        directory = Path(directory).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop, before Python 3.13
        raise DataError(f"{directory}: cannot resolve the path ({e}); {DATA_DIR_HINT}") from None
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise DataError(f"{directory}: {what}; {DATA_DIR_HINT}")
    paths = [_find(directory, name) for name in MNIST_FILES]
    train_x, test_x = load_idx_images(paths[0]), load_idx_images(paths[2])
    train_y, test_y = load_idx_labels(paths[1]), load_idx_labels(paths[3])
    _check_split(train_x, train_y, str(paths[0]), str(paths[1]))
    _check_split(test_x, test_y, str(paths[2]), str(paths[3]))
    return MnistArrays(train_x, train_y, test_x, test_y, source=str(directory))


# --- tensorflow-datasets --------------------------------------------------------------------


def tfds_reachable(
    host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0
) -> bool:
    """True if a TCP connection to tfds' download host opens within `timeout` seconds."""
    ok = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    # A thread bounds the DNS lookup too, which the socket timeout does not cover.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def check_tfds_source(name: str, data_dir: str | Path | None = None):
    """The tfds builder of ``name``, after checking that it is prepared locally or its download
    host answers; a DataError with the way out otherwise (cheap: no download)."""
    import tensorflow_datasets as tfds

    source = f"tfds:{name}"
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"{source}: tensorflow-datasets has no dataset {name!r}") from e
    if not builder.is_prepared() and not tfds_reachable():
        raise DataError(
            f"{source}: tensorflow-datasets cannot download {name!r} "
            f"(storage.googleapis.com unreachable); {DATA_DIR_HINT}"
        )
    return builder


def load_mnist_tfds(name: str = "mnist", data_dir: str | Path | None = None) -> MnistArrays:
    """Load an MNIST-like tensorflow-datasets dataset (train and test) as uint8 numpy arrays.

    Downloads only if not yet prepared in `data_dir`, and fails fast with a DataError
    when the download host is unreachable instead of letting tfds retry for minutes.
    """
    import tensorflow_datasets as tfds  # lazy: pulls in TensorFlow, not needed for IDX files

    source = f"tfds:{name}"
    builder = check_tfds_source(name, data_dir)
    if not builder.is_prepared():
        cannot = f"{source}: tensorflow-datasets cannot download {name!r}"
        try:
            builder.download_and_prepare()
        except Exception as e:  # any download failure gets the same way out
            why = " ".join(str(e).split())  # tfds messages span lines; ours stay on one
            raise DataError(f"{cannot} ({type(e).__name__}: {why}); {DATA_DIR_HINT}") from e
    arrays = []
    for split in ("train", "test"):
        # Not batch_size=-1: that batches by builder.info's split sizes, which are 0 under
        # tfds.testing.mock_data, and TensorFlow then aborts the process on batch(sys.maxsize).
        ds = builder.as_dataset(split=split, as_supervised=True).batch(10_000)
        batches = list(tfds.as_numpy(ds))
        if not batches:
            raise DataError(f"{source} {split}: the split is empty; need at least one image")
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]  # drop the grayscale channel axis
        _check_split(images, labels, f"{source} {split} images", f"{source} {split} labels")
        arrays += [images.astype(np.uint8), labels.astype(np.uint8)]
    return MnistArrays(*arrays, source=source)


def load_dataset(source: str) -> MnistArrays:
    """Load MNIST from `tfds:NAME` (e.g. tfds:mnist, tfds:fashion_mnist) or an IDX directory."""
    if not source:
        raise DataError("empty data source; use tfds:NAME or a directory of MNIST IDX files")
    scheme, sep, rest = source.partition(":")
    if scheme == "tfds":
        if not rest:
            raise DataError(f"{source}: no dataset name; use e.g. tfds:mnist")
        return load_mnist_tfds(rest)
    # Anything else that looks like "scheme:..." (but not a path such as C:\data) is a typo.
    if sep and re.fullmatch(r"[A-Za-z][\w+.-]+", scheme) and not Path(source).exists():
        raise DataError(
            f"{source}: unknown data source scheme {scheme!r}; "
            "use tfds:NAME or a directory of MNIST IDX files"
        )
    return load_mnist_idx(source)


# --- model input ----------------------------------------------------------------------------


def preprocess(
    images: np.ndarray, labels: np.ndarray, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and flatten images, one-hot encode labels, as the notebook does.

    images (n, 28, 28) uint8 -> (n, 784) float32 in [0, 1]; labels (n,) int -> (n, 10) float32.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise DataError(f"preprocess: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"preprocess: labels span {labels.min()}-{labels.max()}, expected 0-{num_classes - 1}"
        )
    return flatten_and_scale(images), np.eye(num_classes, dtype=np.float32)[labels]


def validation_split(num_examples: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, validation_rows)``: the last ``fraction`` of ``num_examples`` rows held out,
    as Keras' ``validation_split`` does (``floor(n * (1 - fraction))`` rows are kept for
    training). A pure function of the size and the fraction, never of a seed, so every run on
    the same data holds out the same examples."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    kept = math.floor(num_examples * (1 - fraction))
    return np.arange(kept), np.arange(kept, num_examples)


def flatten_and_scale(images: np.ndarray) -> np.ndarray:
    """images (n, 28, 28) uint8 -> (n, 784) float32 in [0, 1], the network's input."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


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
