"""Export: the trained model as a Hugging Face folder, and a summary of what was written.

The folder holds safetensors weights, config.json (with id2label / label2id for
classifiers), generation_config.json (causal LMs), the tokenizer and its chat template,
so plain ``AutoModelFor...from_pretrained`` and ``AutoTokenizer.from_pretrained`` load it.
LoRA adapters are merged into the base weights (``merge_and_unload``); the adapter alone
is kept under ``adapter/`` as well. The folder is written beside its destination and
renamed into place, so a crash never leaves a half-written model. This module knows
nothing about the loop or the job context.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from llmos.train.errors import TrainError

ADAPTER_DIR = "adapter"


def check_output_dir(output_dir: str | Path) -> Path:
    """The destination, once it is known to be absent or empty (checked before training)."""
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainError(f"output folder {str(out)!r} already exists and is not empty")
    return out


def export_model(model, tokenizer, output_dir: str | Path, *, task: str, method: str,
                 dtype: str = "float32", metrics: dict | None = None) -> dict:
    """Write the model and tokenizer to ``output_dir``; return the summary."""
    import torch

    out = check_output_dir(output_dir)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if method == "lora":
        model.save_pretrained(partial / ADAPTER_DIR)
        (partial / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # peft's blank card
        model = model.merge_and_unload()
    model = model.to("cpu").to(getattr(torch, dtype))
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    stray = [p.name for p in partial.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    if stray:
        raise TrainError(f"export wrote pickled files ({', '.join(stray)}); refusing them")
    if out.exists():
        out.rmdir()
    os.replace(partial, out)
    return summarize(model, out, task=task, method=method, metrics=metrics or {})


def summarize(model, folder: Path, *, task: str, method: str, metrics: dict) -> dict:
    config = model.config
    id2label = getattr(config, "id2label", None) if task != "causal_lm" else None
    return {
        "task": task,
        "method": method,
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "labels": [id2label[i] for i in sorted(id2label)] if id2label else None,
        "files": [_describe(p, folder) for p in sorted(folder.rglob("*")) if p.is_file()],
        "metrics": metrics,
    }


def _describe(path: Path, root: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"name": path.relative_to(root).as_posix(), "bytes": path.stat().st_size,
            "sha256": digest.hexdigest()}
