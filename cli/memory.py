"""Whether a training step fits in this machine's memory: checked before a run starts,
since a network too big for it is killed mid-run (OOM), its MLflow run left RUNNING."""

from tasks.config import MNIST_CLASSES, MNIST_PIXELS, InputError, TrainConfig
from tfnn.names import training_step_bytes


def available_memory() -> int:
    """Bytes this process can still take: the kernel's ``MemAvailable``, or in a cgroup
    with a lower limit (a container's ``mem_limit``) what is left of that limit."""
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo.read(1 << 16).splitlines())
    available = int(fields["MemAvailable"].split()[0]) * 1024
    try:  # cgroup v2
        with (
            open("/sys/fs/cgroup/memory.max") as limit,
            open("/sys/fs/cgroup/memory.current") as used,
        ):
            limit, used = limit.read(64).strip(), used.read(64).strip()
    except OSError:
        return available
    return available if limit == "max" else min(available, int(limit) - int(used))


def check_memory(config: TrainConfig, available: int | None = None) -> None:
    """Refuse a network and batch whose training step cannot fit in memory (``available``,
    by default ``available_memory()``): it would be killed mid-run instead."""
    sizes = config.layer_sizes(MNIST_PIXELS, MNIST_CLASSES)
    needed = training_step_bytes(sizes, config.batch_size)
    available = available_memory() if available is None else available
    if needed > available:
        raise InputError(
            f"hidden_sizes {','.join(map(str, config.hidden_sizes))} with batch_size "
            f"{config.batch_size}: one training step needs at least {needed / 2**30:.1f} GiB "
            f"(weights, gradients and activations) and {available / 2**30:.1f} GiB are "
            "available; use smaller layers or batches"
        )
