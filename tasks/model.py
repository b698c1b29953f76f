"""The task that builds the network a configuration describes."""

from prefect import task

from tasks.config import TrainConfig
from tfnn.network import Sequential, build_mlp


@task
def build_network(config: TrainConfig, input_dim: int, num_classes: int) -> Sequential:
    """A fresh ``input_dim -> hidden... -> num_classes`` network seeded by ``config.seed``."""
    return build_mlp(
        config.layer_sizes(input_dim, num_classes),
        hidden_activation=config.activation,
        output_activation=config.output_activation,
        loss=config.loss,
        initializer=config.initializer,
        seed=config.seed,
    )
