"""Where and in what precision training runs: the device, autocast and the gradient scaler.

``auto`` precision is fp32 on the CPU, bf16 on a CUDA GPU that supports it, fp16 with a
GradScaler on one that does not. Weights stay float32 (mixed precision autocasts the
forward pass only). fp16 on the CPU is an error. This module knows nothing about models.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from llmos.train.errors import RecipeError

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass
class Runtime:
    device: object  # torch.device
    precision: str  # fp32 | bf16 | fp16
    scaler: object | None  # torch.amp.GradScaler for fp16

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device.type, dtype=getattr(torch, _DTYPES[self.precision]))


def resolve(precision: str, device: str | None = None) -> Runtime:
    """The runtime for a recipe's ``precision`` on ``device`` (default: the first CUDA GPU
    when there is one, else the CPU)."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device: cuda was asked for but no CUDA GPU is visible")
    cuda = dev.type == "cuda"
    if precision == "auto":
        precision = "fp32" if not cuda else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision == "fp16" and not cuda:
        raise RecipeError("precision: fp16 needs a CUDA GPU; on the CPU use fp32 or bf16")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise RecipeError("precision: this GPU does not support bf16; use fp16 or auto")
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return Runtime(dev, precision, scaler)
