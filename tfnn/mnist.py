"""MNIST sources: the four IDX files of a local directory, or tensorflow-datasets.

Every data problem raises ``DataError`` with a one-line message that names the file (or
dataset) and the problem; a source that is absent or cannot be fetched raises
``MissingSourceError``, to which the caller adds its own way out.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfnn.errors import DataError, MissingSourceError
from tfnn.idx import load_idx_images, load_idx_labels

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
    candidates = [c for c in (directory / f"{name}.gz", directory / name) if c.exists()]
    for candidate in candidates:
        if not candidate.is_file():  # a FIFO or a device would block or never end
            raise DataError(
                f"{candidate}: not a regular file (a pipe, a device or a directory); "
                "put the IDX file itself there"
            )
    found = candidates
    if len(found) == 2:  # which one is the data is not ours to guess
        raise DataError(
            f"{found[1]} and {found[0].name} both exist; keep one, so that the run reads the "
            "file you mean"
        )
    if found:
        return found[0]
    expected = ", ".join(f"{n}[.gz]" for n in MNIST_FILES)
    raise DataError(f"{directory / name}[.gz]: not found; the directory must hold {expected}")


def load_mnist_idx(directory: str | Path) -> MnistArrays:
    """Load the four canonical MNIST IDX files (each .gz or raw) from `directory`.

    Counts come from the headers (any n > 0); images must be 28x28, labels 0-9.
    """
    try:
        directory = Path(directory).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop, before Python 3.13
        raise MissingSourceError(f"{directory}: cannot resolve the path ({e})") from None
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise MissingSourceError(f"{directory}: {what}")
    paths = [_find(directory, name) for name in MNIST_FILES]
    train_x, test_x = load_idx_images(paths[0]), load_idx_images(paths[2])
    train_y, test_y = load_idx_labels(paths[1]), load_idx_labels(paths[3])
    _check_split(train_x, train_y, str(paths[0]), str(paths[1]))
    _check_split(test_x, test_y, str(paths[2]), str(paths[3]))
    return MnistArrays(train_x, train_y, test_x, test_y, source=str(directory))


# --- tensorflow-datasets --------------------------------------------------------------------


def tfds_builder(name: str, data_dir: str | Path | None = None):
    """The tensorflow-datasets builder of ``name`` (nothing is downloaded); DataError if
    tensorflow-datasets has no such dataset."""
    import tensorflow_datasets as tfds  # lazy: pulls in TensorFlow, not needed for IDX files

    try:
        return tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"tfds:{name}: tensorflow-datasets has no dataset {name!r}") from e


def load_mnist_tfds(name: str = "mnist", data_dir: str | Path | None = None) -> MnistArrays:
    """Load an MNIST-like tensorflow-datasets dataset (train and test) as uint8 numpy arrays.

    Downloads only if not yet prepared in `data_dir`; a failed download raises
    ``MissingSourceError``. Without network tfds retries for minutes before failing: callers
    that may be offline check the download host first (``tasks.data``).
    """
    import tensorflow_datasets as tfds  # lazy: pulls in TensorFlow, not needed for IDX files

    source = f"tfds:{name}"
    builder = tfds_builder(name, data_dir)
    if not builder.is_prepared():
        cannot = f"{source}: tensorflow-datasets cannot download {name!r}"
        try:
            builder.download_and_prepare()
        except Exception as e:  # any download failure gets the same way out
            why = " ".join(str(e).split())  # tfds messages span lines; ours stay on one
            raise MissingSourceError(f"{cannot} ({type(e).__name__}: {why})") from e
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
