"""The typed description of a run: what it learns (``TrainConfig``) and where and how it
is recorded (``RunOptions``).

The CLI flags, the Prefect flow parameters, the deployments and the MLflow params are all
derived from these two; nothing re-lists their fields or defaults by hand. Also the error
that means "bad input, nothing started" and how any error is told in one line. Nothing here
imports TensorFlow, MLflow or Prefect: the command's parser and refusals are built on it.
"""

import math
import os
from contextlib import suppress
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# The names only: validating a configuration must not import TensorFlow.
from tfnn.names import (
    ACTIVATION_NAMES,
    INITIALIZER_NAMES,
    LOSS_NAMES,
    MAX_LAYERS,
    MAX_PARAMETERS,
    MAX_UNITS,
    check_name,
    parameter_count,
)

DATA_DIR_ENV = "TFNN_DATA_DIR"
MNIST_PIXELS, MNIST_CLASSES = 28 * 28, 10
# The defaults of the other commands' own flags, shared with their flows.
MAX_EXPERIMENT_NAME_LENGTH = 500  # MLflow's, refused by it only once a run is starting
COMPARED_ACTIVATIONS = ("relu", "tanh")  # the notebook's second experiment
PREDICTIONS_FILE = "predictions.csv"
CHAMPION_ALIAS = "champion"  # the registered version that serving, retrain and checks use
# Each class's test accuracy, as an MLflow metric in a chart section of its own: test/class/3.
CLASS_ACCURACY_PREFIX = "test/class/"


def default_data_source() -> str:
    """``$TFNN_DATA_DIR`` when set (a directory of IDX files), else tensorflow-datasets."""
    return os.environ.get(DATA_DIR_ENV) or "tfds:mnist"


def check_utf8(path: str) -> None:
    """``ValueError`` if ``path`` holds bytes that are not UTF-8 (Python keeps them as
    surrogates): Prefect parameters and MLflow params are JSON, which cannot carry them."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{path!r} is not valid UTF-8; rename it or use a link with a UTF-8 name"
        ) from None


def _one_of(known: tuple[str, ...], kind: str):
    return lambda value: check_name(value, known, kind)


class TrainConfig(BaseModel):
    """A training run; the defaults are the notebook's MNIST run with He initialisation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_sizes: tuple[Annotated[int, Field(ge=1, le=MAX_UNITS)], ...] = Field(
        (100, 50),
        max_length=MAX_LAYERS - 1,
        description="units of each hidden layer, input side first",
    )
    activation: str = Field("relu", description="hidden-layer activation")
    output_activation: str = Field("softmax", description="output-layer activation")
    loss: str = Field("cross_entropy_error", description="loss function")
    initializer: str = Field("he_normal", description="weight initialiser")
    learning_rate: float = Field(0.1, gt=0, description="SGD learning rate")
    batch_size: int = Field(32, ge=1, description="examples per SGD step")
    epochs: int = Field(5, ge=1, description="passes over the training set")
    # TensorFlow's stateless random ops take the seed as an int64.
    seed: int = Field(42, ge=-(2**63), lt=2**63, description="seed for weights and shuffling")
    validation_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of the training split held out for validation, its last examples "
        "(0: train on all, as the notebook)",
    )
    early_stopping_patience: int = Field(
        0, ge=0, description="stop after this many epochs without a lower val_loss (0: off)"
    )
    restore_best: bool | None = Field(
        None,
        description="keep the weights of the epoch of lowest val_loss "
        "(default: on when there is a validation split)",
    )
    data_source: str = Field(
        default_factory=default_data_source,
        description="'tfds:mnist', 'tfds:fashion_mnist' or a directory of IDX files",
    )

    _check_activation = field_validator("activation", "output_activation")(
        _one_of(ACTIVATION_NAMES, "activation")
    )
    _check_loss = field_validator("loss")(_one_of(LOSS_NAMES, "loss"))
    _check_initializer = field_validator("initializer")(_one_of(INITIALIZER_NAMES, "initializer"))

    @field_validator("hidden_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: Any) -> Any:
        # "100,50" from a command line or an environment; "" or "16,,16" is a typo, not a
        # network with fewer layers.
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            if not all(parts):
                raise ValueError("expected units per layer separated by commas, like 100,50")
            return tuple(parts)
        return value

    @field_validator("activation", "output_activation")
    @classmethod
    def _differentiable(cls, value: str) -> str:
        if value == "step":
            raise ValueError(
                "the step function has no gradient, so SGD cannot train through it (it stays "
                "in tfnn.activations for the notebook); use relu, sigmoid or tanh"
            )
        return value

    @field_validator("data_source")
    @classmethod
    def _utf8(cls, value: str) -> str:
        check_utf8(value)
        return value

    @field_validator("learning_rate")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_restore_best(cls, values: Any) -> Any:
        # Resolved here, so params and resumed runs always hold True or False.
        if isinstance(values, dict) and values.get("restore_best") in (None, ""):
            fraction = values.get("validation_fraction", 0.1)
            # A bad fraction is left for the field's own validation to name.
            with suppress(TypeError, ValueError):
                values = {**values, "restore_best": float(fraction) > 0}
        return values

    @model_validator(mode="after")
    def _fits_the_limit(self) -> "TrainConfig":
        # Checked on MNIST's 784 pixels and 10 classes (every source's), before anything
        # starts: a network too big for the machine would be killed mid-run, leaving its
        # MLflow run RUNNING.
        sizes = self.layer_sizes(MNIST_PIXELS, MNIST_CLASSES)
        parameters = parameter_count(sizes)
        if parameters > MAX_PARAMETERS:
            raise ValueError(
                f"hidden_sizes: {','.join(map(str, self.hidden_sizes))} makes a network of "
                f"{parameters:,} parameters on MNIST, more than the {MAX_PARAMETERS:,} allowed; "
                "use fewer or smaller hidden layers"
            )
        return self

    @model_validator(mode="after")
    def _validation_needed(self) -> "TrainConfig":
        if self.validation_fraction == 0:
            for name in ("early_stopping_patience", "restore_best"):
                if getattr(self, name):
                    raise ValueError(
                        f"{name} decides on the validation set: set validation_fraction > 0"
                    )
        return self

    def layer_sizes(self, input_dim: int, num_classes: int) -> list[int]:
        """``[input_dim, *hidden_sizes, num_classes]``."""
        return [input_dim, *self.hidden_sizes, num_classes]

    def label(self) -> str:
        """A short name for runs of this configuration: ``relu-100x50-lr0.1``."""
        sizes = "x".join(map(str, self.hidden_sizes)) or "linear"
        return f"{self.activation}-{sizes}-lr{self.learning_rate:g}"

    def as_params(self) -> dict[str, str]:
        """Every field as an MLflow param (strings; sizes as ``100,50``)."""
        params = self.model_dump()
        params["hidden_sizes"] = ",".join(map(str, self.hidden_sizes))
        return {key: str(value) for key, value in params.items()}

    @classmethod
    def fields_from_params(cls, params: dict[str, str]) -> dict[str, str]:
        """The configuration fields among MLflow ``params`` (the inverse of ``as_params``),
        still strings for validation."""
        return {name: params[name] for name in cls.model_fields if name in params}


class RunOptions(BaseModel):
    """Where a run is recorded and how it runs: nothing here changes what it learns, so none
    of it is an MLflow param."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment: str = Field(
        "tfnn-mnist",
        min_length=1,
        max_length=MAX_EXPERIMENT_NAME_LENGTH,
        description="MLflow experiment name",
    )
    output_dir: str = Field("outputs", description="local checkpoints and plots")
    model_name: str = Field("tfnn-mnist", min_length=1, description="registered model name")
    register_model: bool = Field(True, description="register the model in the registry")
    margin: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="validation accuracy a challenger must gain over the champion to be "
        "promoted (0: a tie keeps the champion)",
    )
    warm_start: bool = Field(False, description="start the challenger from the champion's weights")
    resume: str | None = Field(
        None,
        description="continue this MLflow run from its newest checkpoint (configuration: the "
        "run's)",
    )
    progress: bool = Field(True, description="draw a progress bar when stderr is a terminal")

    @field_validator("model_name")
    @classmethod
    def _usable_in_uris(cls, value: str) -> str:
        # models:/NAME/VERSION and models:/NAME@ALIAS: MLflow refuses these at registration,
        # after the whole run has trained.
        if any(character in value for character in "/:@"):
            raise ValueError("'/', ':' and '@' cannot be in a registered model's name")
        return value

    @property
    def registered_model_name(self) -> str | None:
        """The registered model a run adds a version to; None when it registers nothing."""
        return self.model_name if self.register_model else None


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad field: ``learning_rate: Input should be greater than 0 (got 0)``."""
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a rule across fields: its message names them
            parts.append(message)
            continue
        field = ".".join(str(p) for p in item["loc"])
        parts.append(f"{field}: {message} (got {item.get('input')!r})")
    kind = "run options" if error.title == RunOptions.__name__ else "configuration"
    return f"invalid {kind}: " + "; ".join(parts)


class InputError(ValueError):
    """Input refused before any run started; the message names the problem and the way out."""


def one_line(error: BaseException, typed: bool = True) -> str:
    """``Type: message`` on one line; without ``typed`` the message alone (the type's name
    when it has none), for errors whose message already says what went wrong."""
    message = " ".join(str(error).split())
    if typed:
        return f"{type(error).__name__}: {message}"
    return message or type(error).__name__


# The same library under another distribution name: the worker image installs
# tensorflow-cpu, TensorFlow without the GPU wheels, and mlflow-skinny, MLflow's client.
ALIASES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "mlflow": ("mlflow", "mlflow-skinny")}


def installed_version(name: str) -> str:
    """The version of distribution ``name`` (or of its alias), ``PackageNotFoundError`` if
    none is installed."""
    for candidate in ALIASES.get(name, (name,)):
        try:
            return version(candidate)
        except PackageNotFoundError:
            continue
    raise PackageNotFoundError(name)
