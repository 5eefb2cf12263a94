"""Loading a model folder for an engine: device and dtype choice, the safe-format check, the
memory-mapped safetensors load through transformers, and the bytes a model holds.

Knows nothing about requests or batching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmos.models.quantized import is_int8, load_int8
from llmos.serve.engines.base import ModelLoadError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ModelLoadError(f"unknown device {device!r}: {e}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but this machine has no CUDA device")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA when supported (else float16), float16 on MPS, float32 on
    the CPU (where half precision is usually slower)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, "
                             f"{', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def check_model_dir(model_dir: str | Path) -> Path:
    """The folder, once it is known to hold a config and safetensors weights."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{str(path)!r} has no config.json: not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        pickles = {".bin", ".pt", ".pth", ".pkl"}
        unsafe = sorted(p.name for p in path.iterdir() if p.suffix in pickles)
        hint = f" (found {', '.join(unsafe)}: pickle files are never loaded)" if unsafe else ""
        raise ModelLoadError(f"{str(path)!r} has no .safetensors weights{hint}; "
                             "llmos serves safetensors only (import GGUF first)")
    return path


def load_pretrained(auto_class: Any, model_dir: Path, device: torch.device, dtype: torch.dtype,
                    **kwargs: Any) -> torch.nn.Module:
    """``auto_class.from_pretrained`` from safetensors only (memory-mapped), in eval mode.
    An int8-quantized folder (``llmos.models.quantized``) loads on the CPU whatever
    ``device`` says: PyTorch's dynamic int8 kernels are CPU kernels."""
    if is_int8(model_dir):
        try:
            return load_int8(auto_class, model_dir, **kwargs)
        except (ValueError, OSError, KeyError) as e:
            raise ModelLoadError(f"cannot load the int8 model {str(model_dir)!r} as "
                                 f"{auto_class.__name__}: {e}") from e
    try:
        model = auto_class.from_pretrained(model_dir, dtype=dtype, use_safetensors=True,
                                           device_map=str(device), **kwargs)
    except (ValueError, OSError, KeyError) as e:
        raise ModelLoadError(f"cannot load {str(model_dir)!r} as {auto_class.__name__}: {e}") from e
    return model.eval()


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{str(model_dir)!r} has no usable tokenizer: {e}") from e


def read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def tensor_bytes(tensors: Any) -> int:
    """Bytes of distinct storages among ``tensors`` (tied weights count once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        total += t.untyped_storage().nbytes()
    return total


def module_bytes(model: torch.nn.Module) -> int:
    return tensor_bytes([*model.parameters(), *model.buffers()])
