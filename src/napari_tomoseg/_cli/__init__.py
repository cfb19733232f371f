"""Subcommands of ``tomoseg``, one module each, over the headless core.

Every module exposes ``add_parser(subparsers)`` (adds the subcommand, returns its parser) and
``run(args) -> int`` (the exit code). Shared helpers (``CliError``, option parsing, tables, progress
bars, model loading) live in :mod:`napari_tomoseg._cli.common`; :mod:`napari_tomoseg.cli` builds the
parser from these modules and turns a ``CliError`` into one line on stderr.
"""
