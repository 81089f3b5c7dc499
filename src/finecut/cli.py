"""The `finecut` command line. Imports everything; imported by nothing."""

from __future__ import annotations

import argparse
import logging
import sys

from finecut import __version__
from finecut.errors import FinecutError

log = logging.getLogger("finecut")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finecut", description=__doc__)
    parser.add_argument("--version", action="version", version=f"finecut {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FinecutError as exc:
        print(f"finecut: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finecut: interrupted", file=sys.stderr)
        return 130
