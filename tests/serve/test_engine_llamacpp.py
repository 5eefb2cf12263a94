"""The "llamacpp" engine on the real SmolLM2-135M-Instruct GGUF file: its batching against
llama.cpp decoding one sequence by itself.

llama.cpp's numerics depend on the batch (a step of 64 tokens takes another matmul path
than a step of 8), so a request's greedy output in a crowd may differ from its output
alone, as with llama-server; what must hold is that a request alone gives exactly what
llama.cpp gives, and that a crowd shares the batch and is deterministic."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
from offline_models import smollm2_gguf

from llmos.serve.engines import (
    FinishReason,
    GenerationRequest,
    ModelLoadError,
    load_engine,
)

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name three primary colors.",
             "What do bees make?", "Why is the sky blue?", "Who wrote Romeo and Juliet?",
             "What is the largest planet?", "Suggest a name for a cat.", "What is 12 times 12?"]


@pytest.fixture(scope="module")
def folder(smollm2_dir, tmp_path_factory):
    """The converted folder (tokenizer, config) with the GGUF file beside it, as an import
    from GGUF lays a version out."""
    out = tmp_path_factory.mktemp("smollm2-gguf")
    for f in smollm2_dir.iterdir():
        os.symlink(f, out / f.name)
    os.symlink(smollm2_gguf(), out / smollm2_gguf().name)
    return out


@pytest.fixture(scope="module")
def engine(folder):
    engine = load_engine(folder, engine="llamacpp", max_batch=8, threads=2)
    yield engine
    engine.close()


def llama_cpp_greedy(prompt: list[int], n: int) -> list[int]:
    """Greedy tokens from llama.cpp itself: one sequence, its prompt in one decode, then one
    token a step."""
    import llama_cpp as lc

    mparams = lc.llama_model_default_params()
    mparams.use_extra_bufts = False
    model = lc.llama_model_load_from_file(str(smollm2_gguf()).encode(), mparams)
    cparams = lc.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 1024, 512, 512
    cparams.n_threads = cparams.n_threads_batch = 2
    ctx = lc.llama_init_from_model(model, cparams)
    batch = lc.llama_batch_init(512, 0, 1)
    out, feed, pos = [], list(prompt), 0
    try:
        for _ in range(n):
            batch.n_tokens = len(feed)
            for i, tok in enumerate(feed):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(feed) - 1
            assert lc.llama_decode(ctx, batch) == 0
            pos += len(feed)
            logits = np.ctypeslib.as_array(ctypes.cast(
                lc.llama_get_logits_ith(ctx, len(feed) - 1), ctypes.POINTER(ctypes.c_float)),
                (lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model)),))
            out.append(int(logits.argmax()))
            feed = [out[-1]]
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    return out


def chat(engine, question: str) -> list[int]:
    return engine.chat_prompt([{"role": "user", "content": question}])


def test_a_request_alone_gives_what_llama_cpp_gives(engine):
    for i, q in enumerate(QUESTIONS[:3]):
        prompt = chat(engine, q)
        out = engine.submit(GenerationRequest(f"alone{i}", prompt, max_tokens=24,
                                              temperature=0)).result(300)
        expected = llama_cpp_greedy(prompt, 24)
        eos = next((k for k, t in enumerate(expected) if t in engine.eos_token_ids), None)
        assert list(out.token_ids) == expected[:None if eos is None else eos + 1], q
        assert out.text.strip()


def test_eight_streams_share_one_batch_and_repeat_exactly(engine):
    prompts = [chat(engine, q) for q in QUESTIONS]

    def crowd(tag: str) -> list:
        with engine.paused():  # all eight wait before the first step
            streams = [engine.submit(GenerationRequest(f"{tag}{i}", p, max_tokens=16,
                                                       temperature=0))
                       for i, p in enumerate(prompts)]
        return [s.result(300) for s in streams]

    first, second = crowd("x"), crowd("y")
    assert engine.record().max_batch_with({f"x{i}" for i in range(8)}) == 8
    assert [list(c.token_ids) for c in first] == [list(c.token_ids) for c in second]
    assert all(c.usage.completion_tokens == 16 or c.finish_reason == FinishReason.STOP
               for c in first)
    assert all(c.text.strip() for c in first)


def test_an_aborted_stream_frees_its_sequence_for_the_next(engine):
    stream = engine.submit(GenerationRequest("long", chat(engine, QUESTIONS[3]), max_tokens=400,
                                             temperature=0))
    next(iter(stream))
    stream.abort()
    done = stream.result(60)
    assert done.finish_reason == FinishReason.ABORT and done.usage.completion_tokens < 400
    assert engine.occupancy().running == 0
    after = engine.submit(GenerationRequest("after", chat(engine, QUESTIONS[0]), max_tokens=4,
                                            temperature=0)).result(60)
    assert after.usage.completion_tokens == 4


def test_a_higher_priority_request_preempts_and_the_lower_one_still_finishes(folder):
    engine = load_engine(folder, engine="llamacpp", max_batch=1, threads=2)
    try:
        low = engine.submit(GenerationRequest("low", chat(engine, QUESTIONS[2]), max_tokens=60,
                                              temperature=0, priority=0))
        next(iter(low))
        high = engine.submit(GenerationRequest("high", chat(engine, QUESTIONS[0]), max_tokens=8,
                                               temperature=0, priority=2))
        high_out, low_out = high.result(120), low.result(120)
        assert high_out.usage.completion_tokens == 8
        assert low_out.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
        assert engine.record().counters.preemptions == 1
        resumed = [s for s in engine.record().steps if "low" in s.prefill_ids][-1]
        assert resumed.prefill_tokens == 1  # its prompt and output so far stayed in the cache
    finally:
        engine.close()


def test_a_start_shared_with_an_earlier_request_is_not_prefilled_again(folder):
    engine = load_engine(folder, engine="llamacpp", max_batch=4, threads=2)
    try:
        first, second = chat(engine, "Name three primary colors."), chat(engine,
                                                                         "Name three fruits.")
        common = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
        assert common > 20  # the chat template's system prompt, and "Name three"
        engine.submit(GenerationRequest("first", first, max_tokens=4, temperature=0)).result(60)
        out = engine.submit(GenerationRequest("second", second, max_tokens=8,
                                              temperature=0)).result(60)
        step = next(s for s in engine.record().steps if "second" in s.prefill_ids)
        assert step.prefill_tokens == len(second) - common
        assert out.text.strip() and out.usage.prompt_tokens == len(second)
    finally:
        engine.close()


def test_a_folder_without_gguf_is_refused_with_the_reason(smollm2_dir):
    with pytest.raises(ModelLoadError, match="holds no GGUF file"):
        load_engine(smollm2_dir, engine="llamacpp")
