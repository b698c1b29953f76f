"""The registry and the retrain flow: versions, the champion alias, decisions, idempotency,
warm starts. Scores are re-derived independently from the saved weights with NumPy."""

import asyncio
import shutil
import tempfile

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cli import main
from flows.retrain import retrain_flow
from tasks.config import RunOptions, TrainConfig
from tasks.registry import FIRST_CHAMPION, decide
from tfnn.mnist import load_mnist_idx
from tfnn.optimizers import SGD
from tfnn.preprocessing import preprocess
from tfnn.serialization import load_network
from tfnn.training import fit

NAME = "tfnn-mnist"


@pytest.mark.parametrize(
    ("champion", "challenger", "margin", "promote"),
    [
        (None, 0.10, 0.5, True),  # the first model always becomes champion
        (0.90, 0.92, 0.01, True),
        (0.90, 0.905, 0.01, False),  # better, but not by the margin
        (0.90, 0.90, 0.0, False),  # a tie never moves the alias
        (0.90, 0.80, 0.0, False),
    ],
)
def test_decide(champion, challenger, margin, promote):
    promoted, reason = decide(champion, challenger, margin)
    assert promoted is promote
    if champion is not None:
        assert f"{challenger:.4f}" in reason and f"{champion:.4f}" in reason


def saved_network(run_id):
    """The network a run saved under ``weights/``, read back with tfnn alone."""
    return load_network(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="weights", dst_path=tempfile.mkdtemp()
        )
    )


def accuracy_of(run_id, x_test, labels):
    return float(np.mean(saved_network(run_id).predict(x_test).numpy().argmax(1) == labels))


def latest_artifact_markdown():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-decision"])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            return found[0].data

    return asyncio.run(read())


def test_retrain_promotes_first_skips_repeats_and_promotes_only_a_winner(
    prefect_harness, mlflow_store, small_mnist_dir
):
    client = MlflowClient()
    arrays = load_mnist_idx(small_mnist_dir)
    x_test, _ = preprocess(arrays.test_images, arrays.test_labels)
    labels = arrays.test_labels
    config = TrainConfig(hidden_sizes=(16,), epochs=1, data_source=str(small_mnist_dir))
    # Decisions are on the validation split: the last 10% of the 600 training digits.
    x_train, y_train = preprocess(arrays.train_images, arrays.train_labels)
    x_val, val_labels = x_train[540:], arrays.train_labels[540:]

    def champion():
        version = client.get_model_version_by_alias(NAME, "champion")
        return str(version.version), version.run_id

    # 1. No champion yet: the challenger becomes champion.
    first = retrain_flow(config)
    assert (first.action, first.challenger_version) == ("promoted", "1")
    assert champion() == ("1", first.challenger_run_id)
    v1_accuracy = accuracy_of(first.challenger_run_id, x_val, val_labels)
    v1_test_accuracy = accuracy_of(first.challenger_run_id, x_test, labels)
    assert first.challenger_val_accuracy == pytest.approx(v1_accuracy, abs=1e-9)
    assert first.challenger_test_accuracy == pytest.approx(v1_test_accuracy, abs=1e-9)
    run = client.get_run(first.challenger_run_id)
    assert run.data.metrics["test/final_accuracy"] == pytest.approx(v1_test_accuracy, abs=1e-6)
    assert run.data.metrics["val/final_accuracy"] == pytest.approx(v1_accuracy, abs=1e-6)
    for tags in (run.data.tags, client.get_model_version(NAME, "1").tags):
        assert tags["tfnn.decision"] == "promoted"
        assert tags["tfnn.decision_reason"] == first.reason
        assert float(tags["tfnn.challenger_val_accuracy"]) == pytest.approx(v1_accuracy)
        assert float(tags["tfnn.challenger_test_accuracy"]) == pytest.approx(v1_test_accuracy)
    assert "promoted" in latest_artifact_markdown()
    # Loading the alias gives the champion's own predictions.
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(x_test)
    np.testing.assert_allclose(
        served, saved_network(first.challenger_run_id).predict(x_test).numpy(), atol=1e-6
    )

    # 2. Nothing new: nothing is trained, registered or promoted.
    again = retrain_flow(config)
    assert again.action == "skipped" and "came from this retrain" in again.reason
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    assert "skipped" in latest_artifact_markdown()

    # 3. A warm-started challenger that cannot clear a margin of 1: kept, alias unmoved.
    kept = retrain_flow(config, RunOptions(warm_start=True, margin=1.0))
    assert (kept.action, kept.challenger_version, champion()[0]) == ("kept", "2", "1")
    v2_accuracy = accuracy_of(kept.challenger_run_id, x_val, val_labels)
    assert kept.champion_val_accuracy == pytest.approx(v1_accuracy)
    assert kept.challenger_val_accuracy == pytest.approx(v2_accuracy)
    v2_tags = client.get_model_version(NAME, "2").tags
    assert v2_tags["tfnn.decision"] == "kept" and v2_tags["tfnn.compared_with_version"] == "1"
    # Warm start means: the champion's weights trained one more epoch, exactly as tfnn.fit
    # does it from those weights.
    expected = saved_network(first.challenger_run_id)
    fit(
        expected,
        SGD(config.learning_rate),
        (x_train[:540], y_train[:540]),
        {"test": (x_test, preprocess(arrays.test_images, labels)[1])},
        epochs=1,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    warm = saved_network(kept.challenger_run_id)
    for got, want in zip(warm.all_weights, expected.all_weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    assert client.get_run(kept.challenger_run_id).data.tags["tfnn.warm_start_from"] == (
        f"runs:/{first.challenger_run_id}/weights"
    )
    assert retrain_flow(config, RunOptions(warm_start=True, margin=1.0)).action == "skipped"

    # 4. A warm start whose architecture differs fails clearly and registers nothing.
    with pytest.raises(ValueError, match="cannot warm-start"):
        retrain_flow(config.model_copy(update={"hidden_sizes": (8,)}), RunOptions(warm_start=True))
    failed = client.search_runs(
        [run.info.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )[0]
    assert failed.info.status == "FAILED" and "cannot warm-start" in failed.data.tags["tfnn.error"]
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2

    # 5. Two more epochs from the champion on learnable digits win: the alias moves.
    better = retrain_flow(config.model_copy(update={"epochs": 2}), RunOptions(warm_start=True))
    v3_accuracy = accuracy_of(better.challenger_run_id, x_val, val_labels)
    assert v3_accuracy > v1_accuracy
    assert (better.action, better.challenger_version, champion()[0]) == ("promoted", "3", "3")
    assert better.challenger_val_accuracy == pytest.approx(v3_accuracy)
    assert client.get_model_version(NAME, "3").tags["tfnn.compared_with_version"] == "1"


def test_the_first_registered_version_is_champion_and_only_a_retrain_moves_it(
    prefect_harness, mlflow_store, small_mnist_dir, capsys
):
    flags = ["--data-dir", str(small_mnist_dir), "--epochs", "1", "--hidden-sizes", "8"]
    client = MlflowClient()
    assert main(["train", *flags, "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        f"registered: models:/{NAME}/1",
        f"champion: models:/{NAME}@champion, the first version",
    ]
    first = client.get_model_version_by_alias(NAME, "champion")
    assert str(first.version) == "1"
    for tags in (first.tags, client.get_run(first.run_id).data.tags):
        assert (tags["tfnn.decision"], tags["tfnn.decision_reason"]) == ("promoted", FIRST_CHAMPION)

    # A second train registers a version and leaves the champion where it is.
    assert main(["train", *flags, "--seed", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"registered: models:/{NAME}/2"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert "tfnn.decision" not in client.get_model_version(NAME, "2").tags

    # A retrain compares its challenger with that champion.
    assert main(["retrain", *flags, "--seed", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "champion before: version 1  val_accuracy " in out
    assert client.get_model_version(NAME, "3").tags["tfnn.compared_with_version"] == "1"

    # The registered model's description summarises the model and names its champion now,
    # whichever version was written last; no version's card is copied there.
    champion = client.get_model_version_by_alias(NAME, "champion")
    accuracy = client.get_run(champion.run_id).data.metrics["val/final_accuracy"]
    summary = client.get_registered_model(NAME).description
    assert summary.startswith(f"# {NAME}\n\nA dense network")
    assert (
        f"The champion, `models:/{NAME}@champion`, is version {champion.version}: "
        f"784 -> 8 -> 10 (relu, softmax output), validation accuracy {accuracy:.4f}"
    ) in summary
    assert "first registered version becomes its champion" in summary
    assert "version 3" not in summary.splitlines()[0] and "## How well" not in summary


def test_compare_registers_each_child_under_the_given_name(
    prefect_harness, mlflow_store, small_mnist_dir, capsys
):
    argv = ["compare", "--data-dir", str(small_mnist_dir), "--hidden-sizes", "8", "--epochs", "1"]
    assert main([*argv, "--no-progress", "--model-name", "digits"]) == 0
    out = capsys.readouterr().out
    client = MlflowClient()
    versions = {str(v.version): v for v in client.search_model_versions("name = 'digits'")}
    assert set(versions) == {"1", "2"}
    for version in versions.values():
        run = client.get_run(version.run_id)
        activation = run.data.params["activation"]
        assert f"[{activation}] registered: models:/digits/{version.version}" in out
        assert run.data.tags["tfnn.registered_model"] == f"digits/{version.version}"
        assert "mlflow.parentRunId" in run.data.tags
    assert {client.get_run(v.run_id).data.params["activation"] for v in versions.values()} == {
        "relu",
        "tanh",
    }


def test_a_champion_whose_artifacts_are_gone_is_refused_before_a_retrain(
    prefect_harness, mlflow_store, small_mnist_dir, capsys, tmp_path
):
    flags = ["--data-dir", str(small_mnist_dir), "--epochs", "1", "--hidden-sizes", "8"]
    assert main(["retrain", *flags, "--no-progress"]) == 0  # no champion: v1 becomes it
    client = MlflowClient()
    champion = client.get_model_version_by_alias(NAME, "champion")
    model_id = champion.source.removeprefix("models:/")
    shutil.rmtree(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    capsys.readouterr()

    # Another seed: a retrain with something new to train.
    assert main(["retrain", *flags, "--seed", "1", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(
        f"tfnn: error: models:/{NAME}@champion: the champion (version 1) cannot be loaded ("
    )
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]

    # predict reads the same champion: refused before anything is read or written.
    images = str(small_mnist_dir / "t10k-images-idx3-ubyte.gz")
    output = tmp_path / "predictions.csv"
    assert main(["predict", "--images", images, "--output", str(output)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"tfnn: error: --model models:/{NAME}@champion: ")
    assert "cannot be loaded" in err and not output.exists()
