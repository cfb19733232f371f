"""The package's shape, checked from its source: private names stay private, imports flow one way
down the rooms of the core, predictors are built in one room, and light imports stay light.

Every check reads the source with :mod:`ast` (imports inside functions count too) or imports the
package in a fresh interpreter, so a violation anywhere under ``src/napari_tomoseg`` fails here with
the file and line that broke the rule. docs/architecture.md draws the same rules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import napari_tomoseg

PACKAGE = "napari_tomoseg"
SRC = Path(napari_tomoseg.__file__).parent

#: Packages directly under napari_tomoseg whose own names start with an underscore (the front ends
#: are private as a whole): importing from them is fine, importing their underscore modules is not.
PRIVATE_FRONT_ENDS = {"_cli", "_napari"}

#: Top-level modules and packages of napari_tomoseg.core, "rooms", and the rooms each may import.
#: The flow is one way: phases/progress -> io, prep -> model -> segment -> learn, measure -> front
#: ends. learn may use measure.metrics only (see LEARN_MAY_USE); phantom stands apart.
ROOM_IMPORTS: dict[str, set[str]] = {
    "phases": set(),
    "progress": set(),
    "checks": set(),
    "threads": set(),
    "io": {"phases", "progress", "checks"},
    "prep": {"phases", "progress", "checks", "io"},
    "phantom": {"phases", "progress"},
    "model": {"phases", "progress", "checks", "io", "prep"},
    "segment": {"phases", "progress", "checks", "io", "prep", "model"},
    "measure": {"phases", "progress", "checks", "io", "prep", "model", "segment"},
    "learn": {"phases", "progress", "checks", "io", "prep", "model", "segment"},
}
#: Modules of other rooms that learn may import although their room is not in its list.
LEARN_MAY_USE = {f"{PACKAGE}.core.measure.metrics"}

#: Top-level names of GUI libraries the core must never import.
GUI_LIBRARIES = {
    "napari",
    "qtpy",
    "magicgui",
    "superqt",
    "vispy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Import:
    """One imported name: ``module`` (absolute, dotted) and ``name`` (None for ``import module``)."""

    path: Path
    line: int
    module: str
    name: str | None
    asname: str | None = None

    @property
    def target(self) -> str:
        return self.module if self.name is None else f"{self.module}.{self.name}"

    def where(self) -> str:
        what = (
            f"import {self.module}"
            if self.name is None
            else f"from {self.module} import {self.name}"
        )
        return f"{self.path.relative_to(SRC.parent)}:{self.line}: {what}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path, tree: ast.Module | None = None) -> list[Import]:
    """Every import in ``path``, at any depth (lazy imports inside functions count)."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree or _tree(path)):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, a.name, None, a.asname) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found += [Import(path, node.lineno, base, a.name, a.asname) for a in node.names]
    return found


def _private_part(dotted: str) -> str | None:
    """The first underscore-prefixed part of a dotted name inside napari_tomoseg, if any (the
    private front-end packages themselves excepted)."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    for i, part in enumerate(parts[1:], start=1):
        if _is_private(part) and not (i == 1 and part in PRIVATE_FRONT_ENDS):
            return part
    return None


def _is_module(dotted: str) -> bool:
    where = SRC.parent / Path(*dotted.split("."))
    return where.is_dir() or where.with_suffix(".py").is_file()


def _module_aliases(imports: list[Import]) -> dict[str, str]:
    """Local names bound to napari_tomoseg modules: ``from napari_tomoseg.core import io`` binds
    ``io``, ``import napari_tomoseg.core.io as tio`` binds ``tio`` and ``import napari_tomoseg.x``
    binds ``napari_tomoseg``."""
    aliases: dict[str, str] = {}
    for imp in imports:
        if imp.module.split(".")[0] != PACKAGE:
            continue
        if imp.name is None:
            if imp.asname:
                aliases[imp.asname] = imp.module
            else:
                aliases[PACKAGE] = PACKAGE
        elif _is_module(imp.target):
            aliases[imp.asname or imp.name] = imp.target
    return aliases


def _private_uses(path: Path, tree: ast.Module | None = None) -> list[str]:
    """Uses in ``path`` of another module's underscore-prefixed names: imported, or reached as an
    attribute of an imported module (``io._metadata``)."""
    tree = tree or _tree(path)
    imports = _imports(path, tree)
    bad = [imp.where() for imp in imports if _private_part(imp.target)]
    aliases = _module_aliases(imports)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        chain = []
        value: ast.expr = node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in aliases:
            owner = ".".join([aliases[value.id], *reversed(chain)])
            bad.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {owner}.{node.attr}")
    return bad


def test_no_module_uses_another_modules_private_names() -> None:
    bad = [use for path in _sources() for use in _private_uses(path)]
    assert not bad, "underscore names used across modules (make them public or move them):\n" + (
        "\n".join(bad)
    )


def test_the_private_name_scan_finds_what_it_should() -> None:
    # The scan itself: a known violation of each kind is reported, the allowed forms are not.
    code = (
        "import napari_tomoseg.core.io\n"
        "import napari_tomoseg.core.io as tio\n"
        "from napari_tomoseg import __version__\n"
        "from napari_tomoseg.core import io\n"
        "from napari_tomoseg.core.io.volumes import _slab_depth\n"
        "from napari_tomoseg._napari._common import session\n"
        "from napari_tomoseg._napari.state import ViewerState\n"
        "x = io._metadata\n"
        "y = tio._check_voxel_size\n"
        "z = napari_tomoseg.core.io._remove\n"
        "w = self._private, io.read_volume, ViewerState._signals\n"
    )
    found = _private_uses(SRC / "core" / "io" / "volumes.py", ast.parse(code))
    text = "\n".join(found)
    assert "import _slab_depth" in text and "_napari._common" in text
    assert "core.io._metadata" in text and "core.io._check_voxel_size" in text
    assert "core.io._remove" in text
    assert len(found) == 5, text


def _room_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[:2] != [PACKAGE, "core"] or len(parts) < 3:
        return None
    return parts[2]


def _core_sources() -> list[Path]:
    return [p for p in _sources() if p.relative_to(SRC).parts[0] == "core"]


def test_the_core_never_imports_a_gui_library() -> None:
    bad = [
        imp.where()
        for path in _core_sources()
        for imp in _imports(path)
        if imp.module.split(".")[0] in GUI_LIBRARIES
    ]
    assert not bad, "core modules importing GUI libraries:\n" + "\n".join(bad)


def test_the_core_never_imports_the_front_ends() -> None:
    bad = [
        imp.where()
        for path in _core_sources()
        for imp in _imports(path)
        if imp.target.split(".")[0] == PACKAGE
        and imp.target.split(".")[1:2] not in ([], ["core"], ["__version__"])
    ]
    assert not bad, "core modules importing the CLI or napari front ends:\n" + "\n".join(bad)


def test_every_core_module_belongs_to_a_known_room() -> None:
    rooms = {_room_of(_module_name(p)) for p in _core_sources()} - {None}
    assert rooms == set(ROOM_IMPORTS), (
        "rooms under core/ and the table in this test differ; add the new room to ROOM_IMPORTS "
        "(and to docs/architecture.md)"
    )


def _room_violations() -> list[str]:
    bad = []
    for path in _core_sources():
        room = _room_of(_module_name(path))
        if room is None:
            continue  # core/__init__.py
        allowed = ROOM_IMPORTS[room] | {room}
        for imp in _imports(path):
            target = imp.target
            other = _room_of(target)
            if other is None or other in allowed:
                continue
            if room == "learn" and any(target.startswith(m) for m in LEARN_MAY_USE):
                continue
            bad.append(f"{imp.where()}  ({room} may not import {other})")
    return bad


def test_rooms_import_only_the_rooms_below_them() -> None:
    bad = _room_violations()
    assert not bad, "imports against the flow of the rooms:\n" + "\n".join(bad)


def test_the_room_table_flows_one_way() -> None:
    # No two rooms may import each other, directly or through others: the table is acyclic.
    def reachable(room: str) -> set[str]:
        seen: set[str] = set()
        todo = list(ROOM_IMPORTS[room])
        while todo:
            r = todo.pop()
            if r not in seen:
                seen.add(r)
                todo += ROOM_IMPORTS[r]
        return seen

    for room in ROOM_IMPORTS:
        assert room not in reachable(room), room
    for low in ("io", "prep", "model"):
        assert not {"segment", "learn", "measure"} & (ROOM_IMPORTS[low] | reachable(low))
    assert not {"learn", "measure", "phantom"} & reachable("segment")
    assert "learn" not in reachable("measure")


def _predictor_calls(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "Predictor":
                lines.append(node.lineno)
    return lines


def test_predictors_are_constructed_only_in_the_segment_room() -> None:
    segment = SRC / "core" / "segment"
    bad = [
        f"{path.relative_to(SRC.parent)}:{line}: Predictor(...)"
        for path in _sources()
        if segment not in path.parents
        for line in _predictor_calls(path)
    ]
    assert any(_predictor_calls(p) for p in segment.rglob("*.py")), "the scan finds no Predictor"
    assert not bad, "predictors built outside core/segment (go through its pipeline):\n" + (
        "\n".join(bad)
    )


_PROBE = """
import importlib, json, pkgutil, sys
name, walk = sys.argv[1], sys.argv[3] == "walk"
module = importlib.import_module(name)
if walk and hasattr(module, "__path__"):
    for info in pkgutil.walk_packages(module.__path__, name + "."):
        importlib.import_module(info.name)
gui = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"gui": gui, "torch": "torch" in sys.modules}))
"""

#: Packages and modules that must import without torch (with all their submodules, except for the
#: core package itself, which is imported alone): opening napari (reader, writer, sample data) and
#: reading files must stay quick.
TORCH_FREE = [
    f"{PACKAGE}.core",
    f"{PACKAGE}.core.threads",
    f"{PACKAGE}.core.phases",
    f"{PACKAGE}.core.progress",
    f"{PACKAGE}.core.io",
    f"{PACKAGE}.core.prep",
    f"{PACKAGE}.core.phantom",
]
#: Rooms whose modules use torch: they are imported whole, and still must not pull in a GUI.
WITH_TORCH = [f"{PACKAGE}.core.{room}" for room in ("model", "segment", "learn", "measure")]


def _probe(name: str) -> dict[str, object]:
    """What importing ``name`` (and, below the core package, all its submodules) loads, in a fresh
    interpreter."""
    walk = "walk" if name != f"{PACKAGE}.core" else "alone"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, name, json.dumps(sorted(GUI_LIBRARIES)), walk],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", TORCH_FREE)
def test_light_rooms_import_neither_torch_nor_a_gui(name: str) -> None:
    found = _probe(name)
    assert found == {"gui": [], "torch": False}, f"importing {name} (and submodules): {found}"


@pytest.mark.parametrize("name", WITH_TORCH)
def test_rooms_import_no_gui_library(name: str) -> None:
    found = _probe(name)
    assert found["gui"] == [], f"importing {name} (and submodules) loads {found['gui']}"


@pytest.mark.parametrize(
    "name",
    [
        f"{PACKAGE}.core.prep.intensity",
        f"{PACKAGE}.core.learn.train",
        f"{PACKAGE}.core.model.files",
    ],
)
def test_normalisation_training_and_model_files_load_without_the_io_room(name: str) -> None:
    # A finite check or a model load must not drag in zarr / tifffile / the file readers.
    code = (
        f"import sys, importlib; importlib.import_module({name!r}); "
        "print(sorted(m for m in ('zarr', 'tifffile', 'napari_tomoseg.core.io') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
