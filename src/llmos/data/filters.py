"""Filters: each keeps or removes a document, and counts every removal with its reason.

``apply(docs, tally)`` returns the documents kept; ``tally`` records
``{step: {reason: count}}``. The Gopher heuristics follow Rae et al. 2021 ("Scaling
Language Models: Methods, Analysis & Insights from Training Gopher", appendix A) and work
on space-separated words, so they suit English-like text, not Chinese.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from llmos.data.clean import Tally
from llmos.data.readers import Doc
from llmos.data.steps import Step, StepParams

_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_BULLETS = ("•", "●", "-", "*", "‣", "⁃", "◦", "·")
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…—–"


class _Filter(Step):
    removes = True

    def apply(self, docs: list[Doc], tally: Tally) -> list[Doc]:
        kept = []
        for doc in docs:
            reason = self.reject(doc)
            if reason is None:
                kept.append(doc)
            else:
                tally.add(self.name, reason)
        return kept

    def reject(self, doc: Doc) -> str | None:
        raise NotImplementedError


class Length(_Filter):
    """Keep documents within these bounds (characters and whitespace-separated words)."""

    name = "length"

    class Params(StepParams):
        min_chars: int = Field(1, ge=0)
        max_chars: int | None = Field(None, ge=1)
        min_words: int = Field(0, ge=0)
        max_words: int | None = Field(None, ge=1)

    def __init__(self, cfg: Params):
        self.cfg = cfg

    def reject(self, doc: Doc) -> str | None:
        c = self.cfg
        n = len(doc.text)
        if n < c.min_chars:
            return "too_few_chars"
        if c.max_chars is not None and n > c.max_chars:
            return "too_many_chars"
        if c.min_words or c.max_words is not None:
            words = len(doc.text.split())
            if words < c.min_words:
                return "too_few_words"
            if c.max_words is not None and words > c.max_words:
                return "too_many_words"
        return None


class Language(_Filter):
    """Keep documents in these languages (py3langid, model inside the package); the
    detected language is stored in the ``lang`` column. Identification reads the first
    2,000 characters (enough for a confident answer, and it bounds the cost of long
    documents)."""

    name = "language"
    SAMPLE = 2000

    class Params(StepParams):
        keep: list[str] = Field(min_length=1)
        min_score: float = Field(0.0, ge=0, le=1)

        @field_validator("keep")
        @classmethod
        def _codes(cls, v: list[str]) -> list[str]:
            for code in v:
                if not re.fullmatch(r"[a-z]{2,3}", code):
                    raise ValueError(f"{code!r} is not an ISO 639-1 language code such as 'en'")
            return v

    def __init__(self, cfg: Params):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        # The model (numpy arrays) is a file inside the py3langid package.
        self._ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.keep = set(cfg.keep)
        self.min_score = cfg.min_score

    def reject(self, doc: Doc) -> str | None:
        lang, score = self._ident.classify(doc.text[: self.SAMPLE])
        doc.lang = lang
        if lang not in self.keep:
            return f"language_{lang}"
        if score < self.min_score:
            return "language_low_confidence"
        return None


_WORD = re.compile(r"[^\s!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~“”‘’«»…—–]+"
                   r"(?:['’\-.][^\s!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~“”‘’«»…—–]+)*")
_NO_LETTER_TOKEN = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")
_STOP_WORD = re.compile(r"\b(?:" + "|".join(sorted(_STOP_WORDS)) + r")\b", re.IGNORECASE)


class GopherQuality(_Filter):
    """The quality heuristics of Gopher (Rae et al. 2021), for space-separated languages.
    Words are runs of characters between spaces and punctuation; the work is done by
    regular expressions over the whole text (C speed), not word by word in Python."""

    name = "gopher_quality"

    class Params(StepParams):
        min_words: int = 50
        max_words: int = 100_000
        min_mean_word_length: float = 3
        max_mean_word_length: float = 10
        max_symbol_word_ratio: float = 0.1
        max_bullet_lines_ratio: float = 0.9
        max_ellipsis_lines_ratio: float = 0.3
        max_non_alpha_words_ratio: float = 0.8
        min_stop_words: int = 2

    def __init__(self, cfg: Params):
        self.c = cfg

    def reject(self, doc: Doc) -> str | None:
        c, text = self.c, doc.text
        words = _WORD.findall(text)
        n = len(words)
        if n < c.min_words:
            return "gopher_too_few_words"
        if n > c.max_words:
            return "gopher_too_many_words"
        mean = sum(map(len, words)) / n
        if mean < c.min_mean_word_length:
            return "gopher_short_words"
        if mean > c.max_mean_word_length:
            return "gopher_long_words"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > c.max_symbol_word_ratio:
            return "gopher_symbol_ratio"
        lines = [line for line in text.split("\n") if line.strip()]
        if lines:
            bullets = sum(line.lstrip().startswith(_BULLETS) for line in lines)
            if bullets / len(lines) > c.max_bullet_lines_ratio:
                return "gopher_bullet_lines"
            ellipsis = sum(line.rstrip().endswith(("...", "…")) for line in lines)
            if ellipsis / len(lines) > c.max_ellipsis_lines_ratio:
                return "gopher_ellipsis_lines"
        tokens = len(text.split())
        if len(_NO_LETTER_TOKEN.findall(text)) / tokens > c.max_non_alpha_words_ratio:
            return "gopher_non_alpha_words"
        if c.min_stop_words:
            found = 0
            for _ in _STOP_WORD.finditer(text):
                found += 1
                if found >= c.min_stop_words:
                    break
            else:
                return "gopher_few_stop_words"
        return None


class GopherRepetition(_Filter):
    """The repetition heuristics of Gopher: duplicated lines and paragraphs, top and
    duplicated n-grams."""

    name = "gopher_repetition"

    class Params(StepParams):
        dup_line_frac: float = 0.3
        dup_para_frac: float = 0.3
        dup_line_char_frac: float = 0.2
        dup_para_char_frac: float = 0.2
        top_ngram_char_frac: dict[int, float] = {2: 0.2, 3: 0.18, 4: 0.16}
        dup_ngram_char_frac: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12,
                                                 9: 0.11, 10: 0.10}

    def __init__(self, cfg: Params):
        self.c = cfg

    def reject(self, doc: Doc) -> str | None:
        c, text = self.c, doc.text
        if not text:
            return None
        for pieces, frac, char_frac, what in (
                (re.split(r"\n{2,}", text), c.dup_para_frac, c.dup_para_char_frac, "paragraph"),
                (text.split("\n"), c.dup_line_frac, c.dup_line_char_frac, "line")):
            pieces = [p.strip() for p in pieces if p.strip()]
            dup_count, dup_chars = _duplicates(pieces)
            if pieces and dup_count / len(pieces) > frac:
                return f"gopher_duplicate_{what}s"
            if dup_chars / len(text) > char_frac:
                return f"gopher_duplicate_{what}_chars"
        words = text.split()
        if len(words) < 2:
            return None
        # Word identities by Python's string hash (equal words, equal hashes; only
        # equality within this document matters).
        ids = np.fromiter(map(hash, words), np.int64, len(words))
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        total = lengths.sum()
        for n, threshold in sorted(c.top_ngram_char_frac.items()):
            if len(words) < n:
                break
            keys = np.sort(_ngram_keys(ids, n))
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            counts = np.diff(np.r_[starts, len(keys)])
            top = counts.argmax()
            if counts[top] > 1:
                first = int(np.flatnonzero(_ngram_keys(ids, n) == keys[starts[top]])[0])
                chars = int(lengths[first:first + n].sum())
                if counts[top] * chars / total > threshold:
                    return f"gopher_top_{n}gram"
        for n, threshold in sorted(c.dup_ngram_char_frac.items()):
            if len(words) < n:
                break
            keys = _ngram_keys(ids, n)
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            same = sorted_keys[1:] == sorted_keys[:-1]
            if not same.any():
                break  # no repeated n-gram, so no repeated longer one either
            repeated_sorted = np.zeros(len(keys), bool)
            repeated_sorted[1:] |= same
            repeated_sorted[:-1] |= same
            starts = order[repeated_sorted]
            covered = np.zeros(len(words) + 1, np.int64)  # words inside a repeated n-gram
            np.add.at(covered, starts, 1)
            np.add.at(covered, starts + n, -1)
            mask = np.cumsum(covered[:-1]) > 0
            if lengths[mask].sum() / total > threshold:
                return f"gopher_duplicate_{n}grams"
        return None


def _duplicates(pieces: list[str]) -> tuple[int, int]:
    """How many pieces repeat an earlier one, and their characters."""
    counts = Counter(pieces)
    dup_count = dup_chars = 0
    for piece, k in counts.items():
        if k > 1:
            dup_count += k - 1
            dup_chars += len(piece) * (k - 1)
    return dup_count, dup_chars


def _ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """One integer per word n-gram (a polynomial hash of its word ids; collisions are
    astronomically unlikely at document sizes)."""
    m = len(ids) - n + 1
    ids = ids.view(np.uint64)
    keys = ids[:m].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            keys *= np.uint64(1_000_003)
            keys += ids[k:k + m]
    return keys


class Regex(_Filter):
    """Drop documents that match (``action: drop``) or do not match (``keep``) a pattern."""

    name = "regex"

    class Params(StepParams):
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

    def __init__(self, cfg: Params):
        self.pattern = re.compile(cfg.pattern, re.IGNORECASE if cfg.ignore_case else 0)
        self.drop = cfg.action == "drop"

    def reject(self, doc: Doc) -> str | None:
        found = self.pattern.search(doc.text) is not None
        if found and self.drop:
            return "regex_matched"
        if not found and not self.drop:
            return "regex_not_matched"
        return None

