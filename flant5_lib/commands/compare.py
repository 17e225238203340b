"""`flant5 compare A B [C ...]`: is B better than A? Paired bootstrap and sign-flip test on the same examples."""

from __future__ import annotations

import argparse

DESCRIPTION = """Compare systems scored on the same examples, each against the first (the baseline). A system is a run
folder (its eval/finetuned/, or its only eval folder), an eval folder (<run>/eval/<system>/) or a predictions.jsonl
file, local or gs://. For every pair: the paired bootstrap difference of ROUGE-1/2/L/Lsum (the same resampled examples
for both) with its 95% interval and the share of resamples B wins, a paired sign-flip permutation test, the differences
per dialogue size, the params.yaml fields that differ, and the examples the two disagree on most. Writes compare.json
and compare.html (the run page's style). Example ids that differ between the files stop it with exit code 2."""

EXAMPLES = """examples:
  flant5 compare runs/local-smoke/eval/lead3 runs/local-smoke/eval/finetuned      # two systems of one run
  flant5 compare runs/sweep-tiny/trial-001 runs/sweep-tiny/trial-003 --out runs/compare/best-two
  flant5 compare gs://BUCKET/runs/a/eval/finetuned/predictions.jsonl runs/b     # a Vertex run against a local one"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="paired comparison of runs: is B better than A, or is it noise?",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("systems", nargs="+", metavar="SYSTEM", help="run folder, eval folder or predictions.jsonl; the first is the baseline")
    p.add_argument("--out", metavar="DIR", help="folder for compare.json and compare.html (default runs/compare/<A>-vs-<B>)")
    p.add_argument("--samples", type=int, default=1000, metavar="N", help="paired bootstrap resamples (default 1000)")
    p.add_argument("--permutations", type=int, default=10_000, metavar="N", help="sign flips of the permutation test (default 10000)")
    p.add_argument("--seed", type=int, default=42, help="seed of the resamples and flips (default 42)")
    p.add_argument("--examples", type=int, default=5, metavar="N",
                   help="disagreeing examples shown each way (default 5)")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from flant5_lib.errors import UserError
    from flant5_lib.workbench.compare_page import compare_runs, summary_lines

    for flag, value, low in (("--samples", args.samples, 10), ("--permutations", args.permutations, 10), ("--examples", args.examples, 0)):
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")
    result = compare_runs(args.systems, args.out, samples=args.samples, permutations=args.permutations, seed=args.seed,
                          n_examples=args.examples)
    for line in summary_lines(result):
        print(line)
    print(f"open {result['out_dir']}/compare.html")
    return 0
