"""What a training checkpoint holds, in safe formats: tensors in safetensors, the rest JSON.

Optimizer, scheduler and gradient-scaler states are nested dicts of tensors and plain
values; ``pack`` splits one into a JSON skeleton and a flat tensor dict, ``unpack`` puts
it back (dict key types and tuples survive). Random-number states of torch (CPU and
CUDA), Python and NumPy are captured and restored the same way, so a resumed run draws
the same dropout masks as an uninterrupted one. Nothing here is unpickled. This module
knows nothing about the job context or the loop.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed torch (every device), Python and NumPy."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pack(obj: Any, tensors: dict, prefix: str) -> Any:
    """A JSON-able skeleton of ``obj``; its tensors go into ``tensors`` (CPU, contiguous)."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[pack(k, tensors, prefix), pack(v, tensors, prefix)]
                             for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [pack(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unpack(skeleton: Any, tensors: dict) -> Any:
    if isinstance(skeleton, list):
        return [unpack(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unpack(v, tensors) for v in skeleton["__tuple__"])
        return {unpack(k, tensors): unpack(v, tensors) for k, v in skeleton["__dict__"]}
    return skeleton


def rng_state(tensors: dict) -> dict:
    """The random-number states of torch, CUDA, Python and NumPy."""
    import torch

    tensors["rng.torch"] = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    for i, s in enumerate(cuda):
        tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "cuda_devices": len(cuda),
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state: dict, tensors: dict) -> None:
    import torch

    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(state["cuda_devices"])]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def trainable_state(model) -> dict:
    """The parameters that train (every one for full fine-tuning; the LoRA adapters and a
    classifier head for LoRA), tied parameters once."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters()
            if p.requires_grad}


def load_trainable(model, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(path)
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = expected - set(tensors)
    result = model.load_state_dict(tensors, strict=False)
    if missing or result.unexpected_keys:
        bad = sorted(missing)[:3] + sorted(result.unexpected_keys)[:3]
        raise ValueError(f"the checkpoint's weights do not fit this model ({', '.join(bad)})")
