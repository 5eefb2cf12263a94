"""Training and validation rows: read them, check them against the recipe, name the labels.

Rows come as a list of dicts or as Parquet files (llmos dataset shards: an ``id``, a
``text`` and optional ``label`` ... columns). Every problem a user can cause is reported
with the split, the row (and its ``id`` when it has one) and the column: a missing
column lists the columns present. This module knows nothing about tokenizers or models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llmos.train.errors import DataError
from llmos.train.recipe import TrainRecipe

Rows = list[dict[str, Any]]
_BIO = re.compile(r"^(O|[BI]-\S.*)$")


def read_rows(source: Sequence[dict] | Sequence[str | Path] | str | Path | None,
              columns: Iterable[str], split: str = "training") -> Rows:
    """The rows of ``source`` (dicts, or Parquet file paths) with at least ``columns``
    (plus ``id`` when present)."""
    if source is None:
        return []
    if isinstance(source, (str, Path)):
        source = [source]
    source = list(source)
    columns = list(dict.fromkeys(columns))
    if all(isinstance(r, dict) for r in source):
        _check_dict_columns(source, columns, split)
        return source
    if all(isinstance(p, (str, Path)) for p in source):
        rows: Rows = []
        for path in source:
            rows.extend(_read_parquet(Path(path), columns, split))
        return rows
    raise DataError(f"{split} rows are a list of dicts or a list of Parquet file paths, "
                    "not a mix")


def _check_dict_columns(rows: Rows, columns: list[str], split: str) -> None:
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(f"{split} {_where(i, row)} has no {missing[0]!r} column "
                            f"(columns: {', '.join(map(str, row)) or 'none'})")


def _read_parquet(path: Path, columns: list[str], split: str) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{split} data file {str(path)!r} does not exist")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{split} data file {path.name!r} is not a Parquet file: {e}") from None
    present = schema.names
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"{split} data file {path.name!r} has no {missing[0]!r} column "
                        f"(columns: {', '.join(present)})")
    wanted = columns + (["id"] if "id" in present and "id" not in columns else [])
    return pq.read_table(path, columns=wanted).to_pylist()


def _where(i: int, row: dict) -> str:
    rid = row.get("id") if isinstance(row, dict) else None
    return f"row {i + 1}" + (f" (id {rid!r})" if rid is not None else "")


def required_columns(recipe: TrainRecipe, with_labels: bool = True) -> list[str]:
    """The columns the recipe reads (without the label/tag column when ``with_labels`` is
    false, for unlabeled prediction)."""
    if recipe.task == "sequence_classification":
        return [recipe.text_field] + ([recipe.label_field] if with_labels else [])
    if recipe.task == "token_classification":
        return [recipe.tokens_field] + ([recipe.tags_field] if with_labels else [])
    fmt = recipe.causal_format
    if fmt == "messages":
        return [recipe.messages_field]
    if fmt == "prompt_completion":
        return [recipe.prompt_field, recipe.completion_field]
    return [recipe.text_field]


def check_rows(recipe: TrainRecipe, rows: Rows, split: str = "training") -> None:
    """Raise DataError on the first row the task cannot use; an empty training set too."""
    if not rows:
        raise DataError(f"the {split} set is empty")
    check = {"sequence_classification": _check_classification,
             "token_classification": _check_tokens}.get(recipe.task, _check_causal)
    for i, row in enumerate(rows):
        problem = check(recipe, row)
        if problem:
            raise DataError(f"{split} {_where(i, row)}: {problem}")


def _text_problem(value: Any, column: str) -> str | None:
    if not isinstance(value, str):
        return f"column {column!r} holds {type(value).__name__}, not text"
    if not value.strip():
        return f"empty text in column {column!r}"
    return None


def _check_classification(recipe: TrainRecipe, row: dict) -> str | None:
    problem = _text_problem(row[recipe.text_field], recipe.text_field)
    if problem:
        return problem
    if row[recipe.label_field] is None:
        return f"no label in column {recipe.label_field!r}"
    return None


def _check_tokens(recipe: TrainRecipe, row: dict) -> str | None:
    words, tags = row[recipe.tokens_field], row[recipe.tags_field]
    if not isinstance(words, list) or not words:
        return f"column {recipe.tokens_field!r} holds no list of words"
    if not isinstance(tags, list) or len(tags) != len(words):
        n = len(tags) if isinstance(tags, list) else "no list of"
        return (f"{len(words)} words in {recipe.tokens_field!r} but {n} tags in "
                f"{recipe.tags_field!r}; give one tag per word")
    if any(not isinstance(w, str) or not w.strip() for w in words):
        return f"an empty word in column {recipe.tokens_field!r}"
    return bio_problem(tags)


def bio_problem(tags: list) -> str | None:
    """Why ``tags`` is not a valid BIO (IOB2) sequence, or None: each tag is ``O``,
    ``B-TYPE`` or ``I-TYPE``, and ``I-TYPE`` continues a ``B-TYPE`` or ``I-TYPE``."""
    prev = "O"
    for pos, tag in enumerate(tags, 1):
        if not isinstance(tag, str) or not _BIO.match(tag):
            return f"tag {tag!r} at position {pos} is not BIO (O, B-TYPE or I-TYPE)"
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return (f"tag {tag!r} at position {pos} follows {prev!r}; in BIO an entity "
                    f"starts with B-{tag[2:]}")
        prev = tag
    return None


def _check_causal(recipe: TrainRecipe, row: dict) -> str | None:
    fmt = recipe.causal_format
    if fmt == "text":
        return _text_problem(row[recipe.text_field], recipe.text_field)
    if fmt == "prompt_completion":
        return (_text_problem(row[recipe.prompt_field], recipe.prompt_field)
                or _text_problem(row[recipe.completion_field], recipe.completion_field))
    return _messages_problem(row[recipe.messages_field], recipe.messages_field)


def _messages_problem(messages: Any, column: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"column {column!r} holds no list of messages"
    for j, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            return f"message {j} in {column!r} is not a {{role, content}} mapping of text"
        if not m["content"].strip():
            return f"message {j} in {column!r} has empty content"
    if not any(m["role"] == "assistant" for m in messages):
        return f"no assistant message in {column!r} (nothing to learn)"
    return None


# -- labels ----------------------------------------------------------------------------------


def label_values(recipe: TrainRecipe, rows: Rows) -> list[str]:
    """Every label (classification) or tag (token classification) in ``rows``, as text."""
    if recipe.task == "sequence_classification":
        return [label_name(r[recipe.label_field]) for r in rows]
    return [t for r in rows for t in r[recipe.tags_field]]


def label_name(value: Any) -> str:
    """The name of a label value: strings as they are, numbers and booleans as text."""
    return value if isinstance(value, str) else str(value)


def resolve_labels(recipe: TrainRecipe, train_rows: Rows, validation_rows: Rows) -> list[str]:
    """The label names in index order: the recipe's, else those of the training rows,
    sorted (numerically when all are numbers). Raises DataError for a training label the
    recipe does not list, or a validation label training never saw."""
    seen = set(label_values(recipe, train_rows))
    if recipe.labels is not None:
        labels = list(recipe.labels)
        unknown = seen - set(labels)
        if unknown:
            raise DataError(f"training rows have labels the recipe does not list: "
                            f"{quoted(unknown)} (recipe labels: {', '.join(labels)})")
    else:
        if recipe.task == "token_classification":
            seen.add("O")
        labels = _sorted_labels(seen)
        if len(labels) < 2:
            raise DataError(f"the training rows have one label only ({quoted(seen)}); "
                            "a classifier needs at least two")
    unknown = set(label_values(recipe, validation_rows)) - set(labels)
    if unknown:
        raise DataError(f"validation rows have labels unknown to training: {quoted(unknown)}"
                        f" (training labels: {', '.join(labels)})")
    return labels


def _sorted_labels(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def quoted(values: Iterable[str]) -> str:
    """Up to ten values, sorted and quoted, for an error message."""
    values = sorted(values)
    shown = ", ".join(repr(v) for v in values[:10])
    return shown + (f" and {len(values) - 10} more" if len(values) > 10 else "")
