"""Choosing each request's next token from a step's logits: greedy at temperature 0,
otherwise temperature then top-p (nucleus) sampling with the request's own seeded
``torch.Generator``.

Sampling is an exponential race (as vLLM samples with per-request generators): draw
``E_i ~ Exp(1)`` for every token from the request's generator and take ``argmax p_i / E_i``,
which picks token i with probability p_i. Unlike inverse-CDF sampling (``multinomial``),
whose choice moves when a cumulative sum over the whole vocabulary shifts by a rounding
error, the race only changes when the two best ratios are within a rounding error of each
other. That matters because a row's logits differ in the last bits with the batch it was
computed in (CPU and GPU matrix kernels sum in an order that depends on the batch size), and
the same seed must give the same text whether a request ran alone or in a crowd.

Knows nothing about the model, the cache or text.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch


class Sampler:
    def __init__(self, temperature: float, top_p: float, seed: int | None, device: torch.device):
        self.greedy = temperature == 0
        self.temperature = temperature
        self.top_p = top_p
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed if seed is not None else secrets.randbits(63))

    def sample(self, logits: torch.Tensor) -> int:
        """One token id from one row of logits ``[vocab]``."""
        if self.greedy:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least the top token)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
        race = torch.empty_like(probs).exponential_(generator=self.generator)
        race.clamp_(min=torch.finfo(race.dtype).tiny)  # a zero draw would divide p = 0 by 0
        return int((probs / race).argmax())


def next_tokens(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[int]:
    """The next token of every row of ``logits`` ([rows, vocab]); greedy rows in one argmax."""
    out = logits.argmax(-1).tolist()
    for i, sampler in enumerate(samplers):
        if not sampler.greedy:
            out[i] = sampler.sample(logits[i])
    return out
