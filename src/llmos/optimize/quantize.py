"""Dynamic int8 quantization of a model folder: every ``nn.Linear`` gets int8 weights (one
symmetric scale per output channel, PyTorch's ``quantize_dynamic``), activations are
quantized per batch at run time. The result is written in llmos's int8 format
(``llmos.models.quantized``), which training's evaluation and the encoder/torch serving
engines load on the CPU.

Owns: ``quantize_folder``. Does not own: the format and its loading (``models.quantized``),
jobs, recipes, registration.
"""

from __future__ import annotations

from pathlib import Path

from llmos.models.quantized import load_int8, save_int8
from llmos.optimize import folders
from llmos.optimize.folders import ProgressFn, report


def quantize_folder(src: str | Path, dst: str | Path,
                    progress: ProgressFn | None = None) -> dict:
    """Quantize the model in ``src`` into a new folder ``dst`` (absent or empty). Returns
    {"method", "linear_layers", "parameters", "bytes_before", "bytes_after",
    "linear_bytes_before", "linear_bytes_after", "max_abs_logit_diff", ...}."""
    src, dst = folders.check_src(src), folders.check_dst(dst)
    report(progress, 0, 3, "loading")
    model, tokenizer = folders.load_float(src)
    report(progress, 1, 3, "quantizing")
    written = save_int8(model, tokenizer, dst)
    folders.copy_side_files(src, dst)
    report(progress, 2, 3, "checking")
    modules = dict(model.named_modules())
    linear_before = sum(modules[n].weight.numel() * modules[n].weight.element_size()
                        for n in _quantized_names(dst))
    diff = _logit_diff(model, load_int8(folders.model_class(src), dst), tokenizer)
    report(progress, 3, 3, "done")
    return folders.plain({
        "method": written["method"],
        "linear_layers": written["linear_layers"],
        "tied_linear_layers": written["tied_linear_layers"],
        "parameters": folders.parameters(model),
        "bytes_before": folders.weight_bytes(src),
        "bytes_after": folders.weight_bytes(dst),
        "linear_bytes_before": linear_before,
        "linear_bytes_after": written["int8_weight_bytes"],
        "max_abs_logit_diff": diff,
    })


def _quantized_names(dst: Path) -> list[str]:
    from llmos.models.quantized import quantization_info

    return list((quantization_info(dst) or {}).get("modules") or [])


def _logit_diff(parent, quantized, tokenizer) -> float:
    """The largest absolute difference between the two models' outputs on two fixed
    sentences: how far quantization moved them (logits, or the last hidden state)."""
    import torch

    texts = ["The quick brown fox jumps over the lazy dog.",
             "Quantized models should answer like their parents."]
    worst = 0.0
    for text in texts:  # one at a time: no padding token needed
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
        with torch.no_grad():
            a, b = parent(input_ids=enc["input_ids"]), quantized(input_ids=enc["input_ids"])
        key = "logits" if getattr(a, "logits", None) is not None else "last_hidden_state"
        worst = max(worst, float((a[key] - b[key]).abs().max()))
    return round(worst, 6)
