"""Subcommands of ``tomoseg``, one module each; every module exposes ``register(subparsers)``.

Shared helpers (``CliError``, tables, progress bars, model loading) live in ``napari_tomoseg.cli``.
"""
