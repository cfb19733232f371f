"""Compute devices offered by the widgets, and what torch finds (looked up in a worker thread).

widget form -> one of :data:`DEVICES` -> the core resolves it (``auto``: cuda, then mps, then cpu);
:func:`detect_devices` (imports torch) describes what is there, for the form's "found: ..." line.
"""

from __future__ import annotations

__all__ = ["DEVICES", "detect_devices"]

#: The device choices of the widgets' forms (``core.segment.device.resolve_device`` accepts each).
DEVICES = ("auto", "cpu", "cuda", "mps")


def detect_devices() -> str:
    """A short description of the compute devices torch can use (imports torch: call it in a worker)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found += [
            f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
        ]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps (Apple GPU)")
    found.append(f"cpu ({torch.get_num_threads()} threads)")
    return ", ".join(found)
