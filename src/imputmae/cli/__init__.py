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
from typing import Any

from imputmae import __version__
from imputmae.config import ConfigError

# Module names under imputmae.cli, in the order their subcommands are listed by --help.
SUBCOMMANDS: tuple[str, ...] = ("config", "demo", "gdc", "table2", "omics", "wsi", "splits", "pretrain", "table4",
                                "survival", "report")


class UserError(Exception):
    """A problem the user can fix (bad input, missing file): printed as one line, exit status 2."""


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--config YAML...`` (files merged in order) or ``--config-json JSON`` (what a Snakemake rule passes)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", nargs="+", metavar="YAML", help="config files, later ones merged over earlier ones")
    g.add_argument("--config-json", metavar="JSON", help="the merged config as JSON (what Snakemake passes)")


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The validated configuration from :func:`add_config_arguments`' flags (JSON: only the sections given)."""
    import json

    from imputmae.config import load_config, validate_config

    if args.config_json:
        partial = json.loads(args.config_json)  # the rule hands over only the sections this step reads
        return validate_config(partial, sections=list(partial))
    return load_config(args.config)


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
