"""The hyperparameter search space file: what `flant5 sweep` explores here and Vertex AI tuning explores in the cloud.

One YAML file serves both, so it follows Vertex's StudySpec: each parameter is `double` or `integer` (min, max, linear
or log scale), `discrete` (numbers) or `categorical` (values), and must be a `Params` field. A core module (no
optimiser, no workbench), so the Vertex code can import it.

    parameters:
      learning_rate: {type: double, min: 1.0e-4, max: 1.0e-2, scale: log}
      num_train_epochs: {type: integer, min: 1, max: 3}
      label_smoothing: {type: discrete, values: [0.0, 0.1]}
      lr_scheduler_type: {type: categorical, values: [linear, cosine]}
    algorithm: tpe        # tpe | grid | random   (Vertex: its default Bayesian search | GRID_SEARCH | RANDOM_SEARCH)
    metric: rougeLsum     # validation metric of the published checkpoint (train_metrics.json's eval_<metric>)
    goal: maximize        # maximize | minimize   (Vertex: MAXIMIZE | MINIMIZE)
    max_trials: 8
    parallel_trials: 2    # Vertex AI tuning only: trials at once (the local sweep runs one at a time)
    max_minutes: 30       # no trial starts once the sweep has run this long (optional)
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flant5_lib.config import read_yaml_file
from flant5_lib.errors import ParamsError

Scale = Literal["linear", "log"]
METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "eval_loss")
# Fields a sweep must not vary: where the trial writes is the sweep's business.
NOT_SEARCHABLE = frozenset({"run_dir"})
GRID_LIMIT = 10_000  # integer ranges are expanded for grid search; a larger grid is a typo, not a plan


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DoubleParam(_Param):
    """A real number in [min, max] (Vertex: doubleValueSpec)."""

    type: Literal["double"]
    min: float
    max: float
    scale: Scale = "linear"

    @model_validator(mode="after")
    def _check(self) -> DoubleParam:
        _check_range(self.min, self.max, self.scale)
        return self

    def candidates(self) -> list[Any]:
        return [self.min, self.max]


class IntegerParam(_Param):
    """A whole number in [min, max] (Vertex: integerValueSpec)."""

    type: Literal["integer"]
    min: int
    max: int
    scale: Scale = "linear"

    @model_validator(mode="after")
    def _check(self) -> IntegerParam:
        _check_range(self.min, self.max, self.scale)
        return self

    def candidates(self) -> list[Any]:
        return [self.min, self.max]

    def grid(self) -> list[Any]:
        return list(range(self.min, self.max + 1))


class DiscreteParam(_Param):
    """One of a few numbers, kept in increasing order (Vertex: discreteValueSpec)."""

    type: Literal["discrete"]
    values: list[int | float] = Field(min_length=1)
    scale: Scale = "linear"

    @model_validator(mode="after")
    def _check(self) -> DiscreteParam:
        if len(set(self.values)) != len(self.values):
            raise ValueError("values: each value once")
        if self.scale == "log" and min(self.values) <= 0:
            raise ValueError("scale log needs every value above 0")
        self.values = sorted(self.values)
        return self

    def candidates(self) -> list[Any]:
        return list(self.values)

    def grid(self) -> list[Any]:
        return list(self.values)


class CategoricalParam(_Param):
    """One of a few values of any kind (Vertex: categoricalValueSpec, whose values are strings)."""

    type: Literal["categorical"]
    values: list[str | bool | int | float] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if len({repr(v) for v in self.values}) != len(self.values):
            raise ValueError("values: each value once")
        return self

    def candidates(self) -> list[Any]:
        return list(self.values)

    def grid(self) -> list[Any]:
        return list(self.values)


Parameter = Annotated[Union[DoubleParam, IntegerParam, DiscreteParam, CategoricalParam], Field(discriminator="type")]


def _check_range(lo: float, hi: float, scale: str) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("min and max must be finite numbers")
    if lo >= hi:
        raise ValueError(f"min ({lo:g}) must be below max ({hi:g})")
    if scale == "log" and lo <= 0:
        raise ValueError(f"scale log needs min above 0 (got {lo:g}); use scale linear or a positive min")


class SearchSpace(BaseModel):
    """A validated space file. Every hyperparameter is a `Params` field and each of its values is a valid one."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Parameter] = Field(description="Params field -> its range or values.")
    algorithm: Literal["tpe", "grid", "random"] = Field("tpe", description="How trials are chosen.")
    metric: Literal["rouge1", "rouge2", "rougeL", "rougeLsum", "eval_loss"] = Field(
        "rougeLsum", description="Validation metric that ranks the trials (and picks each trial's checkpoint).")
    goal: Literal["maximize", "minimize"] = Field("maximize", description="Whether a higher metric is better.")
    max_trials: int = Field(8, ge=1, description="Most trials (grid search: at most the grid's size).")
    parallel_trials: int = Field(1, ge=1, description="Vertex AI tuning: trials run at once, at most max_trials "
                                 "(the local sweep runs one at a time).")
    max_minutes: float | None = Field(None, gt=0, description="No trial starts once the sweep has run this long.")
    seed: int = Field(0, description="Seed of the sampler (random and TPE), so a rerun proposes the same trials.")

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        from flant5_lib.config import Params

        if not self.parameters:
            raise ValueError("parameters: empty; add at least one, e.g. learning_rate: {type: double, min: 1.0e-4, "
                             "max: 1.0e-2, scale: log}")
        problems = []
        for name, spec in self.parameters.items():
            if name in NOT_SEARCHABLE:
                problems.append(f"parameters.{name}: the sweep sets it for each trial; remove it")
            elif name not in Params.model_fields:
                close = difflib.get_close_matches(name, list(Params.model_fields), n=1)
                problems.append(f"parameters.{name}: not a Params field"
                                + (f" (did you mean {close[0]}?)" if close else " (`flant5 params list` shows them)"))
            else:
                problems += [f"parameters.{name}: {p}" for p in _invalid_values(name, spec)]
        if self.algorithm == "grid":
            doubles = [n for n, s in self.parameters.items() if s.type == "double"]
            if doubles:
                problems.append(f"algorithm grid: {', '.join(doubles)} is double; give it as discrete values "
                                "(grid search needs integer, discrete or categorical parameters, as on Vertex)")
            elif self.grid_size() > GRID_LIMIT:
                problems.append(f"algorithm grid: {self.grid_size()} points (over {GRID_LIMIT}); narrow the integer ranges")
        if self.parallel_trials > self.max_trials:
            problems.append(f"parallel_trials: {self.parallel_trials} is more than max_trials ({self.max_trials}); "
                            f"use at most {self.max_trials}")
        if self.metric == "eval_loss" and self.goal == "maximize":
            problems.append("goal: eval_loss is a loss; use goal minimize")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination, in file order (grid search runs them in this order)."""
        names = list(self.parameters)
        values = [self.parameters[n].grid() for n in names]  # type: ignore[union-attr]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]

    def grid_size(self) -> int:
        return math.prod(len(s.grid()) for s in self.parameters.values() if s.type != "double")  # type: ignore[union-attr]

    def refused_candidates(self, base: dict[str, Any]) -> list[tuple[str, Any, str]]:
        """Per hyperparameter, the first of its candidates (extremes, listed values) that the base params refuse in
        combination (a cross-field rule), with the reason: a sweep or a tuning job would waste trials on it. The one
        check both `flant5 sweep` and `flant5 vertex tune` make before the first trial."""
        from flant5_lib.config import build_params

        refused = []
        for name, spec in self.parameters.items():
            for value in spec.candidates():
                try:
                    build_params({**base, name: value, "metric_for_best_model": self.metric})
                except ParamsError as err:
                    refused.append((name, value, str(err).split(": ", 1)[-1]))
                    break
        return refused

    def train_metric_key(self) -> str:
        """The key of train_metrics.json that holds this metric for the published checkpoint."""
        return self.metric if self.metric.startswith("eval_") else f"eval_{self.metric}"


def _invalid_values(name: str, spec: Any) -> list[str]:
    """Each candidate (min, max, every listed value) must be a valid value of the Params field."""
    from pydantic import TypeAdapter

    from flant5_lib.config import Params

    field = Params.model_fields[name]
    adapter = TypeAdapter(Annotated[field.annotation, field])  # the field's type and its constraints (gt=0, le=16...)
    bad = []
    for value in spec.candidates():
        if spec.type in ("double", "discrete") and _is_int_field(field.annotation):
            if not float(value).is_integer():
                bad.append(f"{value!r} is not a whole number ({name} is an integer field)")
                continue
            value = int(value)
        try:
            adapter.validate_python(value)
        except ValidationError as err:
            bad.append(f"{value!r}: {err.errors()[0]['msg']}")
    return bad


def _is_int_field(annotation: Any) -> bool:
    return annotation is int or str(annotation) in ("int | None", "typing.Optional[int]")


def _format(err: ValidationError) -> str:
    """pydantic's errors as `where: what` pieces, with the type tag Vertex-style rather than Python-style."""
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if p not in ("double", "integer", "discrete", "categorical")]
        where = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = ("unknown key (a space file has parameters, algorithm, metric, goal, max_trials, parallel_trials, "
                   "max_minutes, seed)")
            if len(loc) > 2:
                msg = "unknown key (double/integer take min, max, scale; discrete takes values, scale; categorical values)"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            msg = "type must be double, integer, discrete or categorical"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def parse_space(data: Any, source: str = "space") -> SearchSpace:
    """Validate a space already read (a dict); every problem in one `ParamsError` naming the file."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: must be a mapping with a 'parameters' section, got {type(data).__name__}")
    if "parameters" not in data:
        raise ParamsError(f"{source}: no 'parameters' section; add e.g. parameters: {{learning_rate: {{type: double, "
                          "min: 1.0e-4, max: 1.0e-2, scale: log}}")
    if data["parameters"] is None:
        data = {**data, "parameters": {}}
    try:
        return SearchSpace(**data)
    except ValidationError as err:
        raise ParamsError(f"{source}: {_format(err)}") from None


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and validate a space file, local or gs://."""
    p = str(path)
    data = read_yaml_file(p, what="space file", examples="params/sweeps/")
    return parse_space(data or {}, p)
