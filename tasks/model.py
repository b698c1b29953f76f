"""What a configuration makes: its network and the arguments of ``tfnn.fit``; the tasks that
build a run's network and log the trained one as the run's MLflow model."""

import tempfile
from typing import Any

import mlflow
import mlflow.tensorflow
import numpy as np
import tensorflow as tf
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.models import Model, infer_signature
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NONE

from tasks.config import TrainConfig
from tasks.data import PreparedData
from tasks.timeouts import UPLOAD_TIMEOUT_ENV, timeout_seconds
from tfnn.network import Sequential, build_mlp
from tfnn.optimizers import SGD
from tfnn.serialization import load_network, save_network, weights_digest
from tfnn.serving import GuardedNetwork
from tfnn.training import EarlyStopping, History

WEIGHTS_TAG = "tfnn.weights_sha256"
BEST_EPOCH_TAG = "tfnn.best_epoch"


def network_for(config: TrainConfig, input_dim: int, num_classes: int) -> Sequential:
    """A fresh ``input_dim -> hidden... -> num_classes`` network seeded by ``config.seed``."""
    return build_mlp(
        config.layer_sizes(input_dim, num_classes),
        hidden_activation=config.activation,
        output_activation=config.output_activation,
        loss=config.loss,
        initializer=config.initializer,
        seed=config.seed,
    )


def fit_arguments(config: TrainConfig, validation: bool) -> dict[str, Any]:
    """The keyword arguments of ``tfnn.fit`` that ``config`` sets: the optimizer, epochs,
    batch size and seed, and, when there is a ``validation`` set, the early-stopping
    callback (first, so that later callbacks record its state)."""
    stopping = EarlyStopping(config.early_stopping_patience, config.restore_best)
    return {
        "optimizer": SGD(config.learning_rate),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "callbacks": [stopping] if validation else [],
    }


@task
def build_network(
    config: TrainConfig, input_dim: int, num_classes: int, warm_start_from: str | None = None
) -> Sequential:
    """``network_for(config, ...)``, or, given ``warm_start_from`` (a saved network's artifact
    URI, ``runs:/<id>/weights``), that network, which must have the architecture the
    configuration describes (a warm start)."""
    network = network_for(config, input_dim, num_classes)
    if warm_start_from is None:
        return network
    with tempfile.TemporaryDirectory() as tmp:
        saved = load_network(mlflow.artifacts.download_artifacts(warm_start_from, dst_path=tmp))
    if saved.spec() != network.spec():
        raise ValueError(
            f"cannot warm-start from {warm_start_from}: it holds {saved!r} but the "
            f"configuration describes {network!r}; train with the saved network's hidden "
            "sizes, activations and loss, or start fresh"
        )
    return saved


@task(cache_policy=NONE, timeout_seconds=timeout_seconds(UPLOAD_TIMEOUT_ENV))
def log_trained_model(
    run_id: str, network: Sequential, data: PreparedData, history: History
) -> str:
    """Log the final weights (architecture JSON + npz) and an MLflow tensorflow model with a
    signature and an input example, and tag the run with ``weights_digest`` and the epoch of
    lowest ``val_loss`` (``tfnn.best_epoch``); returns the model's URI."""
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(save_network(network, tmp)), "weights")
    client.set_tag(run_id, WEIGHTS_TAG, weights_digest(network))
    if history.best_epoch is not None:
        client.set_tag(run_id, BEST_EPOCH_TAG, str(history.best_epoch))
    # In the run's experiment: a logged model made without one lands in experiment 0.
    experiment_id = client.get_run(run_id).info.experiment_id
    # A resumed run keeps the model its first process logged, or finishes the one that
    # process had begun (stopped before it was READY): a run never holds two.
    earlier = client.search_logged_models([experiment_id], f"source_run_id = '{run_id}'")
    if ready := [m for m in earlier if m.status == LoggedModelStatus.READY]:
        return f"models:/{ready[0].model_id}"
    model = (
        earlier[0]
        if earlier
        else mlflow.initialize_logged_model(
            name="model", source_run_id=run_id, experiment_id=experiment_id
        )
    )
    # Saved and uploaded step by step rather than by Model.log, which also copies the run's
    # metrics of one step (the first batch's train/step_loss) onto the model: its metrics are
    # the final scores only, linked by log_evaluation.
    example = data.x_test[:5]
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.tensorflow.save_model(
            GuardedNetwork(network),  # refuses non-pixel input and over-long requests
            f"{tmp}/model",
            signature=infer_signature(example, network.predict(example).numpy()),
            input_example=example,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"],
            mlflow_model=Model(
                artifact_path=model.artifact_location,
                run_id=run_id,
                model_id=model.model_id,
                model_uuid=model.model_id,
            ),
        )
        client.log_model_artifacts(model.model_id, f"{tmp}/model")
    outputs = client.get_run(run_id).outputs
    if model.model_id not in {o.model_id for o in (outputs.model_outputs if outputs else [])}:
        # The run's "Logged models"; the model is the one after its last update.
        output = LoggedModelOutput(model.model_id, step=len(history.step_loss))
        client.log_outputs(run_id, [output])
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return f"models:/{model.model_id}"
