"""The on-disk int8 format of llmos and its loading (PyTorch dynamic quantization).

A quantized folder is a Hugging Face folder (config.json, tokenizer files) whose
``model.safetensors`` holds, for every quantized ``nn.Linear`` named ``NAME``:

    NAME.weight        int8 [out, in]   symmetric, one scale per output channel
    NAME.weight_scale  float32 [out]
    NAME.bias          float32 [out]    (when the layer has one)

and every other tensor (embeddings, layer norms) in float32 as usual, so the linear
weights really take a quarter of the bytes. ``config.json`` gains ``"llmos_quantization":
{"method": "dynamic_int8", "modules": [...], ...}``. Loading rebuilds the model from its
config, turns exactly those layers into ``torch.ao.nn.quantized.dynamic.Linear`` (weights
int8, activations quantized per batch at run time) and puts the stored weights in: the
model runs on the CPU only (PyTorch's dynamic int8 kernels are CPU kernels).

Owns: the format, ``save_int8``, ``is_int8``, ``load_int8``. Does not own: reading a parent
folder or choosing what to quantize (``llmos.optimize.quantize``), the registry.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

QUANT_KEY = "llmos_quantization"
METHOD = "dynamic_int8"
SCALE_SUFFIX = ".weight_scale"
WEIGHTS_FILE = "model.safetensors"


class QuantizedFormatError(ValueError):
    """A folder that says it is int8 but whose files do not fit that."""


def quantization_info(folder: str | Path) -> dict | None:
    """The ``llmos_quantization`` entry of the folder's config.json, or None."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    info = config.get(QUANT_KEY) if isinstance(config, dict) else None
    return info if isinstance(info, dict) else None


def is_int8(folder: str | Path) -> bool:
    """True when ``folder`` holds a model in llmos's dynamic int8 format."""
    info = quantization_info(folder)
    return bool(info) and info.get("method") == METHOD


@contextmanager
def _quiet():
    """torch 2.9+ announces that ``torch.ao.quantization`` and quantized tensors will move
    to torchao; they are still the PyTorch way to run int8 linear layers on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", ".*quantize_per_tensor.*", UserWarning)
        yield


def _torch_quant():
    """torch's dynamic-quantization API (``torch.ao.quantization``)."""
    with _quiet():
        from torch.ao import quantization as tq
    return tq


def _quantize_modules(model, names: list[str]):
    """Turn the named ``nn.Linear`` modules of ``model`` into dynamic int8 ones, in place
    (per-output-channel symmetric weights)."""
    tq = _torch_quant()
    spec = {name: tq.per_channel_dynamic_qconfig for name in names}
    with _quiet():
        return tq.quantize_dynamic(model, qconfig_spec=spec, inplace=True)


def _tied_names(model) -> set[str]:
    """Names of parameters sharing storage with an earlier one (tied weights)."""
    seen, tied = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        ptr = p.data_ptr()
        if ptr in seen:
            tied.add(name)
        seen.add(ptr)
    return tied


def quantizable_linears(model) -> tuple[list[str], list[str]]:
    """(names of the ``nn.Linear`` modules to quantize, names left in float32: the output
    embeddings (an LM head, tied or not: engines read its weight, and it is the layer
    int8 hurts most) and any layer whose weight is tied to another parameter)."""
    import torch

    shared: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        shared[p.data_ptr()] = shared.get(p.data_ptr(), 0) + 1
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    take, tied = [], []
    for name, mod in model.named_modules():
        if type(mod) is torch.nn.Linear:
            keep = mod is head or shared.get(mod.weight.data_ptr(), 0) > 1
            (tied if keep else take).append(name)
    return take, tied


def _int8_tensors(qmodel, names: list[str]) -> dict[str, Any]:
    import torch

    modules = dict(qmodel.named_modules())
    out = {}
    for name in names:
        mod = modules[name]
        w = mod.weight()
        if w.qscheme() not in (torch.per_channel_symmetric, torch.per_channel_affine):
            raise QuantizedFormatError(f"{name}: expected per-channel weights")
        if bool((w.q_per_channel_zero_points() != 0).any()):
            raise QuantizedFormatError(f"{name}: expected symmetric weights (zero point 0)")
        out[f"{name}.weight"] = w.int_repr().contiguous()
        out[name + SCALE_SUFFIX] = w.q_per_channel_scales().to(torch.float32).contiguous()
        bias = mod.bias()
        if bias is not None:
            out[f"{name}.bias"] = bias.detach().to(torch.float32).contiguous()
    return out


def _float_tensors(model, names: list[str]) -> dict[str, Any]:
    """Every state-dict tensor of ``model`` outside the quantized modules, float32, each
    storage once (tied copies are tied again when the model is rebuilt)."""
    import torch

    prefixes = tuple(f"{n}." for n in names)
    tied = _tied_names(model)
    out = {}
    for key, t in model.state_dict().items():
        if key.startswith(prefixes) or key in tied or not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu")
        out[key] = (t.to(torch.float32) if t.is_floating_point() else t).contiguous()
    return out


def save_int8(model, tokenizer, dst: str | Path) -> dict:
    """Quantize ``model``'s linear layers (a float model, left unchanged) and write the int8
    folder to ``dst`` (absent or empty), with ``tokenizer``. Returns what was written."""
    import torch
    from safetensors.torch import save_file

    out = Path(dst)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"destination {out} already exists and is not empty")
    float_model = copy.deepcopy(model).to("cpu").to(torch.float32).eval()
    names, tied = quantizable_linears(float_model)
    if not names:
        raise QuantizedFormatError("the model has no linear layers to quantize")
    floats = _float_tensors(float_model, names)
    qmodel = _quantize_modules(float_model, names)
    tensors = {**floats, **_int8_tensors(qmodel, names)}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(tensors, str(partial / WEIGHTS_FILE), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    setattr(config, QUANT_KEY, {"method": METHOD, "weights": "int8",
                                "scheme": "per_channel_symmetric",
                                "activations": "dynamic", "torch": torch.__version__,
                                "modules": names})
    config.save_pretrained(partial)
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    if out.exists():
        out.rmdir()
    os.replace(partial, out)
    int8_bytes = sum(tensors[f"{n}.weight"].numel() for n in names)  # one byte each
    return {"method": METHOD, "linear_layers": len(names), "tied_linear_layers": tied,
            "int8_weight_bytes": int8_bytes,
            "bytes_after": (out / WEIGHTS_FILE).stat().st_size}


def load_int8(auto_class, folder: str | Path, **kwargs: Any):
    """The model in ``folder`` (int8 format) as an ``auto_class`` model whose linear layers
    are ``torch.ao.nn.quantized.dynamic.Linear``, in eval mode on the CPU. ``kwargs`` go to
    ``from_config`` (e.g. ``attn_implementation``); loader-only options are ignored.
    Raises QuantizedFormatError for a folder whose files do not fit its config."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    folder = Path(folder)
    info = quantization_info(folder)
    if not info or info.get("method") != METHOD:
        raise QuantizedFormatError(f"{folder.name}: config.json does not describe a "
                                   f"{METHOD} model")
    names = list(info.get("modules") or [])
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise QuantizedFormatError(f"{folder.name}: an int8 folder keeps its weights in "
                                   f"{WEIGHTS_FILE}, which is missing")
    config = AutoConfig.from_pretrained(folder)
    init = {k: v for k, v in kwargs.items() if k in ("attn_implementation",)}
    for key in ("num_labels", "id2label", "label2id"):
        if key in kwargs:
            setattr(config, key, kwargs[key])
    build = getattr(auto_class, "from_config", None)
    model = build(config, **init) if build is not None else auto_class(config, **init)
    model = model.to(torch.float32).eval()
    tensors, names = _align_prefix(model, load_file(str(path)), names)
    _check_modules(model, names, tensors, folder.name)
    floats = {k: v for k, v in tensors.items() if not _in_modules(k, names)}
    result = model.load_state_dict(floats, strict=False)
    tied = _tied_names(model)
    missing = [k for k in result.missing_keys if not _in_modules(k, names) and k not in tied]
    if missing or result.unexpected_keys:
        bad = sorted(missing)[:3] + sorted(result.unexpected_keys)[:3]
        raise QuantizedFormatError(f"{folder.name}: {WEIGHTS_FILE} does not fit the model "
                                   f"its config describes ({', '.join(bad)})")
    _quantize_modules(model, names)
    _put_int8(model, names, tensors)
    if (folder / "generation_config.json").is_file() and hasattr(model, "generation_config"):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()


def _align_prefix(model, tensors: dict, names: list[str]) -> tuple[dict, list[str]]:
    """Tensors and module names as ``model`` spells them: a base model (``AutoModel``)
    built from a folder saved with a task head drops the head and the base prefix
    (``bert.``), as ``from_pretrained`` does."""
    prefix = getattr(model, "base_model_prefix", "")
    own = set(model.state_dict())
    if not prefix or any(k in own for k in tensors) or \
            not any(k.startswith(prefix + ".") for k in tensors):
        return tensors, names
    cut = len(prefix) + 1
    return ({k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")},
            [n[cut:] for n in names if n.startswith(prefix + ".")])


def _in_modules(key: str, names: list[str]) -> bool:
    return any(key.startswith(f"{n}.") for n in names)


def _check_modules(model, names: list[str], tensors: dict, folder: str) -> None:
    import torch

    modules = dict(model.named_modules())
    for name in names:
        mod = modules.get(name)
        if type(mod) is not torch.nn.Linear:
            raise QuantizedFormatError(f"{folder}: config.json quantizes {name!r}, which is "
                                       "not a linear layer of the model")
        w = tensors.get(f"{name}.weight")
        s = tensors.get(name + SCALE_SUFFIX)
        if w is None or s is None or w.dtype != torch.int8:
            raise QuantizedFormatError(f"{folder}: {name}.weight must be int8 with "
                                       f"{name}{SCALE_SUFFIX} beside it")
        if tuple(w.shape) != tuple(mod.weight.shape) or tuple(s.shape) != (w.shape[0],):
            raise QuantizedFormatError(f"{folder}: {name}.weight has shape "
                                       f"{tuple(w.shape)}, the model expects "
                                       f"{tuple(mod.weight.shape)}")


def _put_int8(model, names: list[str], tensors: dict) -> None:
    import torch

    modules = dict(model.named_modules())
    for name in names:
        w, s = tensors[f"{name}.weight"], tensors[name + SCALE_SUFFIX]
        zero = torch.zeros(w.shape[0], dtype=torch.int64)
        with _quiet():
            q = torch.quantize_per_channel(w.to(torch.float32) * s[:, None],
                                           s.to(torch.float64), zero, 0, torch.qint8)
            modules[name].set_weight_bias(q, tensors.get(f"{name}.bias"))
