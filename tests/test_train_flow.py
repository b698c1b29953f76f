"""What a training run records: one real run under a Prefect test server, recorded in a real
local MLflow store, checked against the bare library, NumPy and Prefect's own client.
(Runs that fail: ``test_train_flow_failures.py``.)"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import mlflow
import mlflow.tensorflow
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_weights_equal, use_mlflow_store
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.train import TrainResult, train_flow
from tasks.config import RunOptions, TrainConfig
from tfnn.mnist import load_mnist_idx
from tfnn.network import Sequential, build_mlp
from tfnn.optimizers import SGD
from tfnn.preprocessing import preprocess
from tfnn.serialization import TrainingCheckpoint, load_network
from tfnn.training import fit

EPOCHS = 3
HIDDEN = 16
# 600 examples in batches of 2: 300 steps an epoch, so the step loss is sampled every 3rd step.
BATCH_SIZE = 2
STEPS_PER_EPOCH = 300
LEARNING_RATE = 0.05
SEED = 7
# History's names and MLflow's (without validation: the notebook's setting).
EPOCH_METRICS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "test_loss": "test/loss",
    "test_accuracy": "test/accuracy",
    "epoch_seconds": "train/epoch_seconds",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Run:
    """A finished flow run, its MLflow record and what the bare library computes for it."""

    config: TrainConfig
    result: TrainResult
    flow_run_id: str
    mlflow_run: mlflow.entities.Run
    client: MlflowClient
    directory: Path
    x_test: np.ndarray
    test_labels: np.ndarray
    epoch_weights: list[list[np.ndarray]]  # the bare library's weights after each epoch

    def download(self, artifact_path: str) -> Path:
        return Path(self.client.download_artifacts(self.mlflow_run.info.run_id, artifact_path))


def bare_library_weights(data_dir: Path) -> list[list[np.ndarray]]:
    """Weights after each epoch of the same run trained by tfnn alone."""
    arrays = load_mnist_idx(data_dir)
    network = build_mlp([784, HIDDEN, 10], "relu", "softmax", initializer="he_normal", seed=SEED)
    snapshots = []

    def snapshot(epoch, metrics, net):
        snapshots.append([w.numpy() for w in net.all_weights])

    fit(
        network,
        SGD(LEARNING_RATE),
        preprocess(arrays.train_images, arrays.train_labels),
        {"test": preprocess(arrays.test_images, arrays.test_labels)},
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        seed=SEED,
        callbacks=[snapshot],
    )
    return snapshots


@pytest.fixture(scope="module")
def run(prefect_harness, small_mnist_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("train-flow")
    config = TrainConfig(
        hidden_sizes=(HIDDEN,),
        learning_rate=LEARNING_RATE,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        seed=SEED,
        # The notebook's run: no validation split, so the bare library's fit is the reference.
        validation_fraction=0,
        data_source=str(small_mnist_dir),
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_mlflow_store(monkeypatch, directory)
        monkeypatch.setenv("TFNN_KEEP_CHECKPOINTS", "2")
        state = train_flow(config, RunOptions(experiment="e2e"), return_state=True)
        result = state.result()
        client = MlflowClient()
        arrays = load_mnist_idx(small_mnist_dir)
        yield Run(
            config=config,
            result=result,
            flow_run_id=str(state.state_details.flow_run_id),
            mlflow_run=client.get_run(result.run_id),
            client=client,
            directory=directory,
            x_test=preprocess(arrays.test_images, arrays.test_labels)[0],
            test_labels=arrays.test_labels,
            epoch_weights=bare_library_weights(small_mnist_dir),
        )
    mlflow.set_tracking_uri(None)


# --- parameters and data --------------------------------------------------------------------


def test_run_finished_with_every_config_field_as_param(run):
    params = run.mlflow_run.data.params
    assert run.mlflow_run.info.status == "FINISHED"
    assert run.mlflow_run.data.tags.get("tfnn.error") is None
    assert params.items() >= run.config.as_params().items()
    # The values passed in, and the notebook's defaults for the rest, written out by hand.
    assert (
        params.items()
        >= {
            "hidden_sizes": "16",
            "activation": "relu",
            "output_activation": "softmax",
            "loss": "cross_entropy_error",
            "initializer": "he_normal",
            "learning_rate": "0.05",
            "batch_size": "2",
            "epochs": "3",
            "seed": "7",
            "data_source": run.config.data_source,
        }.items()
    )


def test_param_count_data_digest_and_dataset_inputs(run, small_mnist_dir):
    params = run.mlflow_run.data.params
    assert params["num_parameters"] == str(784 * 16 + 16 + 16 * 10 + 10)
    assert params["num_train_examples"] == "600" and params["num_test_examples"] == "200"
    arrays = load_mnist_idx(small_mnist_dir)
    sha = hashlib.sha256()
    for a in (arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels):
        sha.update(f"{a.shape}{a.dtype.str};".encode() + a.tobytes())
    assert params["data_digest"] == sha.hexdigest()

    inputs = run.mlflow_run.inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}
    assert sorted(contexts) == ["testing", "training"]
    for dataset in contexts.values():
        assert json.loads(dataset.source)["uri"] == Path(small_mnist_dir).resolve().as_uri()
    assert json.loads(contexts["training"].schema)["mlflow_tensorspec"]["features"]
    assert json.loads(contexts["testing"].profile)["features_shape"] == [200, 784]


# --- metrics --------------------------------------------------------------------------------


def test_one_value_per_epoch_equal_to_history(run):
    for name, key in EPOCH_METRICS.items():
        history = run.client.get_metric_history(run.result.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], name
        assert [m.value for m in history] == getattr(run.result.history, name), name


def test_metric_names_group_by_split_into_chart_sections(run):
    # MLflow draws a chart section per prefix: train, test, the classes (and the machine's,
    # when the run lasted long enough for a sample).
    keys = set(run.mlflow_run.data.metrics)
    sections = {key.rpartition("/")[0] for key in keys} - {"system"}
    assert sections == {"train", "test", "test/class"}
    assert {f"test/class/{k}" for k in range(10)} <= keys
    assert {"train/loss", "train/step_loss", "test/accuracy", "test/final_accuracy"} <= keys


def test_step_loss_is_sampled_at_a_bounded_rate(run):
    history = run.client.get_metric_history(run.result.run_id, "train/step_loss")
    all_steps = run.result.history.step_loss
    assert len(all_steps) == EPOCHS * STEPS_PER_EPOCH
    assert len(history) == EPOCHS * 100  # at most 100 points an epoch
    assert [m.step for m in history] == list(range(0, EPOCHS * STEPS_PER_EPOCH, 3))
    assert [m.value for m in history] == all_steps[::3]


def test_final_metrics_match_numpy(run):
    metrics = run.mlflow_run.data.metrics
    network = load_network(run.download("weights"))
    predicted = network(run.x_test).numpy().argmax(axis=1)
    assert metrics["test/final_accuracy"] == pytest.approx(np.mean(predicted == run.test_labels))
    assert metrics["test/final_accuracy"] == pytest.approx(run.result.history.test_accuracy[-1])
    assert metrics["test/final_accuracy"] > 0.5  # the synthetic digits are learnable
    for k in range(10):
        mask = run.test_labels == k
        assert metrics[f"test/class/{k}"] == pytest.approx(np.mean(predicted[mask] == k))
    per_class = [f"test/class/{k}" for k in range(10)]
    assert list(run.result.metrics) == ["test/final_loss", "test/final_accuracy", *per_class]
    assert run.result.metrics == {key: metrics[key] for key in run.result.metrics}


def test_confusion_matrix_artifact(run):
    saved = json.loads(run.download("confusion_matrix.json").read_text())
    confusion = np.array(saved["rows_true_columns_predicted"])
    network = load_network(run.download("weights"))
    predicted = network(run.x_test).numpy().argmax(axis=1)
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (run.test_labels, predicted), 1)
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.sum() == 200
    assert np.trace(confusion) / confusion.sum() == pytest.approx(
        run.mlflow_run.data.metrics["test/final_accuracy"]
    )


# --- checkpoints, weights and the model ------------------------------------------------------


def restore_uploaded(run_id: str, folder: str, spec: dict) -> tuple[int, Sequential]:
    """The epoch and network of an uploaded ``checkpoints/<folder>/`` (fixed file names)."""
    local = Path(MlflowClient().download_artifacts(run_id, f"checkpoints/{folder}"))
    network, epoch = Sequential.from_spec(spec), tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(network=network, epoch=epoch)
    checkpoint.restore(str(local / "ckpt")).expect_partial()  # the early-stopping state aside
    assert json.loads((local / "manifest.json").read_text())["epoch"] == int(epoch)
    return int(epoch), network


def test_artifacts_hold_the_latest_and_best_checkpoints_and_disk_the_newest_k(run):
    run_id = run.result.run_id
    listed = [a.path for a in run.client.list_artifacts(run_id, "checkpoints")]
    assert listed == ["checkpoints/best", "checkpoints/latest"]
    spec = json.loads(run.download("weights/architecture.json").read_text())
    epoch, network = restore_uploaded(run_id, "latest", spec)
    assert epoch == EPOCHS
    assert_weights_equal(network, run.epoch_weights[-1])
    best = int(np.argmin(run.result.history.train_loss)) + 1
    epoch, network = restore_uploaded(run_id, "best", spec)
    assert epoch == best
    assert_weights_equal(network, run.epoch_weights[best - 1])
    # Locally, TFNN_KEEP_CHECKPOINTS=2 of them, the best, and the whole history.
    local = run.directory / "outputs" / run_id / "checkpoints"
    assert sorted(p.name for p in local.glob("ckpt-*.index")) == ["ckpt-2.index", "ckpt-3.index"]
    assert [p.name for p in (local / "best").glob("*.index")] == [f"ckpt-{best}.index"]
    completed, history = TrainingCheckpoint(Sequential.from_spec(spec), local).restore_latest()
    assert (completed, history) == (EPOCHS, run.result.history)


def test_final_weights_reload_and_predict_as_the_library(run):
    network = load_network(run.download("weights"))
    assert [layer.w.shape[1] for layer in network.layers] == [HIDDEN, 10]
    assert_weights_equal(network, run.epoch_weights[-1])
    reference = build_mlp([784, HIDDEN, 10], "relu", "softmax", seed=SEED)
    for variable, value in zip(reference.all_weights, run.epoch_weights[-1]):
        variable.assign(value)
    np.testing.assert_allclose(
        network(run.x_test).numpy(), reference(run.x_test).numpy(), rtol=1e-5, atol=1e-6
    )


def test_logged_model_serves_the_networks_probabilities(run):
    network = load_network(run.download("weights"))
    model = mlflow.pyfunc.load_model(run.result.model_uri)
    served = np.asarray(model.predict(run.x_test))
    expected = network(run.x_test).numpy()
    assert served.shape == (200, 10)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-5)
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 784)
    assert model.metadata.get_output_schema().inputs[0].shape == (-1, 10)
    assert model.metadata.saved_input_example_info is not None
    # MLflow's own tensorflow flavour: its loader gives back the module itself.
    module = mlflow.tensorflow.load_model(run.result.model_uri)
    np.testing.assert_allclose(module(run.x_test).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_logged_model_is_in_the_runs_experiment(run):
    experiment_id = run.client.get_run(run.result.run_id).info.experiment_id
    assert experiment_id != "0"  # the tfnn-mnist experiment, not MLflow's Default
    model_id = run.result.model_uri.removeprefix("models:/")
    assert run.client.get_logged_model(model_id).experiment_id == experiment_id
    found = run.client.search_logged_models(experiment_ids=[experiment_id])
    assert [model.model_id for model in found] == [model_id]


# --- plots ----------------------------------------------------------------------------------


def test_plots_are_valid_pngs(run):
    listed = {a.path: a.file_size for a in run.client.list_artifacts(run.result.run_id, "plots")}
    names = ["accuracy", "confusion_matrix", "test_digits", "train_loss"]
    assert sorted(listed) == [f"plots/{name}.png" for name in names]
    for path, size in listed.items():
        local = run.download(path)
        assert size > 0 and local.stat().st_size == size
        assert local.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(local)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # something was drawn


# --- the Prefect side -----------------------------------------------------------------------


def test_prefect_flow_run_and_mlflow_run_point_at_each_other(run):
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(run.flow_run_id)
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    assert flow_run.state.is_completed()
    tags = run.mlflow_run.data.tags
    assert tags["prefect.flow_run_id"] == str(flow_run.id)
    assert tags["prefect.flow_run_name"] == flow_run.name

    by_key = {artifact.key: artifact for artifact in artifacts}
    # No link to a local MLflow store, which has no UI address.
    assert sorted(by_key) == ["epoch-metrics", "training-progress", "training-summary"]
    assert by_key["training-progress"].data == 100.0
    summary = by_key["training-summary"].data
    assert run.result.run_id in summary and run.result.model_uri in summary
    accuracy = run.mlflow_run.data.metrics["test/final_accuracy"]
    assert f"| test/final_accuracy | {accuracy:.4f} |" in summary

    table = by_key["epoch-metrics"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for name in EPOCH_METRICS:
        values = getattr(run.result.history, name)
        assert [row[name] for row in rows] == [round(value, 4) for value in values]
        assert all(len(str(row[name]).split(".")[-1]) <= 4 for row in rows)


# --- the real digits --------------------------------------------------------------------------


def test_defaults_reach_94_percent_on_real_mnist(prefect_harness, mlflow_store, real_mnist_dir):
    # The notebook's run: 784-100-50-10 relu, He initialisation, SGD lr 0.1, batch 32, 5 epochs.
    config = TrainConfig(data_source=str(real_mnist_dir), validation_fraction=0)
    result = train_flow(config)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["num_parameters"] == str(784 * 100 + 100 + 100 * 50 + 50 + 50 * 10 + 10)
    arrays = load_mnist_idx(real_mnist_dir)
    x_test, _ = preprocess(arrays.test_images, arrays.test_labels)
    network = load_network(client.download_artifacts(result.run_id, "weights"))
    accuracy = np.mean(network(x_test).numpy().argmax(axis=1) == arrays.test_labels)
    assert accuracy >= 0.94
    assert run.data.metrics["test/final_accuracy"] == pytest.approx(accuracy)
