"""Model cards: a Markdown page generated from a model version's info, lineage and metrics.

Deterministic: the same inputs give the same text (keys are sorted, numbers formatted one
way, no clock), so a card can be stored as an artifact and compared. This module renders
text only; it reads no files and knows nothing of the registry or the database.
"""

from __future__ import annotations

import json
from typing import Any

from llmos.models.info import ModelInfo

_PIPELINE_TAGS = {"causal_lm": "text-generation",
                  "sequence_classification": "text-classification",
                  "token_classification": "token-classification",
                  "masked_lm": "fill-mask", "encoder": "feature-extraction"}

_INTENDED_USE = {
    "causal_lm": "Text generation: completions and, with a chat template, chat completions "
                 "through the llmos gateway; a base for causal-LM fine-tuning.",
    "sequence_classification": "Classifying a whole text into one of the labels below.",
    "token_classification": "Labelling each token of a text (named entities, tags) with "
                            "one of the labels below.",
    "masked_lm": "Filling masked tokens; a base for fine-tuning classifiers.",
    "encoder": "Turning text into vectors (embeddings, features) for search, clustering or "
               "as a base for classification heads.",
    "other": "Not a task llmos serves or trains; kept for storage and lineage.",
}

_LIMITATIONS = {
    "causal_lm": "Generated text can be wrong, biased or unsafe; check outputs before use.",
    "sequence_classification": "Predicts only the labels it was trained on; accuracy on "
                               "text unlike its training data is unknown.",
    "token_classification": "Predicts only the labels it was trained on; tokens split "
                            "differently from its training data may be mislabelled.",
    "masked_lm": "Predictions reflect the biases of its training text.",
    "encoder": "Similarity reflects its training data; texts longer than the context "
               "length are truncated.",
    "other": "llmos does not know how to use this architecture.",
}

_TASK_NAMES = {"causal_lm": "text generation (causal LM)",
               "sequence_classification": "sequence classification",
               "token_classification": "token classification",
               "masked_lm": "masked language modelling", "encoder": "text encoding",
               "other": "no task llmos knows"}

# Lineage keys shown first, in this order, with these names; the rest follow sorted.
_LINEAGE_KEYS = (("base_model", "Base model"), ("parent_version", "Parent version"),
                 ("dataset_version", "Dataset version"), ("job", "Job"),
                 ("training_params", "Training parameters"))


def _cell(value: Any) -> str:
    """A value as one Markdown table cell: one line, pipes escaped."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return " ".join(text.split()).replace("|", "\\|")


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit} ({n:,})"
    return f"{n:,}"


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key in sorted(metrics, key=str):
        value = metrics[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, name + "/"))
        else:
            rows.append((name, value))
    return rows


def _front_matter(info: ModelInfo, lineage: dict) -> list[str]:
    lines = ["---", "library_name: transformers"]
    if info.task in _PIPELINE_TAGS:
        lines.append(f"pipeline_tag: {_PIPELINE_TAGS[info.task]}")
    if lineage.get("base_model"):
        lines.append(f"base_model: {json.dumps(str(lineage['base_model']))}")
    lines += ["tags:", "- llmos", f"- {info.model_type}", "---", ""]
    return lines


def _details(info: ModelInfo) -> list[str]:
    tokenizer = (f"yes ({info.vocab_size:,} tokens)" if info.vocab_size else "yes") \
        if info.has_tokenizer else "**none** (cannot be served or trained)"
    rows = [("Architecture", info.architecture or "unknown"), ("Model type", info.model_type),
            ("Task", _TASK_NAMES.get(info.task, info.task)),
            ("Parameters", _count(info.parameters)),
            ("Size", _bytes(info.size_bytes)), ("Dtype", ", ".join(info.dtypes) or "unknown"),
            ("Context length", f"{info.context_length:,} tokens" if info.context_length
             else "unknown"),
            ("Tokenizer", tokenizer), ("Chat template", "yes" if info.chat_template else "no")]
    lines = ["## Model details", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows]
    if info.labels:
        lines += ["", "### Labels", "", "| id | label |", "| --- | --- |"]
        lines += [f"| {i} | {_cell(label)} |" for i, label in enumerate(info.labels)]
    return lines + [""]


def _lineage(info: ModelInfo, lineage: dict) -> list[str]:
    lines = ["## Lineage", ""]
    known = dict(_LINEAGE_KEYS)
    keys = [k for k, _ in _LINEAGE_KEYS if k in lineage]
    keys += sorted((k for k in lineage if k not in known), key=str)
    for key in keys:
        value = lineage[key]
        label = known.get(key, str(key).replace("_", " ").capitalize())
        if isinstance(value, dict) and value:
            lines.append(f"- {label}:")
            lines += [f"  - `{_cell(k)}`: {_cell(value[k])}" for k in sorted(value, key=str)]
        else:
            lines.append(f"- {label}: {_cell(value)}")
    if info.gguf:
        g = info.gguf
        lines.append(f"- Converted from GGUF: `{_cell(g.file)}` ({g.quantization}, "
                     f"architecture {g.architecture}, {_bytes(g.size)}), sha256 `{g.sha256}`")
    if len(lines) == 2:
        lines.append("- No recorded lineage.")
    lines += ["", "### Files", "", "| file | size | sha256 |", "| --- | ---: | --- |"]
    lines += [f"| {_cell(f.path)} | {f.size:,} | `{f.sha256}` |" for f in info.files]
    return lines + [""]


def _metrics(metrics: dict) -> list[str]:
    lines = ["## Evaluation", ""]
    rows = _flatten(metrics)
    if not rows:
        return lines + ["No evaluation recorded.", ""]
    lines += ["| metric | value |", "| --- | ---: |"]
    lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in rows]
    return lines + [""]


def _limitations(info: ModelInfo) -> list[str]:
    items = [_LIMITATIONS.get(info.task, _LIMITATIONS["other"])]
    if info.gguf:
        items.append(f"Weights were de-quantized from {info.gguf.quantization}: quality is "
                     f"that of the quantized file, not of the original float weights.")
    if info.context_length:
        items.append(f"Inputs longer than {info.context_length:,} tokens are not supported.")
    items += [w[0].upper() + w[1:] + "." for w in info.warnings
              if not w.startswith("not imported")]
    return ["## Limitations", ""] + [f"- {item}" for item in items] + [""]


def model_card(info: ModelInfo, name: str, version: int | str, lineage: dict | None = None,
               metrics: dict | None = None) -> str:
    """A Markdown model card for version ``version`` of model ``name``.

    ``lineage`` may hold base_model, parent_version, dataset_version, job and
    training_params (a dict), and any other keys; ``metrics`` maps names to numbers, or to
    dicts of them (per split), shown as ``split/name``. Same inputs, same text.
    """
    lineage, metrics = lineage or {}, metrics or {}
    title = f"# {' '.join(str(name).split())} (version {version})"
    summary = (f"{info.architecture or info.model_type}, {_count(info.parameters)} "
               f"parameters, for {_TASK_NAMES.get(info.task, info.task)}.")
    lines = _front_matter(info, lineage) + [title, "", summary, ""]
    lines += _details(info)
    lines += ["## Intended use", "", _INTENDED_USE.get(info.task, _INTENDED_USE["other"]), ""]
    lines += _lineage(info, lineage) + _metrics(metrics) + _limitations(info)
    return "\n".join(lines).rstrip("\n") + "\n"
