"""The task that builds the network a configuration describes."""

from prefect import task

from common.config import TrainConfig
from tfnn.network import Sequential, build_mlp
from tfnn.serialization import load_network


@task
def build_network(
    config: TrainConfig, input_dim: int, num_classes: int, initial_weights_dir: str | None = None
) -> Sequential:
    """A fresh ``input_dim -> hidden... -> num_classes`` network seeded by ``config.seed``, or,
    given ``initial_weights_dir`` (``architecture.json`` + ``weights.npz``), that saved network,
    which must have the architecture the configuration describes (a warm start)."""
    network = build_mlp(
        config.layer_sizes(input_dim, num_classes),
        hidden_activation=config.activation,
        output_activation=config.output_activation,
        loss=config.loss,
        initializer=config.initializer,
        seed=config.seed,
    )
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
