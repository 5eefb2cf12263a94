"""Feed-forward channel pruning that really removes channels, the same number in every
layer so ``intermediate_size`` stays one number (and the shared helpers of structured
pruning: shrinking a linear layer, the count to keep).

Importance is read from the weights alone (no data): channel ``i`` scores
``||W_in[i, :]|| * ||W_out[:, i]||`` (every input projection multiplied: Llama's gate and
up together). Owns the surgery on the modules and the config; ``prune`` owns the folder
around it, ``prune_heads`` the attention heads.
"""

from __future__ import annotations

from llmos.optimize.folders import CompressError


def _shrink(linear, keep, dim: int):
    """A new ``nn.Linear`` with only the ``keep`` outputs (dim 0) or inputs (dim 1)."""
    import torch

    keep = keep.to(linear.weight.device)
    w = linear.weight.detach().index_select(dim, keep).clone()
    bias = linear.bias is not None
    out_f, in_f = w.shape
    new = torch.nn.Linear(in_f, out_f, bias=bias, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            b = linear.bias.detach()
            new.bias.copy_(b.index_select(0, keep) if dim == 0 else b)
    return new


def _ffn_blocks(model) -> list[tuple[object, list[str], list[str]]]:
    """(module, input projection attributes, output projection attributes) per layer:
    BERT-style ``intermediate.dense`` / ``output.dense``, Llama-style gate/up/down."""
    import torch

    found = []
    for mod in model.modules():
        inter, out = getattr(mod, "intermediate", None), getattr(mod, "output", None)
        if isinstance(getattr(inter, "dense", None), torch.nn.Linear) and \
                isinstance(getattr(out, "dense", None), torch.nn.Linear) and \
                out.dense.in_features == inter.dense.out_features:
            found.append((mod, ["intermediate.dense"], ["output.dense"]))
        elif all(isinstance(getattr(mod, k, None), torch.nn.Linear)
                 for k in ("gate_proj", "up_proj", "down_proj")):
            found.append((mod, ["gate_proj", "up_proj"], ["down_proj"]))
    return found


def _get(mod, path: str):
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def _set(mod, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        mod = getattr(mod, part)
    setattr(mod, last, value)


def _keep_count(total: int, sparsity: float, what: str) -> int:
    keep = total - round(total * sparsity)
    if keep < 1:
        raise CompressError(f"prune.sparsity: {sparsity} would remove every {what} "
                            f"(each layer has {total})")
    return keep


def prune_ffn(model, sparsity: float, calibration: list[dict] | None = None) -> dict:
    """Remove the fraction ``sparsity`` of intermediate channels in every layer. With
    ``calibration`` (tokenized inputs, one dict of tensors per text) a channel scores its
    mean absolute activation times the norm of its output weights; without, the weight
    norms alone."""
    import torch

    blocks = _ffn_blocks(model)
    if not blocks:
        raise CompressError(f"prune.structure: ffn pruning knows BERT-style and Llama-style "
                            f"feed-forward layers; {type(model).__name__} has neither")
    if not isinstance(getattr(model.config, "intermediate_size", None), int):
        raise CompressError("prune.structure: the model's config has no intermediate_size")
    sizes = {_get(m, ins[0]).out_features for m, ins, _ in blocks}
    if len(sizes) != 1:
        raise CompressError(f"prune.structure: the layers have different feed-forward sizes "
                            f"({sorted(sizes)}); ffn pruning needs one")
    total = sizes.pop()
    keep = _keep_count(total, sparsity, "feed-forward channel")
    acts = _activations(model, blocks, calibration) if calibration else None
    with torch.no_grad():
        for n, (mod, ins, outs) in enumerate(blocks):
            score = torch.ones(total)
            for name in outs:
                score *= _get(mod, name).weight.float().norm(dim=0).cpu()
            if acts is not None:
                score *= acts[n]
            else:
                for name in ins:
                    score *= _get(mod, name).weight.float().norm(dim=1).cpu()
            idx = score.topk(keep).indices.sort().values
            for name in ins:
                _set(mod, name, _shrink(_get(mod, name), idx, 0))
            for name in outs:
                _set(mod, name, _shrink(_get(mod, name), idx, 1))
    model.config.intermediate_size = keep
    return {"layers": len(blocks), "intermediate_size_before": total,
            "intermediate_size_after": keep,
            "importance": "activation" if acts is not None else "weight",
            "calibration_texts": len(calibration or [])}


def _activations(model, blocks, calibration: list[dict]) -> list:
    """Mean absolute input of each block's output projection (the channel activations)
    over every token of the calibration texts."""
    import torch

    sums = [None] * len(blocks)
    count = [0]

    def hook(n):
        def record(_module, args):
            a = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).sum(0).cpu()
            sums[n] = a if sums[n] is None else sums[n] + a
            if n == 0:
                count[0] += args[0].shape[:-1].numel()
        return record

    handles = [_get(mod, outs[0]).register_forward_pre_hook(hook(n))
               for n, (mod, _, outs) in enumerate(blocks)]
    try:
        with torch.no_grad():
            for inputs in calibration:
                model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return [s / max(count[0], 1) for s in sums]
