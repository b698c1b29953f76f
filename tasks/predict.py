"""Batch prediction tasks: digits from files through an MLflow model to a CSV. Loading a pyfunc
model runs its code, so only the tracking server's models load unless explicitly trusted."""

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from tasks.config import InputError
from tfnn.errors import DataError
from tfnn.idx import load_idx_images, load_idx_labels
from tfnn.png import load_png_images
from tfnn.preprocessing import flatten_and_scale
from tfnn.serving import predict_in_batches

# models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-ID and runs:/RUN_ID/PATH, resolved by
# the tracking server; "models://PROFILE@..." would name another registry.
_TRACKED_MODEL_URI = re.compile(r"(models|runs):/[^/]")
# Spreadsheets run a cell that starts with one of these as a formula (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class UntrustedModelError(InputError):
    """A model URI outside the tracking server, not explicitly trusted."""


def is_tracked_model_uri(model_uri: str) -> bool:
    return bool(_TRACKED_MODEL_URI.match(model_uri))


def check_model_uri(model_uri: str, trust_model: bool = False) -> None:
    """``UntrustedModelError`` unless ``model_uri`` is the tracking server's or trusted."""
    if not trust_model and not is_tracked_model_uri(model_uri):
        raise UntrustedModelError(
            f"--model {model_uri}: not a models:/ or runs:/ URI of the tracking server; "
            "loading a model file runs its code (pyfunc models are unpickled), so pass "
            "--trust-model only if you trust whoever wrote it"
        )


@dataclass(frozen=True, eq=False)
class Digits:
    """Images (n, 28, 28) uint8, a name per image, and true labels (n,) when known."""

    images: np.ndarray
    names: list[str]
    labels: np.ndarray | None


@dataclass(frozen=True, eq=False)
class Predictions:
    """Probabilities (n, 10) float32, predicted labels (n,), accuracy when labels are known."""

    probabilities: np.ndarray
    predicted_labels: np.ndarray
    accuracy: float | None


@task
def load_digits(paths: list[str], labels_path: str | None = None) -> Digits:
    """Digits from PNG and/or IDX image files, named by the path as given (two ``a.png`` stay
    apart) or ``<idx path>:<index>``, with an IDX label file's labels if given."""
    images, names = [], []
    for given in paths:
        if Path(given).suffix.lower() == ".png":
            images.append(load_png_images([Path(given)]))
            names.append(given)
        else:
            images.append(load_idx_images(given))
            names += [f"{given}:{i}" for i in range(len(images[-1]))]
    if not images:
        raise DataError("no images given: pass PNG files or an IDX image file")
    labels = load_idx_labels(labels_path) if labels_path else None
    if labels is not None and len(labels) != len(names):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(names)} images; pass matching files"
        )
    return Digits(np.concatenate(images), names, labels)


@task(cache_policy=NONE)
def predict(model_uri: str, digits: Digits, trust_model: bool = False) -> Predictions:
    """Predict ``digits`` with the MLflow model at ``model_uri`` (see ``check_model_uri``)."""
    check_model_uri(model_uri, trust_model)
    model = mlflow.pyfunc.load_model(model_uri)
    probabilities = predict_in_batches(model, flatten_and_scale(digits.images)).astype(np.float32)
    predicted = probabilities.argmax(axis=1)
    accuracy = None if digits.labels is None else float(np.mean(predicted == digits.labels))
    return Predictions(probabilities, predicted, accuracy)


@task(cache_policy=NONE)
def write_predictions(path: str, digits: Digits, predictions: Predictions) -> str:
    """Write ``image,predicted[,label],p0..p9`` rows to the CSV file ``path``; returns it."""
    classes = [f"p{k}" for k in range(predictions.probabilities.shape[1])]
    labelled = digits.labels is not None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "predicted", *(["label"] if labelled else []), *classes])
        for i, row in enumerate(predictions.probabilities):
            label = [int(digits.labels[i])] if labelled else []
            writer.writerow(
                [spreadsheet_safe(digits.names[i]), int(predictions.predicted_labels[i]), *label]
                + [f"{p:.6f}" for p in row]
            )
    return path


def spreadsheet_safe(cell: str) -> str:
    """``cell`` with a leading ``'`` if a spreadsheet would read it as a formula."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell
