"""Batch prediction: digits from files through the champion (or any MLflow model) to a CSV."""

from prefect import flow

from flows.train import DEFAULT_MODEL_NAME
from tasks.predict import Predictions, load_digits, predict, write_predictions
from tasks.registry import CHAMPION_ALIAS

DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"


@flow(name="predict-mnist", log_prints=True)
def predict_flow(
    images: list[str],
    output: str = "predictions.csv",
    model_uri: str = DEFAULT_MODEL_URI,
    labels: str | None = None,
) -> Predictions:
    """Predict the digits in PNG or IDX ``images`` with ``model_uri``; write them to ``output``."""
    digits = load_digits(images, labels)
    predictions = predict(model_uri, digits)
    write_predictions(output, digits, predictions)
    return predictions
