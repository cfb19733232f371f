"""The ``segment`` room: a model and a volume in, phase labels (and probabilities) out, region by region.

``Segmenter(model, InferenceConfig(...)).plan(volume)`` -> ``plan.run(out)`` (pipeline.py) over
device.py (device, precision), predictor.py (the network on its device), tiling.py (pure tiling
functions), memory.py (the memory plan), options.py (options resolved once), strategies.py (one
strategy per mode), outputs.py (label and uncertainty stores), distributed.py (dask).

May import: ``core.io``, ``core.prep``, ``core.model``, ``core.phases``, ``core.progress``. Never
``learn``, ``measure`` or any front end (they import this room).
"""

from napari_tomoseg.core.segment.device import (
    Precision,
    cpu_has_native_bf16,
    is_out_of_memory,
    precision_name,
    resolve_device,
    resolve_precision,
)
from napari_tomoseg.core.segment.memory import (
    RUNTIME_BYTES,
    MemoryPlan,
    format_bytes,
    parse_memory,
    plan_memory,
)
from napari_tomoseg.core.segment.options import (
    InferenceConfig,
    ResolvedInference,
    Stitch,
    resolve,
    resolve_tta,
)
from napari_tomoseg.core.segment.outputs import (
    EntropyWriter,
    PhaseCounter,
    PredictionStores,
    entropy,
    prediction_stores,
)
from napari_tomoseg.core.segment.pipeline import (
    Segmenter,
    SegmentPlan,
    SegmentResult,
    iter_segment,
    segment_volume,
)
from napari_tomoseg.core.segment.predictor import (
    Predictor,
    Symmetry,
    TestTimeAugmented,
    apply_symmetry,
    average_over_symmetries,
    fold_batch_norm,
    invert_symmetry,
    run_halving,
    tta_symmetries,
)
from napari_tomoseg.core.segment.strategies import output_chunks, region_grid
from napari_tomoseg.core.segment.tiling import (
    ORTHO_TILE,
    PredictFn,
    predict_tiled,
    tile_starts,
    window,
)

__all__ = [
    "ORTHO_TILE",
    "RUNTIME_BYTES",
    "EntropyWriter",
    "InferenceConfig",
    "MemoryPlan",
    "PhaseCounter",
    "Precision",
    "PredictFn",
    "PredictionStores",
    "Predictor",
    "ResolvedInference",
    "SegmentPlan",
    "SegmentResult",
    "Segmenter",
    "Stitch",
    "Symmetry",
    "TestTimeAugmented",
    "apply_symmetry",
    "average_over_symmetries",
    "cpu_has_native_bf16",
    "entropy",
    "fold_batch_norm",
    "format_bytes",
    "invert_symmetry",
    "is_out_of_memory",
    "iter_segment",
    "output_chunks",
    "parse_memory",
    "plan_memory",
    "precision_name",
    "predict_tiled",
    "prediction_stores",
    "region_grid",
    "resolve",
    "resolve_device",
    "resolve_precision",
    "resolve_tta",
    "run_halving",
    "segment_volume",
    "tile_starts",
    "tta_symmetries",
    "window",
]
