"""Model folders for the torch compression methods: open a parent folder with its own
transformers class, check and stage a destination, write a float model, copy the files a
method leaves as they are (sentence-transformers pooling metadata), and count bytes.

Knows nothing of jobs, recipes or the registry; the methods (``quantize``, ``prune``,
``distill``) call it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.errors import InvalidRequest
from llmos.models.loaders import SENTENCE_TRANSFORMERS_FILES
from llmos.models.quantized import is_int8

#: ``progress(done, total, stage)``
ProgressFn = Callable[[int, int, str], None]


class CompressError(InvalidRequest, ValueError):
    """A folder or setting a compression method cannot work with; the message says why."""


def report(progress: ProgressFn | None, done: int, total: int, stage: str) -> None:
    if progress is not None:
        progress(done, total, stage)


def check_src(src: str | Path) -> Path:
    folder = Path(src)
    if not (folder / "config.json").is_file():
        raise CompressError(f"model folder {str(folder)!r} has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise CompressError(f"model folder {folder.name!r} has no safetensors weights")
    if is_int8(folder):
        raise CompressError(f"model folder {folder.name!r} is already int8-quantized; "
                            "compress its float parent instead")
    return folder


def check_dst(dst: str | Path) -> Path:
    out = Path(dst)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompressError(f"destination {str(out)!r} already exists and is not empty")
    return out


def architecture(folder: Path) -> str | None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = config.get("architectures")
    return arch[0] if isinstance(arch, list) and arch and isinstance(arch[0], str) else None


def model_class(folder: Path):
    """The transformers class the folder's config names (its own head), else AutoModel."""
    import transformers

    arch = architecture(folder)
    if arch and re.fullmatch(r"[A-Z][A-Za-z0-9]*", arch):
        cls = getattr(transformers, arch, None)
        if cls is not None and hasattr(cls, "from_pretrained"):
            return cls
    return transformers.AutoModel


def load_float(folder: Path):
    """(model in float32 on the CPU in eval mode, tokenizer) of a parent folder."""
    import torch
    from transformers import AutoTokenizer

    cls = model_class(folder)
    try:
        model = cls.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (ValueError, OSError, KeyError) as e:
        raise CompressError(f"cannot load {folder.name!r}: {e}") from None
    return model.eval(), tokenizer


def write_float(model, tokenizer, src: Path, dst: Path) -> None:
    """Save ``model`` (float32) and ``tokenizer`` to ``dst`` through a partial folder
    renamed into place, with the parent's sentence-transformers files."""
    import torch

    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.to("cpu").to(torch.float32).save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    copy_side_files(src, partial)
    commit(partial, dst)


def commit(partial: Path, dst: Path) -> None:
    if dst.exists():
        dst.rmdir()
    os.replace(partial, dst)


def copy_side_files(src: Path, dst: Path) -> None:
    """The sentence-transformers metadata (pooling, normalisation) a method keeps as is."""
    for rel in SENTENCE_TRANSFORMERS_FILES:
        if (src / rel).is_file() and not (dst / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst / rel)


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def plain(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` as JSON would give it back (tuples to lists, numbers rounded)."""
    return json.loads(json.dumps(stats, default=str))
