"""The data check's rules against hand-built profiles, the profile against hand-computed
numbers, and ``tfnn check-data`` in a subprocess against a champion trained by ``tfnn retrain``
in a real MLflow store."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_tfnn, tfnn_env, write_mnist_dir

from tasks.data_profile import (
    CheckThresholds,
    DataProfile,
    SplitProfile,
    accuracy_reason,
    compare_profiles,
    profile_of,
    split_digest,
)
from tfnn.idx import write_idx_images, write_idx_labels
from tfnn.mnist import MnistArrays, load_mnist_idx


def split(count=1000, counts=(100,) * 10, mean=33.0, std=78.0) -> SplitProfile:
    return SplitProfile(count, tuple(counts), mean, std)


def profile(train=None, test=None, shape=(28, 28), test_digest="t") -> DataProfile:
    return DataProfile(train or split(), test or split(), shape, "d", test_digest)


def test_profile_is_the_hand_computed_counts_and_pixel_statistics():
    # Train: one black and one white image, labels 3 and 3 -> mean 127.5, std 127.5.
    train = np.stack([np.zeros((28, 28)), np.full((28, 28), 255)]).astype(np.uint8)
    # Test: three images of constant 0, 30 and 60 -> mean 30, std sqrt(600) (population).
    test = np.stack([np.full((28, 28), v) for v in (0, 30, 60)]).astype(np.uint8)
    arrays = MnistArrays(
        train, np.array([3, 3], np.uint8), test, np.array([0, 1, 9], np.uint8), "x"
    )
    p = profile_of(arrays)
    assert (p.train.count, p.train.label_counts) == (2, (0, 0, 0, 2, 0, 0, 0, 0, 0, 0))
    assert (p.train.pixel_mean, p.train.pixel_std) == (127.5, 127.5)
    assert p.test.label_counts == (1, 1, 0, 0, 0, 0, 0, 0, 0, 1)
    assert p.test.pixel_mean == pytest.approx(30.0)
    assert p.test.pixel_std == pytest.approx(600**0.5)
    assert p.image_shape == (28, 28) and p.digest == arrays.digest()
    assert DataProfile.from_json(p.to_json()) == p


def test_pixel_statistics_of_uint8_images_are_numpy_s_in_float64():
    # The profile counts a histogram of uint8 pixels; NumPy averages every pixel.
    images = np.random.default_rng(4).integers(0, 256, (500, 28, 28)).astype(np.uint8)
    arrays = MnistArrays(images, np.zeros(500, np.uint8), images[:2], np.zeros(2, np.uint8), "")
    train = profile_of(arrays).train
    pixels = images.astype(np.float64)
    assert train.pixel_mean == pytest.approx(pixels.mean(), rel=1e-12)
    assert train.pixel_std == pytest.approx(pixels.std(), rel=1e-12)


def test_split_digest_tells_test_sets_apart():
    images, labels = np.zeros((2, 28, 28), np.uint8), np.array([1, 2], np.uint8)
    assert split_digest(images, labels) == split_digest(images.copy(), labels.copy())
    assert split_digest(images, labels) != split_digest(images, labels[::-1].copy())


@pytest.mark.parametrize("text", ["", "[]", '{"train": {}}', "x" * 70_000])
def test_a_profile_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="data profile"):
        DataProfile.from_json(text)


def test_the_same_profile_passes():
    assert compare_profiles(profile(), profile()) == []


@pytest.mark.parametrize(("count", "refused"), [(950, False), (900, False), (899, True)])
def test_shrinking_more_than_the_fraction_is_refused(count, refused):
    new = profile(
        train=split(count=count, counts=(count // 10,) * 9 + (count - 9 * (count // 10),))
    )
    reasons = compare_profiles(new, profile())
    assert any("shrank from 1000 to" in r for r in reasons) is refused


def test_a_vanished_class_and_the_class_it_went_to_are_both_named():
    # Class 3 relabelled as 5: 3 vanishes (10% -> 0), 5 doubles (10% -> 20%).
    new = profile(train=split(counts=(100, 100, 100, 0, 100, 200, 100, 100, 100, 100)))
    reasons = compare_profiles(new, profile())
    assert len(reasons) == 2
    assert "class 3 vanished" in reasons[0]
    assert "class 5's share" in reasons[1] and "10.0% to 20.0%" in reasons[1]


@pytest.mark.parametrize(("moved", "refused"), [(40, False), (50, False), (60, True)])
def test_a_class_share_may_move_up_to_the_threshold(moved, refused):
    counts = (100 + moved, 100 - moved) + (100,) * 8  # 10% -> 10% +- moved/1000
    reasons = compare_profiles(profile(train=split(counts=counts)), profile())
    assert bool(reasons) is refused
    assert all("share" in r for r in reasons)


def test_inverted_images_move_the_mean_by_many_stds():
    # MNIST's mean 33.3 and std 78.6 inverted: mean 255 - 33.3 = 221.7, std unchanged;
    # (221.7 - 33.3) / 78.6 = 2.40 stds.
    new = profile(train=split(mean=221.7, std=78.6))
    reasons = compare_profiles(new, profile(train=split(mean=33.3, std=78.6)))
    assert len(reasons) == 1 and "train pixel mean" in reasons[0] and "2.40" in reasons[0]


def test_images_scaled_to_0_1_move_the_std():
    # Stored as 0/1 instead of 0/255: mean 33/255, std 78/255; the std moves 0.997 stds.
    new = profile(train=split(mean=33 / 255, std=78 / 255))
    reasons = compare_profiles(new, profile())
    assert any("train pixel std" in r and "1.00" in r for r in reasons)


def test_a_changed_test_split_needs_an_explicit_permission():
    new = profile(test_digest="other")
    (reason,) = compare_profiles(new, profile())
    assert "test split changed" in reason and "--allow-test-change" in reason
    assert compare_profiles(new, profile(), allow_test_change=True) == []


def test_other_image_sizes_are_refused():
    assert "images are (32, 32)" in compare_profiles(profile(shape=(32, 32)), profile())[0]


def test_thresholds_are_settings():
    loose = CheckThresholds(max_shrink=0.5, max_share_shift=0.2, max_pixel_shift=3)
    new = profile(train=split(count=600, counts=(60,) * 10, mean=200, std=78))
    assert len(compare_profiles(new, profile())) == 2
    assert compare_profiles(new, profile(), loose) == []


@pytest.mark.parametrize(
    ("accuracy", "recorded", "refused"),
    [(0.99, 0.97, False), (0.92, 0.97, False), (0.87, 0.97, True)],
)
def test_the_champion_far_below_its_validation_accuracy_refuses(accuracy, recorded, refused):
    reason = accuracy_reason(accuracy, recorded)
    assert (reason is not None) is refused
    if refused:
        assert "0.8700" in reason and "0.1000 below" in reason


def test_thresholds_come_from_flags_then_the_environment_then_defaults(monkeypatch):
    monkeypatch.setenv("TFNN_CHECK_MAX_SHRINK", "0.3")
    monkeypatch.setenv("TFNN_CHECK_MAX_PIXEL_SHIFT", "2")
    thresholds = CheckThresholds.from_environment(max_pixel_shift=1.0, max_share_shift=None)
    assert thresholds == CheckThresholds(max_shrink=0.3, max_pixel_shift=1.0)
    monkeypatch.setenv("TFNN_CHECK_MAX_SHRINK", "lots")
    with pytest.raises(ValueError, match=r"\$TFNN_CHECK_MAX_SHRINK: not a number: 'lots'"):
        CheckThresholds.from_environment()
    with pytest.raises(ValueError, match="--max-accuracy-drop: must be a number >= 0"):
        CheckThresholds.from_environment(max_shrink=0.1, max_accuracy_drop=-1.0)


# --- the command, against a real champion ---------------------------------------------------


def rewrite(source, target, images=None, labels=None, test_images=None):
    """A copy of IDX directory ``source`` in ``target`` with the given training images,
    labels or test images replaced."""
    arrays = load_mnist_idx(source)
    shutil.copytree(source, target)
    if images is not None:
        write_idx_images(target / "train-images-idx3-ubyte.gz", images)
    if labels is not None:
        write_idx_labels(target / "train-labels-idx1-ubyte.gz", labels)
    if test_images is not None:
        write_idx_images(target / "t10k-images-idx3-ubyte.gz", test_images)
    return arrays


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory):
    """A working directory whose MLflow store holds a champion trained by ``tfnn retrain`` on
    600 synthetic digits, and variants of that data."""
    directory = tmp_path_factory.mktemp("check-data")
    data = write_mnist_dir(directory / "data")
    env = tfnn_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{directory / 'mlflow.db'}",
        PREFECT_HOME=str(directory / "prefect"),
    )
    flags = ["--hidden-sizes", "32", "--epochs", "3", "--validation-fraction", "0.2"]
    trained = run_tfnn(
        "retrain", "--data-dir", str(data), *flags, "--no-progress", cwd=directory, env=env
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    arrays = load_mnist_idx(data)
    write_mnist_dir(directory / "more", train_count=900)
    rewrite(data, directory / "inverted", images=255 - arrays.train_images)
    relabelled = arrays.train_labels.copy()
    relabelled[relabelled == 3] = 5
    rewrite(data, directory / "relabelled", labels=relabelled)
    rewrite(data, directory / "new-test", test_images=arrays.test_images[:, ::-1].copy())
    (directory / "broken").mkdir()
    shutil.copy(data / "train-images-idx3-ubyte.gz", directory / "broken")
    return directory, env


def check(champion_store, name, *flags):
    directory, env = champion_store
    result = run_tfnn(
        "check-data", "--data-dir", str(directory / name), *flags, cwd=directory, env=env
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.slow  # tfnn check-data in a subprocess
def test_the_champions_own_data_and_more_of_it_pass(champion_store):
    code, out, err = check(champion_store, "data")
    assert code == 0, out + err
    assert "data check passed" in out and "was trained on exactly this data" in out
    code, out, err = check(champion_store, "more")
    assert code == 0, out + err
    assert "900 training and 200 test examples" in out and "refused" not in out


@pytest.mark.slow  # tfnn check-data in a subprocess
def test_inverted_images_are_refused_with_the_pixel_statistics(champion_store):
    code, out, err = check(champion_store, "inverted")
    assert code == 1 and err == "", err
    assert "data check REFUSED" in out and "train pixel mean moved" in out


@pytest.mark.slow  # tfnn check-data in a subprocess
def test_a_relabelled_class_is_refused_by_its_counts_and_the_champions_accuracy(champion_store):
    code, out, _ = check(champion_store, "relabelled")
    assert code == 1
    assert "class 3 vanished" in out and "class 5's share" in out
    # The champion still calls the 60 former 3s "3": 60 of 600 training labels now disagree.
    assert "labels corrupted or shifted" in out


@pytest.mark.slow  # tfnn check-data in a subprocess
def test_a_changed_test_split_passes_only_when_allowed(champion_store):
    code, out, _ = check(champion_store, "new-test")
    assert code == 1 and "the test split changed" in out
    code, out, err = check(champion_store, "new-test", "--allow-test-change")
    assert code == 0, out + err


@pytest.mark.slow  # tfnn check-data in a subprocess
def test_malformed_files_are_refused_and_bad_flags_are_one_line(champion_store):
    code, out, _ = check(champion_store, "broken")
    assert code == 1 and "malformed data:" in out and "not found" in out
    code, out, err = check(champion_store, "data", "--max-shrink", "-1")
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert "--max-shrink: must be a number >= 0" in err
    code, out, err = check(champion_store, "absent")
    assert (code, out) == (2, "") and len(err.splitlines()) == 1 and "not a directory" in err


@pytest.mark.slow  # tfnn check-data in a subprocess
def test_the_recorded_profile_is_the_training_data_s(champion_store):
    directory, env = champion_store
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow; from mlflow import MlflowClient; "
            "v = MlflowClient().get_model_version_by_alias('tfnn-mnist', 'champion'); "
            "print(mlflow.artifacts.load_text(f'runs:/{v.run_id}/data_profile.json'))",
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    recorded = DataProfile.from_json(result.stdout)
    assert recorded == profile_of(load_mnist_idx(directory / "data"))
    assert json.loads(result.stdout)["train"]["count"] == 600


def test_a_retrain_started_for_checked_data_refuses_data_that_changed_since():
    from tasks.data_check import changed_since_check

    assert changed_since_check(None, "b" * 64) is None  # a cron retrain: no check to honour
    assert changed_since_check("a" * 64, "a" * 64) is None
    reason = changed_since_check("a" * 64, "b" * 64)
    assert "changed since the check passed digest aaaaaaaaaaaa (now bbbbbbbbbbbb)" in reason
