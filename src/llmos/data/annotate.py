"""Annotation steps: columns computed for the documents that survived deduplication.

They add columns and never change ``text``: ``tokens`` (a Hugging Face tokenizer's count),
``words`` (jieba's segmentation: Chinese words, and space/punctuation-separated words for
other scripts), ``pos`` (jieba's part-of-speech tags, aligned with ``words``; jieba tags
non-Chinese words as ``eng``), and stop-word removal from ``words``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llmos.data.steps import Step, StepParams


class AnnotationError(ValueError):
    """An annotation step that cannot be set up (a missing tokenizer file...)."""


class Tokenize(Step):
    """Count tokens per document with a local Hugging Face tokenizer (a folder holding
    tokenizer.json, or the file itself); the ``tokens`` column."""

    name = "tokenize"
    phase = "annotate"
    once = True
    columns = {"tokens": "int32"}

    class Params(StepParams):
        tokenizer: str

    @classmethod
    def writes(cls, params: StepParams) -> set[str]:
        return {"tokens"}

    def __init__(self, cfg: Params):
        from tokenizers import Tokenizer

        path = Path(cfg.tokenizer).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise AnnotationError(f"no tokenizer at {cfg.tokenizer} (a folder with "
                                  "tokenizer.json, or the tokenizer.json file)")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise AnnotationError(f"{path} is not a Hugging Face tokenizer: {e}") from None
        self._tok.no_truncation()
        self._tok.no_padding()

    def apply(self, texts: list[str], columns: dict[str, list]) -> None:
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        columns["tokens"] = [len(e.ids) for e in encodings]


class Segment(Step):
    """Split text into words (jieba: Chinese word segmentation; other scripts split on
    spaces and punctuation); the ``words`` column, and ``pos`` tags with ``pos: true``."""

    name = "segment"
    phase = "annotate"
    once = True

    class Params(StepParams):
        pos: bool = False

    @classmethod
    def writes(cls, params: StepParams) -> set[str]:
        return {"words", "pos"}

    def __init__(self, cfg: Params):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self.pos = cfg.pos
        self.columns = {"words": "list<string>", **({"pos": "list<string>"} if cfg.pos else {})}

    def apply(self, texts: list[str], columns: dict[str, list]) -> None:
        import jieba
        import jieba.posseg

        words_col, pos_col = [], []
        for text in texts:
            if self.pos:
                pairs = [(p.word, p.flag) for p in jieba.posseg.lcut(text) if _is_word(p.word)]
                words_col.append([w for w, _ in pairs])
                pos_col.append([f for _, f in pairs])
            else:
                words_col.append([w for w in jieba.lcut(text) if _is_word(w)])
        columns["words"] = words_col
        if self.pos:
            columns["pos"] = pos_col


def _is_word(w: str) -> bool:
    return any(ch.isalnum() for ch in w)


class Stopwords(Step):
    """Remove stop words (stopwordsiso lists) from the ``words`` column."""

    name = "stopwords"
    phase = "annotate"
    requires = {"segment": "removes words from the 'segment' step's words"}
    columns: dict[str, str] = {}

    class Params(StepParams):
        languages: list[str] = ["en", "zh"]

    def __init__(self, cfg: Params):
        import stopwordsiso

        unknown = [lang for lang in cfg.languages if not stopwordsiso.has_lang(lang)]
        if unknown:
            raise AnnotationError(f"no stop-word list for {', '.join(unknown)}")
        self.words = frozenset(stopwordsiso.stopwords(cfg.languages))

    def apply(self, texts: list[str], columns: dict[str, list]) -> None:
        stop = self.words
        keep = [[w.lower() not in stop for w in words] for words in columns["words"]]
        columns["words"] = [[w for w, k in zip(ws, ks) if k]
                            for ws, ks in zip(columns["words"], keep)]
        if "pos" in columns:
            columns["pos"] = [[p for p, k in zip(ps, ks) if k]
                              for ps, ks in zip(columns["pos"], keep)]

