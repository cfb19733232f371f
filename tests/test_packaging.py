"""Packaging: every import is a declared dependency, the metadata says what users need, and a
missing optional package is one line with the pip command that installs it.

pyproject.toml + the imports of src/ (AST) -> declared distributions; LICENSE, CITATION.cff;
``tomoseg gui`` in a subprocess where napari (or Qt) cannot be imported -> exit 2, the pip command.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_tomoseg"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]


def _dist_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot read the name of requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _declared() -> set[str]:
    names = {_dist_name(r) for r in PROJECT["dependencies"]}
    for requirements in EXTRAS.values():
        names |= {_dist_name(r) for r in requirements}
    return names


def _imported_top_level_modules() -> dict[str, set[str]]:
    """Top-level module name -> the files (relative to src/) that import it, absolute imports only."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(
                    str(path.relative_to(PACKAGE.parent))
                )
    return found


def test_every_imported_package_is_a_declared_dependency() -> None:
    imported = _imported_top_level_modules()
    third_party = {
        m: files
        for m, files in imported.items()
        if m not in sys.stdlib_module_names and m != "napari_tomoseg" and m != "__future__"
    }
    # Sanity: the walk sees the imports we know are there, so an empty result cannot pass.
    assert {"numpy", "torch", "zarr", "napari"} <= set(third_party)
    distributions = packages_distributions()
    declared = _declared()
    problems = []
    for module, files in sorted(third_party.items()):
        dists = {_dist_name(d) for d in distributions.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported in {sorted(files)}) is not installed")
        elif not dists & declared:
            problems.append(
                f"{module} (distribution {sorted(dists)}, imported in {sorted(files)[:3]}) is not "
                "declared in pyproject.toml's dependencies or extras"
            )
    assert not problems, "\n".join(problems)


def test_the_napari_extra_holds_napari_a_qt_binding_and_the_widgets_imports() -> None:
    napari = {_dist_name(r) for r in EXTRAS["napari"]}
    assert "napari" in napari
    assert any("[pyqt6]" in r for r in EXTRAS["napari"]) or "pyqt6" in napari
    # The Qt stack is optional: never a core dependency.
    core = {_dist_name(r) for r in PROJECT["dependencies"]}
    assert not core & {"napari", "pyqt6", "pyqt5", "pyside6", "qtpy", "magicgui", "matplotlib"}


def test_the_test_extra_installs_everything_the_napari_extra_does() -> None:
    # The tests drive the real widgets: `pip install -e ".[test]"` alone must be enough.
    assert set(EXTRAS["napari"]) <= set(EXTRAS["test"]), set(EXTRAS["napari"]) - set(EXTRAS["test"])


def test_every_extra_named_in_a_message_exists() -> None:
    """An error that says ``pip install "napari-tomoseg[X]"`` must name a real extra."""
    named: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for extra in re.findall(r"napari-tomoseg\[([A-Za-z0-9_-]+)\]", path.read_text("utf-8")):
            named.setdefault(extra, set()).add(path.name)
    assert "napari" in named  # tomoseg gui's message
    missing = {e: sorted(f) for e, f in named.items() if e not in EXTRAS}
    assert not missing, f"extras named in messages but not in pyproject.toml: {missing}"


def test_requires_python_is_3_11_or_newer() -> None:
    assert PROJECT["requires-python"] == ">=3.11"
    versions = {
        c.rsplit("::", 1)[1].strip()
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert "3.11" in versions
    assert all(tuple(map(int, v.split("."))) >= (3, 11) for v in versions), versions


def test_project_urls_point_at_the_repository() -> None:
    urls = PROJECT["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    assert all(
        u.startswith("https://github.com/napari-tomoseg/napari-tomoseg") for u in urls.values()
    )


def test_license_is_bsd_3_clause() -> None:
    assert PROJECT["license"] == "BSD-3-Clause"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2026, the napari-tomoseg developers" in text
    assert "Neither the name of the copyright holder" in text


def test_citation_cff_cites_the_software_and_the_method_paper() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == "napari-tomoseg"
    assert cff["license"] == PROJECT["license"]
    assert cff["repository-code"] == PROJECT["urls"]["Source"]
    assert cff["authors"] == [{"name": "the napari-tomoseg developers"}]
    paper = cff["preferred-citation"]
    assert paper["doi"] == "10.3389/fmats.2021.761229"
    assert paper["title"].startswith(
        "A Modular U-Net for Automated Segmentation of X-Ray Tomography"
    )
    assert paper["journal"] == "Frontiers in Materials"
    assert (paper["year"], paper["volume"]) == (2021, 8)
    assert [a["family-names"] for a in paper["authors"]] == [
        "Bertoldo",
        "Decencière",
        "Ryckelynck",
        "Proudhon",
    ]


@pytest.mark.parametrize(
    ("hidden", "says"),
    [("napari", "napari is not installed"), ("qtpy", "Qt binding")],
)
def test_gui_without_napari_prints_the_pip_command_and_exits_2(
    tmp_path: Path, hidden: str, says: str
) -> None:
    # None in sys.modules makes `import napari` (or qtpy) raise ImportError, as if not installed.
    code = (
        "import sys\n"
        f"sys.modules[{hidden!r}] = None\n"
        "from napari_tomoseg.cli import main\n"
        "sys.exit(main(['gui']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert says in lines[0]
    assert lines[0].endswith('pip install "napari-tomoseg[napari]"')
    assert done.stdout == ""


def test_readme_quick_start_installs_napari_and_runs_the_ci_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1 and blocks[0][0] == "bash", blocks
    commands = [line for line in blocks[0][1].splitlines() if line.strip()]
    assert len(commands) == 2, commands
    install, test = commands
    extra = re.search(r'pip install -e "\.\[(\w+)\]"', install)
    assert (
        extra
        and extra.group(1) in EXTRAS
        and "napari" in {_dist_name(r) for r in EXTRAS[extra.group(1)]}
    ), install
    assert install.endswith("tomoseg demo")
    # .ci/run runs the README's test command exactly as written there.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci.splitlines(), test
    after = section.split("```", 2)[2]
    assert "`tomoseg gui [VOLUME]`" in after
