"""Batch prediction: digits from files through the champion (or any MLflow model) to a CSV."""

from prefect import flow

from tasks.config import CHAMPION_ALIAS, PREDICTIONS_FILE, RunOptions
from tasks.predict import Predictions, load_digits, predict, write_predictions

DEFAULT_MODEL_URI = f"models:/{RunOptions().model_name}@{CHAMPION_ALIAS}"


@flow(name="predict-mnist", log_prints=True)
def predict_flow(
    images: list[str],
    output: str = PREDICTIONS_FILE,
    model_uri: str = DEFAULT_MODEL_URI,
    labels: str | None = None,
    trust_model: bool = False,
) -> Predictions:
    """Predict the digits in PNG or IDX ``images`` with ``model_uri`` into the CSV ``output``.
    A model outside the tracking server loads only with ``trust_model``: loading runs its code."""
    digits = load_digits(images, labels)
    predictions = predict(model_uri, digits, trust_model)
    write_predictions(output, digits, predictions)
    return predictions
