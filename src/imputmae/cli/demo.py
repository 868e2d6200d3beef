"""``imputmae demo-data OUT_DIR [--size demo|benchmark]``: write the embedded demo cohort as a local GDC mirror."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the embedded demo cohort (a local mirror in gdc-client layout)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["demo", "benchmark"], default="demo",
                   help="demo: the quick demo (make demo); benchmark: hundreds of patients per cohort (docs/demo.md)")
    p.add_argument("--sizes", default="{}",
                   help='patients per project as JSON, overriding --size, e.g. \'{"DEMO-BRCA": 40}\'')
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    from imputmae.demo import write_demo

    summary = write_demo(args.out, seed=args.seed, n_patients=json.loads(args.sizes) or None, size=args.size)
    print(summary)
    return 0
