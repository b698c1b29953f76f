"""Retrains or first versions that finish together: the alias moves once, compare-and-set,
and the other challenger is kept, saying why; of two first versions, one is crowned."""

import threading

from mlflow.tracking import MlflowClient

from tasks.config import CHAMPION_ALIAS
from tasks.registry import FIRST_CHAMPION, Decision, crown_if_first, record_decision

NAME = "raced"


def registered_versions(client: MlflowClient, experiment: str, count: int) -> list[str]:
    """Versions 1..count of NAME, each from a run of its own; returns the run ids."""
    client.create_registered_model(NAME)
    experiment_id = client.create_experiment(experiment)
    runs = [client.create_run(experiment_id).info.run_id for _ in range(count)]
    for run_id in runs:
        client.create_model_version(NAME, f"runs:/{run_id}/model", run_id=run_id)
    return runs


def test_two_promotions_against_one_champion_move_the_alias_once(prefect_harness, mlflow_store):
    client = MlflowClient()
    runs = registered_versions(client, "race", 3)  # versions 1, 2 and 3; 1 is the champion
    client.set_registered_model_alias(NAME, CHAMPION_ALIAS, "1")
    decisions = [
        Decision(NAME, "promoted", "better", f"key{v}", "1", str(v), challenger_run_id=runs[v - 1])
        for v in (2, 3)
    ]
    start, recorded = threading.Barrier(2), {}

    def promote(decision: Decision) -> None:
        start.wait()
        recorded[decision.challenger_version] = record_decision(decision)

    threads = [threading.Thread(target=promote, args=(d,)) for d in decisions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    actions = sorted((d.action, v) for v, d in recorded.items())
    assert [action for action, _ in actions] == ["kept", "promoted"]
    [(_, kept)] = [(a, v) for a, v in actions if a == "kept"]
    [(_, winner)] = [(a, v) for a, v in actions if a == "promoted"]
    champion = client.get_model_version_by_alias(NAME, CHAMPION_ALIAS)
    assert str(champion.version) == winner
    assert recorded[kept].reason.startswith(f"the champion moved to version {winner} while")
    # Both versions carry the decision that was really made.
    for version, decision in recorded.items():
        assert client.get_model_version(NAME, version).tags["tfnn.decision"] == decision.action


def test_two_first_versions_registered_together_crown_one_champion(prefect_harness, mlflow_store):
    client = MlflowClient()
    runs = registered_versions(client, "first", 2)
    start, crowned = threading.Barrier(2), {}

    def crown(version: str) -> None:
        start.wait()
        crowned[version] = crown_if_first(NAME, version, runs[int(version) - 1])

    threads = [threading.Thread(target=crown, args=(v,)) for v in ("1", "2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    [winner] = [version for version, won in crowned.items() if won]
    assert sorted(crowned.values()) == [False, True]
    assert str(client.get_model_version_by_alias(NAME, CHAMPION_ALIAS).version) == winner
    for version in ("1", "2"):
        tags = client.get_model_version(NAME, version).tags
        assert tags.get("tfnn.decision") == ("promoted" if version == winner else None)
        run_tags = client.get_run(runs[int(version) - 1]).data.tags
        assert run_tags.get("tfnn.decision_reason") == (
            FIRST_CHAMPION if version == winner else None
        )


def test_the_alias_moves_only_onto_a_version_that_carries_its_decision(
    prefect_harness, mlflow_store, monkeypatch
):
    # A reader polling the alias (the serving side, the retrain crash test) must never see a
    # champion without its decision: each move is checked against the real store as it
    # happens, then made.
    client = MlflowClient()
    runs = registered_versions(client, "order", 2)
    moves = []
    move = MlflowClient.set_registered_model_alias

    def checked_move(self, name, alias, version):
        moves.append((version, self.get_model_version(name, version).tags.get("tfnn.decision")))
        move(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", checked_move)
    assert crown_if_first(NAME, "1", runs[0])
    record_decision(
        Decision(NAME, "promoted", "better", "key", "1", "2", challenger_run_id=runs[1])
    )
    assert moves == [("1", "promoted"), ("2", "promoted")]
    assert str(client.get_model_version_by_alias(NAME, CHAMPION_ALIAS).version) == "2"
