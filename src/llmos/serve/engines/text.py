"""Incremental detokenization of one request's output, and its stop strings.

Text is decoded with the tokenizers library's ``DecodeStream`` (primed with the end of the
prompt so the first token decodes in context), which buffers tokens until they form whole
UTF-8 characters, so a delta never carries half a character. Text that could be the start
of a stop string is held back until it is known not to be one; when a stop string appears,
the text ends just before it. Tokenizers without a fast backend fall back to the usual
offset-window decoding.

Knows nothing about models, batching or streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROMPT_CONTEXT_TOKENS = 8


class _FastDecoder:
    def __init__(self, backend: Any, prompt_tail: Sequence[int]):
        from tokenizers.decoders import DecodeStream

        self._backend = backend
        self._stream = DecodeStream(ids=list(prompt_tail), skip_special_tokens=True)
        self._pending: list[int] = []  # fed since the last text came out

    def step(self, token_id: int) -> str:
        text = self._stream.step(self._backend, token_id)
        self._pending = [] if text else [*self._pending, token_id]
        return text or ""

    def rest(self) -> str:
        """At the end: the whole characters among tokens still waiting for more bytes."""
        if not self._pending:
            return ""
        text = self._backend.decode(self._pending, skip_special_tokens=True)
        self._pending = []
        return text.replace("\ufffd", "")


class _OffsetDecoder:
    """For tokenizers with no ``tokenizers`` backend: decode a sliding window of ids and emit
    the new suffix once it no longer ends in a replacement character."""

    def __init__(self, tokenizer: Any, prompt_tail: Sequence[int]):
        self._tokenizer = tokenizer
        self._ids = list(prompt_tail)
        self._prefix = 0
        self._read = len(self._ids)

    def step(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]

    def rest(self) -> str:
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix:], skip_special_tokens=True)
        self._prefix = self._read = len(self._ids)
        return after[len(before):].replace("\ufffd", "")


class IncrementalText:
    """Feed generated token ids with :meth:`add`; it returns the text that is safe to emit.
    After a stop string, :attr:`stopped` is True and no more text comes."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), prompt_ids: Sequence[int] = ()):
        tail = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "decode"):
            self._decoder: _FastDecoder | _OffsetDecoder = _FastDecoder(backend, tail)
        else:
            self._decoder = _OffsetDecoder(tokenizer, tail)
        self._stops = tuple(stop)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._text = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """All text so far (without a matched stop string, including held-back text)."""
        return self._text

    def add(self, token_id: int) -> str:
        if self.stopped:
            return ""
        return self._advance(self._decoder.step(token_id))

    def flush(self) -> str:
        """At the end of a request that did not stop on a stop string: the held-back text,
        and the whole characters of tokens that were waiting for more bytes (a character cut
        off by the end is dropped, never sent broken)."""
        if self.stopped:
            return ""
        out = self._advance(self._decoder.rest())
        return out if self.stopped else out + self._emit(len(self._text))

    def _advance(self, new_text: str) -> str:
        self._text += new_text
        if not self._stops:
            return self._emit(len(self._text))
        hits = [i for i in (self._text.find(s, self._emitted) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._text = self._text[:min(hits)]
            return self._emit(len(self._text))
        return self._emit(len(self._text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest suffix of the unsent text that starts some stop string."""
        unsent = len(self._text) - self._emitted
        for k in range(min(self._max_stop - 1, unsent), 0, -1):
            suffix = self._text[-k:]
            if any(s.startswith(suffix) for s in self._stops):
                return k
        return 0

    def _emit(self, upto: int) -> str:
        out = self._text[self._emitted:upto]
        self._emitted = max(self._emitted, upto)
        return out
