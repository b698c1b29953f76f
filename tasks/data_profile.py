"""A dataset's profile (counts, class counts, pixel statistics, image size) and the rules that
compare it with the champion's: pure NumPy on the raw uint8 arrays, cheap to record every run."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from tfnn.mnist import NUM_CLASSES, MnistArrays

PROFILE_ARTIFACT = "data_profile.json"
# A profile is ten counts and a few floats per split; anything larger is not ours.
MAX_PROFILE_BYTES = 64 * 1024
PROFILE_VERSION = 1


@dataclass(frozen=True)
class SplitProfile:
    """One split: size, examples per class, and the mean and std of its raw pixels (0-255)."""

    count: int
    label_counts: tuple[int, ...]
    pixel_mean: float
    pixel_std: float

    def share(self, label: int) -> float:
        return self.label_counts[label] / self.count if self.count else 0.0


@dataclass(frozen=True)
class DataProfile:
    """What a model was trained on; ``digest`` is ``MnistArrays.digest()``, ``test_digest`` the
    test split's alone."""

    train: SplitProfile
    test: SplitProfile
    image_shape: tuple[int, int]
    digest: str
    test_digest: str
    version: int = PROFILE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> DataProfile:
        """The profile written by ``to_json``; ValueError for anything else."""
        if len(text) > MAX_PROFILE_BYTES:
            raise ValueError(f"a data profile is at most {MAX_PROFILE_BYTES} bytes")
        try:
            values = json.loads(text)
            splits = {
                name: SplitProfile(
                    int(values[name]["count"]),
                    tuple(int(c) for c in values[name]["label_counts"]),
                    float(values[name]["pixel_mean"]),
                    float(values[name]["pixel_std"]),
                )
                for name in ("train", "test")
            }
            return cls(
                **splits,
                image_shape=tuple(int(s) for s in values["image_shape"]),
                digest=str(values["digest"]),
                test_digest=str(values["test_digest"]),
                version=int(values.get("version", PROFILE_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a data profile: {error!r}") from None


def _pixel_mean_std(images: np.ndarray) -> tuple[float, float]:
    if images.dtype == np.uint8:
        # From the 256-bin histogram: exact sums, no float copy of millions of pixels.
        counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
        values = np.arange(256, dtype=np.float64)
        mean = counts @ values / counts.sum()
        return float(mean), float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    pixels = images.astype(np.float64)  # float32 sums lose digits over millions of pixels
    return float(pixels.mean()), float(pixels.std())


def _split_profile(images: np.ndarray, labels: np.ndarray) -> SplitProfile:
    mean, std = _pixel_mean_std(images)
    return SplitProfile(
        count=len(labels),
        label_counts=tuple(int(c) for c in np.bincount(labels, minlength=NUM_CLASSES)),
        pixel_mean=mean,
        pixel_std=std,
    )


def split_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """Sha256 hex of one split's arrays, as ``MnistArrays.digest`` hashes each of them."""
    h = hashlib.sha256()
    for a in (images, labels):
        h.update(f"{a.shape}{a.dtype.str};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def profile_of(arrays: MnistArrays) -> DataProfile:
    """The profile of ``arrays`` (images (n, 28, 28) uint8, labels (n,) uint8)."""
    return DataProfile(
        train=_split_profile(arrays.train_images, arrays.train_labels),
        test=_split_profile(arrays.test_images, arrays.test_labels),
        image_shape=tuple(arrays.train_images.shape[1:]),
        digest=arrays.digest(),
        test_digest=split_digest(arrays.test_images, arrays.test_labels),
    )


@dataclass(frozen=True)
class CheckThresholds:
    """How far new data may move from the champion's before the check refuses it."""

    max_shrink: float = field(
        default=0.10, metadata={"help": "largest fraction the training set may shrink by"}
    )
    max_share_shift: float = field(
        default=0.05, metadata={"help": "largest change of a class's share of the training set"}
    )
    max_pixel_shift: float = field(
        default=0.5,
        metadata={"help": "largest move of the pixel mean or std, in the champion's pixel stds"},
    )
    max_accuracy_drop: float = field(
        default=0.05,
        metadata={
            "help": "largest amount the champion's accuracy on the new training examples may "
            "fall below its recorded validation accuracy"
        },
    )

    @classmethod
    def from_environment(cls, **given: float | None) -> CheckThresholds:
        """Flags ``given`` (None: not given) win over ``$TFNN_CHECK_<NAME>``, which wins
        over the default; ValueError naming the setting for a value that is not >= 0."""
        values = {}
        for f in fields(cls):
            value = given.get(f.name)
            source = f"--{f.name.replace('_', '-')}"
            if value is None and (text := os.environ.get(env_name(f.name))):
                source = f"${env_name(f.name)}"
                try:
                    value = float(text)
                except ValueError:
                    raise ValueError(f"{source}: not a number: {text!r}") from None
            if value is not None:
                if not value >= 0:  # NaN too
                    raise ValueError(f"{source}: must be a number >= 0, got {value!r}")
                values[f.name] = value
        return cls(**values)


def env_name(setting: str) -> str:
    return f"TFNN_CHECK_{setting.upper()}"


@dataclass(frozen=True)
class CheckReport:
    """``reasons`` to refuse (empty: the data passes) and ``notes`` on what was measured."""

    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.reasons

    def lines(self) -> list[str]:
        verdict = "data check passed" if self.passed else "data check REFUSED the data"
        return (
            [verdict]
            + [f"  refused: {reason}" for reason in self.reasons]
            + [f"  {note}" for note in self.notes]
        )


def compare_profiles(
    new: DataProfile,
    old: DataProfile,
    thresholds: CheckThresholds = CheckThresholds(),
    allow_test_change: bool = False,
) -> list[str]:
    """The reasons to refuse ``new`` data given ``old`` (the champion's), one per broken rule."""
    reasons = []
    if new.image_shape != old.image_shape:
        reasons.append(f"images are {new.image_shape}, the champion's were {old.image_shape}")
    shrink = 1 - new.train.count / old.train.count if old.train.count else 0.0
    if shrink > thresholds.max_shrink:
        reasons.append(
            f"the training set shrank from {old.train.count} to {new.train.count} examples "
            f"({shrink:.1%}, more than the {thresholds.max_shrink:.1%} allowed)"
        )
    for label in range(len(old.train.label_counts)):
        before, after = old.train.share(label), new.train.share(label)
        if before > 0 and new.train.label_counts[label] == 0:
            reasons.append(f"class {label} vanished from the training set (was {before:.1%})")
        elif abs(after - before) > thresholds.max_share_shift:
            reasons.append(
                f"class {label}'s share of the training set moved from {before:.1%} to "
                f"{after:.1%} (more than {thresholds.max_share_shift:.1%})"
            )
    for name in ("train", "test"):
        now, then = getattr(new, name), getattr(old, name)
        scale = then.pixel_std or 1.0  # a blank set has no spread: measure in gray levels
        for stat in ("pixel_mean", "pixel_std"):
            moved = abs(getattr(now, stat) - getattr(then, stat)) / scale
            if moved > thresholds.max_pixel_shift:
                reasons.append(
                    f"{name} {stat.replace('_', ' ')} moved from {getattr(then, stat):.1f} to "
                    f"{getattr(now, stat):.1f} ({moved:.2f} of the champion's pixel stds, more "
                    f"than {thresholds.max_pixel_shift}): images inverted or not scaled 0-255?"
                )
    if new.test_digest != old.test_digest and not allow_test_change:
        reasons.append(
            "the test split changed: scores on it are no longer comparable with the "
            "champion's; allow it explicitly (--allow-test-change) if that is intended"
        )
    return reasons


def accuracy_reason(
    accuracy: float, recorded_val_accuracy: float, thresholds: CheckThresholds = CheckThresholds()
) -> str | None:
    """Why the champion's ``accuracy`` on the new training examples, more than
    ``max_accuracy_drop`` below its recorded validation accuracy, refuses them; else None."""
    drop = recorded_val_accuracy - accuracy
    if drop > thresholds.max_accuracy_drop:
        return (
            f"the champion's accuracy on the new training examples is {accuracy:.4f}, "
            f"{drop:.4f} below its recorded validation accuracy {recorded_val_accuracy:.4f} "
            f"(more than {thresholds.max_accuracy_drop}): labels corrupted or shifted?"
        )
    return None
