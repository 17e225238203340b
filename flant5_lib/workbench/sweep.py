"""`flant5 sweep`: a hyperparameter search on this machine, each trial an ordinary run folder.

Trials are chosen by optuna (TPE or random) or walk the grid; each one runs notebook 01 through the runner into
<sweep>/trial-NNN/ with the same `Params` plus its hyperparameters. Trials are ranked on the **validation** split: the
trainer already scores validation ROUGE at every evaluation and publishes the best checkpoint, whose score
(model/train_metrics.json) is the trial's value. The test split is scored once, for the chosen trial only (notebook 03
into its folder), and the page says so.

sweep.json and each trial-NNN/trial.json are written before and after every trial, so a crash loses nothing: a rerun
skips finished trials, re-runs an interrupted one with the same hyperparameters, and keeps a failed one (with its
error) unless asked to retry it. `max_trials` and `max_minutes` bound the sweep.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flant5_lib.config import Params, load_params
from flant5_lib.errors import Flant5Error, ParamsError, UserError
from flant5_lib.search_space import SearchSpace, load_space

log = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"
SWEEP_FILE = "sweep.json"
PLOT = "sweep_metric.png"
TRAIN_NOTEBOOK = "01"
TEST_NOTEBOOK = "03"
# What a trial records from model/train_metrics.json (the published checkpoint, scored on validation).
VALIDATION_KEYS = ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_loss", "eval_rouge_samples",
                   "published_step", "global_step")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    status: str = "running"  # running | ok | failed
    value: float | None = None
    error: str | None = None
    seconds: float | None = None
    started_at: str = ""
    finished_at: str | None = None
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return trial_name(self.number)


def trial_name(number: int) -> str:
    return f"trial-{number:03d}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_trials(sweep_dir: Path) -> dict[int, Trial]:
    """The trials recorded in <sweep_dir>/trial-NNN/trial.json (unreadable ones count as never run)."""
    out: dict[int, Trial] = {}
    for path in sorted(sweep_dir.glob(f"trial-[0-9][0-9][0-9]/{TRIAL_FILE}")):
        data = _read_json(path)
        if isinstance(data, dict) and "number" in data and "params" in data:
            known = {k: v for k, v in data.items() if k in Trial.__dataclass_fields__}
            out[int(data["number"])] = Trial(**known)
    return out


def _write_trial(sweep_dir: Path, trial: Trial) -> None:
    from flant5_lib.fileio import write_json

    write_json(sweep_dir / trial.name / TRIAL_FILE, asdict(trial))


# --- choosing trials ------------------------------------------------------------------------------------------


def _distributions(space: SearchSpace) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, p in space.parameters.items():
        if p.type == "double":
            out[name] = FloatDistribution(p.min, p.max, log=p.scale == "log")
        elif p.type == "integer":
            out[name] = IntDistribution(p.min, p.max, log=p.scale == "log")
        else:
            out[name] = CategoricalDistribution(tuple(p.values))
    return out


def _sampler(space: SearchSpace, number: int) -> Any:
    """A sampler seeded per trial, so a rerun proposes the same trial NNN given the same finished trials."""
    import optuna

    seed = space.seed + number
    if space.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


class Proposer:
    """The next trial's hyperparameters: the grid in order, or optuna's sampler informed by every finished trial."""

    def __init__(self, space: SearchSpace, finished: Sequence[Trial]) -> None:
        self.space = space
        self.grid = space.grid_points() if space.algorithm == "grid" else None
        self.study = None
        if self.grid is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self.dists = _distributions(space)
            self.study = optuna.create_study(direction=space.goal, sampler=_sampler(space, 0))
            for t in finished:
                self._add(t)

    @property
    def size(self) -> int:
        """How many trials this space can hold at most (the grid's size; a continuous space is unbounded)."""
        return min(self.space.max_trials, len(self.grid)) if self.grid is not None else self.space.max_trials

    def _add(self, t: Trial) -> None:
        import optuna

        if self.study is None or t.status not in ("ok", "failed"):
            return
        params = {k: v for k, v in t.params.items() if k in self.dists}
        ok = t.status == "ok" and t.value is not None
        try:
            frozen = optuna.trial.create_trial(
                params=params, distributions=self.dists, value=t.value if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL)
        except ValueError:  # outside this space (the sweep refuses a changed space; a hand-edited trial.json)
            log.warning("%s: its hyperparameters are not in this space; not used by the sampler", t.name)
            return
        self.study.add_trial(frozen)

    def propose(self, number: int) -> tuple[dict[str, Any], Any]:
        if self.grid is not None:
            return dict(self.grid[number]), None
        self.study.sampler = _sampler(self.space, number)
        ask = self.study.ask(self.dists)
        return dict(ask.params), ask

    def tell(self, ask: Any, trial: Trial) -> None:
        if self.study is None or ask is None:
            return
        import optuna

        if trial.status == "ok" and trial.value is not None:
            self.study.tell(ask, trial.value)
        else:
            self.study.tell(ask, state=optuna.trial.TrialState.FAIL)

    def record(self, trial: Trial) -> None:
        """A trial re-run with recorded hyperparameters (not asked of the sampler) joins the history."""
        self._add(trial)


# --- the plan -------------------------------------------------------------------------------------------


@dataclass
class SweepPlan:
    space: SearchSpace
    space_file: str
    params_file: str | None
    overrides: dict[str, Any]  # --set, plus the metric that picks each trial's checkpoint
    sweep_dir: Path
    base: Params
    notebooks_dir: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a sweep and its rerun for finished trials to count."""
        base = self.base.model_dump(mode="json")
        base.pop("run_dir", None)
        space = self.space.model_dump(mode="json", exclude={"max_trials", "max_minutes", "parallel_trials"})
        return {"space": space, "base": base}


def default_sweep_dir(space_file: str) -> Path:
    return Path("runs") / f"sweep-{Path(space_file).stem}"


def plan_sweep(
    params_file: str | None, space_file: str, overrides: dict[str, Any] | None = None, *, out: str | None = None,
    notebooks_dir: str | None = None,
) -> SweepPlan:
    """Validate the space, the base params and every hyperparameter's extremes with them, before any trial runs."""
    space = load_space(space_file)
    sweep_dir = Path(out).expanduser().resolve() if out else default_sweep_dir(space_file).resolve()
    overrides = {**(overrides or {}), "metric_for_best_model": space.metric}
    if "run_dir" in overrides:
        raise ParamsError("--set run_dir: the sweep puts each trial in <sweep>/trial-NNN; use --out for the sweep folder")
    source = params_file or "params"
    base = load_params(params_file, {**overrides, "run_dir": str(sweep_dir / trial_name(0))})
    if base.eval_strategy == "no":
        raise ParamsError(f"{source}: eval_strategy is 'no', so trials have no validation score to rank; "
                          "use --set eval_strategy=epoch")
    for name, value, reason in space.refused_candidates(base.model_dump())[:1]:
        raise ParamsError(f"{space_file}: parameters.{name} = {value!r} with {source}: {reason}")
    plan = SweepPlan(space, str(space_file), params_file, overrides, sweep_dir, base, notebooks_dir)
    recorded = _read_json(sweep_dir / SWEEP_FILE)
    if isinstance(recorded, dict) and recorded.get("fingerprint") not in (None, plan.fingerprint()):
        raise UserError(f"{sweep_dir}: a sweep with another space or other base params ran here; finished trials "
                        "would not be comparable; use --out NEW_FOLDER (or delete the folder)")
    return plan


# --- running -------------------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:500] if not isinstance(err, Flant5Error) else \
        " ".join(str(err).split())[:500]


def _run_notebooks(plan: SweepPlan, trial_params: Mapping[str, Any], run_dir: Path, only: str) -> None:
    """One ordinary `flant5 run --only NN --resume` into `run_dir`, through the runner's public functions (resume:
    the folder already holds trial.json, and for the test scoring the trial's trained model)."""
    from flant5_lib.workbench import runner

    run_plan = runner.plan_run(plan.params_file, {**plan.overrides, **trial_params}, out=str(run_dir), only=[only],
                               notebooks_dir=plan.notebooks_dir, existing="resume")
    runner.run_plan(run_plan, echo=lambda msg: log.info("%s: %s", run_dir.name, msg))


def run_trial(plan: SweepPlan, trial: Trial) -> Trial:
    """Train one trial (notebook 01) and read its validation score; any failure is recorded, never raised."""
    run_dir = plan.sweep_dir / trial.name
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted attempt's leftovers (a checkpoint would resume it)
    trial.status, trial.started_at, trial.value, trial.error = "running", _now(), None, None
    _write_trial(plan.sweep_dir, trial)
    t0 = time.perf_counter()
    try:
        _run_notebooks(plan, trial.params, run_dir, TRAIN_NOTEBOOK)
        metrics = _read_json(run_dir / "model" / "train_metrics.json") or {}
        key = plan.space.train_metric_key()
        value = metrics.get(key)
        trial.validation = {k: metrics.get(k) for k in VALIDATION_KEYS if k in metrics}
        if value is None or not math.isfinite(float(value)):
            raise UserError(f"{run_dir / 'model' / 'train_metrics.json'}: no finite {key} (was validation scored?)")
        trial.value, trial.status = float(value), "ok"
    except KeyboardInterrupt:
        trial.status, trial.error = "running", "interrupted"
        raise
    except Exception as err:  # a crashing trial never kills the sweep: recorded with its error, the sweep goes on
        trial.status, trial.error = "failed", _one_line(err)
        log.warning("%s failed: %s", trial.name, trial.error)
    finally:
        trial.seconds = round(time.perf_counter() - t0, 1)
        trial.finished_at = _now() if trial.status != "running" else None
        _write_trial(plan.sweep_dir, trial)
    return trial


def best_trial(trials: Sequence[Trial], goal: str) -> Trial | None:
    ok = [t for t in trials if t.status == "ok" and t.value is not None]
    if not ok:
        return None
    return (max if goal == "maximize" else min)(ok, key=lambda t: (t.value, -t.number))  # ties: the earlier trial


def _budget_reason(space: SearchSpace, elapsed: float, durations: Sequence[float]) -> str | None:
    """Why no further trial starts under max_minutes, or None."""
    if space.max_minutes is None:
        return None
    budget = space.max_minutes * 60
    if elapsed >= budget:
        return f"max_minutes {space.max_minutes:g} reached after {elapsed / 60:.1f} min"
    if durations and elapsed + sum(durations) / len(durations) > budget:
        return (f"max_minutes {space.max_minutes:g}: another trial (mean {sum(durations) / len(durations):.0f} s) would end "
                f"after the limit ({elapsed / 60:.1f} min used)")
    return None


def score_test(plan: SweepPlan, trial: Trial) -> dict[str, Any]:
    """Notebook 03 into the chosen trial's folder: the test split, once, for this trial only."""
    run_dir = plan.sweep_dir / trial.name
    _run_notebooks(plan, trial.params, run_dir, TEST_NOTEBOOK)
    m = _read_json(run_dir / "eval" / "finetuned" / "metrics.json") or {}
    from flant5_lib.metrics import ROUGE_KEYS

    return {"trial": trial.name, "split": m.get("split"), "n": m.get("n"), **{k: m.get(k) for k in ROUGE_KEYS},
            "ci": m.get("ci"), "scored_at": _now()}


def run_sweep(
    plan: SweepPlan, *, test: bool = True, retry_failed: bool = False, echo: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Run the planned sweep; sweep.json and sweep.html are rewritten after every trial. Returns sweep.json's content.

    `clock` (seconds) measures max_minutes; tests pass their own.
    """
    echo = echo or (lambda msg: log.info("%s", msg))
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    trials = read_trials(plan.sweep_dir)
    done = {"ok"} | ({"failed"} if not retry_failed else set())
    proposer = Proposer(plan.space, [t for t in trials.values() if t.status in done])
    t_start = clock()
    stop_reason: str | None = None
    durations: list[float] = []
    previous = _read_json(plan.sweep_dir / SWEEP_FILE) or {}
    state: dict[str, Any] = {"started_at": previous.get("started_at") or _now(), "this_run_started_at": _now(),
                             "status": "running", "test_history": previous.get("test_history", [])}
    _write_state(plan, trials, state)
    for number in range(proposer.size):
        old = trials.get(number)
        if old is not None and old.status in done:
            echo(f"{old.name}: {old.status} earlier" + (f" ({_value_text(old, plan.space)})" if old.status == "ok" else
                                                        ", kept (--retry-failed runs it again)") + ", skipped")
            continue
        stop_reason = _budget_reason(plan.space, clock() - t_start, durations)
        if stop_reason:
            echo(f"stopping: {stop_reason}")
            break
        if old is not None:  # interrupted (or failed, with --retry-failed): the same hyperparameters again
            params, ask = dict(old.params), None
        else:
            params, ask = proposer.propose(number)
        trial = Trial(number, params)
        echo(f"{trial.name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) + " ...")
        t0 = clock()
        trials[number] = run_trial(plan, trial)
        durations.append(clock() - t0)
        if ask is not None:
            proposer.tell(ask, trial)
        else:
            proposer.record(trial)
        echo(f"{trial.name}: {trial.status} in {trial.seconds:.0f} s ({_value_text(trial, plan.space)})")
        _write_state(plan, trials, state)
    else:
        if proposer.size < plan.space.max_trials:
            stop_reason = f"the grid has {proposer.size} points"
    best = best_trial(list(trials.values()), plan.space.goal)
    state["stop_reason"] = stop_reason
    if test and best is not None and not any(h.get("trial") == best.name for h in state["test_history"]):
        echo(f"scoring {best.name} (best on validation {plan.space.metric}) on the {plan.base.eval_split} split, once ...")
        try:
            state["test_history"].append(score_test(plan, best))
        except Exception as err:  # the trials' results stand; the page says the test scoring failed
            state["test_error"] = _one_line(err)
            log.warning("test scoring of %s failed: %s", best.name, state["test_error"])
    state["status"] = "ok"
    state["finished_at"] = _now()
    state["seconds_this_run"] = round(clock() - t_start, 1)
    return _write_state(plan, trials, state)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _value_text(t: Trial, space: SearchSpace) -> str:
    if t.status == "ok" and t.value is not None:
        return f"validation {space.metric} {t.value:.3f}"
    return t.error or t.status


def _write_state(plan: SweepPlan, trials: Mapping[int, Trial], state: dict[str, Any]) -> dict[str, Any]:
    """sweep.json, the plot and sweep.html, from what is recorded now."""
    from flant5_lib.fileio import write_json, write_text

    ordered = [trials[k] for k in sorted(trials)]
    best = best_trial(ordered, plan.space.goal)
    result = {
        **state,
        "sweep_dir": str(plan.sweep_dir), "space_file": plan.space_file, "params_file": plan.params_file,
        "overrides": plan.overrides, "space": plan.space.model_dump(mode="json"), "fingerprint": plan.fingerprint(),
        "ranked_on": f"validation {plan.space.metric} of each trial's published checkpoint (model/train_metrics.json)",
        "eval_split": plan.base.eval_split,
        "trials": [asdict(t) | {"name": t.name} for t in ordered],
        "best": best.name if best else None,
    }
    write_json(plan.sweep_dir / SWEEP_FILE, result)
    from flant5_lib.workbench.sweep_page import plot_sweep, render_sweep

    plot = plot_sweep(result, plan.sweep_dir / PLOT)
    write_text(plan.sweep_dir / "sweep.html", render_sweep(result, plan.sweep_dir, plot))
    return result


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The terminal's table: one line per trial, then the best and its test score."""
    space = result["space"]
    names = list(space["parameters"])
    lines = [f"{'trial':<10}{'status':<8}" + "".join(f"{n[:18]:>20}" for n in names) + f"{'val ' + space['metric']:>16}"]
    for t in result["trials"]:
        value = f"{t['value']:.3f}" if t.get("value") is not None else "-"
        lines.append(f"{t['name']:<10}{t['status']:<8}" + "".join(f"{_fmt(t['params'].get(n)):>20}" for n in names)
                     + f"{value:>16}")
    if result.get("best"):
        lines.append(f"best on validation {space['metric']}: {result['best']}")
    for h in result.get("test_history", []):
        if h.get("trial") == result.get("best"):
            lines.append(f"{h['trial']} on the {h.get('split')} split (scored once): " + " ".join(
                f"{k}={h[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum") if h.get(k) is not None))
    if result.get("stop_reason"):
        lines.append(f"stopped: {result['stop_reason']}")
    return lines
