"""`flant5 run --params FILE [--only 00,03] [--out DIR] [--set k=v]`: the notebook chain into one run folder."""

from __future__ import annotations

import argparse
import sys

from flant5_lib.config import parse_set


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the numbered notebooks in order (papermill) and write the run's index page")
    p.add_argument("--params", required=True, help="params YAML, e.g. params/local-smoke.yaml")
    p.add_argument("--only", help="comma-separated notebook numbers or names, e.g. 00,03")
    p.add_argument("--out", help="run folder (default: the file's run_dir, else runs/<params file name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override one parameter")
    p.add_argument("--notebooks", help="folder of NN_name.ipynb notebooks (default: ./notebooks)")
    p.add_argument("--log-output", action="store_true", help="stream every cell's output to the terminal")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from flant5_lib.workbench import report
    from flant5_lib.workbench import runner

    def echo(msg: str) -> None:
        print(msg, flush=True)

    plan = runner.plan_run(
        args.params, parse_set(args.set), out=args.out, only=runner.parse_only(args.only), notebooks_dir=args.notebooks
    )
    echo(f"run folder: {plan.run_dir} ({len(plan.notebooks)} notebooks)")
    try:
        info = runner.run_plan(plan, log_output=args.log_output, echo=echo)
    except runner.NotebookFailed as err:
        print(f"flant5 run: error: {err}", file=sys.stderr)
        print(f"run folder: {plan.run_dir} (index: {plan.run_dir / 'index.html'})", file=sys.stderr)
        return err.exit_code
    for line in report.summary_lines(plan.run_dir):
        echo(line)
    echo(f"done in {info.seconds:.0f} s")
    echo(f"run folder: {plan.run_dir}")
    echo(f"open {plan.run_dir / 'index.html'}")
    return 0
