"""Perplexity of a causal LM on a text, the same way for a Hugging Face folder (torch) and a
GGUF file (llama.cpp), so that an export can be compared with its parent.

Both tokenize the text with the model folder's own tokenizer (for a GGUF file: the tokenizer
files beside it, as the ``llamacpp`` engine does; llama.cpp's vocabulary only when there are
none), without special tokens, cut the ids into the same non-overlapping windows of
``window`` tokens, run each window from an empty context and score every token of a window
but its first from the ones before it. Perplexity = exp(mean negative log-likelihood) over
all scored tokens; the same text and window give the same scored tokens on both sides.
``perplexity(folder, text)`` picks the runtime a version is served with (its GGUF file when
it holds no safetensors).

Owns: windows, scoring, the two runtimes' forward passes. Does not own: where the text comes
from (datasets, ``optimize.measure``), serving.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from pathlib import Path

import numpy as np

from llmos.errors import InvalidRequest

#: Default window (tokens): the contexts llama.cpp and torch both run comfortably on a CPU.
WINDOW = 512
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def windows(ids: list[int], size: int) -> list[list[int]]:
    """Non-overlapping windows of ``size`` ids (the last may be shorter; a window of one id
    scores nothing and is dropped). Raises InvalidRequest when nothing would be scored."""
    if size < 2:
        raise InvalidRequest(f"perplexity window {size} is too small: it needs 2 tokens or more")
    out = [ids[i:i + size] for i in range(0, len(ids), size)]
    out = [w for w in out if len(w) >= 2]
    if not out:
        raise InvalidRequest(f"the text is {len(ids)} token(s) long: perplexity needs 2 or more")
    return out


def _hf_ids(folder: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _nll_rows(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log p(target) over rows of float logits (log-softmax in float64)."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float((logz - logits[np.arange(len(targets)), targets]).sum())


# -- torch ------------------------------------------------------------------------------------

def perplexity_hf(folder: str | Path, text: str, max_length: int = WINDOW) -> float:
    """Perplexity of the Hugging Face causal LM in ``folder`` on ``text`` (float32, CPU),
    in windows of ``max_length`` tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return perplexity_model(model.eval(), AutoTokenizer.from_pretrained(folder), text,
                            max_length)


def perplexity_model(model, tokenizer, text: str, max_length: int = WINDOW) -> float:
    """Perplexity of a loaded torch causal LM (float32 or int8) on ``text``: the same
    tokens and windows as ``perplexity_gguf``."""
    import torch

    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    nll, scored = 0.0, 0
    with torch.inference_mode():
        for part in windows(ids, max_length):
            logits = model(torch.tensor([part])).logits[0, :-1]
            nll += _nll_rows(logits.float().numpy(), np.asarray(part[1:]))
            scored += len(part) - 1
    return math.exp(nll / scored)


# -- llama.cpp --------------------------------------------------------------------------------

def _llama_ids(lc, model, text: str) -> list[int]:
    vocab = lc.llama_model_get_vocab(model)
    data = text.encode("utf-8")
    room = len(data) + 16
    buf = (lc.llama_token * room)()
    n = lc.llama_tokenize(vocab, data, len(data), buf, room, False, False)
    if n < 0:
        raise RuntimeError(f"llama_tokenize needs {-n} slots")
    return list(buf[:n])


def perplexity_gguf(path: str | Path, text: str, n_ctx: int = WINDOW) -> float:
    """Perplexity of the GGUF model at ``path`` on ``text`` (llama.cpp, CPU), in windows of
    ``n_ctx`` tokens; tokenized with the tokenizer files beside ``path`` when there are."""
    import llama_cpp as lc

    path = Path(path)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    mparams.use_extra_bufts = False  # as the llamacpp engine: no AMX/repacked buffers
    model = lc.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise InvalidRequest(f"llama.cpp cannot load {path.name}")
    ctx = batch = None
    try:
        has_tokenizer = any((path.parent / n).is_file() for n in _TOKENIZER_FILES)
        ids = _hf_ids(path.parent, text) if has_tokenizer else _llama_ids(lc, model, text)
        parts = windows(ids, n_ctx)
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_seq_max = 1
        threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        ctx = lc.llama_init_from_model(model, cparams)
        if not ctx:
            raise RuntimeError("llama.cpp could not make a context (out of memory?)")
        memory = lc.llama_get_memory(ctx)
        n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
        batch = lc.llama_batch_init(n_ctx, 0, 1)
        nll, scored = 0.0, 0
        for part in parts:
            lc.llama_memory_clear(memory, True)
            batch.n_tokens = len(part)
            for i, tok in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            ptr = ctypes.cast(lc.llama_get_logits(ctx), ctypes.POINTER(ctypes.c_float))
            logits = np.ctypeslib.as_array(ptr, (len(part), n_vocab))[:-1]
            nll += _nll_rows(logits, np.asarray(part[1:]))
            scored += len(part) - 1
        return math.exp(nll / scored)
    finally:
        if batch is not None:
            lc.llama_batch_free(batch)
        if ctx:
            lc.llama_free(ctx)
        lc.llama_model_free(model)


def perplexity(folder: str | Path, text: str, window: int = WINDOW) -> float:
    """Perplexity of the model version in ``folder``, whichever runtime serves it: its GGUF
    file on llama.cpp when it holds no safetensors weights, else torch."""
    folder = Path(folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs and not any(folder.glob("*.safetensors")):
        return perplexity_gguf(ggufs[0], text, n_ctx=window)
    return perplexity_hf(folder, text, max_length=window)
