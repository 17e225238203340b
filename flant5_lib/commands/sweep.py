"""`flant5 sweep --params FILE --space SPACE.yaml`: a hyperparameter search on this machine, one run folder per trial."""

from __future__ import annotations

import argparse

from flant5_lib.config import parse_set

DESCRIPTION = """Search hyperparameters with TPE (optuna), random or grid search. Each trial is an ordinary run folder
<sweep>/trial-NNN (notebook 01 through `flant5 run`, the same Params plus the trial's values), ranked on the validation
split by the score of its published checkpoint. The test split is scored once, for the chosen trial only (notebook 03
in its folder). A rerun skips finished trials and re-runs an interrupted one; a failed trial is recorded with its error
and the sweep goes on. max_trials and max_minutes in the space file bound it. Writes sweep.json and sweep.html (trials,
the metric against each hyperparameter, the best trial). The space file is the one Vertex AI tuning reads."""

EXAMPLES = """examples:
  flant5 sweep --params params/local-smoke.yaml --space params/sweeps/tiny.yaml \\
      --set dataset=../shared/data/samsum/original --set missing_split=carve      # 4 tiny trials on real SAMSum
  flant5 sweep --params params/local-smoke.yaml --space params/sweeps/tiny.yaml --no-test --out runs/sweep-try"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="hyperparameter search on this machine: one run folder per trial, ranked on validation",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", required=True, metavar="FILE", help="base params YAML, e.g. params/local-smoke.yaml")
    p.add_argument("--space", required=True, metavar="SPACE", help="search space YAML, e.g. params/sweeps/tiny.yaml")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default runs/sweep-<space file name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override one Params field for every trial (repeatable), e.g. --set num_train_epochs=1")
    p.add_argument("--no-test", action="store_true", help="do not score the chosen trial on the test split")
    p.add_argument("--retry-failed", action="store_true", help="re-run failed trials (same hyperparameters)")
    p.add_argument("--notebooks", metavar="DIR", help="folder of NN_name.ipynb notebooks (default: ./notebooks)")
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from flant5_lib.workbench import sweep

    def echo(msg: str) -> None:
        print(msg, flush=True)

    plan = sweep.plan_sweep(args.params, args.space, parse_set(args.set), out=args.out, notebooks_dir=args.notebooks)
    echo(f"sweep folder: {plan.sweep_dir} ({plan.space.algorithm}, at most {plan.space.max_trials} trials, ranked on "
         f"validation {plan.space.metric})")
    result = sweep.run_sweep(plan, test=not args.no_test, retry_failed=args.retry_failed, echo=echo)
    for line in sweep.summary_lines(result):
        echo(line)
    echo(f"open {plan.sweep_dir / 'sweep.html'}")
    return 0 if result.get("best") else 1
