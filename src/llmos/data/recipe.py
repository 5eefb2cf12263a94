"""Recipes: what an ingest job does, as YAML, validated before the job starts.

    text_field: text            # jsonl / json / csv / parquet: the column holding the text
    label_field: label          # optional: a class label, used for stratified splits
    fields: [tokens, tags]      # optional: other fields kept as columns, unchanged
    steps:
      - html_to_text
      - fix_unicode
      - normalize: {form: NFC}
      - length: {min_words: 5}
      - exact_dedup
      - near_dedup: {threshold: 0.8}
      - tokenize: {tokenizer: /path/to/tokenizer}
    split: {train: 0.8, validation: 0.1, test: 0.1, seed: 42}

A step is its name alone, or its name mapped to its parameters. Steps run in three
phases, in this order: per-document steps (cleaning and filters), deduplication (which
needs every document), then annotations (tokens, words, tags) on the documents kept.
This module only describes and checks recipes; the steps themselves live in ``clean``,
``filters``, ``dedup`` and ``annotate``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class RecipeError(ValueError):
    """A recipe that cannot run; the message says which step and why."""


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    phase: ClassVar[str] = "document"


# -- cleaning --------------------------------------------------------------------------------


class HtmlToText(_Step):
    """Extract the readable text of HTML documents (selectolax): drops scripts, styles,
    navigation, headers and footers; block elements become line breaks."""

    detect: bool = Field(True, description="also convert non-.html documents that look like HTML")


class FixUnicode(_Step):
    """Repair mojibake and broken unicode (ftfy)."""


class Normalize(_Step):
    """Unicode normalization."""

    form: Literal["NFC", "NFKC"] = "NFC"


class StripControl(_Step):
    """Remove control characters (except tab and newline) and zero-width characters."""


class CollapseWhitespace(_Step):
    """Runs of spaces and tabs become one space; three or more line breaks become two;
    lines are stripped."""


class MaskPii(_Step):
    """Replace personal data with placeholders such as <EMAIL>."""

    kinds: list[Literal["email", "phone", "ip", "card"]] = ["email", "phone", "ip", "card"]


# -- filters ---------------------------------------------------------------------------------


class Length(_Step):
    """Keep documents within these bounds (characters and whitespace-separated words)."""

    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_words: int = Field(0, ge=0)
    max_words: int | None = Field(None, ge=1)


class Language(_Step):
    """Keep documents in these languages (py3langid, model inside the package); the
    detected language is stored in the ``lang`` column."""

    keep: list[str] = Field(min_length=1)
    min_score: float = Field(0.0, ge=0, le=1)

    @field_validator("keep")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        for code in v:
            if not re.fullmatch(r"[a-z]{2,3}", code):
                raise ValueError(f"{code!r} is not an ISO 639-1 language code such as 'en'")
        return v


class GopherQuality(_Step):
    """The quality heuristics of Gopher (Rae et al. 2021), for space-separated languages."""

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3
    max_mean_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2


class GopherRepetition(_Step):
    """The repetition heuristics of Gopher: duplicated lines and paragraphs, top and
    duplicated n-grams."""

    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_ngram_char_frac: dict[int, float] = {2: 0.2, 3: 0.18, 4: 0.16}
    dup_ngram_char_frac: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11,
                                             10: 0.10}


class Regex(_Step):
    """Drop documents that match (``action: drop``) or do not match (``keep``) a pattern."""

    pattern: str
    action: Literal["drop", "keep"] = "drop"
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return v


# -- deduplication ---------------------------------------------------------------------------


class ExactDedup(_Step):
    """Remove documents whose text is identical to an earlier one (sha256), keep the first."""

    phase: ClassVar[str] = "dedup"


class NearDedup(_Step):
    """Remove near-duplicates (MinHash over word n-gram shingles, banded LSH), keep the
    first of each cluster. ``threshold`` is the Jaccard similarity at which two documents
    count as duplicates."""

    phase: ClassVar[str] = "dedup"
    threshold: float = Field(0.8, gt=0, lt=1)
    num_perm: int = Field(128, ge=16, le=1024)
    ngram: int = Field(5, ge=1, le=20)
    seed: int = 1
    bands: int | None = Field(None, ge=1, description="LSH bands (default: derived from "
                              "threshold)")
    rows: int | None = Field(None, ge=1, description="rows per band (with bands)")

    @model_validator(mode="after")
    def _banding(self) -> NearDedup:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows must be at most num_perm ({self.num_perm})")
        return self


# -- annotations -----------------------------------------------------------------------------


class Tokenize(_Step):
    """Count tokens per document with a local Hugging Face tokenizer (a folder holding
    tokenizer.json, or the file itself); the ``tokens`` column."""

    phase: ClassVar[str] = "annotate"
    tokenizer: str


class Segment(_Step):
    """Split text into words (jieba: Chinese word segmentation; other scripts split on
    spaces and punctuation); the ``words`` column, and ``pos`` tags with ``pos: true``."""

    phase: ClassVar[str] = "annotate"
    pos: bool = False


class Stopwords(_Step):
    """Remove stop words (stopwordsiso lists) from the ``words`` column."""

    phase: ClassVar[str] = "annotate"
    languages: list[str] = ["en", "zh"]


STEPS: dict[str, type[_Step]] = {
    "html_to_text": HtmlToText, "fix_unicode": FixUnicode, "normalize": Normalize,
    "strip_control": StripControl, "collapse_whitespace": CollapseWhitespace,
    "mask_pii": MaskPii, "length": Length, "language": Language,
    "gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition, "regex": Regex,
    "exact_dedup": ExactDedup, "near_dedup": NearDedup,
    "tokenize": Tokenize, "segment": Segment, "stopwords": Stopwords,
}
STEP_NAMES = {cls: name for name, cls in STEPS.items()}
_PHASES = ("document", "dedup", "annotate")


class Split(BaseModel):
    """Train/validation/test fractions; deterministic by seed, stratified by the label
    column when the recipe names one."""

    model_config = ConfigDict(extra="forbid")
    train: float = Field(1.0, ge=0, le=1)
    validation: float = Field(0.0, ge=0, le=1)
    test: float = Field(0.0, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> Split:
        if abs(self.train + self.validation + self.test - 1.0) > 1e-6:
            raise ValueError("train + validation + test must add up to 1")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


class Readers(BaseModel):
    """How files become documents."""

    model_config = ConfigDict(extra="forbid")
    txt: Literal["file", "line", "paragraph"] = "file"
    max_document_mb: int = Field(64, ge=1, le=1024)


RESERVED_COLUMNS = frozenset({"id", "text", "source", "label", "lang"})


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text_field: str = "text"
    label_field: str | None = None
    # Other fields of each record kept as columns of the same name, unchanged (e.g. the
    # tokens and BIO tags of NER data, or the messages of chat data).
    fields: list[str] = Field(default_factory=list, max_length=64)
    steps: list[_Step] = []
    split: Split = Split()
    readers: Readers = Readers()
    shard_mb: int = Field(128, ge=1, le=4096)
    workers: int | None = Field(None, ge=1, le=256)

    @model_validator(mode="after")
    def _fields_clash_with_annotations(self) -> Recipe:
        written = {"tokens"} if self.step(Tokenize) else set()
        if self.step(Segment):
            written |= {"words", "pos"}
        clash = sorted(written & set(self.fields))
        if clash:
            raise ValueError(f"fields: {', '.join(clash)} would clash with the column an "
                             "annotation step writes; rename the field or drop the step")
        return self

    @field_validator("fields")
    @classmethod
    def _field_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", name):
                raise ValueError(f"{name!r} is not a column name (letters, digits, '_')")
            if name in RESERVED_COLUMNS:
                raise ValueError(f"{name!r} is a column llmos writes itself "
                                 f"({', '.join(sorted(RESERVED_COLUMNS))})")
        if len(set(names)) != len(names):
            raise ValueError("a field is named twice")
        return names

    def phase(self, name: str) -> list[_Step]:
        return [s for s in self.steps if s.phase == name]

    def step(self, cls: type[_Step]) -> _Step | None:
        return next((s for s in self.steps if isinstance(s, cls)), None)

    def to_dict(self) -> dict:
        """The recipe in its canonical form (every parameter spelled out): lineage
        records this, and ``parse_recipe`` accepts it back."""
        out = self.model_dump(exclude={"steps"})
        out["steps"] = [{STEP_NAMES[type(s)]: s.model_dump()} for s in self.steps]
        return out


def parse_recipe(raw: Any) -> Recipe:
    """Check a recipe (already parsed from YAML or JSON); raise RecipeError naming the step
    and the parameter at fault."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a mapping with 'steps' (and optional 'split', "
                          "'text_field', 'label_field', 'readers', 'shard_mb', 'workers')")
    raw = dict(raw)
    steps_raw = raw.pop("steps", None) or []
    if not isinstance(steps_raw, list):
        raise RecipeError("'steps' is a list")
    steps = [_parse_step(i, item) for i, item in enumerate(steps_raw, 1)]
    _check_order(steps)
    try:
        return Recipe(steps=steps, **raw)
    except ValidationError as e:
        raise RecipeError(_explain(e, "recipe")) from None
    except TypeError as e:
        raise RecipeError(f"recipe: {e}") from None


def load_recipe(text: str) -> Recipe:
    """Parse YAML (or JSON) text into a checked recipe."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"the recipe is not valid YAML: {e}") from None
    return parse_recipe(raw)


def _parse_step(index: int, item: Any) -> _Step:
    if isinstance(item, str):
        name, params = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, params = next(iter(item.items()))
        params = {} if params is None else params
    else:
        raise RecipeError(f"step {index}: write a step as its name, or as "
                          "'name: {parameter: value}'")
    cls = STEPS.get(name)
    if cls is None:
        raise RecipeError(f"step {index}: unknown step {name!r}; known steps: "
                          + ", ".join(STEPS))
    if not isinstance(params, dict):
        raise RecipeError(f"step {index} ({name}): parameters are a mapping")
    try:
        return cls(**params)
    except ValidationError as e:
        raise RecipeError(_explain(e, f"step {index} ({name})", cls)) from None


def _explain(e: ValidationError, where: str, cls: type[BaseModel] | None = None) -> str:
    problems = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = list((cls or Recipe).model_fields)
            problems.append(f"unknown parameter {loc!r}"
                            + (f" (parameters: {', '.join(known)})" if known else
                               " (this step takes no parameters)"))
        else:
            problems.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return f"{where}: " + "; ".join(problems)


def _check_order(steps: list[_Step]) -> None:
    seen = 0
    for i, step in enumerate(steps, 1):
        rank = _PHASES.index(step.phase)
        if rank < seen:
            raise RecipeError(
                f"step {i} ({STEP_NAMES[type(step)]}): {_PHASE_WORDS[step.phase]} steps come "
                f"before {_PHASE_WORDS[_PHASES[seen]]} steps")
        seen = rank
    names = [STEP_NAMES[type(s)] for s in steps]
    for name in set(names):
        if name in ("exact_dedup", "near_dedup", "tokenize", "segment") and names.count(name) > 1:
            raise RecipeError(f"step {name!r} appears twice")
    if "stopwords" in names and "segment" not in names:
        raise RecipeError("step 'stopwords' removes words from the 'segment' step's words: "
                          "add 'segment' before it")


_PHASE_WORDS = {"document": "cleaning and filter", "dedup": "deduplication",
                "annotate": "annotation (tokenize, segment, stopwords)"}
