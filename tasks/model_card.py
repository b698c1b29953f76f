"""Model cards (what a run trained, on what, how well, how decided) for MLflow's registry and run
views, built from the run's record alone so a card can be rewritten once a retrain decides."""

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from prefect import task

from tasks.config import CHAMPION_ALIAS, CLASS_ACCURACY_PREFIX
from tasks.registry import DECISION_REASON_TAG, DECISION_TAG
from tasks.runs import champion_version, mlflow_run_url
from tasks.tracking import FLOW_RUN_NAME_TAG, FLOW_RUN_URL_TAG


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
        f"validation accuracy {_score(metrics, 'val/final_accuracy')} and test accuracy "
        f"{_score(metrics, 'test/final_accuracy')}; {_decision(run)}.{_flow_run_link(run)}"
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
| validation | {_score(metrics, "val/final_accuracy")} | {_score(metrics, "val/final_loss")} |
| test | {_score(metrics, "test/final_accuracy")} | {_score(metrics, "test/final_loss")} |

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
            f"{_score(metrics, 'val/final_accuracy')}, test accuracy "
            f"{_score(metrics, 'test/final_accuracy')}."
        )
    return (
        f"# {model_name}\n\n"
        "A dense network, written with TensorFlow alone (no Keras) and trained by SGD, that "
        "classifies 28x28 MNIST digits: it takes 784 pixel values in [0, 1] and returns the "
        f"10 class probabilities.\n\n{now}\n\n{CHAMPION_RULE}\n\n"
        "Each version's description is its model card: what was trained, on which data, how "
        "well, and how it was decided.\n"
    )
