"""The ``imputmae`` command line: one subcommand per pipeline step.

Each module listed in :data:`SUBCOMMANDS` defines ``register(subparsers)``, which adds its parser(s) and sets
``func``: a function ``(args) -> int`` that parses nothing more, calls the library once, and writes the outputs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from imputmae import __version__
from imputmae.config import ConfigError

# Module names under imputmae.cli, in the order their subcommands are listed by --help.
SUBCOMMANDS: tuple[str, ...] = ("config_cmd", "demo", "gdc", "omics", "wsi", "model", "finetune", "cox_baseline", "table3",
                                 "table3_rows", "predict", "impute", "report")


class UserError(Exception):
    """A problem the user can fix (bad input, missing file): printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imputmae",
        description="impuTMAE pipeline steps. Snakemake rules call these; each also runs by hand.",
    )
    parser.add_argument("--version", action="version", version=f"imputmae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"imputmae.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"imputmae {args.command}: error: {exc}", file=sys.stderr)
        return 2
