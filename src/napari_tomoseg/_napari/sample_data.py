"""Sample data for File > Open Sample > napari-tomoseg. Imports numpy only (no torch, no Qt)."""

from __future__ import annotations

from typing import Any

from napari_tomoseg.core.phases import COMPOSITE_PHASES


def make_composite(seed: int = 0) -> list[tuple[Any, dict[str, Any], str]]:
    """A 128³ synthetic glass-fibre composite (uint8) and its ground-truth phases."""
    from napari_tomoseg.core.synthetic import make_phantom

    ph = make_phantom(seed=seed)
    colours: dict[int | None, str] = {
        None: "transparent",
        0: "transparent",
        **COMPOSITE_PHASES.colour_dict(),
    }
    return [
        (ph.volume, {"name": "composite", "contrast_limits": (0, 255)}, "image"),
        (
            ph.labels,
            {
                "name": "ground truth",
                "opacity": 0.4,
                "colormap": colours,
                "features": {
                    "index": [0, *COMPOSITE_PHASES.ids],
                    "phase": ["none", *COMPOSITE_PHASES.names],
                },
                "visible": False,
            },
            "labels",
        ),
    ]
