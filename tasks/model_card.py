"""Model cards: what a run trained, on what, how well and how it was decided, as markdown
for a registered model and its versions, and as one paragraph for the run itself, so that
MLflow's registry and run views explain a model on their own. Built from the run's MLflow
record alone, so a card can be written again once a retrain decides."""

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from prefect import task

from tasks.runs import mlflow_run_url
from tasks.tracking import FLOW_RUN_NAME_TAG, FLOW_RUN_URL_TAG


@task
def publish_model_card(
    run_id: str, model_name: str | None = None, version: str | None = None
) -> str | None:
    """Describe run ``run_id`` (``mlflow.note.content``) and, when its model was registered
    as ``version`` of ``model_name``, write the model card on that version and on the
    registered model (which shows its newest card). Returns the card (None when nothing was
    registered)."""
    client = MlflowClient()
    run = client.get_run(run_id)
    client.set_tag(run_id, MLFLOW_RUN_NOTE, run_description(run))
    if not (model_name and version):
        return None
    plots = [a.path for a in client.list_artifacts(run_id, "plots")]
    url = mlflow_run_url(mlflow.get_tracking_uri(), run.info.experiment_id, run_id)
    card = model_card(run, model_name, version, url, plots)
    client.update_model_version(model_name, version, description=card)
    client.update_registered_model(model_name, description=card)
    return card


DECISION_TAG = "tfnn.decision"
DECISION_REASON_TAG = "tfnn.decision_reason"
CONFIG_PARAMS = (
    "hidden_sizes",
    "activation",
    "output_activation",
    "loss",
    "initializer",
    "learning_rate",
    "batch_size",
    "epochs",
    "seed",
    "validation_fraction",
    "early_stopping_patience",
    "restore_best",
)
CLASS_ACCURACY_PREFIX = "test_accuracy_class_"


def _score(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"


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
        f"validation accuracy {_score(metrics, 'final_val_accuracy')} and test accuracy "
        f"{_score(metrics, 'final_test_accuracy')}; {_decision(run)}.{_flow_run_link(run)}"
    )


def _flow_run_link(run: Run) -> str:
    """`` Trained by Prefect flow run [name](page).``, when Prefect has a UI to link to."""
    tags = run.data.tags
    if FLOW_RUN_URL_TAG not in tags:
        return ""
    name = tags.get(FLOW_RUN_NAME_TAG, "page")
    return f" Trained by Prefect flow run [{name}]({tags[FLOW_RUN_URL_TAG]})."


def model_card(
    run: Run, model_name: str, version: str, run_url: str | None, plots: list[str]
) -> str:
    """The markdown description of version ``version`` of ``model_name``, trained by ``run``;
    ``run_url`` is the MLflow UI's page of the run (None for a local store), ``plots`` the
    run's plot artifact paths."""
    params, metrics = run.data.params, run.data.metrics
    run_id = run.info.run_id
    config = "\n".join(f"| {name} | `{params[name]}` |" for name in CONFIG_PARAMS if name in params)
    classes = sorted(
        (int(name.removeprefix(CLASS_ACCURACY_PREFIX)), value)
        for name, value in metrics.items()
        if name.startswith(CLASS_ACCURACY_PREFIX)
    )
    per_class = " | ".join(f"{value:.4f}" for _, value in classes)
    run_link = f"[{run_id}]({run_url})" if run_url else f"`{run_id}`"
    plot_links = "\n".join(f"- `runs:/{run_id}/{path}`" for path in plots) or "- none"
    return f"""# {model_name} version {version}

## What was trained

A dense network {architecture(run)}, {params.get("num_parameters", "?")} parameters.

| setting | value |
|---|---|
{config}

## On what

Data `{params.get("data_source", "?")}`, digest `{params.get("data_digest", "?")}`:
{params.get("num_train_examples", "?")} training, {params.get("num_validation_examples", "?")}
validation and {params.get("num_test_examples", "?")} test examples (validation:
{params.get("validation_rule", "?")}).

## How well

| split | accuracy | loss |
|---|---|---|
| validation | {_score(metrics, "final_val_accuracy")} | {_score(metrics, "final_val_loss")} |
| test | {_score(metrics, "final_test_accuracy")} | {_score(metrics, "final_test_loss")} |

Per-class test accuracy:

| {" | ".join(str(k) for k, _ in classes)} |
|{"---|" * len(classes)}
| {per_class} |

## How it was decided

{_decision(run).capitalize()}. Decisions use validation accuracy only; test scores are for
information.

## Links

MLflow run {run_link}; model `models:/{model_name}/{version}`; plots:
{plot_links}
"""
