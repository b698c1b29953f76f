"""A trained network saved as an MLflow model of the ``tensorflow`` flavour: the directory
``mlflow.tensorflow.save_model`` writes for a ``tf.Module`` (a SavedModel in ``tf2model``,
``model_type: tf2-module``, ``mlflow.tensorflow`` as the pyfunc loader), so that
``mlflow.tensorflow.load_model``, ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
read it as one of theirs. Pass this module as ``Model.log(flavor=...)``, MLflow's interface
for a flavour's ``save_model``.

Why not ``mlflow.tensorflow.save_model`` itself: before it saves anything it imports Keras
(``tensorflow.keras.models``, for an ``isinstance`` check; with it scikit-learn, SciPy and
pyplot: 1.5-1.8 s of CPU here), and it reads the metadata of every installed package to warn
that a pinned requirement differs from what is installed (0.6-0.9 s), though the pins are
the installed versions. For the same reason ``Model.log`` is told not to check the input
example by loading the model through ``mlflow.pyfunc`` (importing ``mlflow.tensorflow``
imports Keras); ``save_model`` loads the SavedModel back itself and checks that it predicts
what the network does. tfnn has no Keras; ``tests/test_tf_flavor.py`` holds this directory to
the one MLflow writes and reads it back through MLflow's loaders.
"""

import os

import mlflow
import numpy as np
import tensorflow as tf
import yaml
from mlflow.models import Model, ModelSignature
from mlflow.models.utils import _save_example
from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv

FLAVOR_NAME = "tensorflow"  # the flavour it is: MLflow's own loads it
SAVED_MODEL_DIR = "tf2model"


def requirements(pins: list[str]) -> list[str]:
    """What the model needs, as MLflow writes it: MLflow pinned first, then ``pins``."""
    return [f"mlflow=={mlflow.__version__}", *pins]


def save_model(
    model: tf.Module,
    path: str,
    mlflow_model: Model,
    signature: ModelSignature,
    input_example,
    pip_requirements: list[str],
    **_: object,  # Model.log's own options (validate_serving_input, ...)
) -> None:
    """Write ``model`` to the new directory ``path`` as ``mlflow.tensorflow.save_model`` would
    with these arguments, ``mlflow_model`` (from ``Model.log``) becoming its MLmodel file;
    raise ``ValueError`` if the SavedModel read back does not predict ``input_example`` as
    ``model`` does."""
    os.makedirs(path)
    _save_example(mlflow_model, input_example, path)
    mlflow_model.signature = signature
    saved_model = os.path.join(path, SAVED_MODEL_DIR)
    tf.saved_model.save(model, saved_model)
    check_predictions(model, saved_model, input_example)
    mlflow_model.add_flavor(
        FLAVOR_NAME, code=None, saved_model_dir=SAVED_MODEL_DIR, model_type="tf2-module"
    )
    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow.tensorflow",
        conda_env="conda.yaml",
        python_env="python_env.yaml",
        code=None,
    )
    mlflow_model.model_size_bytes = sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(path)
        for name in names
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))
    pins = requirements(pip_requirements)
    conda_env = _mlflow_conda_env(additional_pip_deps=pins, install_mlflow=False)
    with open(os.path.join(path, "conda.yaml"), "w") as file:
        yaml.safe_dump(conda_env, stream=file, default_flow_style=False)
    with open(os.path.join(path, "requirements.txt"), "w") as file:
        file.write("\n".join(pins))
    _PythonEnv.current().to_yaml(os.path.join(path, "python_env.yaml"))


def check_predictions(model: tf.Module, saved_model: str, example: np.ndarray) -> None:
    """Raise ``ValueError`` unless the SavedModel in ``saved_model`` predicts ``example`` as
    ``model`` does (within float32 rounding)."""
    loaded = tf.saved_model.load(saved_model)
    expected, got = model(example).numpy(), loaded(example).numpy()
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise ValueError(
            f"the SavedModel written to {saved_model} predicts other values than the network "
            f"(largest difference {np.max(np.abs(got - expected)):.3g}); the model is not logged"
        )
