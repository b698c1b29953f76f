"""The data watch end to end: a real Prefect server (its event and automation services run
only in a real server) on loopback, a real MLflow store, and ``tfnn schedule`` serving the
deployments in a subprocess. New data starts exactly one retrain through the
``tfnn.data.changed`` trigger; corrupted data is announced as ``tfnn.data.rejected`` and
retrains nothing; files copied one at a time are one change."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from conftest import tfnn_command, tfnn_env, write_mnist_dir
from servers import VENV_BIN, free_port, start, stop, wait_for

from tfnn.idx import write_idx_images, write_idx_labels
from tfnn.mnist import MNIST_FILES, load_mnist_idx

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

MODEL = "tfnn-mnist"
INTERVAL, SETTLE = 2, 5
TRAINING = ["--hidden-sizes", "32", "--epochs", "2", "--validation-fraction", "0.2"]
NEVER = "0 0 1 1 *"  # the crons stay out of the way: only the trigger retrains here
FILES = [f"{name}.gz" for name in MNIST_FILES]


def api(url: str, path: str, body: dict | None = None) -> dict | list:
    """POST ``body`` to the Prefect API's ``path``, or GET it without a body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def data_events(url: str) -> list[dict]:
    """The ``tfnn.data.*`` events the server holds, oldest first."""
    body = {"filter": {"event": {"prefix": ["tfnn.data."]}, "order": "ASC"}, "limit": 50}
    return api(url, "/events/filter", body)["events"]


def retrain_runs(url: str) -> list[dict]:
    """Flow runs of the ``scheduled-retrain`` deployment that left the schedule."""
    body = {
        "deployments": {"name": {"any_": ["scheduled-retrain"]}},
        "sort": "EXPECTED_START_TIME_ASC",
    }
    return [run for run in api(url, "/flow_runs/filter", body) if run["state_type"] != "SCHEDULED"]


def wait_until(condition, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"no {what} within {timeout} s; serve log:\n{log.read_text()[-4000:]}")


def put_files(source: Path, target: Path, pause: float = 0.0) -> float:
    """Replace ``target``'s four IDX files with ``source``'s, each by an atomic rename,
    ``pause`` seconds apart; the time the last one landed."""
    for name in FILES:
        shutil.copy(source / name, target / f".{name}.part")
        os.replace(target / f".{name}.part", target / name)
        time.sleep(pause)
    return time.time()


def variant(source: Path, target: Path, images=None, labels=None) -> Path:
    shutil.copytree(source, target)
    if images is not None:
        write_idx_images(target / FILES[0], images)
    if labels is not None:
        write_idx_labels(target / FILES[1], labels)
    return target


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """A Prefect server, a champion trained on 600 digits in ``data``, and ``tfnn schedule``
    serving train, retrain and watch-data on that directory."""
    root = tmp_path_factory.mktemp("watch")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_log, serve_log = root / "server.log", root / "serve.log"
    server = start(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        server_log,
        PREFECT_HOME=str(root / "server-home"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    served = None
    try:
        wait_for(f"{url}/health", server, server_log, timeout=300)
        env = tfnn_env(
            PREFECT_API_URL=url,
            PREFECT_HOME=str(root / "client-home"),
            MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
            PREFECT_RUNNER_POLL_FREQUENCY="1",
            TFNN_WATCH_INTERVAL=str(INTERVAL),
            TFNN_WATCH_SETTLE=str(SETTLE),
        )
        data = write_mnist_dir(root / "data")
        first = subprocess.run(
            tfnn_command("retrain", "--data-dir", str(data), *TRAINING, "--no-progress"),
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert first.returncode == 0 and "promoted" in first.stdout, first.stderr[-3000:]
        arrays = load_mnist_idx(data)
        relabelled = arrays.train_labels.copy()
        relabelled[relabelled == 3] = 5
        versions = {
            "more": write_mnist_dir(root / "more", train_count=900),
            "inverted": variant(data, root / "inverted", images=255 - arrays.train_images),
            "relabelled": variant(data, root / "relabelled", labels=relabelled),
            "most": write_mnist_dir(root / "most", train_count=1200),
        }
        with open(serve_log, "wb") as log:
            served = subprocess.Popen(
                tfnn_command(
                    "schedule",
                    "-v",  # the watch's INFO lines, which the test reads, on the terminal too
                    "--data-dir",
                    str(data),
                    *TRAINING,
                    "--no-progress",
                    "--train-cron",
                    NEVER,
                    "--retrain-cron",
                    NEVER,
                ),
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # The watch has looked at the champion's own data: announced nothing.
        wait_until(
            lambda: b"the champion was trained on this data" in serve_log.read_bytes(),
            300,
            "first look at the data",
            serve_log,
        )
        assert data_events(url) == [] and retrain_runs(url) == []
        yield url, data, versions, serve_log
    finally:
        if served is not None and served.poll() is None:
            os.killpg(served.pid, signal.SIGTERM)  # the runner and the flow runs it started
            try:
                served.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(served.pid, signal.SIGKILL)
                served.wait()
        stop(server)


def settled_quiet(url, data, serve_log, events_before, runs_before):
    """The events and retrain runs since ``events_before`` and ``runs_before`` once the watch
    has looked twice more and found nothing new (on a loaded machine a watch run can take
    many times its interval to start), and any trigger has had time to fire."""

    def looks():
        return serve_log.read_text(errors="replace").count(f"{data}: unchanged")

    seen = looks()
    wait_until(lambda: looks() >= seen + 2, 300, "two more looks of the watch", serve_log)
    time.sleep(5)
    return data_events(url)[events_before:], retrain_runs(url)[runs_before:]


def test_more_training_examples_start_exactly_one_retrain(watched):
    url, data, versions, serve_log = watched
    changed_at = put_files(versions["more"], data)
    (event,) = wait_until(lambda: data_events(url), 300, "tfnn.data.changed event", serve_log)
    assert event["event"] == "tfnn.data.changed"
    assert event["resource"]["prefect.resource.id"] == f"tfnn.data.{data.resolve()}"
    assert event["payload"]["digest"] == load_mnist_idx(data).digest()
    assert event["payload"]["train_examples"] == 900 and event["payload"]["passed"] is True
    (run,) = wait_until(
        lambda: [r for r in retrain_runs(url) if r["state_type"] in ("COMPLETED", "FAILED")],
        600,
        "finished retrain",
        serve_log,
    )
    assert run["state_type"] == "COMPLETED", serve_log.read_text()[-4000:]
    assert run["parameters"]["data_event_id"] == event["id"]
    assert run["parameters"]["data_digest"] == event["payload"]["digest"]
    announced = datetime.fromisoformat(event["occurred"]).timestamp()
    started = datetime.fromisoformat(run["start_time"]).timestamp()
    print(
        f"\ndata change -> event {announced - changed_at:.1f} s -> retrain start "
        f"{started - announced:.1f} s (watch interval {INTERVAL} s, settle {SETTLE} s)"
    )
    events, runs = settled_quiet(url, data, serve_log, 1, 1)
    assert (events, runs) == ([], [])
    # The registry holds the decision, and the challenger's run names the event.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{data.parent / 'mlflow.db'}")
    version = client.get_model_version(MODEL, "2")
    assert version.tags["tfnn.decision"] in ("promoted", "kept")
    assert version.tags["tfnn.compared_with_version"] == "1"
    tags = client.get_run(version.run_id).data.tags
    assert tags["tfnn.data_event"] == event["id"]
    assert tags["tfnn.data_event_digest"] == event["payload"]["digest"]
    # Both flow runs say what started them, and the challenger's its activation.
    assert {"trigger:data-event", f"model:{MODEL}"} <= set(run["tags"])
    challenger = api(url, f"/flow_runs/{tags['prefect.flow_run_id']}")
    assert challenger["name"] == "challenger" == client.get_run(version.run_id).info.run_name
    assert {"trigger:data-event", "activation:relu"} <= set(challenger["tags"])


def test_corrupted_data_is_rejected_and_retrains_nothing(watched):
    url, data, versions, serve_log = watched
    events_before, runs_before = len(data_events(url)), len(retrain_runs(url))
    # One corruption after the other, then one quiet spell for both (it takes minutes).
    for name, reason in [
        ("inverted", "train pixel mean moved"),
        ("relabelled", "class 3 vanished"),
    ]:
        seen = len(data_events(url))
        put_files(versions[name], data)
        new = wait_until(
            lambda seen=seen: data_events(url)[seen:], 300, "tfnn.data.rejected event", serve_log
        )
        (event,) = new
        assert event["event"] == "tfnn.data.rejected"
        assert any(reason in r for r in event["payload"]["reasons"]), event["payload"]
    events, runs = settled_quiet(url, data, serve_log, events_before + 2, runs_before)
    assert (events, runs) == ([], [])


def test_files_copied_one_at_a_time_start_one_retrain(watched):
    url, data, versions, serve_log = watched
    events_before, runs_before = len(data_events(url)), len(retrain_runs(url))
    put_files(versions["most"], data, pause=1.5)  # each gap shorter than the settle time
    wait_until(
        lambda: [r for r in retrain_runs(url)[runs_before:] if r["state_type"] == "COMPLETED"],
        600,
        "finished retrain",
        serve_log,
    )
    events, runs = settled_quiet(url, data, serve_log, events_before, runs_before)
    assert [e["event"] for e in events] == ["tfnn.data.changed"]
    assert events[0]["payload"]["train_examples"] == 1200
    assert len(runs) == 1 and runs[0]["parameters"]["data_event_id"] == events[0]["id"]
    assert events[0]["payload"]["test_examples"] == 200
