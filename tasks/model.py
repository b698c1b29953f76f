"""What a configuration makes: its network and the arguments of ``tfnn.fit``, and the task
that builds the network of a run."""

from typing import Any

from prefect import task

from tasks.config import TrainConfig
from tfnn.network import Sequential, build_mlp
from tfnn.optimizers import SGD
from tfnn.serialization import load_network
from tfnn.training import EarlyStopping


def network_for(config: TrainConfig, input_dim: int, num_classes: int) -> Sequential:
    """A fresh ``input_dim -> hidden... -> num_classes`` network seeded by ``config.seed``."""
    return build_mlp(
        config.layer_sizes(input_dim, num_classes),
        hidden_activation=config.activation,
        output_activation=config.output_activation,
        loss=config.loss,
        initializer=config.initializer,
        seed=config.seed,
    )


def fit_arguments(config: TrainConfig, validation: bool) -> dict[str, Any]:
    """The keyword arguments of ``tfnn.fit`` that ``config`` sets: the optimizer, epochs,
    batch size and seed, and, when there is a ``validation`` set, the early-stopping
    callback (first, so that later callbacks record its state)."""
    stopping = EarlyStopping(config.early_stopping_patience, config.restore_best)
    return {
        "optimizer": SGD(config.learning_rate),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "callbacks": [stopping] if validation else [],
    }


@task
def build_network(
    config: TrainConfig, input_dim: int, num_classes: int, initial_weights_dir: str | None = None
) -> Sequential:
    """``network_for(config, ...)``, or, given ``initial_weights_dir`` (``architecture.json`` +
    ``weights.npz``), that saved network, which must have the architecture the configuration
    describes (a warm start)."""
    network = network_for(config, input_dim, num_classes)
    if initial_weights_dir is None:
        return network
    saved = load_network(initial_weights_dir)
    if saved.spec() != network.spec():
        raise ValueError(
            f"cannot warm-start from {initial_weights_dir}: it holds {saved!r} but the "
            f"configuration describes {network!r}; train with the saved network's hidden "
            "sizes, activations and loss, or start fresh"
        )
    return saved
