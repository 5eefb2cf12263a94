"""The ``"llamacpp"`` engine: GGUF models on llama.cpp (through llama-cpp-python's bindings),
with the same continuous batching as the ``"torch"`` engine.

Each running request is a llama.cpp *sequence* in one unified KV cache; a step builds one
``llama_batch`` holding the prompts of the requests joining (whole, up to the step's prompt
budget) and one token of every request already running, decodes it in a single
``llama_decode``, and samples each sequence's next token from its logits row. Tokenization,
chat templates, detokenization, sampling and stops are the shared ones (the model folder's
tokenizer, converted from the same GGUF file, gives the same ids).

Prefix cache: a request that leaves keeps its cells as an idle sequence; a request that
joins later and starts with the same tokens (a chat template's system prompt, a
conversation's earlier turns, a preempted request resuming) shares those cells
(``llama_memory_seq_cp``) and prefills only the rest. Idle sequences are dropped least
recently used first when their cells or ids are needed (``llama_memory_seq_rm``).

Optional: ``pip install -e '.[llamacpp]'`` (builds llama.cpp from source). Threads default
to the cores the job was given (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import OrderedDict
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


MAX_SEQUENCES = 256  # llama.cpp's own limit (LLAMA_MAX_SEQ)


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
                 repack: bool = False, prefix_cache: bool = True, record_steps: int = 1024):
        if max_batch > MAX_SEQUENCES:
            raise ModelLoadError(f"llama.cpp runs at most {MAX_SEQUENCES} sequences at once; "
                                 f"max_batch {max_batch} is more")
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
        cparams.n_batch = max(max_prefill_tokens + max_batch, 512)  # llama_decode splits it
        cparams.n_ubatch = 512  # into micro-batches: the compute buffer is sized for one
        n_seq = min(2 * max_batch, MAX_SEQUENCES)  # the running ones, and idle prefixes
        cparams.n_seq_max = n_seq
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
        head_dim = lc.llama_model_n_embd(self._model) // max(1, lc.llama_model_n_head(self._model))
        self._cache_bytes = (2 * 2 * lc.llama_model_n_layer(self._model)  # K and V, float16
                             * lc.llama_model_n_head_kv(self._model) * head_dim * self.cache_tokens)
        self._free_seqs = list(range(n_seq))
        self._reserved = 0  # cache cells promised to running requests (prompt + max_tokens)
        self.prefix_cache = prefix_cache
        # idle sequence id -> the tokens its cells hold, least recently used first
        self._prefixes: OrderedDict[int, list[int]] = OrderedDict()
        self._prefix_tokens = 0
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
        """The weights (memory-mapped GGUF) and the KV cache llama.cpp allocated for them."""
        if not getattr(self, "_ctx", None):
            return 0
        return self._gguf_bytes + self._cache_bytes

    # -- admission within the cache ---------------------------------------------------------

    @staticmethod
    def _need(seq: Sequence) -> int:
        return len(seq.request.prompt_token_ids) + seq.request.max_tokens

    def _room_for(self, seq: Sequence) -> bool:
        """A request needs room in the unified cache for its prompt and all it may generate
        (idle prefixes make way; the first request always gets in: a request alone never
        waits forever)."""
        need = self._need(seq)
        while self._prefixes and self._reserved + self._prefix_tokens + need > self.cache_tokens:
            self._drop_prefix(next(iter(self._prefixes)))
        return not self._running or self._reserved + need <= self.cache_tokens

    def _joined(self, seq: Sequence) -> None:
        context = seq.context_ids()
        source, common = self._longest_prefix(context)
        if source is not None:
            self._prefixes.move_to_end(source)  # so that taking an id below keeps it
        seq.cache = self._take_sequence_id()
        if source is not None:
            self._lc.llama_memory_seq_cp(self._memory, source, seq.cache, 0, common)
        seq.length = seq.reused = common
        self._reserved += self._need(seq)

    def _longest_prefix(self, context: list[int]) -> tuple[int | None, int]:
        """The idle sequence sharing the longest start with ``context``, and how many tokens
        (never all of them: the last one runs for its logits)."""
        best, best_len = None, 0
        if self.prefix_cache:
            for sid, tokens in self._prefixes.items():
                n = _common_prefix(tokens, context)
                if n > best_len:
                    best, best_len = sid, n
        best_len = min(best_len, len(context) - 1)
        return (best, best_len) if best_len > 0 else (None, 0)

    def _take_sequence_id(self) -> int:
        """A free sequence id; else the least recently used idle prefix's. With twice as many
        ids as batch slots, a joining request always finds one."""
        if not self._free_seqs:
            self._drop_prefix(next(iter(self._prefixes)))
        return self._free_seqs.pop()

    def _drop_prefix(self, sid: int) -> None:
        self._prefix_tokens -= len(self._prefixes.pop(sid))
        self._lc.llama_memory_seq_rm(self._memory, sid, -1, -1)
        self._free_seqs.append(sid)

    # -- the model -----------------------------------------------------------------------------

    def _prefill_joining(self, joining: list[Sequence]) -> list[tuple[Sequence, int]]:
        entries = []
        for seq in joining:  # what the cache does not hold yet: from seq.length on
            context = seq.context_ids()
            entries += [(context[i], i, seq.cache, i == len(context) - 1)
                        for i in range(seq.length, len(context))]
        produced = self._decode_entries(joining, entries)
        for seq, _ in produced:
            seq.length = len(seq.context_ids())
        return produced

    def _decode(self, rows: list[Sequence]) -> list[tuple[Sequence, int]]:
        produced = self._decode_entries(rows, [(s.last_token, s.length, s.cache, True)
                                               for s in rows])
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
            for seq in seqs:
                seq.length = 0  # their cells are not to be trusted: freed, not kept
            self._fail(seqs, e)
            return []

    def _free_slot(self, seq: Sequence, moved: Sequence | None) -> None:
        """A request leaving (finished, aborted or preempted) keeps its cells as an idle
        prefix; a failed one frees them."""
        if seq.cache is None:
            return
        self._reserved -= self._need(seq)
        if self.prefix_cache and seq.length > 0:
            self._prefixes[seq.cache] = seq.context_ids()[:seq.length]
            self._prefix_tokens += seq.length
        else:
            self._lc.llama_memory_seq_rm(self._memory, seq.cache, -1, -1)
            self._free_seqs.append(seq.cache)

    def _drain(self) -> None:
        super()._drain()
        lc = self._lc
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)
        self._ctx = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
