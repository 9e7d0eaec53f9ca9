"""What the device runs fast: bf16 matrix products in hardware or not (below the models, the Trainer and the metrics).

bf16 autocast is a large win only where the hardware multiplies bf16 natively: a CPU with AMX or AVX512-BF16, or a
CUDA GPU that supports bf16. Elsewhere (an AVX2-only CPU) PyTorch emulates it and it is ~10x slower than fp32, so
"auto" precisions (the Trainer's `precision`, the IWAE's `nll_precision`) resolve through `native_bf16`."""
from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 matrix products in hardware (so bf16 autocast is faster there, not slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


def resolve_precision(precision: str, device: torch.device, what: str = "precision") -> str:
    """"auto" -> "bf16" where `device` runs it in hardware, else "fp32"; "fp32" / "bf16" pass through."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"{what} must be auto, fp32 or bf16, got {precision!r}")
    return precision
