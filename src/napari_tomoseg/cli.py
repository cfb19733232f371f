"""The ``tomoseg`` command: every GUI action as a script-friendly command.

argv -> the parser built from one module per subcommand (napari_tomoseg._cli.*) -> that module's
``run(args)`` -> exit code. Bad input exits 1 with one line ``tomoseg: error: ...``; no partial output
file is ever left behind.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from napari_tomoseg import __version__
from napari_tomoseg._cli.common import CliError

#: The subcommands, in the order ``tomoseg --help`` lists them; each is ``napari_tomoseg._cli.<name>``.
COMMANDS: tuple[str, ...] = (
    "demo",
    "segment",
    "evaluate",
    "measure",
    "synth",
    "info",
    "clean",
    "train",
    "suggest",
    "gui",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``tomoseg`` parser; each subcommand's parser carries its module's ``run`` as ``func``."""
    parser = argparse.ArgumentParser(
        prog="tomoseg", description="Segment tomography volumes of materials into phases."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"napari_tomoseg._cli.{name}")
        module.add_parser(sub).set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tomoseg`` with ``argv`` (default: the command line); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("tomoseg: interrupted; no output was written", file=sys.stderr)
        return 130
    except (
        CliError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PermissionError,
        ImportError,
    ) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"tomoseg: error: {msg}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"tomoseg: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
