"""Rows to token ids and loss labels, and examples to padded batches, per task.

- sequence classification: the text's ids and one label index;
- token classification: the label on each word's first sub-word, -100 elsewhere;
- causal LM: ids and labels already shifted by one (``labels[t]`` is the token that
  position ``t`` predicts), -100 where no loss is taken: the prompt, non-assistant chat
  turns, padding.

Chat rows are rendered with the tokenizer's chat template; the assistant turns are found
as character spans (the template rendered up to each turn), so any template that renders
conversations incrementally works. This module does not load models or compute losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmos.train.data import Rows, label_name
from llmos.train.errors import DataError, ModelError
from llmos.train.recipe import TrainRecipe

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: int | list[int]
    n_words: int = 0  # token classification: words in the row (some may be truncated)


@dataclass
class Batch:
    inputs: dict  # name -> tensor, what the model's forward takes
    labels: Any  # tensor
    n_items: int  # labels that count in the loss (examples, or labeled tokens)
    n_samples: int

    def to(self, device) -> Batch:
        if str(device) == "cpu":
            return self
        nb = {"non_blocking": True}
        return Batch({k: v.to(device, **nb) for k, v in self.inputs.items()},
                     self.labels.to(device, **nb), self.n_items, self.n_samples)


def encode(recipe: TrainRecipe, tokenizer, rows: Rows, label2id: dict[str, int] | None
           ) -> tuple[list[Example], int]:
    """Examples for ``rows``, and how many rows were left out because truncation to
    ``max_length`` left nothing to learn (causal LM only)."""
    if not rows:
        return [], 0
    if recipe.task == "sequence_classification":
        return _encode_classification(recipe, tokenizer, rows, label2id), 0
    if recipe.task == "token_classification":
        return _encode_tokens(recipe, tokenizer, rows, label2id), 0
    examples = [_encode_causal(recipe, tokenizer, row) for row in rows]
    kept = [e for e in examples if any(t != IGNORE for t in e.labels)]
    return kept, len(examples) - len(kept)


def _encode_classification(recipe, tokenizer, rows, label2id) -> list[Example]:
    texts = [r[recipe.text_field] for r in rows]
    ids = tokenizer(texts, truncation=True, max_length=recipe.max_length)["input_ids"]
    if label2id is None:
        return [Example(x, IGNORE) for x in ids]
    return [Example(x, label2id[label_name(r[recipe.label_field])]) for x, r in zip(ids, rows)]


def _encode_tokens(recipe, tokenizer, rows, label2id) -> list[Example]:
    _need_fast(tokenizer, "token classification")
    words = [r[recipe.tokens_field] for r in rows]
    enc = tokenizer(words, is_split_into_words=True, truncation=True,
                    max_length=recipe.max_length)
    out = []
    for i, row in enumerate(rows):
        tags = row.get(recipe.tags_field) if label2id is not None else None
        labels, prev = [], None
        for w in enc.word_ids(i):
            first = w is not None and w != prev
            labels.append((label2id[tags[w]] if tags else 0) if first else IGNORE)
            prev = w
        out.append(Example(enc["input_ids"][i], labels, n_words=len(words[i])))
    return out


def _encode_causal(recipe: TrainRecipe, tokenizer, row: dict) -> Example:
    fmt = recipe.causal_format
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if fmt == "text":
        ids = tokenizer(row[recipe.text_field])["input_ids"] + eos
        mask = [True] * len(ids)
    elif fmt == "prompt_completion":
        prompt = row[recipe.prompt_field]
        ids, mask = _spans_mask(tokenizer, prompt + row[recipe.completion_field],
                                [(len(prompt), None)], special=True)
        ids, mask = ids + eos, mask + [True] * len(eos)
    else:
        text, spans = render_chat(tokenizer, row[recipe.messages_field])
        ids, mask = _spans_mask(tokenizer, text, spans, special=False)
    ids, mask = ids[: recipe.max_length], mask[: recipe.max_length]
    labels = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])] + [IGNORE]
    return Example(ids, labels)


def _spans_mask(tokenizer, text: str, spans: list[tuple[int, int | None]], special: bool
                ) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` and, per token, whether it overlaps one of the character
    ``spans`` (end None: to the end of the text)."""
    _need_fast(tokenizer, "masking the prompt out of the loss")
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    mask = []
    for start, end in enc["offset_mapping"]:
        real = end > start
        mask.append(real and any(start < (e if e is not None else len(text)) and end > s
                                 for s, e in spans))
    return enc["input_ids"], mask


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered with the chat template, and the character span of each
    assistant turn (its content and end-of-turn marker)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the tokenizer has no chat template; train chat rows with a model "
                         "that has one, or use prompt_field/completion_field or text_field")
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(msgs[:i], tokenize=False,
                                               add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise ModelError("this chat template does not render a conversation as a "
                             "sequence of turns, so the assistant turns cannot be found; "
                             "use prompt_field/completion_field instead")
        spans.append((len(before), len(upto)))
    return text, spans


def _need_fast(tokenizer, why: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{why} needs a fast tokenizer (a tokenizer.json in the model folder)")


def max_token_id(examples: list[Example]) -> int:
    return max((max(e.input_ids) for e in examples if e.input_ids), default=-1)


def collate(examples: list[Example], pad_id: int, sequence_labels: bool) -> Batch:
    """Pad to the longest example (right padding) into CPU tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    att = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(att)}
    if sequence_labels:
        labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in examples])
        n_items = int((labels != IGNORE).sum())
    else:
        labels = torch.tensor([e.labels for e in examples])
        n_items = len(examples)
    return Batch(inputs, labels, n_items, len(examples))


def check_not_empty(examples: list[Example], dropped: int, split: str) -> None:
    if dropped and not examples:
        raise DataError(f"every {split} row is cut to nothing to learn by max_length; "
                        "raise max_length")
