"""The ``"llamacpp"`` engine: GGUF models on llama.cpp (through llama-cpp-python's bindings),
with the same continuous batching as the ``"torch"`` engine.

Each running request is a llama.cpp *sequence* in one unified KV cache; a step builds one
``llama_batch`` holding the prompts of the requests joining (whole, up to the step's prompt
budget) and one token of every request already running, decodes it in a single
``llama_decode``, and samples each sequence's next token from its logits row. A request
that leaves frees its sequence's cells (``llama_memory_seq_rm``). Tokenization, chat
templates, detokenization, sampling and stops are the shared ones (the model folder's
tokenizer, converted from the same GGUF file, gives the same ids).

Optional: ``pip install -e '.[llamacpp]'`` (builds llama.cpp from source). Threads default
to the cores the job was given (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from llmos.serve.engines.base import ModelLoadError
from llmos.serve.engines.batching import BatchingEngine, Sequence
from llmos.serve.engines.loading import load_tokenizer, read_json


def _bindings():
    try:
        import llama_cpp
    except ImportError:
        raise ModelLoadError("the llamacpp engine needs llama-cpp-python: "
                             "pip install -e '.[llamacpp]'") from None
    # llama.cpp reports through this logger; it prints every line of a load unless told not to
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def find_gguf(folder: Path) -> Path:
    files = sorted(Path(folder).glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"{folder} holds no GGUF file: the llamacpp engine serves models "
                             "imported from GGUF (llmos models import FILE.gguf)")
    return files[0]


class LlamaCppEngine(BatchingEngine):
    name = "llamacpp"
    _thread_name = "llmos-engine-llamacpp"

    def __init__(self, gguf: Path, tokenizer: Any, *, max_batch: int = 32, max_queue: int = 1024,
                 max_prefill_tokens: int = 2048, max_context: int = 2048,
                 cache_tokens: int | None = None, threads: int | None = None,
                 repack: bool = False, record_steps: int = 1024):
        lc = _bindings()
        self._lc = lc
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        mparams.use_mmap = True
        # llama.cpp's extra weight buffers (AMX tiles, repacked layouts) are off by default:
        # AMX decoding crashes the process on virtual machines that do not grant the AMX state
        # (llama-server's --no-repack is the same switch)
        mparams.use_extra_bufts = repack
        self._model = lc.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not self._model:
            raise ModelLoadError(f"llama.cpp cannot load {gguf.name}")
        train_ctx = lc.llama_model_n_ctx_train(self._model)
        max_context = min(max_context, train_ctx)
        self.cache_tokens = cache_tokens or max_context * min(max_batch, 4)
        threads = threads or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = self.cache_tokens
        cparams.n_batch = cparams.n_ubatch = max(max_prefill_tokens + max_batch, 512)
        cparams.n_seq_max = max_batch
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = True
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelLoadError("llama.cpp could not make a context (out of memory?)")
        self._memory = lc.llama_get_memory(self._ctx)
        vocab = lc.llama_model_get_vocab(self._model)
        n_vocab = lc.llama_vocab_n_tokens(vocab)
        self._n_vocab = n_vocab
        self._batch = lc.llama_batch_init(cparams.n_batch, 0, 1)
        self._batch_capacity = cparams.n_batch
        self._gguf_bytes = gguf.stat().st_size
        self._free_seqs = list(range(max_batch))
        self._reserved = 0  # cache cells promised to running requests (prompt + max_tokens)
        eos = {lc.llama_vocab_eos(vocab), lc.llama_vocab_eot(vocab)} - {-1}
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(tokenizer.eos_token_id)
        self._init_batching(tokenizer, max_batch=max_batch, max_queue=max_queue,
                            max_prefill_tokens=max_prefill_tokens, max_context=max_context,
                            vocab_size=n_vocab, eos_token_ids=frozenset(eos),
                            record_steps=record_steps, sampler_device="cpu")

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
             **options: Any) -> LlamaCppEngine:
        folder = Path(model_dir)
        gguf = find_gguf(folder)
        config = read_json(folder / "config.json") or {}
        options.setdefault("max_context", min(int(config.get("max_position_embeddings", 2048)),
                                              options.pop("context", 4096)))
        return cls(gguf, load_tokenizer(folder), **options)

    def memory_bytes(self) -> int:
        if not getattr(self, "_ctx", None):
            return 0
        return self._gguf_bytes + self._lc.llama_state_get_size(self._ctx)

    # -- admission within the cache ---------------------------------------------------------

    def _room_for(self, seq: Sequence) -> bool:
        """A request needs room in the unified cache for its prompt and all it may generate
        (the first one always gets in: a request alone never waits forever)."""
        need = len(seq.request.prompt_token_ids) + seq.request.max_tokens
        return not self._running or self._reserved + need <= self.cache_tokens

    def _joined(self, seq: Sequence) -> None:
        seq.cache = self._free_seqs.pop()  # its llama.cpp sequence id
        self._reserved += len(seq.request.prompt_token_ids) + seq.request.max_tokens

    # -- the model -----------------------------------------------------------------------------

    def _prefill_joining(self, joining: list[Sequence]) -> list[tuple[Sequence, int]]:
        entries = []
        for seq in joining:
            prompt = seq.context_ids()
            entries += [(tok, i, seq.cache, i == len(prompt) - 1) for i, tok in enumerate(prompt)]
        produced = self._decode_entries(joining, entries)
        for seq, _ in produced:
            seq.length = len(seq.context_ids())
        return produced

    def _decode(self, rows: list[Sequence]) -> list[tuple[Sequence, int]]:
        produced = self._decode_entries(rows, [(s.last_token, s.length, s.cache, True) for s in rows])
        for seq, _ in produced:
            seq.length += 1
        return produced

    def _decode_entries(self, seqs: list[Sequence], entries: list[tuple[int, int, int, bool]]
             ) -> list[tuple[Sequence, int]]:
        """Decode ``entries`` (token, position, sequence id, wants logits) in batches of the
        context's capacity; sample each sequence's next token from its last row."""
        import torch

        lc, logits_of = self._lc, {}
        try:
            for start in range(0, len(entries), self._batch_capacity):
                chunk = entries[start:start + self._batch_capacity]
                b, rows = self._batch, {}
                b.n_tokens = len(chunk)
                for i, (tok, pos, seq_id, wants) in enumerate(chunk):
                    b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
                    b.seq_id[i][0] = seq_id
                    b.logits[i] = wants
                    if wants:
                        rows[seq_id] = i
                if lc.llama_decode(self._ctx, b) != 0:
                    raise RuntimeError("llama_decode failed (the KV cache is full?)")
                for seq_id, row in rows.items():
                    ptr = ctypes.cast(lc.llama_get_logits_ith(self._ctx, row),
                                      ctypes.POINTER(ctypes.c_float))
                    logits_of[seq_id] = np.ctypeslib.as_array(ptr, (self._n_vocab,)).copy()
            return [(s, s.sampler.sample(torch.from_numpy(logits_of[s.cache]))) for s in seqs]
        except Exception as e:  # noqa: BLE001 - these requests fail, the others go on
            self._fail(seqs, e)
            return []

    def _free_slot(self, seq: Sequence, moved: Sequence | None) -> None:
        if seq.cache is not None:
            self._lc.llama_memory_seq_rm(self._memory, seq.cache, -1, -1)
            self._free_seqs.append(seq.cache)
            self._reserved -= len(seq.request.prompt_token_ids) + seq.request.max_tokens

    def _drain(self) -> None:
        super()._drain()
        lc = self._lc
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)
        self._ctx = None
