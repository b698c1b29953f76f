"""Tests for the data readers (tfnn.idx, tfnn.mnist, tfnn.preprocessing) and the command's
data source (tasks.data): IDX reading and writing, MNIST loaders, tfds offline
behaviour."""

import gzip
import hashlib
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_mnist_dir

import tasks.data
from tasks.data import DATA_DIR_HINT, check_tfds_source, load_source
from tfnn.errors import DataError, MissingSourceError
from tfnn.idx import load_idx_images, load_idx_labels, write_idx_images, write_idx_labels
from tfnn.mnist import MnistArrays, load_dataset, load_mnist_idx, load_mnist_tfds
from tfnn.preprocessing import preprocess

REAL_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
# Copied from shared/data/README.md, in sha256sum's format.
README_SHA256 = """
3ef602e995727b0a9aa7f5ddd860650f6d281e99ba21a746d1bfa6fea4a7f4d8  train-images-idx3-ubyte.gz
dccde8b3c99723584f8090cef581b2e49d6be36b682abadf5a414714b48cf7ea  train-labels-idx1-ubyte.gz
167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b  t10k-images-idx3-ubyte.gz
fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c  t10k-labels-idx1-ubyte.gz
"""
REAL_SHA256 = {name: sha for sha, name in map(str.split, README_SHA256.strip().splitlines())}


def random_split(n, seed=0, size=(28, 28)):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n, *size), dtype=np.uint8),
        rng.integers(0, 10, size=n, dtype=np.uint8),
    )


def make_mnist_dir(directory, n_train=5, n_test=3, suffix=".gz"):
    """Write a tiny MNIST directory; return the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    train, test = random_split(n_train, seed=1), random_split(n_test, seed=2)
    write_idx_images(directory / f"train-images-idx3-ubyte{suffix}", train[0])
    write_idx_labels(directory / f"train-labels-idx1-ubyte{suffix}", train[1])
    write_idx_images(directory / f"t10k-images-idx3-ubyte{suffix}", test[0])
    write_idx_labels(directory / f"t10k-labels-idx1-ubyte{suffix}", test[1])
    return MnistArrays(*train, *test, source=str(directory))


# --- IDX round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images, labels = random_split(7, size=(5, 3))
    write_idx_images(tmp_path / f"img{suffix}", images)
    write_idx_labels(tmp_path / f"lbl{suffix}", labels)
    assert ((tmp_path / f"img{suffix}").read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    got_images = load_idx_images(tmp_path / f"img{suffix}")
    got_labels = load_idx_labels(tmp_path / f"lbl{suffix}")
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 5, 3)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("compress", [False, True])
def test_hand_built_idx_file(tmp_path, compress):
    # Built with struct alone, so a bug shared by reader and writer cannot hide.
    images = struct.pack(">IIII", 0x00000803, 2, 2, 3) + bytes(range(12))
    labels = struct.pack(">II", 0x00000801, 2) + bytes([3, 9])
    if compress:
        images, labels = gzip.compress(images), gzip.compress(labels)
    (tmp_path / "images").write_bytes(images)
    (tmp_path / "labels").write_bytes(labels)
    got = load_idx_images(tmp_path / "images")
    assert got.shape == (2, 2, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], [[0, 1, 2], [3, 4, 5]])  # row-major: rows, then cols
    np.testing.assert_array_equal(got[1], [[6, 7, 8], [9, 10, 11]])
    np.testing.assert_array_equal(load_idx_labels(tmp_path / "labels"), [3, 9])


def test_raw_content_named_gz_is_read_raw(tmp_path):
    images, _ = random_split(2)
    write_idx_images(tmp_path / "raw", images)
    (tmp_path / "raw").rename(tmp_path / "images.gz")
    np.testing.assert_array_equal(load_idx_images(tmp_path / "images.gz"), images)


def test_writer_is_deterministic(tmp_path):
    images, _ = random_split(3)
    write_idx_images(tmp_path / "a.gz", images)
    write_idx_images(tmp_path / "b.gz", images)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_writer_rejects_wrong_dtype_or_rank(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx_images(tmp_path / "x", np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="1-d"):
        write_idx_labels(tmp_path / "y", np.zeros((2, 1), dtype=np.uint8))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_mnist_idx(tmp_path, suffix):
    expected = make_mnist_dir(tmp_path / "mnist", suffix=suffix)
    got = load_mnist_idx(tmp_path / "mnist")
    assert got.source == str((tmp_path / "mnist").resolve())
    assert got.digest() == expected.digest()
    assert got.train_images.shape == (5, 28, 28) and got.test_labels.shape == (3,)


def test_digest_covers_bytes_and_shapes(tmp_path):
    a = make_mnist_dir(tmp_path)
    changed = a.train_labels.copy()
    changed[0] = (changed[0] + 1) % 10
    reshaped = a.train_images.reshape(5, 14, 56)  # same bytes, other shape
    assert len(a.digest()) == 64
    assert MnistArrays(a.train_images, changed, a.test_images, a.test_labels, "x").digest() != (
        a.digest()
    )
    assert MnistArrays(reshaped, a.train_labels, a.test_images, a.test_labels, "x").digest() != (
        a.digest()
    )


# --- errors -------------------------------------------------------------------------------


def _write(path, images=None, labels=None):
    if images is not None:
        write_idx_images(path, images)
    else:
        write_idx_labels(path, labels)


def _truncate(path, n=10):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-n]))


def _append(path, extra=b"\0\0\0"):
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + extra))


# Each case: what to break in a valid directory d, the file the message must name, and
# a fragment of the problem it must state. A case may return another path to load.
ERROR_CASES = {
    "directory missing": (lambda d: d / "nope", "nope", "does not exist"),
    "not a directory": (
        lambda d: d / "train-labels-idx1-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "is not a directory",
    ),
    "missing file": (
        lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(),
        "t10k-labels-idx1-ubyte",
        "not found; the directory must hold train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]",
    ),
    "wrong magic": (
        lambda d: _write(d / "train-images-idx3-ubyte.gz", labels=np.zeros(5, np.uint8)),
        "train-images-idx3-ubyte.gz",
        "wrong magic number 0x00000801, expected 0x00000803 (IDX unsigned-byte images)",
    ),
    "labels file with images magic": (
        lambda d: _write(d / "t10k-labels-idx1-ubyte.gz", images=np.zeros((3, 28, 28), np.uint8)),
        "t10k-labels-idx1-ubyte.gz",
        "wrong magic number 0x00000803, expected 0x00000801 (IDX unsigned-byte labels)",
    ),
    "truncated images": (
        lambda d: _truncate(d / "train-images-idx3-ubyte.gz"),
        "train-images-idx3-ubyte.gz",
        "truncated, header says 5 items (3936 bytes) but the file has 3926 bytes",
    ),
    "truncated labels": (
        lambda d: _truncate(d / "t10k-labels-idx1-ubyte.gz", n=1),
        "t10k-labels-idx1-ubyte.gz",
        "truncated, header says 3 items",
    ),
    "trailing bytes": (
        lambda d: _append(d / "t10k-images-idx3-ubyte.gz"),
        "t10k-images-idx3-ubyte.gz",
        "3 bytes after the 3 items the header announces",
    ),
    "header too short": (
        lambda d: (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0")),
        "train-labels-idx1-ubyte.gz",
        "too short for an IDX header",
    ),
    "corrupt gzip": (
        lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip"),
        "train-images-idx3-ubyte.gz",
        "corrupt gzip data",
    ),
    "named .gz, neither gzip nor IDX": (
        lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>404 Not Found</html>"),
        "t10k-images-idx3-ubyte.gz",
        "nor gzip data, despite the .gz name",
    ),
    "count mismatch": (
        lambda d: _write(d / "train-labels-idx1-ubyte.gz", labels=np.zeros(4, np.uint8)),
        "train-labels-idx1-ubyte.gz",
        "4 labels but",
    ),
    "label out of range": (
        lambda d: _write(d / "t10k-labels-idx1-ubyte.gz", labels=np.array([1, 10, 2], np.uint8)),
        "t10k-labels-idx1-ubyte.gz",
        "label 10 at index 1 is outside 0-9",
    ),
    "32x32 images": (
        lambda d: _write(d / "train-images-idx3-ubyte.gz", images=np.zeros((5, 32, 32), np.uint8)),
        "train-images-idx3-ubyte.gz",
        "images are 32x32, expected 28x28",
    ),
    "empty set": (
        lambda d: (
            _write(d / "t10k-images-idx3-ubyte.gz", images=np.zeros((0, 28, 28), np.uint8)),
            _write(d / "t10k-labels-idx1-ubyte.gz", labels=np.zeros(0, np.uint8)),
        ),
        "t10k-images-idx3-ubyte.gz",
        "empty",
    ),
}


def _loop(directory):
    link = directory / "loop"
    link.symlink_to(link)
    return link


ERROR_CASES["symlink loop"] = (_loop, "loop", "cannot resolve the path (Symlink loop")
ERROR_CASES["header dimensions overflow"] = (
    lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">4I", 0x803, 2**32 - 1, 2**32 - 1, 2**32 - 1))
    ),
    "train-images-idx3-ubyte.gz",
    # (2**32 - 1) ** 3 exactly: the size is computed without overflow.
    f"declares 4294967295x4294967295x4294967295 = {(2**32 - 1) ** 3} bytes, more than "
    f"the {2**30} bytes allowed",
)


def test_a_gzip_bomb_is_refused_after_reading_what_the_header_declares(tmp_path):
    import tracemalloc

    make_mnist_dir(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as file:  # 3 labels, then 256 MiB of zeros (256 kB on disk)
        file.write(labels)
        for _ in range(256):
            file.write(bytes(1 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="more than 1048575 bytes after the 3 items"):
            load_idx_labels(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # a few chunks of 1 MiB, not the 256 MiB the stream holds


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_load_mnist_idx_errors(tmp_path, case):
    breaks, file_name, problem = ERROR_CASES[case]
    make_mnist_dir(tmp_path)
    target = breaks(tmp_path)
    with pytest.raises(DataError) as excinfo:
        load_mnist_idx(target if isinstance(target, Path) else tmp_path)
    message = str(excinfo.value)
    assert "\n" not in message
    assert file_name in message and problem in message, message


@pytest.mark.parametrize(
    "source, problem",
    [
        ("", "empty data source"),
        ("tfds:", "no dataset name"),
        ("s3://bucket/mnist", "unknown data source scheme 's3'"),
        ("tfds:no_such_dataset_xyz", "has no dataset 'no_such_dataset_xyz'"),
    ],
)
def test_load_dataset_rejects_bad_sources(source, problem):
    with pytest.raises(DataError, match=problem):
        load_dataset(source)


def test_load_dataset_directory(tmp_path):
    expected = make_mnist_dir(tmp_path / "mnist", suffix="")
    got = load_dataset(str(tmp_path / "mnist"))
    assert got.digest() == expected.digest()
    assert got.source == str((tmp_path / "mnist").resolve())


# --- real MNIST ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_mnist():
    if not REAL_MNIST.is_dir():
        pytest.skip(f"real MNIST not present at {REAL_MNIST}")
    return load_mnist_idx(REAL_MNIST)


def test_real_mnist_files_match_readme_checksums(real_mnist):
    for name, sha in REAL_SHA256.items():
        assert hashlib.sha256((REAL_MNIST / name).read_bytes()).hexdigest() == sha, name


def test_real_mnist_arrays(real_mnist):
    m = real_mnist
    assert m.train_images.shape == (10000, 28, 28) and m.test_images.shape == (10000, 28, 28)
    assert m.train_labels.shape == (10000,) and m.test_labels.shape == (10000,)
    for a in (m.train_images, m.train_labels, m.test_images, m.test_labels):
        assert a.dtype == np.uint8
    for labels in (m.train_labels, m.test_labels):
        assert set(np.unique(labels)) == set(range(10))
    assert m.train_images.max() == 255 and m.train_images.min() == 0
    # Published facts about the official files.
    np.testing.assert_array_equal(m.train_labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(m.test_labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert m.source == str(REAL_MNIST.resolve())


def test_real_mnist_raw_copy_has_same_digest(real_mnist, tmp_path):
    for name in REAL_SHA256:
        (tmp_path / name.removesuffix(".gz")).write_bytes(
            gzip.decompress((REAL_MNIST / name).read_bytes())
        )
    assert load_mnist_idx(tmp_path).digest() == real_mnist.digest()


def test_a_split_held_both_raw_and_gzipped_is_refused_naming_both(tmp_path):
    write_mnist_dir(tmp_path)
    gzipped = tmp_path / "train-images-idx3-ubyte.gz"
    raw = tmp_path / "train-images-idx3-ubyte"
    raw.write_bytes(gzip.decompress(gzipped.read_bytes()))
    with pytest.raises(DataError) as refused:
        load_mnist_idx(tmp_path)
    assert str(refused.value) == (
        f"{raw} and {gzipped.name} both exist; keep one, so that the run reads the file you mean"
    )
    raw.unlink()
    assert len(load_mnist_idx(tmp_path).train_labels) == 600


def test_real_mnist_preprocess(real_mnist):
    x, y = preprocess(real_mnist.test_images, real_mnist.test_labels)
    assert x.shape == (10000, 784) and y.shape == (10000, 10)
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(y.argmax(axis=1), real_mnist.test_labels)


# --- tensorflow-datasets ------------------------------------------------------------------


@pytest.fixture
def tfds_mock(monkeypatch):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import dataset_builder

    with tfds.testing.mock_data(num_examples=6):
        # mock_data patches download_and_prepare but not is_prepared, and (with no metadata
        # shipped) points builders at a non-existent data_dir, so is_prepared() is False and
        # the command would probe the network. Say "reachable" and check the download is a no-op.
        assert dataset_builder.DatasetBuilder.download_and_prepare.__name__ == (
            "mock_download_and_prepare"
        )
        monkeypatch.setattr(tasks.data, "tfds_reachable", lambda *args, **kwargs: True)
        yield


def _check_mock_arrays(m, source):
    assert m.source == source
    for images, labels in ((m.train_images, m.train_labels), (m.test_images, m.test_labels)):
        assert images.shape == (6, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (6,) and labels.dtype == np.uint8
        assert labels.max() <= 9


def test_load_mnist_tfds_under_mock(tfds_mock, tmp_path):
    _check_mock_arrays(load_mnist_tfds("mnist", data_dir=tmp_path), "tfds:mnist")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_load_dataset_tfds_under_mock(tfds_mock, name):
    _check_mock_arrays(load_dataset(f"tfds:{name}"), f"tfds:{name}")
    _check_mock_arrays(load_source(f"tfds:{name}"), f"tfds:{name}")


def test_an_unreachable_tfds_source_is_refused_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks.data, "tfds_reachable", lambda *args, **kwargs: False)
    start = time.monotonic()
    with pytest.raises(DataError) as excinfo:
        check_tfds_source("mnist", data_dir=tmp_path / "tfds")
    assert time.monotonic() - start < 10
    message = str(excinfo.value)
    assert "tensorflow-datasets cannot download 'mnist'" in message
    assert "--data-dir DIR" in message and "TFNN_DATA_DIR" in message
    assert "\n" not in message


def test_load_mnist_tfds_wraps_download_errors(monkeypatch, tmp_path):
    from tensorflow_datasets.core import dataset_builder

    def fail(*args, **kwargs):
        raise ConnectionError("connection reset\nby peer")

    monkeypatch.setattr(dataset_builder.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(MissingSourceError) as excinfo:
        load_mnist_tfds("mnist", data_dir=tmp_path / "tfds")
    assert str(excinfo.value) == (
        "tfds:mnist: tensorflow-datasets cannot download 'mnist' "
        "(ConnectionError: connection reset by peer)"
    )


def test_a_missing_source_names_the_commands_way_out(tmp_path):
    # The library says what is missing; the command adds its own flags.
    with pytest.raises(MissingSourceError) as excinfo:
        load_mnist_idx(tmp_path / "absent")
    assert str(excinfo.value) == f"{tmp_path / 'absent'}: does not exist"
    with pytest.raises(DataError) as excinfo:
        load_source(str(tmp_path / "absent"))
    assert str(excinfo.value) == f"{tmp_path / 'absent'}: does not exist; {DATA_DIR_HINT}"
    assert "--data-dir DIR" in DATA_DIR_HINT and "TFNN_DATA_DIR" in DATA_DIR_HINT


def test_tfds_reachable_probe_against_local_ports():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert tasks.data.tfds_reachable("127.0.0.1", port, timeout=1.0)
    # The port is closed now: refused at once, no waiting for the timeout.
    start = time.monotonic()
    assert not tasks.data.tfds_reachable("127.0.0.1", port, timeout=1.0)
    assert time.monotonic() - start < 1.0


# --- preprocess ---------------------------------------------------------------------------


def test_preprocess_against_numpy_reference():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 27, 27] = 255, 51
    images[1, 1, 2] = 102
    labels = np.array([3, 0], dtype=np.uint8)
    x, y = preprocess(images, labels)
    expected_x = np.zeros((2, 784), dtype=np.float32)
    expected_x[0, 0], expected_x[0, 783] = 1.0, 0.2
    expected_x[1, 1 * 28 + 2] = 0.4
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape == (2, 784) and y.shape == (2, 10)
    np.testing.assert_allclose(x, expected_x, rtol=1e-6)
    assert x.min() >= 0.0 and x.max() <= 1.0
    expected_y = np.zeros((2, 10), dtype=np.float32)
    expected_y[0, 3] = expected_y[1, 0] = 1.0
    np.testing.assert_array_equal(y, expected_y)
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)


@pytest.mark.parametrize(
    "labels, problem",
    [(np.array([0, 10]), "labels span 0-10, expected 0-9"), (np.array([1]), "2 images but 1")],
)
def test_preprocess_rejects_bad_labels(labels, problem):
    with pytest.raises(DataError, match=problem):
        preprocess(np.zeros((2, 28, 28), dtype=np.uint8), labels)
