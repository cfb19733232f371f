"""The phase table: which ids mean which material phase, with names and display colours.

Id 0 is reserved: "not annotated" in annotations, "outside the volume/mask" in predictions.
Phases are numbered 1..C. The table travels inside every model file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Colour-blind friendly defaults (Okabe-Ito), assigned in order to phases 1, 2, 3, ...
DEFAULT_COLOURS: tuple[str, ...] = (
    "#999999",  # grey
    "#e69f00",  # orange
    "#56b4e9",  # sky blue
    "#009e73",  # green
    "#f0e442",  # yellow
    "#0072b2",  # blue
    "#d55e00",  # vermillion
    "#cc79a7",  # pink
)
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
MAX_PHASES = 254  # ids must fit uint8 with 0 reserved


@dataclass(frozen=True)
class Phase:
    """One material phase: its id in label volumes (1..C), a name and a ``#rrggbb`` colour."""

    id: int
    name: str
    colour: str

    def __post_init__(self) -> None:
        if not 1 <= self.id <= MAX_PHASES:
            raise ValueError(
                f"phase id must be in 1..{MAX_PHASES} (0 means 'not annotated'), got {self.id}"
            )
        if not self.name or not self.name.strip():
            raise ValueError(f"phase {self.id} needs a non-empty name")
        if not _HEX.match(self.colour):
            raise ValueError(
                f"phase {self.name!r}: colour must look like '#rrggbb', got {self.colour!r}"
            )


@dataclass(frozen=True)
class PhaseTable:
    """An ordered set of phases with ids exactly 1..C."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if len(self.phases) < 1:
            raise ValueError("a phase table needs at least one phase")
        ids = [p.id for p in self.phases]
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"phase ids must be 1..C in order, got {ids}")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")

    @classmethod
    def from_names(cls, names: Sequence[str], colours: Sequence[str] | None = None) -> PhaseTable:
        """Build a table from names (ids 1..C in order), with default colours where none are given."""
        if colours is None:
            colours = [DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)] for i in range(len(names))]
        if len(colours) != len(names):
            raise ValueError(f"got {len(names)} phase names but {len(colours)} colours")
        return cls(
            tuple(Phase(i + 1, n, c) for i, (n, c) in enumerate(zip(names, colours, strict=True)))
        )

    @classmethod
    def from_json(cls, items: Iterable[dict[str, object]]) -> PhaseTable:
        """Inverse of :meth:`to_json`."""
        try:
            return cls(tuple(Phase(int(d["id"]), str(d["name"]), str(d["colour"])) for d in items))  # type: ignore[call-overload]
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed phase table: {err}") from err

    def to_json(self) -> list[dict[str, object]]:
        return [{"id": p.id, "name": p.name, "colour": p.colour} for p in self.phases]

    def __len__(self) -> int:
        return len(self.phases)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.phases)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(p.id for p in self.phases)

    def id_of(self, name: str) -> int:
        """The id of the phase called ``name`` (case-insensitive)."""
        for p in self.phases:
            if p.name.lower() == name.lower():
                return p.id
        raise ValueError(f"no phase named {name!r}; this table has {list(self.names)}")

    def colour_dict(self) -> dict[int, str]:
        """``{id: colour}`` for display (napari labels layers), with 0 transparent-by-convention."""
        return {p.id: p.colour for p in self.phases}


#: The phases of the synthetic glass-fibre composite and of the bundled model.
COMPOSITE_PHASES = PhaseTable.from_names(
    ("matrix", "fibre", "pore"), ("#8c8c8c", "#e69f00", "#0072b2")
)
