"""``imputmae demo-data OUT_DIR [--size demo|benchmark|rehearsal] [--scale demo|paper]``: write the embedded demo
cohort as a local GDC mirror."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the embedded demo cohort (a local mirror in gdc-client layout)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["demo", "benchmark", "rehearsal"], default=None,
                   help="patients: demo (make demo), benchmark (hundreds per cohort) or rehearsal (a few per "
                        "cohort); default: rehearsal with --scale paper, else demo (docs/demo.md)")
    p.add_argument("--scale", choices=["demo", "paper"], default="demo",
                   help="the files' dimensions: demo (small files) or paper (GDC's sizes: 60,660 STAR rows, "
                        "485,577 / 27,578 probes, slides for 1,000 candidate tiles; docs/demo.md, 'Paper scale')")
    p.add_argument("--sizes", default="{}",
                   help='patients per project as JSON, overriding --size, e.g. \'{"DEMO-BRCA": 40}\'')
    p.add_argument("--projects", nargs="+", default=None, metavar="PROJECT",
                   help="write only these projects of --size. Leading ones in the mirror's order (DEMO-BRCA, "
                        "DEMO-UCEC, DEMO-GBM, DEMO-LGG; e.g. DEMO-BRCA DEMO-UCEC, CI's part of the paper-scale "
                        "rehearsal) get the same bytes as in the whole mirror; any other choice is another draw")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    from imputmae.demo import resolve_sizes, write_demo

    sizes = json.loads(args.sizes) or None
    if args.projects:
        every = resolve_sizes(args.size or ("rehearsal" if args.scale == "paper" else "demo"), sizes)
        unknown = sorted(set(args.projects) - set(every))
        if unknown:
            raise SystemExit(f"demo-data --projects: {unknown} not among {sorted(every)}")
        sizes = {k: n for k, n in every.items() if k in args.projects}
    summary = write_demo(args.out, seed=args.seed, n_patients=sizes, size=args.size, scale=args.scale)
    print(summary)
    return 0
