"""A sweep's grid, a YAML or JSON file (and command-line values), expanded into ``TrainConfig``s;
``samples: N`` trains N random grid points, drawn by index so no grid is ever expanded::

    base: {epochs: 3, hidden_sizes: [100, 50]}
    grid:
      activation: [relu, tanh]
      learning_rate: [0.1, 0.01]
    samples: 3
    seed: 0
"""

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.config import InputError, TrainConfig, describe_validation_error

# Thousands of configurations by mistake (three fields of 20 values) would train for days.
DEFAULT_MAX_CONFIGURATIONS = 1000
# Configurations trained at once in the sweep's own process (without Dask).
DEFAULT_MAX_CONCURRENCY = 2
# A sweep file is a few lines; anything far larger is not one.
MAX_SWEEP_FILE_BYTES = 1 << 20


class SweepError(InputError):
    """A sweep file or grid is unreadable or invalid; the message names the file, key or field."""


class SweepSpec(BaseModel):
    """The base configuration, the grid over it and the optional random sample size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: dict[str, Any] = Field(default_factory=dict, description="fields shared by every run")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="field -> values")
    samples: int | None = Field(None, ge=1, description="train this many random grid points")
    seed: int = Field(0, description="seed of the random sample")
    max_configurations: int = Field(
        DEFAULT_MAX_CONFIGURATIONS, ge=1, description="refuse to train more configurations"
    )

    def varied(self) -> list[str]:
        """The grid fields with more than one value: they name each configuration."""
        return [field for field, values in self.grid.items() if len(values) > 1]

    def size(self) -> int:
        return math.prod(len(values) for values in self.grid.values())

    def points(self) -> list[dict[str, Any]]:
        """The grid points to train (all, or the sample), ``field -> value``, last field fastest."""
        size = self.size()
        if self.samples is None:
            chosen = range(size)
        elif self.samples > size:
            raise SweepError(f"samples: {self.samples} is more than the {size} grid points")
        elif size > sys.maxsize:
            raise SweepError(
                f"grid: {size} points are more than can be sampled from; list fewer values"
            )
        else:
            chosen = sorted(random.Random(self.seed).sample(range(size), self.samples))
        if len(chosen) > self.max_configurations:
            raise SweepError(
                f"the sweep would train {len(chosen)} configurations, more than "
                f"max_configurations ({self.max_configurations}); train a random sample "
                "(samples: N or --samples N) or raise the limit (max_configurations: N or "
                "--max-configurations N)"
            )
        return [self._point(index) for index in chosen]

    def _point(self, index: int) -> dict[str, Any]:
        # Grid point number ``index`` in itertools.product order: its mixed-radix digits.
        point = {}
        for field, values in reversed(self.grid.items()):
            index, digit = divmod(index, len(values))
            point[field] = values[digit]
        return {field: point[field] for field in self.grid}

    def configurations(self) -> dict[str, TrainConfig]:
        """Every grid point to train by name, validated as a ``TrainConfig``; SweepError at the
        first problem, so nothing trains unless all are valid."""
        for key, mapping in (("base", self.base), ("grid", self.grid)):
            for field in mapping:
                if field not in TrainConfig.model_fields:
                    raise SweepError(
                        f"{key}.{field}: not a training configuration field; "
                        f"use {', '.join(TrainConfig.model_fields)}"
                    )
        for field, values in self.grid.items():
            if not values:
                raise SweepError(f"grid.{field}: no values; list at least one")
        varied = self.varied()
        configurations: dict[str, TrainConfig] = {}
        seen: set[TrainConfig] = set()
        for values in self.points():
            name = " ".join(f"{field}={_show(values[field])}" for field in varied) or "base"
            try:
                config = _portable(TrainConfig(**{**self.base, **values}))
            except ValidationError as error:
                raise SweepError(
                    f"configuration {name!r}: {describe_validation_error(error)}"
                ) from None
            if config in seen:
                raise SweepError(
                    f"configuration {name!r} repeats another: a grid value is listed twice"
                )
            seen.add(config)
            configurations[name] = config
        return configurations

    def with_overrides(
        self,
        base: dict[str, Any],
        grid: dict[str, list[Any]],
        samples: int | None,
        max_configurations: int | None = None,
    ) -> "SweepSpec":
        """This spec with command-line values replacing the file's, field by field."""
        return SweepSpec(
            base={**self.base, **base},
            grid={**self.grid, **grid},
            samples=self.samples if samples is None else samples,
            seed=self.seed,
            max_configurations=max_configurations or self.max_configurations,
        )


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _portable(config: TrainConfig) -> TrainConfig:
    # Dask workers may run in another directory: give them the data directory's absolute path.
    source = Path(config.data_source).expanduser()
    if config.data_source.startswith("tfds:") or not source.exists():
        return config
    return config.model_copy(update={"data_source": str(source.resolve())})


def load_sweep_file(path: str | Path) -> SweepSpec:
    """Read a sweep from a ``.json`` file, or a YAML file (any other suffix)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_SWEEP_FILE_BYTES + 1)
    except OSError as error:
        raise SweepError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    if len(raw) > MAX_SWEEP_FILE_BYTES:
        raise SweepError(
            f"{path}: larger than {MAX_SWEEP_FILE_BYTES} bytes; a sweep file lists a few "
            "fields and their values"
        )
    try:
        text = raw.decode()
    except UnicodeDecodeError as error:
        raise SweepError(f"{path}: not UTF-8 text ({error.reason})") from None
    try:
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise SweepError(f"{path}: not valid {kind} ({' '.join(str(error).split())})") from None
    if not isinstance(content, dict):
        raise SweepError(
            f"{path}: expected a mapping with 'base' and 'grid', got {type(content).__name__}"
        )
    try:
        return SweepSpec(**content)
    except ValidationError as error:
        problems = describe_validation_error(error).removeprefix("invalid configuration: ")
        raise SweepError(f"{path}: {problems}") from None
