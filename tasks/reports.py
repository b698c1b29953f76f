"""What a run's two UIs say of it. In MLflow: model cards (what a run trained, on what, how
well, how decided) for the registry and run views, built from the run's record alone so a
card can be rewritten once a retrain decides. In Prefect: artifacts that summarise a run or a
retrain's decision and point at its MLflow record."""

from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from tasks.config import CHAMPION_ALIAS, CLASS_ACCURACY_PREFIX, TrainConfig
from tasks.evaluate import Evaluation
from tasks.registry import DECISION_REASON_TAG, DECISION_TAG, Decision
from tasks.runs import champion_version, mlflow_run_url
from tasks.tracking import FLOW_RUN_NAME_TAG, FLOW_RUN_URL_TAG
from tfnn.training import History


@task
def publish_model_card(
    run_id: str, model_name: str | None = None, version: str | None = None
) -> str | None:
    """Describe run ``run_id`` and, if registered as ``version`` of ``model_name``, write the card
    on the version and a summary on the model; returns the card (None: not registered)."""
    client = MlflowClient()
    run = client.get_run(run_id)
    client.set_tag(run_id, MLFLOW_RUN_NOTE, run_description(run))
    if not (model_name and version):
        return None
    plots = [a.path for a in client.list_artifacts(run_id, "plots")]
    card = model_card(run, model_name, version, mlflow.get_tracking_uri(), plots)
    client.update_model_version(model_name, version, description=card)
    champion = champion_version(client, model_name)
    champion_run = client.get_run(champion.run_id) if champion else None
    client.update_registered_model(
        model_name, description=model_summary(model_name, champion, champion_run)
    )
    return card


# The card's settings table: the configuration, less the data (its own section).
CONFIG_PARAMS = tuple(name for name in TrainConfig.model_fields if name != "data_source")


def score(value: float | None) -> str:
    """A score as the reports show it: four decimals, ``-`` when there is none."""
    return "-" if value is None else f"{value:.4f}"


def _decision(run: Run) -> str:
    tags = run.data.tags
    if DECISION_TAG not in tags:
        return "registered beside the champion: no champion decision"
    return f"champion decision **{tags[DECISION_TAG]}**: {tags.get(DECISION_REASON_TAG, '')}"


def architecture(run: Run) -> str:
    """``784 -> 100 -> 50 -> 10 (relu, softmax output)`` from the run's params."""
    params = run.data.params
    hidden = [size for size in params.get("hidden_sizes", "").split(",") if size]
    sizes = " -> ".join(["784", *hidden, "10"])
    activations = f"{params.get('activation', '?')}, {params.get('output_activation', '?')} output"
    return f"{sizes} ({activations})"


def run_description(run: Run) -> str:
    """One paragraph for the run's ``mlflow.note.content``: network, data, scores, outcome."""
    params, metrics = run.data.params, run.data.metrics
    return (
        f"A dense network {architecture(run)} with {params.get('num_parameters', '?')} "
        f"parameters, trained with SGD (learning rate {params.get('learning_rate', '?')}, "
        f"batch {params.get('batch_size', '?')}, {params.get('epochs', '?')} epochs) on "
        f"`{params.get('data_source', '?')}` (digest `{params.get('data_digest', '?')}`: "
        f"{params.get('num_train_examples', '?')} training, "
        f"{params.get('num_validation_examples', '?')} validation and "
        f"{params.get('num_test_examples', '?')} test examples). Its kept weights score "
        f"validation accuracy {score(metrics.get('val/final_accuracy'))} and test accuracy "
        f"{score(metrics.get('test/final_accuracy'))}; {_decision(run)}.{_flow_run_link(run)}"
    )


def _flow_run_link(run: Run) -> str:
    tags = run.data.tags
    if FLOW_RUN_URL_TAG not in tags:
        return ""
    name = tags.get(FLOW_RUN_NAME_TAG, "page")
    return f" Trained by Prefect flow run [{name}]({tags[FLOW_RUN_URL_TAG]})."


def model_card(run: Run, model_name: str, version: str, tracking_uri: str, plots: list[str]) -> str:
    """The markdown card of ``version`` of ``model_name``, linking the MLflow UI when
    ``tracking_uri`` is a server. A paragraph is one line, as the UI wraps it."""
    params, metrics = run.data.params, run.data.metrics
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    config = "\n".join(f"| {name} | `{params[name]}` |" for name in CONFIG_PARAMS if name in params)
    classes = sorted(
        (int(name.removeprefix(CLASS_ACCURACY_PREFIX)), value)
        for name, value in metrics.items()
        if name.startswith(CLASS_ACCURACY_PREFIX)
    )
    per_class = " | ".join(f"{value:.4f}" for _, value in classes)
    run_url = mlflow_run_url(tracking_uri, experiment_id, run_id)
    run_link = f"[{run_id}]({run_url})" if run_url else f"`{run_id}`"
    plot_links = "\n".join(
        # The UI's route to one artifact in the run's Artifacts tab.
        f"- [{path}]({run_url}/artifactPath/{path})" if run_url else f"- `runs:/{run_id}/{path}`"
        for path in plots
    )
    return f"""# {model_name} version {version}

## What was trained

A dense network {architecture(run)}, {params.get("num_parameters", "?")} parameters.

| setting | value |
|---|---|
{config}

## On what

Data `{params.get("data_source", "?")}`, digest `{params.get("data_digest", "?")}`: \
{params.get("num_train_examples", "?")} training, {params.get("num_validation_examples", "?")} \
validation and {params.get("num_test_examples", "?")} test examples (validation: \
{params.get("validation_rule", "?")}).

## How well

| split | accuracy | loss |
|---|---|---|
| validation | {score(metrics.get("val/final_accuracy"))} | {score(metrics.get("val/final_loss"))} |
| test | {score(metrics.get("test/final_accuracy"))} | {score(metrics.get("test/final_loss"))} |

Per-class test accuracy:

| {" | ".join(str(k) for k, _ in classes)} |
|{"---|" * len(classes)}
| {per_class} |

## How it was decided

{_decision(run).capitalize()}. {CHAMPION_RULE}

## Links

MLflow run {run_link}; model `models:/{model_name}/{version}`; plots:

{plot_links or "- none"}
"""


CHAMPION_RULE = (
    "A model's first registered version becomes its champion; after that only a retrain "
    "moves the alias, when its challenger's validation accuracy beats the champion's by the "
    "margin on the same validation examples. Test scores are for information, never chosen on."
)


def model_summary(model_name: str, champion: ModelVersion | None, run: Run | None) -> str:
    """The registered model's description: what it is, its champion and how one is chosen."""
    if champion is None or run is None:
        now = "No version is champion yet."
    else:
        metrics = run.data.metrics
        now = (
            f"The champion, `models:/{model_name}@{CHAMPION_ALIAS}`, is version "
            f"{champion.version}: {architecture(run)}, validation accuracy "
            f"{score(metrics.get('val/final_accuracy'))}, test accuracy "
            f"{score(metrics.get('test/final_accuracy'))}."
        )
    return (
        f"# {model_name}\n\n"
        "A dense network, written with TensorFlow alone (no Keras) and trained by SGD, that "
        "classifies 28x28 MNIST digits: it takes 784 pixel values in [0, 1] and returns the "
        f"10 class probabilities.\n\n{now}\n\n{CHAMPION_RULE}\n\n"
        "Each version's description is its model card: what was trained, on which data, how "
        "well, and how it was decided.\n"
    )


@task(cache_policy=NONE)
def publish_summary(run_id: str, model_uri: str, history: History, evaluation: Evaluation) -> None:
    """A markdown artifact of the final metrics and MLflow run, and a table of epoch metrics."""
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in evaluation.metrics().items())
    create_markdown_artifact(
        key="training-summary",
        description="Final metrics of the training run and where MLflow keeps it",
        markdown=(
            f"# Training run `{run_id}`\n\n"
            f"MLflow run id: `{run_id}`  \nModel: `{model_uri}`\n\n"
            f"| metric | value |\n|---|---|\n{rows}\n"
        ),
    )
    # Rounded as the UI shows them: a float's 17 digits overflow the page.
    rounded = (
        {"epoch": epoch, **{k: round(v, 4) for k, v in history.epoch_metrics(epoch).items()}}
        for epoch in range(1, history.epochs + 1)
    )
    create_table_artifact(
        key="epoch-metrics", description="Metrics after each epoch", table=[*rounded]
    )


@task
def publish_decision(decision: Decision, cause: str | None = None) -> None:
    """A markdown artifact of the retrain's decision, scores, reason and ``cause`` (if any)."""

    create_markdown_artifact(
        key="retrain-decision",
        description=f"Retrain decision for {decision.model_name}: {decision.action}",
        markdown=(
            f"# Retrain of `{decision.model_name}`: {decision.action}\n\n"
            f"{decision.reason}\n\n"
            f"{f'Started by {cause}' if cause else ''}\n\n"
            "| | version | validation accuracy (decides) | test accuracy |\n|---|---|---|---|\n"
            f"| champion before | {decision.champion_version or '-'} | "
            f"{score(decision.champion_val_accuracy)} | "
            f"{score(decision.champion_test_accuracy)} |\n"
            f"| challenger | {decision.challenger_version or '-'} | "
            f"{score(decision.challenger_val_accuracy)} | "
            f"{score(decision.challenger_test_accuracy)} |\n\n"
            f"Challenger MLflow run id: `{decision.challenger_run_id or '-'}`\n"
        ),
    )


def ranking_note(ranking: list[dict[str, Any]]) -> str:
    """The parent run's description: which configuration won on validation, with its test
    score, and the ranking as a table."""
    best = ranking[0]
    rows = "\n".join(
        f"| {row['rank'] or '-'} | {row['configuration']} | {score(row['val_accuracy'])} "
        f"| {score(row['test_accuracy'])} | {row['status']} |"
        for row in ranking
    )
    return (
        f"**{best['configuration']}** wins on validation: validation accuracy "
        f"{score(best['val_accuracy'])}, test accuracy {score(best['test_accuracy'])} (run "
        f"`{best['run_id']}`). {len(ranking)} configurations, ranked on validation accuracy "
        "only; the test accuracy is reported, never chosen on.\n\n"
        "| rank | configuration | validation accuracy | test accuracy | status |\n"
        f"|---|---|---|---|---|\n{rows}\n"
    )
