"""``tomoseg gui [VOLUME]``: napari with the napari-tomoseg widgets docked and a volume (or the sample).

napari and a Qt binding installed? (else one line with the pip command, exit 2) -> argument check
(before any window opens) -> our reader preferred while this napari runs -> napari.Viewer -> open VOLUME
with our reader (or the synthetic sample) -> dock every widget (tabbed, Segment in front) -> napari.run().
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_tomoseg._cli.common import CliError

PLUGIN = "napari-tomoseg"
#: What installs napari, a Qt binding and everything the widgets need (the ``napari`` extra).
INSTALL_NAPARI = 'pip install "napari-tomoseg[napari]"'
#: Exit code when the GUI's packages are missing: the environment, not the input, is wrong.
MISSING_PACKAGE_EXIT = 2
#: Docked first, in this order; any other widget of the manifest follows.
FIRST = ("Segment", "Annotate", "Fine-tune")


def _widget_names() -> list[str]:
    from importlib.resources import files

    import yaml

    manifest = yaml.safe_load((files("napari_tomoseg") / "napari.yaml").read_text())
    names = [w["display_name"] for w in manifest["contributions"].get("widgets", [])]
    return [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]


def missing_gui_packages() -> str | None:
    """What is missing to open the GUI, as one line with the pip command; None if nothing is."""
    try:
        import napari  # noqa: F401
    except ImportError:
        return f"napari is not installed: {INSTALL_NAPARI}"
    try:
        import qtpy  # noqa: F401  (raises when no Qt binding is installed)
    except ImportError:
        return f"napari needs a Qt binding (PyQt6), which is not installed: {INSTALL_NAPARI}"
    try:
        import yaml  # noqa: F401
    except ImportError:
        return f"PyYAML is not installed: {INSTALL_NAPARI}"
    return None


def check_volume_path(volume: str) -> Path:
    """The path if napari-tomoseg's reader can open it; CliError (one line) otherwise."""
    from napari_tomoseg._napari.reader import SUFFIXES, napari_get_reader

    p = Path(volume).expanduser()
    if not p.exists():
        raise CliError(f"{p} does not exist")
    if napari_get_reader(str(p)) is None:
        raise CliError(
            f"cannot open {p}: expected a volume file ({', '.join(SUFFIXES)}) or a folder of TIFF "
            "slices or a .zarr store"
        )
    return p


def open_viewer(viewer: Any, volume: Path | None = None) -> list[Any]:
    """Load ``volume`` (or the synthetic sample) into ``viewer`` and dock the widgets; returns them."""
    if volume is not None:
        viewer.open(str(volume), plugin=PLUGIN)
    else:
        viewer.open_sample(PLUGIN, "composite")
    widgets, docks = [], []
    for i, name in enumerate(_widget_names()):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=i > 0)
        widgets.append(widget)
        docks.append(dock)
    if docks:
        docks[0].raise_()  # Segment in front: it is the first thing a user does
    return widgets


def run(args: argparse.Namespace) -> int:
    """Open napari with the widgets and the volume; returns when the window is closed."""
    missing = missing_gui_packages()
    if missing is not None:
        print(f"tomoseg: error: {missing}", file=sys.stderr)
        return MISSING_PACKAGE_EXIT
    volume = check_volume_path(args.volume) if args.volume else None
    import napari

    from napari_tomoseg._napari.reader import prefer_for_session

    # File > Open in this window reads TIFF, zarr, HDF5 and .npy with our reader (voxel size, lazy
    # big volumes) instead of asking which plugin to use; the user's saved napari settings are kept.
    prefer_for_session()
    viewer = napari.Viewer(title="napari-tomoseg")
    try:
        open_viewer(viewer, volume)
    except (ValueError, OSError) as err:
        viewer.close()
        raise CliError(f"cannot open {volume}: {err}") from err
    napari.run()
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``gui`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "gui",
        help="open napari with the napari-tomoseg widgets and a volume (or the synthetic sample)",
        description="Open napari with the Segment, Annotate, Fine-tune (and other napari-tomoseg) "
        "widgets docked, and VOLUME loaded with its voxel size; without VOLUME, the synthetic "
        "glass-fibre composite sample with its ground truth.",
    )
    p.add_argument(
        "volume",
        nargs="?",
        help="a TIFF stack, a folder of TIFF slices, .npy, .zarr or .h5 volume (default: the sample)",
    )
    return p
