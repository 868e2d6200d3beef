"""``imputmae config check FILE [FILE ...]``: validate configuration files merged in order."""

from __future__ import annotations

import argparse
import json

from imputmae.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check or print the merged configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate config files (later ones merged over earlier ones)")
    c.add_argument("files", nargs="+", help="YAML files, e.g. config.yaml config.demo.yaml")
    c.add_argument("--print", action="store_true", help="print the merged configuration as JSON")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    cfg = load_config(args.files)
    if args.print:
        print(json.dumps(cfg, indent=2))
    else:
        print(f"config OK: {' + '.join(args.files)} ({len(cfg['cohorts'])} cohort(s))")
    return 0
