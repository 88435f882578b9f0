"""Where networks run: the device a stage's ``device`` setting names."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; any other name is passed to torch as it is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
