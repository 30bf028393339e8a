"""Choice of the torch device."""

from __future__ import annotations

from stemae.errors import InputError


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; a request for an
    absent GPU is an :class:`InputError`."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available to this PyTorch")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device must be cpu, cuda or auto, got {device!r}")
    return device
