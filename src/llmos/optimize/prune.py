"""Pruning a model folder: unstructured magnitude pruning, or structured pruning of
feed-forward channels or attention heads that really removes them (smaller matrices, a
smaller config), so the model gets smaller and faster.

- ``unstructured``: global L1 magnitude pruning (``torch.nn.utils.prune``) over the linear
  weights of the base model (the task head is kept whole); the zeros are stored, so the
  folder keeps its size: sparsity, not speed.
- ``ffn``: in every layer the same number of intermediate channels (lowest importance
  ``||W_in[i]|| * ||W_out[:, i]||``) is removed, so ``intermediate_size`` stays one number.
  BERT-style layers (``intermediate.dense`` / ``output.dense``) and Llama-style MLPs
  (``gate_proj`` / ``up_proj`` / ``down_proj``).
- ``heads``: in every layer the same number of attention heads (lowest importance) is
  removed, where the config can describe the result (Llama-style attention with
  ``head_dim``; see ``prune_heads`` for why BERT is refused under transformers 5).

Owns: ``prune_folder``. Does not own: the recovery fine-tune (``llmos.train``), jobs.
"""

from __future__ import annotations

from pathlib import Path

from llmos.optimize import folders
from llmos.optimize.folders import CompressError, ProgressFn, report
from llmos.optimize.prune_heads import prune_heads
from llmos.optimize.prune_structured import prune_ffn

STRUCTURES = ("unstructured", "ffn", "heads")
_LIMITS = {"unstructured": 0.95, "ffn": 0.9, "heads": 0.9}


def prune_folder(src: str | Path, dst: str | Path, structure: str, sparsity: float,
                 progress: ProgressFn | None = None, *,
                 calibration_texts: list[str] | None = None) -> dict:
    """Prune the model in ``src`` into a new folder ``dst`` (absent or empty): remove the
    fraction ``sparsity`` of its weights (``unstructured``), feed-forward channels
    (``ffn``) or attention heads (``heads``). ``calibration_texts`` (e.g. a few hundred
    training texts; ffn only) rank channels by their activations on real inputs instead of
    by weight norms alone, which keeps more accuracy. Returns stats: parameters and bytes
    before/after, and what was removed."""
    _check(structure, sparsity)
    src, dst = folders.check_src(src), folders.check_dst(dst)
    report(progress, 0, 3, "loading")
    model, tokenizer = folders.load_float(src)
    before = folders.parameters(model)
    report(progress, 1, 3, f"pruning ({structure})")
    if structure == "unstructured":
        detail = prune_unstructured(model, sparsity)
    elif structure == "ffn":
        detail = prune_ffn(model, sparsity, _calibration(tokenizer, calibration_texts))
    else:
        detail = prune_heads(model, sparsity)
    report(progress, 2, 3, "writing")
    folders.write_float(model, tokenizer, src, dst)
    report(progress, 3, 3, "done")
    return folders.plain({"method": "prune", "structure": structure, "sparsity": sparsity,
                          "parameters_before": before,
                          "parameters_after": folders.parameters(model),
                          "bytes_before": folders.weight_bytes(src),
                          "bytes_after": folders.weight_bytes(dst), **detail})


def calibration_texts(rows, text_field: str = "text", limit: int = 256) -> list[str]:
    """Up to ``limit`` texts from training rows (dicts or Parquet file paths, as training
    takes them), for ``prune_folder(..., calibration_texts=...)``."""
    from llmos.train.data import read_rows

    return [r[text_field] for r in read_rows(rows, [text_field], "calibration")[:limit]]


def _calibration(tokenizer, texts: list[str] | None, limit: int = 256,
                 max_length: int = 128) -> list[dict] | None:
    """Up to ``limit`` texts, tokenized one at a time (no padding to skew the averages)."""
    if not texts:
        return None
    bad = [i for i, t in enumerate(texts[:limit]) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise CompressError(f"prune calibration: text {bad[0] + 1} is empty or not a string")
    return [{k: v for k, v in tokenizer(t, return_tensors="pt", truncation=True,
                                         max_length=max_length).items()
             if k in ("input_ids", "attention_mask", "token_type_ids")}
            for t in texts[:limit]]


def _check(structure: str, sparsity: float) -> None:
    if structure not in STRUCTURES:
        raise CompressError(f"prune.structure: {structure!r} is not one of "
                            f"{', '.join(STRUCTURES)}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise CompressError(f"prune.sparsity: a number, not {sparsity!r}")
    top = _LIMITS[structure]
    if not 0 < sparsity <= top:
        raise CompressError(f"prune.sparsity: {sparsity} is outside (0, {top}] for "
                            f"{structure} pruning")


def prunable_linears(model) -> list[tuple[str, object]]:
    """The ``nn.Linear`` layers of the base model (not the task head), by name."""
    import torch

    base = getattr(model, "base_model", model)
    prefix = getattr(model, "base_model_prefix", "")
    named = [(f"{prefix}.{n}" if base is not model and prefix else n, m)
             for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)]
    return [(n, m) for n, m in named if m.weight is not getattr(
        model.get_input_embeddings(), "weight", None)]


def prune_unstructured(model, sparsity: float) -> dict:
    """Global L1 magnitude pruning of the base model's linear weights, made permanent."""
    from torch.nn.utils import prune

    layers = prunable_linears(model)
    if not layers:
        raise CompressError("the model has no linear layers to prune")
    params = [(m, "weight") for _, m in layers]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    for m, name in params:
        prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    total = sum(m.weight.numel() for m, _ in params)
    per_layer = {n: round(float((m.weight == 0).float().mean()), 4) for n, m in layers}
    return {"pruned_layers": len(layers), "weights_pruned": total,
            "measured_sparsity": round(zeros / total, 4),
            "layer_sparsity_min": min(per_layer.values()),
            "layer_sparsity_max": max(per_layer.values())}
