"""Cleaning steps: they change a document's text and never remove a document.

Each step is a small class (see ``steps``) that declares its recipe parameters and is built
from them, with ``apply(docs, tally)`` over a batch; ``tally`` counts what the step changed,
for the report. Every step has a fast path
for text it cannot change (plain ASCII for ftfy, normalized text for NFC), because most
text needs nothing.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from pydantic import Field

from llmos.data.readers import Doc
from llmos.data.steps import Step, StepParams

# Elements whose content is never the document's text.
_DROP_TAGS = ["script", "style", "noscript", "nav", "header", "footer", "aside", "form",
              "svg", "iframe", "template", "head", "button", "select"]
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
               "tr", "table", "section", "article", "blockquote", "pre", "main", "dd", "dt",
               "hr", "figcaption", "td", "th"}
_LOOKS_HTML = re.compile(r"^\s*(<!doctype html|<html|<head|<body|<div|<p[ >])", re.I)


class Tally:
    """Counts per step: documents changed, items masked, documents removed by reason."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, step: str, key: str, n: int = 1) -> None:
        if n:
            bucket = self.counts.setdefault(step, {})
            bucket[key] = bucket.get(key, 0) + n

    def merge(self, other: dict[str, dict[str, int]]) -> None:
        for step, bucket in other.items():
            for key, n in bucket.items():
                self.add(step, key, n)


class HtmlToText(Step):
    """Extract the readable text of HTML documents (selectolax): drops scripts, styles,
    navigation, headers and footers; block elements become line breaks."""

    name = "html_to_text"

    class Params(StepParams):
        detect: bool = Field(True, description="also convert non-.html documents that look "
                             "like HTML")

    def __init__(self, cfg: Params):
        self.detect = cfg.detect

    def apply(self, docs: list[Doc], tally: Tally) -> list[Doc]:
        for doc in docs:
            if doc.is_html or (self.detect and _LOOKS_HTML.match(doc.text[:200])):
                doc.text = html_to_text(doc.text)
                doc.is_html = False
                tally.add(self.name, "converted")
        return docs


def html_to_text(html: str) -> str:
    """The readable text of an HTML page: block elements start new lines."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    tree.strip_tags(_DROP_TAGS)
    root = tree.body or tree.root
    if root is None:
        return ""
    parts: list[str] = []
    for node in root.traverse(include_text=True):
        tag = node.tag
        if tag == "-text":
            parts.append(node.text_content or "")
        elif tag in _BLOCK_TAGS:
            parts.append("\n")
    lines = (" ".join(line.split()) for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


class FixUnicode(Step):
    """Repair mojibake and broken unicode (ftfy)."""

    name = "fix_unicode"

    def __init__(self, cfg: StepParams):
        import ftfy

        # Repair only: width, quotes, ligatures and normalization are other steps' business
        # (and full-width punctuation is correct in Chinese text).
        self._fix = ftfy.fix_text
        self._config = ftfy.TextFixerConfig(
            fix_character_width=False, uncurl_quotes=False, fix_latin_ligatures=False,
            normalization=None, explain=False)

    def apply(self, docs: list[Doc], tally: Tally) -> list[Doc]:
        for doc in docs:
            text = doc.text
            if text.isascii() and "&" not in text and "\x1b" not in text and "\r" not in text:
                continue
            fixed = self._fix(text, self._config)
            if fixed != text:
                doc.text = fixed
                tally.add(self.name, "changed")
        return docs


class Normalize(Step):
    """Unicode normalization."""

    name = "normalize"

    class Params(StepParams):
        form: Literal["NFC", "NFKC"] = "NFC"

    def __init__(self, cfg: Params):
        self.form = cfg.form

    def apply(self, docs: list[Doc], tally: Tally) -> list[Doc]:
        for doc in docs:
            if not unicodedata.is_normalized(self.form, doc.text):
                doc.text = unicodedata.normalize(self.form, doc.text)
                tally.add(self.name, "changed")
        return docs


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029"
                      "\u202a-\u202e\u2060-\u2064\ufeff\u00ad]")


class StripControl(Step):
    """Remove control characters (except tab and newline) and zero-width characters."""

    name = "strip_control"

    def apply(self, docs: list[Doc], tally: Tally) -> list[Doc]:
        for doc in docs:
            text = doc.text
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if _CONTROL.search(text):
                text = _CONTROL.sub("", text)
            if text != doc.text:
                doc.text = text
                tally.add(self.name, "changed")
        return docs


class CollapseWhitespace(Step):
    """Runs of spaces and tabs become one space; three or more line breaks become two;
    lines are stripped."""

    name = "collapse_whitespace"

    def apply(self, docs: list[Doc], tally: Tally) -> list[Doc]:
        for doc in docs:
            text = collapse_whitespace(doc.text)
            if text != doc.text:
                doc.text = text
                tally.add(self.name, "changed")
        return docs


def collapse_whitespace(text: str) -> str:
    out: list[str] = []
    blank = 0
    for line in text.split("\n"):
        line = " ".join(line.split())
        if line:
            if out and blank:
                out.append("")
            out.append(line)
            blank = 0
        else:
            blank += 1
    return "\n".join(out)


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                   r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")
# A phone number: optional +country code, optional (area), then 2 to 4 groups of digits;
# never part of a longer run of digit groups (a card or account number).
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?"
                    r"\d{2,4}[ .-]\d{3,4}(?:[ .-]\d{2,4})?(?![ .-]?\d)(?!\w)")


_DIGIT = re.compile(r"\d")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class MaskPii(Step):
    """Replace personal data with placeholders such as <EMAIL>."""

    name = "mask_pii"

    class Params(StepParams):
        kinds: list[Literal["email", "phone", "ip", "card"]] = ["email", "phone", "ip", "card"]

    def __init__(self, cfg: Params):
        self.kinds = set(cfg.kinds)

    def apply(self, docs: list[Doc], tally: Tally) -> list[Doc]:
        for doc in docs:
            doc.text = self.mask(doc.text, tally)
        return docs

    def mask(self, text: str, tally: Tally) -> str:
        if "email" in self.kinds and "@" in text:
            text, n = _EMAIL.subn("<EMAIL>", text)
            tally.add(self.name, "email", n)
        if not _DIGIT.search(text):
            return text
        if "card" in self.kinds:
            def card(m: re.Match) -> str:
                digits = re.sub(r"\D", "", m.group())
                if 13 <= len(digits) <= 19 and luhn_ok(digits):
                    tally.add(self.name, "card")
                    return "<CARD_NUMBER>"
                return m.group()
            text = _CARD.sub(card, text)
        if "ip" in self.kinds:
            text, n = _IPV4.subn("<IP_ADDRESS>", text)
            text, n6 = _IPV6.subn("<IP_ADDRESS>", text)
            tally.add(self.name, "ip", n + n6)
        if "phone" in self.kinds:
            def phone(m: re.Match) -> str:
                if sum(c.isdigit() for c in m.group()) < 7:
                    return m.group()
                tally.add(self.name, "phone")
                return "<PHONE_NUMBER>"
            text = _PHONE.sub(phone, text)
        return text

