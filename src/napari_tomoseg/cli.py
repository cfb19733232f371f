"""The ``tomoseg`` command: every GUI action as a script-friendly command.

argv -> the parser built from one module per subcommand (napari_tomoseg._cli.*) -> that module's
``run(args)`` -> exit code. Bad input exits 1 with one line ``tomoseg: error: ...`` (bad options 2);
no partial output file is ever left behind. Every failure is one line that names the file and
what to do, never a traceback (``--debug`` shows it). Ctrl-C exits 130 and SIGTERM 143, both after
the temporary files are removed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

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


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``tomoseg: error: ...``, without the usage block."""

    def error(self, message: str) -> NoReturn:
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{sub}: " if sub else ""
        hint = f" (tomoseg {sub} --help)" if sub else " (tomoseg --help)"
        self.exit(2, f"tomoseg: error: {where}{message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``tomoseg`` parser; each subcommand's parser carries its module's ``run`` as ``func``."""
    parser = OneLineParser(
        prog="tomoseg", description="Segment tomography volumes of materials into phases."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"napari_tomoseg._cli.{name}")
        module.add_parser(sub).set_defaults(func=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every ``finally`` and context manager cleans up."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests driving main() from a thread): leave it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def error_line(err: BaseException) -> str:
    """The one line ``tomoseg`` prints for ``err``: what failed, on which file, and what to do."""

    if isinstance(err, (CliError, ValueError, ImportError)):
        return _first_line(err)
    if isinstance(err, MemoryError):
        return (
            "out of memory"
            + (f" ({_first_line(err)})" if str(err) else "")
            + "; give a smaller --memory budget or --batch-size, read the volume as zarr "
            "(chunked, read block by block), or crop it"
        )
    if isinstance(err, OSError):
        name = err.filename if err.filename is not None else ""
        what = err.strerror or _first_line(err)
        if name:
            hint = {
                28: "free some space or write elsewhere",  # ENOSPC
                13: "check its permissions or write elsewhere",  # EACCES
                30: "write elsewhere",  # EROFS
            }.get(err.errno or 0, "")
            return f"{name}: {what}" + (f"; {hint}" if hint and hint not in what else "")
        return what
    return f"{type(err).__name__}: {_first_line(err)} (run with --debug for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tomoseg`` with ``argv`` (default: the command line); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and option errors: argparse has printed them
        return int(stop.code) if isinstance(stop.code, int) else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args))
    except Terminated:
        print("tomoseg: terminated; no output was written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("tomoseg: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as err:  # every error is one line (the traceback with --debug)
        if args.debug:
            traceback.print_exc()
        print(f"tomoseg: error: {error_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
