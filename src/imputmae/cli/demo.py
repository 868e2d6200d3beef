"""``imputmae demo-data OUT_DIR``: write the embedded demo cohort as a local GDC mirror."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the embedded demo cohort (a local mirror in gdc-client layout)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default="{}", help='patients per project as JSON, e.g. \'{"DEMO-BRCA": 40}\'')
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    from imputmae.demo import write_demo

    summary = write_demo(args.out, seed=args.seed, n_patients=json.loads(args.sizes) or None)
    print(summary)
    return 0
