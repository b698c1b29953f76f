"""Tests for sweeps: grid files and their validation, and real sweeps on Prefect's thread pool
and on a two-process Dask LocalCluster, checked through a real MLflow store."""

import json
import random
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from cli import main
from flows.sweep import sweep_flow, sweep_task_runner
from tasks.grid import SweepError, SweepSpec, load_sweep_file
from tfnn.mnist import load_mnist_idx

# relu at this rate overflows on the first steps (NonFiniteLossError); tanh saturates and stays
# finite, so the grid below has exactly one failing configuration.
DIVERGING_RATE = 1e20


def write(path: Path, content) -> Path:
    path.write_text(json.dumps(content) if path.suffix == ".json" else yaml.safe_dump(content))
    return path


# --- the grid -------------------------------------------------------------------------------


def test_grid_expands_to_every_combination_in_order(tmp_path):
    spec = load_sweep_file(
        write(
            tmp_path / "sweep.yaml",
            {
                "base": {"epochs": 2, "hidden_sizes": [8], "data_source": str(tmp_path)},
                "grid": {"activation": ["relu", "tanh"], "learning_rate": [0.1, 0.2, 0.3]},
            },
        )
    )
    configurations = spec.configurations()
    expected = [(a, r) for a in ("relu", "tanh") for r in (0.1, 0.2, 0.3)]
    assert list(configurations) == [f"activation={a} learning_rate={r}" for a, r in expected]
    assert [(c.activation, c.learning_rate) for c in configurations.values()] == expected
    for config in configurations.values():
        assert (config.epochs, config.hidden_sizes, config.batch_size) == (2, (8,), 32)
        assert config.data_source == str(tmp_path)


def test_yaml_and_json_files_agree_and_data_dirs_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    content = {
        "base": {"data_source": "mnist"},
        "grid": {"hidden_sizes": [[16, 8], [4]], "seed": [1, 2]},
    }
    from_yaml = load_sweep_file(write(tmp_path / "s.yml", content)).configurations()
    from_json = load_sweep_file(write(tmp_path / "s.json", content)).configurations()
    assert from_yaml == from_json
    assert list(from_yaml) == [
        "hidden_sizes=16,8 seed=1",
        "hidden_sizes=16,8 seed=2",
        "hidden_sizes=4 seed=1",
        "hidden_sizes=4 seed=2",
    ]
    assert {c.data_source for c in from_yaml.values()} == {str(tmp_path / "mnist")}


def test_random_samples_are_distinct_grid_points_fixed_by_the_seed():
    grid = {"activation": ["relu", "tanh", "sigmoid"], "learning_rate": [0.1, 0.01, 0.001]}
    everything = SweepSpec(grid=grid).configurations()
    drawn = [SweepSpec(grid=grid, samples=4, seed=seed).configurations() for seed in range(6)]
    for sample in drawn:
        assert len(sample) == 4
        # a sample keeps the grid's order, so it is a subsequence of the full grid
        assert [name for name in everything if name in sample] == list(sample)
        assert all(sample[name] == everything[name] for name in sample)
    assert SweepSpec(grid=grid, samples=4, seed=3).configurations() == drawn[3]
    assert len({tuple(sample) for sample in drawn}) > 1


def test_a_sample_of_a_huge_grid_is_drawn_by_index_without_expanding_it():
    # 10^12 points: expanding them was a MemoryError. The drawn points must be the ones
    # at the sampled indices of itertools.product's order, i.e. NumPy's C-order unravel.
    grid = {
        "learning_rate": [round(0.001 * (i + 1), 3) for i in range(10_000)],
        "seed": list(range(10_000)),
        "epochs": list(range(1, 10_001)),
    }
    spec = SweepSpec(grid=grid, samples=3, seed=7)
    assert spec.size() == 10**12
    indices = sorted(random.Random(7).sample(range(10**12), 3))
    expected = [np.unravel_index(i, (10_000, 10_000, 10_000)) for i in indices]
    configurations = list(spec.configurations().values())
    assert [(c.learning_rate, c.seed, c.epochs) for c in configurations] == [
        (grid["learning_rate"][a], grid["seed"][b], grid["epochs"][c]) for a, b, c in expected
    ]


def test_a_sweep_above_max_configurations_is_refused_unless_raised():
    grid = {"seed": list(range(40)), "epochs": list(range(1, 41))}
    with pytest.raises(
        SweepError,
        match=r"would train 1600 configurations, more than "
        r"max_configurations \(1000\); train a random sample",
    ):
        SweepSpec(grid=grid).configurations()
    assert len(SweepSpec(grid=grid, samples=1000).configurations()) == 1000
    assert len(SweepSpec(grid=grid, max_configurations=1600).configurations()) == 1600


BAD_FILES = {
    "unknown grid field": (
        {"grid": {"learnin_rate": [0.1]}},
        "grid.learnin_rate: not a training configuration field; use hidden_sizes, activation",
    ),
    "unknown base field": ({"base": {"epoch": 2}}, "base.epoch: not a training configuration"),
    "bad value names the configuration and the field": (
        {"grid": {"activation": ["relu", "tanh"], "learning_rate": [0.1, -1]}},
        "configuration 'activation=relu learning_rate=-1': invalid configuration: "
        "learning_rate: Input should be greater than 0 (got -1)",
    ),
    "unknown activation": (
        {"grid": {"activation": ["relu", "swish"]}},
        "configuration 'activation=swish': invalid configuration: activation: unknown "
        "activation 'swish': use one of",
    ),
    "bad base value": (
        {"base": {"batch_size": 0}},
        "configuration 'base': invalid configuration: batch_size: Input should be greater "
        "than or equal to 1 (got 0)",
    ),
    "empty list": ({"grid": {"activation": []}}, "grid.activation: no values"),
    "scalar instead of list": (
        {"grid": {"activation": "relu"}},
        "grid.activation: Input should be a valid list (got 'relu')",
    ),
    "too many samples": (
        {"grid": {"seed": [1, 2]}, "samples": 3},
        "samples: 3 is more than the 2 grid points",
    ),
    "zero samples": ({"samples": 0}, "samples: Input should be greater than or equal to 1"),
    "unknown top-level key": ({"grd": {}}, "grd: Extra inputs are not permitted"),
    "repeated value": (
        {"grid": {"seed": [1, 1]}},
        "configuration 'seed=1' repeats another: a grid value is listed twice",
    ),
    "not a mapping": ([1, 2], "expected a mapping with 'base' and 'grid', got list"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_invalid_grid_file_is_refused_naming_what_is_wrong(tmp_path, case):
    content, message = BAD_FILES[case]
    path = write(tmp_path / "sweep.yaml", content)
    with pytest.raises(SweepError) as error:
        load_sweep_file(path).configurations()
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_example_sweep_file_is_valid():
    spec = load_sweep_file(Path(__file__).resolve().parents[1] / "examples" / "sweep.yaml")
    configurations = spec.configurations()
    assert len(configurations) == spec.samples == 6
    assert all(c.epochs == 5 for c in configurations.values())


def test_divergence_survives_the_trip_to_and_from_a_worker_process():
    import pickle

    from tfnn.training import NonFiniteLossError

    error = pickle.loads(pickle.dumps(NonFiniteLossError(2, 7, float("inf"))))
    assert (type(error), error.epoch, error.step, error.loss) == (
        NonFiniteLossError,
        2,
        7,
        float("inf"),
    )
    assert str(error).startswith("training loss became inf at epoch 2, step 7")


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(SweepError, match=r"nope.yaml: cannot read the sweep file \(No such file"):
        load_sweep_file(tmp_path / "nope.yaml")
    (tmp_path / "bad.json").write_text('{"grid": ')
    with pytest.raises(SweepError, match=r"bad.json: not valid JSON \(Expecting value"):
        load_sweep_file(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("grid: [relu\n")
    with pytest.raises(SweepError, match=r"bad.yaml: not valid YAML \("):
        load_sweep_file(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vary", "activation", "relu", "swish"], "activation: unknown activation 'swish'"),
        (["--vary", "activation"], "--vary activation: give at least one value"),
        (["--learning-rate", "0"], "learning_rate: Input should be greater than 0 (got '0')"),
        (["--grid", "missing.yaml"], "missing.yaml: cannot read the sweep file"),
    ],
)
def test_cli_refuses_a_bad_sweep_before_anything_runs(mlflow_store, capsys, argv, message):
    from mlflow.tracking import MlflowClient

    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfnn: error: ") and message in err and err.count("\n") == 1
    # nothing was started: no experiment besides MLflow's Default, no run
    assert [e.name for e in MlflowClient().search_experiments()] == ["Default"]


def test_cli_refuses_two_places_to_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--dask-workers", "2", "--dask-address", "tcp://127.0.0.1:8786"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# --- real sweeps ----------------------------------------------------------------------------


def numpy_accuracy(weights_npz: Path, architecture: dict, mnist_dir: Path) -> float:
    """Test accuracy of a saved network computed with NumPy alone, from the IDX files."""
    arrays = load_mnist_idx(mnist_dir)
    x = arrays.test_images.reshape(len(arrays.test_images), -1).astype(np.float64) / 255
    activations = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "softmax": lambda z: z}
    with np.load(weights_npz) as weights:
        for i, layer in enumerate(architecture["layers"]):
            x = activations[layer["activation"]](
                x @ weights[f"layer{i}/weight"] + weights[f"layer{i}/bias"]
            )
    return float(np.mean(x.argmax(axis=1) == arrays.test_labels))


def check_sweep(parent_id: str, mnist_dir: Path, expected: dict[str, dict], tmp_path: Path):
    """Check the parent and child MLflow runs of a finished sweep against ``expected``
    (configuration name -> the params it must have); names containing the diverging rate
    must have failed. Returns the parent run."""
    import pandas as pd
    from matplotlib.image import imread
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    by_name = {run.info.run_name: run for run in children}
    assert set(by_name) == set(expected)
    digest = load_mnist_idx(mnist_dir).digest()
    for name, params in expected.items():
        run = by_name[name]
        assert {k: run.data.params[k] for k in params} == params
        if (
            str(DIVERGING_RATE) in params.get("learning_rate", "")
            and params["activation"] == "relu"
        ):
            assert run.info.status == "FAILED"
            assert run.data.tags["tfnn.error"].startswith(
                "NonFiniteLossError: training loss became nan at epoch 1"
            )
        else:
            assert run.info.status == "FINISHED"
            # each worker loaded the data itself, from the directory the test wrote
            assert run.data.params["data_digest"] == digest
            assert len(client.get_metric_history(run.info.run_id, "test/accuracy")) == int(
                params["epochs"]
            )
            # a child records what a training run records, though its steps are not tasks
            folders = {f.path for f in client.list_artifacts(run.info.run_id)}
            assert {"weights", "plots", "checkpoints"} <= folders

    # Ranked on validation; the test accuracy is only shown.
    accuracy_of = {
        run.info.run_id: run.data.metrics["val/final_accuracy"]
        for run in children
        if run.info.status == "FINISHED"
    }
    failed = [run.info.run_id for run in children if run.info.status == "FAILED"]
    table = json.loads(
        Path(client.download_artifacts(parent_id, "ranking.json", str(tmp_path))).read_text()
    )
    ranking = pd.DataFrame(table["data"], columns=table["columns"])
    count = len(accuracy_of)
    assert list(ranking["status"]) == ["FINISHED"] * count + ["FAILED"] * len(failed)
    assert list(ranking["rank"][:count]) == list(range(1, count + 1))
    assert set(ranking["run_id"][:count]) == set(accuracy_of)
    assert list(ranking["run_id"][count:]) == failed
    # ranking.json keeps 10 digits: a share of 60 validation digits has more.
    assert list(ranking["val_accuracy"][:count]) == pytest.approx(
        sorted(accuracy_of.values(), reverse=True), abs=1e-9
    )
    for row in ranking.itertuples():
        if row.status == "FINISHED":
            assert row.val_accuracy == pytest.approx(accuracy_of[row.run_id], abs=1e-9)
        else:
            assert row.error == by_name[row.configuration].data.tags["tfnn.error"]

    best = client.get_run(ranking["run_id"][0])
    tags = parent.data.tags
    assert tags["tfnn.best.run_id"] == best.info.run_id
    assert tags["tfnn.best.configuration"] == best.info.run_name
    for field in ("activation", "learning_rate", "hidden_sizes", "epochs", "seed"):
        assert tags[f"tfnn.best.{field}"] == best.data.params[field]
    # the best model's accuracy, recomputed with NumPy from its logged weights
    weights_dir = Path(client.download_artifacts(best.info.run_id, "weights", str(tmp_path)))
    architecture = json.loads((weights_dir / "architecture.json").read_text())
    accuracy = numpy_accuracy(weights_dir / "weights.npz", architecture, mnist_dir)
    assert accuracy == pytest.approx(best.data.metrics["test/final_accuracy"], abs=1e-6)
    assert parent.data.metrics["test/best_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    # The description names the winner on validation, with the test score beside it.
    assert tags["mlflow.note.content"].startswith(
        f"**{best.info.run_name}** wins on validation: validation accuracy "
        f"{best.data.metrics['val/final_accuracy']:.4f}, test accuracy {accuracy:.4f}"
    )
    assert parent.info.run_name == f"sweep-of-{len(expected)}"

    plot = Path(client.download_artifacts(parent_id, "plots/comparison.png", str(tmp_path)))
    raw = plot.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", raw[16:24])
    assert imread(plot).shape[:2] == (height, width) and width > height > 100
    return parent


@pytest.mark.slow  # Dask's worker processes
def test_sweep_on_a_two_process_dask_cluster(
    prefect_harness, mlflow_store, small_mnist_dir, tmp_path, capsys
):
    import mlflow
    import tensorflow as tf
    from distributed import Client, LocalCluster
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    grid = {"activation": ["relu", "tanh"], "learning_rate": [0.5, DIVERGING_RATE]}
    path = write(
        tmp_path / "sweep.yaml",
        {
            "base": {"epochs": 2, "hidden_sizes": [16], "data_source": str(small_mnist_dir)},
            "grid": grid,
        },
    )
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as dask,
    ):
        code = main(
            [
                "sweep",
                "--grid",
                str(path),
                "--dask-address",
                cluster.scheduler_address,
                "--register",
                "sweep-best",
            ]
        )
        # the configurations ran in both worker processes, each with one TensorFlow thread and
        # pointed at this test's MLflow store
        threads = dask.run(tf.config.threading.get_intra_op_parallelism_threads)
        inter_op = dask.run(tf.config.threading.get_inter_op_parallelism_threads)
        uris = dask.run(mlflow.get_tracking_uri)
    assert code == 0
    assert list(threads.values()) == [1, 1]
    assert list(inter_op.values()) == [1, 1]
    assert set(uris.values()) == {mlflow_store + "?timeout=60"}

    out = capsys.readouterr().out.splitlines()
    parent_id = out[-1].split("mlflow parent run id: ")[1].split()[0]
    expected = {
        f"activation={a} learning_rate={r}": {
            "activation": a,
            "learning_rate": str(r),
            "hidden_sizes": "16",
            "epochs": "2",
            "data_source": str(small_mnist_dir),
        }
        for a in grid["activation"]
        for r in grid["learning_rate"]
    }
    parent = check_sweep(parent_id, small_mnist_dir, expected, tmp_path)
    assert parent.data.params["activation"] == '["relu", "tanh"]'
    assert parent.data.params["num_configurations"] == "4"
    # Columns: rank, validation and test accuracy (blank when failed), configuration, error.
    assert " ".join(out[-2].split()).endswith(
        "FAILED activation=relu learning_rate=1e+20 NonFiniteLossError: training loss became "
        "nan at epoch 1, step 1: lower the learning rate or check the inputs"
    )
    # Only the best model is registered: the children register nothing themselves.
    [version] = MlflowClient().search_model_versions()
    assert version.name == "sweep-best"
    assert version.run_id == parent.data.tags["tfnn.best.run_id"]
    # It carries its model card, and the model its summary, as a trained version does.
    assert version.description.startswith("# sweep-best version 1\n")
    assert "version 1" in MlflowClient().get_registered_model("sweep-best").description

    with get_client(sync_client=True) as prefect:
        flow_run_id = parent.data.tags["prefect.flow_run_id"]
        [flow_run] = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert flow_run.state.is_completed()
    # Named and tagged as a sweep: its configurations, run as tasks, do not tag it.
    assert flow_run.name == "sweep-of-4"
    assert set(flow_run.tags) == {"model:sweep-best", "trigger:cli"}
    states = sorted(
        r.state.type.value for r in task_runs if r.name.startswith("train_configuration")
    )
    assert states == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"]
    # Each configuration's task runs the training flow's steps as nested task runs: all four
    # trained, the diverging one failed there, so three were evaluated and logged.
    names = Counter(r.name.rsplit("-", 1)[0] for r in task_runs)
    assert (names["train_configuration"], names["train"], names["evaluate"]) == (4, 4, 3)
    assert names["log_trained_model"] == 3
    for once in ("rank_configurations", "plot_comparison", "log_artifact"):
        assert names[once] == 1, once
    assert names["register_model"] == 1  # the sweep's best; its configurations register none


def test_sweep_on_the_default_thread_pool(prefect_harness, mlflow_store, small_mnist_dir, tmp_path):
    spec = SweepSpec(
        base={"epochs": 1, "hidden_sizes": [8], "data_source": str(small_mnist_dir)},
        grid={"activation": ["relu", "tanh"]},
    )
    result = sweep_flow.with_options(task_runner=sweep_task_runner(max_concurrency=2))(spec)
    expected = {f"activation={a}": {"activation": a, "epochs": "1"} for a in ("relu", "tanh")}
    check_sweep(result.parent_run_id, small_mnist_dir, expected, tmp_path)
    assert [row["run_id"] for row in result.ranking] == [
        result.outcomes[row["configuration"]].run_id for row in result.ranking
    ]


def test_a_sweep_whose_configurations_all_fail_fails_after_logging_its_ranking(
    prefect_harness, mlflow_store, small_mnist_dir, tmp_path
):
    from mlflow.tracking import MlflowClient

    from tasks.sweep import SweepFailedError

    spec = SweepSpec(
        base={"epochs": 1, "hidden_sizes": [8], "data_source": str(small_mnist_dir)},
        grid={"learning_rate": [DIVERGING_RATE, DIVERGING_RATE * 10]},
    )
    with pytest.raises(SweepFailedError, match=r"all 2 configurations failed; see ranking\.json"):
        sweep_flow.with_options(task_runner=sweep_task_runner(max_concurrency=1))(spec)
    client = MlflowClient()
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("tfnn-mnist").experiment_id],
        "tags.mlflow.runName = 'sweep-of-2'",
    )
    assert parent.info.status == "FAILED"
    assert "tfnn.best.run_id" not in parent.data.tags
    table = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "ranking.json", str(tmp_path))
        ).read_text()
    )
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [row["status"] for row in rows] == ["FAILED", "FAILED"]
    assert all(row["error"].startswith("NonFiniteLossError") for row in rows)
