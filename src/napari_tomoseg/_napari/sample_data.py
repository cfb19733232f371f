"""Sample data for File > Open Sample > napari-tomoseg. Imports numpy only (no torch, no Qt).

A real CT volume is not bundled: none with a licence that clearly allows redistribution inside a
package could be vetted here, and nothing may be downloaded at run time.
"""

from __future__ import annotations

from typing import Any

from napari_tomoseg.core.phases import COMPOSITE_PHASES

#: The published glass-fibre scan's voxel size; the phantom's 4-voxel fibre radius is then 5 µm.
VOXEL_UM = 1.3


def make_composite(seed: int = 0) -> list[tuple[Any, dict[str, Any], str]]:
    """A 128³ synthetic glass-fibre composite (uint8, 1.3 µm voxels) and its ground-truth phases."""
    from napari.utils.colormaps import DirectLabelColormap

    from napari_tomoseg.core.phantom.composite import make_phantom

    ph = make_phantom(seed=seed)
    colours: dict[int | None, str] = {
        None: "transparent",
        0: "transparent",
        **COMPOSITE_PHASES.colour_dict(),
    }
    geometry = {"scale": (VOXEL_UM,) * 3, "units": ("µm",) * 3}
    return [
        (ph.volume, {"name": "composite", "contrast_limits": (0, 255), **geometry}, "image"),
        (
            ph.labels,
            {
                "name": "ground truth",
                "opacity": 0.4,
                "colormap": DirectLabelColormap(color_dict=colours),
                "features": {
                    "index": [0, *COMPOSITE_PHASES.ids],
                    "phase": ["none", *COMPOSITE_PHASES.names],
                },
                "metadata": {"tomoseg_phases": COMPOSITE_PHASES.to_json()},
                "visible": False,
                **geometry,
            },
            "labels",
        ),
    ]
