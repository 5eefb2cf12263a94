"""Attention-head pruning that really removes heads, the same number in every layer.

Works where the config can say what is left: Llama-style attention (``q_proj``, ``k_proj``,
``v_proj``, ``o_proj`` with an explicit ``head_dim``). With grouped-query attention the
same number of query heads is removed from every key/value group (the groups stay); with
plain multi-head attention whole heads (query, key and value) go. A head scores the norm
of its query rows times the norm of its output columns.

BERT-style attention is refused with a clear error: transformers 5 dropped
``config.pruned_heads`` and sizes every BERT head as ``hidden_size /
num_attention_heads``, so a BERT without some heads could not be loaded back by
``from_pretrained``. Owns the surgery; ``prune`` owns the folder around it.
"""

from __future__ import annotations

from llmos.optimize.folders import CompressError
from llmos.optimize.prune_structured import _keep_count, _shrink

_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


def _llama_blocks(model) -> list:
    import torch

    return [m for m in model.modules()
            if all(isinstance(getattr(m, k, None), torch.nn.Linear) for k in _PROJ)]


def _rows(head_ids, head_dim: int):
    """Row (or column) indices of the given heads."""
    import torch

    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in head_ids])


def prune_heads(model, sparsity: float) -> dict:
    """Remove the fraction ``sparsity`` of attention heads in every layer."""
    blocks = _llama_blocks(model)
    if not blocks:
        bert = any(hasattr(m, "query") and hasattr(m, "key") for m in model.modules())
        why = ("transformers 5 has no pruned-heads support for BERT-style models (each head "
               "is hidden_size / num_attention_heads wide), so a BERT without some heads "
               "cannot be loaded back; use structure: ffn") if bert else \
            f"{type(model).__name__} has no Llama-style attention (q/k/v/o projections)"
        raise CompressError(f"prune.structure: heads: {why}")
    config = model.config
    heads, kv = config.num_attention_heads, config.num_key_value_heads or \
        config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    group = heads // kv
    if group == 1:
        keep_q = keep_kv = _keep_count(heads, sparsity, "attention head")
    else:
        keep_q, keep_kv = kv * _keep_count(group, sparsity, "query head of a group"), kv
    for attn in blocks:
        _prune_block(attn, heads, kv, head_dim, keep_q, keep_kv)
    config.num_attention_heads, config.num_key_value_heads = keep_q, keep_kv
    config.head_dim = head_dim
    return {"layers": len(blocks), "heads_before": heads, "heads_after": keep_q,
            "kv_heads_before": kv, "kv_heads_after": keep_kv, "head_dim": head_dim}


def _prune_block(attn, heads: int, kv: int, head_dim: int, keep_q: int, keep_kv: int) -> None:
    import torch

    with torch.no_grad():
        q_norm = attn.q_proj.weight.float().view(heads, -1).norm(dim=1)
        o_norm = attn.o_proj.weight.float().t().reshape(heads, -1).norm(dim=1)
        score = (q_norm * o_norm).cpu()
        group = heads // kv
        if group == 1:
            kept = score.topk(keep_q).indices.sort().values.tolist()
            kept_kv = kept
        else:
            per = keep_q // kv
            kept = []
            for g in range(kv):
                local = score[g * group:(g + 1) * group].topk(per).indices.sort().values
                kept += [g * group + int(i) for i in local]
            kept_kv = list(range(kv))
        q_rows, kv_rows = _rows(kept, head_dim), _rows(kept_kv, head_dim)
        attn.q_proj = _shrink(attn.q_proj, q_rows, 0)
        attn.o_proj = _shrink(attn.o_proj, q_rows, 1)
        if keep_kv != kv:
            attn.k_proj = _shrink(attn.k_proj, kv_rows, 0)
            attn.v_proj = _shrink(attn.v_proj, kv_rows, 0)
    attn.num_key_value_groups = keep_q // keep_kv
    if hasattr(attn, "num_heads"):
        attn.num_heads = keep_q
