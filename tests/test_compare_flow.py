"""The notebook's second experiment as one flow: relu against tanh, two child MLflow runs under
one parent, and one figure of both."""

from pathlib import Path

import matplotlib.image
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from flows.compare import compare_flow
from tasks.config import RunOptions, TrainConfig


def test_relu_against_tanh_makes_two_child_runs_under_one_parent(
    prefect_harness, mlflow_store, small_mnist_dir
):
    config = TrainConfig(hidden_sizes=(8,), epochs=2, data_source=str(small_mnist_dir))
    state = compare_flow(
        config, ("relu", "tanh"), RunOptions(experiment="compare"), return_state=True
    )
    results = state.result()

    client = MlflowClient()
    experiment = client.get_experiment_by_name("compare").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == 3
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.data.params["activation"]: run for run in runs if run is not parent}
    assert sorted(children) == ["relu", "tanh"]
    assert {name: run.info.run_id for name, run in children.items()} == {
        name: result.run_id for name, result in results.items()
    }

    assert parent.info.status == "FINISHED"
    assert parent.data.params["activation"] == "relu,tanh"
    with get_client(sync_client=True) as prefect:
        compare_run = prefect.read_flow_run(state.state_details.flow_run_id)
    assert parent.data.tags["prefect.flow_run_id"] == str(compare_run.id)
    for name, child in children.items():
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.run_name == name
        # Everything but the activation is the configuration passed in.
        assert child.data.params.items() >= {**config.as_params(), "activation": name}.items()
        accuracy = client.get_metric_history(child.info.run_id, "test/accuracy")
        assert [m.value for m in accuracy] == results[name].history.test_accuracy
        # Each child is its own Prefect flow run, nested in the compare flow run.
        with get_client(sync_client=True) as prefect:
            flow_run = prefect.read_flow_run(child.data.tags["prefect.flow_run_id"])
            parent_task = prefect.read_task_run(flow_run.parent_task_run_id)
        assert flow_run.state.is_completed() and parent_task.flow_run_id == compare_run.id
    # Different activations train differently.
    assert results["relu"].history.step_loss != results["tanh"].history.step_loss

    (plot,) = client.list_artifacts(parent.info.run_id, "plots")  # the comparison plot
    assert plot.path == "plots/comparison.png" and plot.file_size > 0
    local = client.download_artifacts(parent.info.run_id, plot.path)
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(local)
    assert image.shape[1] > image.shape[0] > 100  # two panels side by side

    # The parent tells the result: the child with the higher validation accuracy (read from
    # the children's own records) wins, named in its tags and description with the test score.
    parent = client.get_run(parent.info.run_id)
    val = {name: run.data.metrics["val/final_accuracy"] for name, run in children.items()}
    assert val["relu"] != val["tanh"]
    winner = max(val, key=val.get)
    test = children[winner].data.metrics["test/final_accuracy"]
    tags = parent.data.tags
    assert tags["tfnn.best.configuration"] == winner == tags["tfnn.best.activation"]
    assert tags["tfnn.best.run_id"] == children[winner].info.run_id
    assert parent.data.metrics["val/best_accuracy"] == val[winner]
    assert tags["mlflow.note.content"].startswith(
        f"**{winner}** wins on validation: validation accuracy {val[winner]:.4f}, "
        f"test accuracy {test:.4f}"
    )
    loser = ({"relu", "tanh"} - {winner}).pop()
    assert f"| 2 | {loser} | {val[loser]:.4f} |" in tags["mlflow.note.content"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"ranking.json"}
