"""`flant5 run --params FILE [--only 00,03] [--out DIR] [--set k=v] [--resume | --fresh]`: the notebook chain into
one run folder."""

from __future__ import annotations

import argparse
import sys

from flant5_lib.config import parse_set


DESCRIPTION = """Run the numbered notebooks (notebooks/NN_*.ipynb) in order with papermill, into one run folder, and
write its index.html (ROUGE table, plots, best and worst samples, timing). Everything that can be checked is checked
before the first notebook starts: parameters, the dataset and its splits, the model and tokenizer (an offline hub id
fails in seconds), the Vertex settings, and a run folder that already holds a run (pass --resume or --fresh). A
terminal shows the cell being run and the elapsed time."""

EXAMPLES = """examples:
  flant5 run --params params/local-smoke.yaml                      # all notebooks, offline, minutes on a laptop
  flant5 run --params params/local-smoke.yaml --fresh              # the same again, from an empty run folder
  flant5 run --params params/local-smoke.yaml --only 03 --resume   # one of them again, on the same trained model
  flant5 run --params params/samsum-flan-t5-base.yaml --set dataset=/data/samsum --out runs/base-try2"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the numbered notebooks in order (papermill) and write the run's index page",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", required=True, metavar="FILE", help="params YAML, e.g. params/local-smoke.yaml")
    p.add_argument("--only", metavar="LIST", help="comma-separated notebook numbers or names, e.g. 00,03")
    p.add_argument("--out", metavar="DIR", help="run folder (default: the file's run_dir, else runs/<params file name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override one Params field or a notebook's own parameter (repeatable), e.g. --set learning_rate=1e-3")
    p.add_argument("--notebooks", metavar="DIR", help="folder of NN_name.ipynb notebooks (default: ./notebooks)")
    p.add_argument("--log-output", action="store_true", help="stream every cell's output to the terminal")
    # one destination, so the last of the two wins (`./workbench.sh demo --resume` overrides the demo's --fresh)
    p.add_argument("--resume", dest="existing", action="store_const", const="resume", default="stop",
                   help="when the run folder already holds a run: run into it again (its model and checkpoints are "
                        "reused, its notebooks and results overwritten)")
    p.add_argument("--fresh", dest="existing", action="store_const", const="fresh",
                   help="when the run folder already holds a run: delete it first (only a folder `flant5 run` made, "
                        "with its run.json)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from flant5_lib.workbench import report
    from flant5_lib.workbench import runner

    def echo(msg: str) -> None:
        print(msg, flush=True)

    plan = runner.plan_run(
        args.params, parse_set(args.set), out=args.out, only=runner.parse_only(args.only), notebooks_dir=args.notebooks,
        existing=args.existing,
    )
    echo(f"run folder: {plan.run_dir} ({len(plan.notebooks)} notebooks)")
    try:
        info = runner.run_plan(plan, log_output=args.log_output, echo=echo, live=sys.stderr.isatty())
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
