"""Where networks run: the device a stage's ``device`` setting names, and the precision it computes in."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; any other name is passed to torch as it is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_names() -> list[str]:
    """The devices a benchmark times by default: the CPU, and CUDA when present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def cpu_has_bfloat16() -> bool:
    """Native bfloat16 arithmetic on this CPU (AVX-512 BF16 or AMX); without it bfloat16 is emulated and slow."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def mixed_dtypes(device: torch.device) -> list[torch.dtype]:
    """The mixed precisions a device has natively: float16 (and bfloat16 where supported) on CUDA, bfloat16 on a
    CPU with native bfloat16 (benchmarks time each against float32)."""
    if device.type == "cuda":
        return [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
    return [torch.bfloat16] if device.type == "cpu" and cpu_has_bfloat16() else []


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def precision_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype a stage runs with; None for float32. ``auto``: bfloat16 where the hardware has it (a CPU
    with native bfloat16, a CUDA card that supports it), float16 on a CUDA card without bfloat16, float32
    elsewhere. Training under float16 scales its losses (``loss_scaler``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        native = mixed_dtypes(device)
        return torch.bfloat16 if torch.bfloat16 in native else (native[0] if native else None)
    return None if precision == "float32" else getattr(torch, precision)


def precision_name(device: torch.device, precision: str) -> str:
    """What ``precision`` means on ``device``: float32, bfloat16 or float16 (``auto`` resolved)."""
    dtype = precision_dtype(device, precision)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def loss_scaler(device: torch.device | str) -> torch.amp.GradScaler:
    """A gradient scaler for the training loop running here: active under float16 autocast (whose narrow range
    flushes small gradients to zero), a pass-through otherwise, so loops call it the same way in every precision."""
    kind = torch.device(device).type
    active = torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16
    return torch.amp.GradScaler(kind, enabled=active)


def scaled_step(scaler: torch.amp.GradScaler, optimiser: torch.optim.Optimizer, *losses: torch.Tensor) -> None:
    """Backward through every loss (scaled when float16 needs it), then one optimiser step; a step whose gradients
    overflowed is skipped and the scale lowered, as GradScaler does."""
    optimiser.zero_grad(set_to_none=True)
    for loss in losses:
        scaler.scale(loss).backward()
    scaler.step(optimiser)
    scaler.update()


@contextlib.contextmanager
def precision_scope(device: torch.device, precision: str) -> Iterator[torch.dtype | None]:
    """Mixed precision for a whole stage: matrix products and convolutions in the chosen dtype (weights, losses and
    reductions stay float32, as torch.autocast does); yields that dtype (None: float32)."""
    dtype = precision_dtype(device, precision)
    print(
        f"precision: {'float32' if dtype is None else str(dtype).removeprefix('torch.')} on {device}", file=sys.stderr
    )
    # No weight cache: the scope spans whole training loops, and autocast's cache keeps the first cast of each
    # weight until the scope ends, so training would go on with the weights of its first step.
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
        yield dtype


def fused_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with every batch norm that follows a convolution folded into that convolution's
    weights (the same function; on a CPU the channels-last batch norm took a quarter of a small CNN's inference)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, torch.nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(conv, norm), torch.nn.Identity()
    return fused
