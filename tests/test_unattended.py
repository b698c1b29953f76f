"""The command left alone: commands started together share one store, signals end it (and
everything it started) within seconds, and silent or unwritable services are refused."""

import ctypes
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import refusal, run_tfnn, tfnn_command, tfnn_env
from mlflow.tracking import MlflowClient

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

SMALL_RUN = ("--epochs", "1", "--hidden-sizes", "4", "--no-progress", "--no-register")


def train_small(data_dir: Path, **run: Any) -> subprocess.CompletedProcess:
    """``tfnn train`` of one tiny epoch on ``data_dir``; ``run``: ``run_tfnn``'s keywords."""
    return run_tfnn("train", "--data-dir", str(data_dir), *SMALL_RUN, **run)


def processes_with(marker: str) -> list[str]:
    """Live processes whose environment holds ``marker`` (a test's private PREFECT_HOME
    setting, inherited by everything a command starts): ``pid cmdline`` each."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z" and marker.encode() in environ:
            found.append(f"{entry.name} {cmdline[:120]}")
    return found


def wait_until_gone(marker: str, seconds: float = 10) -> list[str]:
    """The processes still holding ``marker`` after up to ``seconds`` (the kernel delivers a
    parent-death signal at once, but the process table may lag a little)."""
    deadline = time.monotonic() + seconds
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_all(marker: str) -> None:
    for line in processes_with(marker):
        os.kill(int(line.split()[0]), signal.SIGKILL)


def flow_run_states(prefect_home: Path) -> list[str]:
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return [state for (state,) in db.execute("select state_type from flow_run")]


def test_commands_started_together_in_an_empty_directory_share_one_store(small_mnist_dir, tmp_path):
    # Four first uses at once of one directory's MLflow store and one Prefect home (a
    # scheduled train and retrain starting together): each creates or migrates the SQLite
    # files only under a lock, so all four runs finish and the stores stay usable.
    work, home = tmp_path / "work", tmp_path / "prefect-home"
    work.mkdir()
    env = tfnn_env(PREFECT_HOME=str(home))
    env.pop("MLFLOW_TRACKING_URI", None)
    command = tfnn_command("train", "--data-dir", str(small_mnist_dir), *SMALL_RUN)
    processes = [
        subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    try:
        results = [(p.wait(timeout=900), p.stderr.read().decode()) for p in processes]
    finally:
        kill_all(f"PREFECT_HOME={home}")
    for code, err in results:
        assert code == 0, err[-3000:]
        assert "Traceback" not in err
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tfnn-mnist").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 4
    assert flow_run_states(home) == ["COMPLETED"] * 4


def test_a_broken_store_is_refused_naming_its_file(tmp_path, monkeypatch):
    from cli import preflight

    database = tmp_path / "mlflow.db"
    database.write_bytes(b"half a migration " * 100)  # not an SQLite file at all
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    with pytest.raises(preflight.InputError) as refusal:
        preflight.check_tracking()
    assert str(refusal.value).startswith(f"MLflow store {database} cannot be opened (")
    assert "move it aside or set MLFLOW_TRACKING_URI" in str(refusal.value)


def test_a_broken_prefect_database_is_refused_naming_it(small_mnist_dir, tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "prefect.db").write_bytes(b"half a migration " * 100)
    try:
        result = train_small(small_mnist_dir, cwd=tmp_path, env=tfnn_env(PREFECT_HOME=str(home)))
    finally:
        kill_all(f"PREFECT_HOME={home}")
    line = refusal(result)
    assert re.fullmatch(
        r"tfnn: error: Prefect's temporary server did not start \(.*file is not a "
        rf"database.*\); its home is {home}: move its database aside, or set PREFECT_HOME to "
        "another directory or PREFECT_API_URL to a running server",
        line,
    )


def start_long_run(data_dir: Path, work: Path, home: Path) -> subprocess.Popen:
    """``tfnn train --epochs 1000`` as the leader of its own process group (like a terminal's
    foreground job); returns once its first checkpoint is written."""
    env = tfnn_env(PREFECT_HOME=str(home))
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        tfnn_command("train", "--data-dir", str(data_dir), *SMALL_RUN, "--epochs", "1000"),
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not list(work.glob("outputs/*/checkpoints/checkpoint")):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.2)
    return process


@pytest.mark.parametrize(
    ("signum", "to_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "term"]
)
def test_a_signal_kills_the_run_keeps_its_checkpoint_and_leaves_no_process(
    small_mnist_dir, tmp_path, signum, to_group
):
    work, home = tmp_path / "work", tmp_path / "prefect-home"
    work.mkdir()
    marker = f"PREFECT_HOME={home}"
    process = start_long_run(small_mnist_dir, work, home)
    try:
        # Ctrl-C on a terminal signals the whole foreground process group.
        (os.killpg if to_group else os.kill)(process.pid, signum)
        _, err = process.communicate(timeout=60)
        left = wait_until_gone(marker)
    finally:
        kill_all(marker)
    err = err.decode()
    assert process.returncode == 128 + signum, err[-3000:]
    assert left == []
    assert "Traceback" not in err and "Connection refused" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("tfnn:")]
    assert line == err.splitlines()[-1]
    (run_dir,) = (work / "outputs").iterdir()
    run_id = run_dir.name
    assert line == (
        f"tfnn: interrupted by {signal.Signals(signum).name}: MLflow run {run_id} KILLED, "
        f"continue it with tfnn train --resume {run_id}"
    )
    run = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "KILLED"
    assert (run_dir / "checkpoints" / "checkpoint").is_file()
    assert flow_run_states(home) in (["CRASHED"], ["CANCELLED"])


def test_sigkill_leaves_no_process_and_a_resumable_run(small_mnist_dir, tmp_path):
    work, home = tmp_path / "work", tmp_path / "prefect-home"
    work.mkdir()
    marker = f"PREFECT_HOME={home}"
    process = start_long_run(small_mnist_dir, work, home)
    try:
        # The command cannot clean up after SIGKILL: the kernel ends its server.
        assert processes_with(marker) != []
        process.kill()
        process.communicate(timeout=60)
        left = wait_until_gone(marker)
    finally:
        kill_all(marker)
    assert process.returncode == -signal.SIGKILL
    assert left == []
    (run_dir,) = (work / "outputs").iterdir()
    assert (run_dir / "checkpoints" / "checkpoint").is_file()
    run = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_run(run_dir.name)
    assert run.info.status == "RUNNING"  # to be continued with --resume


class SilentServer:
    """A loopback socket that accepts connections and never answers."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.socket.accept()[0])
            except OSError:  # closed
                return

    def close(self) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()


@pytest.mark.parametrize(
    ("variable", "url", "service"),
    [
        ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}", "MLflow tracking at"),
        ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", "Prefect API at"),
    ],
    ids=["tracking", "prefect"],
)
def test_a_server_that_never_answers_is_refused_in_seconds(
    small_mnist_dir, tmp_path, variable, url, service
):
    silent = SilentServer()
    url = url.format(port=silent.port)
    try:
        result = train_small(
            small_mnist_dir,
            cwd=tmp_path,
            env=tfnn_env(**{variable: url}),
            timeout=120,  # MLflow's and Prefect's own timeouts are 120 s and 60 s with retries
        )
    finally:
        silent.close()
    assert silent.connections  # it was asked, and kept silent
    line = refusal(result)
    assert line.startswith(f"tfnn: error: {service} {url} is unreachable or did not answer")


def without_root_override() -> None:
    """Drop the capabilities that let root write anywhere (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH, CAP_FOWNER) from the bounding set, so the command about to be
    executed obeys file modes like any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "cannot drop a capability")


def test_a_read_only_working_directory_is_refused_at_once(small_mnist_dir, tmp_path):
    work, home = tmp_path / "work", tmp_path / "prefect-home"
    work.mkdir(mode=0o555)
    env = tfnn_env(PREFECT_HOME=str(home))
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: sqlite:///mlflow.db
    try:
        result = subprocess.run(
            tfnn_command(
                "train",
                "--data-dir",
                str(small_mnist_dir),
                *SMALL_RUN,
                "--output-dir",
                str(tmp_path),
            ),
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=without_root_override if os.getuid() == 0 else None,
        )
    finally:
        kill_all(f"PREFECT_HOME={home}")
        work.chmod(0o755)
    line = refusal(result)
    assert re.fullmatch(
        rf"tfnn: error: {work}/mlflow\.db: the MLflow store needs a writable directory "
        r"\(Permission denied\); run from a writable directory or set MLFLOW_TRACKING_URI",
        line,
    )
    assert list(work.iterdir()) == []


CREATE_STORE = "from cli import preflight; preflight.check_tracking()"


@pytest.mark.parametrize("after", [0.05, 0.4, 1.0])
def test_a_store_killed_while_it_is_created_is_whole_or_absent(tmp_path, after):
    database = tmp_path / "mlflow.db"
    env = tfnn_env(MLFLOW_TRACKING_URI=f"sqlite:///{database}")
    process = subprocess.Popen([sys.executable, "-c", CREATE_STORE], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 120
        # The file SQLite creates (or, with the fix, the one migrated beside it).
        while not list(tmp_path.glob("mlflow.db.creating")) + list(tmp_path.glob("mlflow.db")):
            assert process.poll() is None, "the command ended before the store was made"
            assert time.monotonic() < deadline, "the store's creation never started"
            time.sleep(0.005)
        time.sleep(after)
    finally:
        process.kill()
        process.wait()
    # Either no store or a whole one: the next command opens it (or creates it) and runs.
    if database.exists():
        client = MlflowClient(f"sqlite:///{database}")
        assert client.search_experiments() and client.search_registered_models() == []
    again = subprocess.run([sys.executable, "-c", CREATE_STORE], cwd=tmp_path, env=env)
    assert again.returncode == 0
    assert MlflowClient(f"sqlite:///{database}").create_experiment("after") is not None


def test_a_store_that_runs_out_of_disk_while_it_is_created_leaves_none(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)])
    if mounted.returncode != 0:
        pytest.skip("mounting a 512 KB tmpfs needs root")
    try:
        env = tfnn_env(MLFLOW_TRACKING_URI=f"sqlite:///{small / 'mlflow.db'}")
        result = subprocess.run(
            [sys.executable, "-c", CREATE_STORE], env=env, capture_output=True, text=True
        )
        assert result.returncode != 0
        assert f"InputError: MLflow store {small / 'mlflow.db'} cannot be opened" in result.stderr
        assert sorted(p.name for p in small.iterdir()) == ["mlflow.db.lock"]
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=True)
