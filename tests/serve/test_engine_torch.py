"""The "torch" serving engine on tiny random models (Llama, GPT-2, a sliding-window Mistral)
with the real SmolLM2 tokenizer: continuous batching, admission order, abort, limits, stop
strings, seeded sampling, async consumption, as the gateway sees them."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from llmos.errors import InvalidRequest
from llmos.serve.engines import (
    ContextLengthExceeded,
    DuplicateRequest,
    EngineClosed,
    FinishReason,
    GenerationRequest,
    QueueFull,
    load_engine,
)
from llmos.serve.engines.torch_engine import TorchEngine

TEXTS = [
    "The quick brown fox", "Once upon a time in a land far away there lived", "Hello",
    "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12", "Write a poem about the sea and the sky",
    "def fibonacci(n):", "The capital of France is", "A", "In 1969 the first humans",
    "Tea or coffee? Many people prefer", "Machine learning models are trained on data that",
    "She opened the door and saw", "Rain again today, said the farmer, looking at", "Why",
    "Listing: apples, pears, plums, cherries, grapes, melons", "The engine started with a roar",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def tiny_llama(tokenizer, max_positions: int = 512) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture
def engines():
    made = []

    def make(model, tokenizer, **options) -> TorchEngine:
        engine = TorchEngine(model, tokenizer, **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def prompt(tokenizer, i: int) -> list[int]:
    return tokenizer(TEXTS[i % len(TEXTS)])["input_ids"]


def greedy(model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """One request alone through transformers' generate: the reference output."""
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def req(rid: str, ids, max_tokens: int = 16, **kw) -> GenerationRequest:
    return GenerationRequest(rid, ids, max_tokens=max_tokens, temperature=kw.pop("temperature", 0),
                             **kw)


def admission_order(engine) -> list[str]:
    return [rid for step in engine.record().steps for rid in step.prefill_ids]


def test_sixteen_concurrent_streams_share_one_batch_and_equal_one_at_a_time_generate(
        llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=16)
    prompts = [prompt(tokenizer, i) for i in range(16)]
    outputs: dict[int, tuple] = {}
    ready = threading.Barrier(16)

    def client(i: int) -> None:
        ready.wait()
        stream = engine.submit(req(f"s{i}", prompts[i], max_tokens=24))
        deltas = list(stream)
        outputs[i] = (deltas, stream.result())

    with engine.paused():  # the 16 clients submit concurrently; the next step admits them all
        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        wait_until(lambda: engine.occupancy().waiting == 16,
                   "16 waiting requests")
    for t in threads:
        t.join(60)

    record = engine.record()
    assert record.max_batch_with({f"s{i}" for i in range(16)}) == 16
    assert record.counters.max_batch_seen == 16
    for i in range(16):
        deltas, completion = outputs[i]
        expected = greedy(llama, prompts[i], 24)
        assert list(completion.token_ids) == expected, f"stream {i} differs from generate"
        assert [t for d in deltas for t in d.token_ids] == expected
        assert "".join(d.text for d in deltas) == completion.text
        assert completion.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert deltas[-1].finish_reason == completion.finish_reason
        reason = FinishReason.STOP if expected[-1] == 2 else FinishReason.LENGTH  # 2: eos
        assert completion.finish_reason == reason
        assert completion.usage.prompt_tokens == len(prompts[i])
        assert completion.usage.completion_tokens == len(expected)
        assert record.ttft_s[f"s{i}"] > 0


def test_a_request_joining_mid_flight_is_admitted_at_the_next_step(llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=4)
    long_prompt, late_prompt = prompt(tokenizer, 1), prompt(tokenizer, 4)
    expected_long = greedy(llama, long_prompt, 120)
    assert len(expected_long) == 120  # no end-of-sequence: it is still running when B comes
    first = engine.submit(req("A", long_prompt, max_tokens=120))
    for _ in range(5):
        first.next_delta(timeout=30)
    late = engine.submit(req("B", late_prompt, max_tokens=10))
    steps_when_submitted = engine.record().counters.steps

    assert list(late.result(60).token_ids) == greedy(llama, late_prompt, 10)
    assert list(first.result(60).token_ids) == expected_long
    steps = engine.record().steps
    joined = next(s for s in steps if "B" in s.prefill_ids)
    # the step in flight at submit time may finish first; B joins the one after it
    assert joined.index <= steps_when_submitted + 2
    together = [s for s in steps if {"A", "B"} <= set(s.request_ids)]
    assert len(together) >= 9  # then both decode in the same batched steps


def test_abort_frees_the_slot_at_the_next_step(llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=3)
    idle = engine.memory_bytes()
    streams = {rid: engine.submit(req(rid, prompt(tokenizer, i), max_tokens=150))
               for i, rid in enumerate(["A", "B", "C"])}
    waiting = engine.submit(req("D", prompt(tokenizer, 3), max_tokens=5))
    wait_until(lambda: engine.record().max_batch_with({"A", "B", "C"}) == 3, "A, B, C in one step")
    assert "D" not in {r for s in engine.record().steps for r in s.request_ids}  # no free slot

    assert engine.abort("B")
    aborted = streams["B"].result(30)
    assert aborted.finish_reason == FinishReason.ABORT
    assert waiting.result(60).finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    steps = engine.record().steps
    last_with_b = max(s.index for s in steps if "B" in s.request_ids)
    after = [s for s in steps if s.index > last_with_b]
    assert after and all("B" not in s.request_ids for s in after)
    assert any(set(s.request_ids) == {"A", "C", "D"} for s in after)  # D took B's slot
    assert engine.abort("B") is False  # gone already
    for rid in ("A", "C"):
        engine.abort(rid)
        streams[rid].result(30)
    wait_until(lambda: engine.occupancy().running == 0, "an empty batch")
    assert engine.memory_bytes() == idle  # the KV cache is freed


def test_waiting_requests_are_admitted_highest_priority_first(llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=1)
    with engine.paused():
        streams = [engine.submit(req(rid, prompt(tokenizer, i), max_tokens=3, priority=p))
                   for i, (rid, p) in enumerate([("low", 0), ("high", 9), ("mid", 5), ("low2", 0)])]
    for s in streams:
        s.result(30)
    assert admission_order(engine) == ["high", "mid", "low", "low2"]


def test_a_higher_priority_request_preempts_a_lower_one_which_resumes_where_it_stopped(
        llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=1)
    low_ids, high_ids = prompt(tokenizer, 1), prompt(tokenizer, 2)
    low = engine.submit(req("low", low_ids, max_tokens=200, priority=0))
    wait_until(lambda: engine.record().counters.tokens >= 5, "the low request to be decoding")
    with engine.paused():
        high = engine.submit(req("high", high_ids, max_tokens=8, priority=2))
    high_out, low_out = high.result(60), low.result(60)
    assert list(high_out.token_ids) == greedy(llama, high_ids, 8)
    assert list(low_out.token_ids) == greedy(llama, low_ids, 200)  # recomputed, not changed
    assert low_out.finish_reason == FinishReason.LENGTH and low_out.usage.completion_tokens == 200
    record = engine.record()
    assert record.counters.preemptions == 1
    steps = [s.request_ids for s in record.steps]
    high_steps = [i for i, ids in enumerate(steps) if "high" in ids]
    low_steps = [i for i, ids in enumerate(steps) if "low" in ids]
    # high ran while low waited, then low went on
    assert low_steps[0] < high_steps[0] and high_steps[-1] < low_steps[-1]
    assert not set(high_steps) & set(low_steps)
    resumed = next(s for s in record.steps if "low" in s.prefill_ids and s.index > high_steps[-1])
    assert resumed.prefill_tokens > len(low_ids)  # its prompt and its output so far


def test_a_higher_priority_request_interrupts_the_decode_in_flight(llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=4)
    low_ids, high_ids = [prompt(tokenizer, 0), prompt(tokenizer, 3)], prompt(tokenizer, 5)
    sent = {}

    def arrive_mid_decode(module, args, output):  # after the first layer of a decode forward
        if "high" not in sent and engine.record().counters.tokens >= 6:
            sent["high"] = engine.submit(req("high", high_ids, max_tokens=8, priority=2))

    hook = llama.model.layers[0].register_forward_hook(arrive_mid_decode)
    try:
        lows = [engine.submit(req(f"low{i}", ids, max_tokens=40, priority=0))
                for i, ids in enumerate(low_ids)]
        wait_until(lambda: "high" in sent, "the high request to arrive mid-forward")
        high_out, low_outs = sent["high"].result(60), [s.result(60) for s in lows]
    finally:
        hook.remove()
    assert engine.record().counters.interruptions == 1
    assert list(high_out.token_ids) == greedy(llama, high_ids, 8)
    for ids, out in zip(low_ids, low_outs):  # the abandoned decode ran again, unchanged
        assert list(out.token_ids) == greedy(llama, ids, 40)


def test_a_higher_priority_request_interrupts_a_prefill_which_runs_again(
        llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=4)
    low_ids, high_ids = prompt(tokenizer, 1), prompt(tokenizer, 5)
    sent = {}

    def arrive_mid_prefill(module, args, output):  # the first forward is the low's prefill
        if "high" not in sent and engine.record().counters.steps == 0:
            sent["high"] = engine.submit(req("high", high_ids, max_tokens=4, priority=2))

    hook = llama.model.layers[0].register_forward_hook(arrive_mid_prefill)
    try:
        low = engine.submit(req("low", low_ids, max_tokens=12, priority=0))
        low_out = low.result(60)
        high_out = sent["high"].result(60)
    finally:
        hook.remove()
    record = engine.record()
    assert record.counters.interruptions == 1

    def prefilled_in(rid):  # the index of the step that prefilled rid (an interrupted one is
        return next(s.index for s in record.steps if rid in s.prefill_ids)  # not recorded)
    assert prefilled_in("high") <= prefilled_in("low")
    assert list(high_out.token_ids) == greedy(llama, high_ids, 4)
    assert list(low_out.token_ids) == greedy(llama, low_ids, 12)


def test_a_tenant_flooding_the_queue_does_not_starve_another(llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=1)
    with engine.paused():
        flood = [engine.submit(req(f"a{i}", prompt(tokenizer, i), max_tokens=2, tenant="a"))
                 for i in range(8)]
        calm = [engine.submit(req(f"b{i}", prompt(tokenizer, i), max_tokens=2, tenant="b"))
                for i in range(2)]
    for s in flood + calm:
        s.result(30)
    assert admission_order(engine) == ["a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5", "a6", "a7"]


def test_a_full_waiting_queue_refuses_with_queue_full(llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=1, max_queue=2)
    with engine.paused():
        first = engine.submit(req("q1", prompt(tokenizer, 0)))
        engine.submit(req("q2", prompt(tokenizer, 1)))
        with pytest.raises(QueueFull, match="waiting queue is full") as refused:
            engine.submit(req("q3", prompt(tokenizer, 2)))
        assert refused.value.status == 429
        assert engine.abort("q1")
        assert first.result(1).finish_reason == FinishReason.ABORT
        third = engine.submit(req("q3", prompt(tokenizer, 2)))
    assert third.result(30).finish_reason in (FinishReason.LENGTH, FinishReason.STOP)


def test_prompt_plus_max_tokens_beyond_the_context_is_refused_at_submit(tokenizer, engines):
    model = tiny_llama(tokenizer, max_positions=64)
    engine = engines(model, tokenizer)
    refusal = r"prompt \(60 tokens\) \+ max_tokens \(5\) = 65 exceeds the model's context of 64"
    with pytest.raises(ContextLengthExceeded, match=refusal):
        engine.submit(req("long", list(range(100, 160)), max_tokens=5))
    # exactly the context fits, to the last position
    ids = list(range(100, 154))
    expected = greedy(model, ids, 10)
    assert list(engine.submit(req("fits", ids, max_tokens=10)).result(30).token_ids) == expected


def test_a_stop_string_ends_the_stream_and_is_not_in_the_text(llama, tokenizer, engines):
    engine = engines(llama, tokenizer)
    ids = prompt(tokenizer, 6)
    full = engine.submit(req("full", ids, max_tokens=24)).result(30).text
    start = len(full) // 2
    stop = full[start:start + 4]
    expected = full[:full.find(stop)]

    stream = engine.submit(req("stopped", ids, max_tokens=24, stop=["never-there", stop]))
    deltas = list(stream)
    completion = stream.result()
    assert completion.finish_reason == FinishReason.STOP
    assert completion.text == expected
    assert "".join(d.text for d in deltas) == expected
    assert stop not in completion.text
    assert completion.usage.completion_tokens < 24


def test_the_same_seed_gives_the_same_sampled_text(llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=8)
    ids = prompt(tokenizer, 9)

    def sampled(rid, seed):
        return engine.submit(req(rid, ids, max_tokens=20, temperature=0.9, top_p=0.95, seed=seed))

    alone = sampled("alone", 7).result(30)
    with engine.paused():  # the same request again, now in a batch with others
        crowd = [engine.submit(req(f"c{i}", prompt(tokenizer, i), max_tokens=20)) for i in range(4)]
        again = sampled("again", 7)
        other = sampled("other", 8)
    assert again.result(30).token_ids == alone.token_ids
    assert again.result().text == alone.text
    assert other.result(30).token_ids != alone.token_ids
    for s in crowd:
        s.result(30)


def test_streams_can_be_consumed_from_an_event_loop_without_blocking_it(llama, tokenizer, engines):
    engine = engines(llama, tokenizer)

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async def consume(i):
            stream = engine.submit(req(f"a{i}", prompt(tokenizer, i), max_tokens=20))
            tokens, ticks_seen = [], []
            async for delta in stream:
                tokens.extend(delta.token_ids)
                ticks_seen.append(ticks)
            return tokens, ticks_seen, await stream.aresult()

        tick_task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(consume(i) for i in range(4)))
        done.set()
        await tick_task
        return results

    for i, (tokens, ticks_seen, completion) in enumerate(asyncio.run(main())):
        assert tokens == list(completion.token_ids) == greedy(llama, prompt(tokenizer, i), 20)
        assert ticks_seen[-1] > ticks_seen[0]  # the loop kept running while tokens came


def test_bad_requests_are_refused_with_clear_errors(llama, tokenizer, engines):
    engine = engines(llama, tokenizer)
    with pytest.raises(InvalidRequest, match="max_tokens must be an integer >= 1"):
        GenerationRequest("x", [1, 2], max_tokens=0)
    with pytest.raises(InvalidRequest, match="temperature must be >= 0"):
        GenerationRequest("x", [1, 2], temperature=-1)
    with pytest.raises(InvalidRequest, match=r"top_p must be in \(0, 1\]"):
        GenerationRequest("x", [1, 2], top_p=0)
    with pytest.raises(InvalidRequest, match="the prompt has no tokens"):
        GenerationRequest("x", [])
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        engine.submit(req("x", [1, len(tokenizer) + 5]))
    with engine.paused():
        engine.submit(req("dup", [1, 2, 3]))
        with pytest.raises(DuplicateRequest, match="already in the engine"):
            engine.submit(req("dup", [1, 2, 3]))


def test_close_ends_every_open_request_and_refuses_new_ones(llama, tokenizer, engines):
    engine = engines(llama, tokenizer, max_batch=2)
    running = [engine.submit(req(f"run{i}", prompt(tokenizer, i), max_tokens=400)) for i in (1, 5)]
    for stream in running:
        stream.next_delta(timeout=30)
    waiting = engine.submit(req("wait", prompt(tokenizer, 2)))
    engine.close()
    for stream in running + [waiting]:
        assert stream.result(5).finish_reason == FinishReason.ABORT
    assert engine.memory_bytes() == 0
    with pytest.raises(EngineClosed):
        engine.submit(req("late", [1, 2]))


def test_memory_footprint_counts_weights_and_the_kv_cache_while_it_is_used(llama, tokenizer,
                                                                          engines):
    engine = engines(llama, tokenizer)
    weights = sum(p.numel() * p.element_size() for p in llama.parameters())
    assert engine.memory_bytes() >= weights
    idle = engine.memory_bytes()
    stream = engine.submit(req("m", prompt(tokenizer, 1), max_tokens=100))
    stream.next_delta(timeout=30)
    assert engine.memory_bytes() > idle
    stream.result(30)
    wait_until(lambda: engine.memory_bytes() == idle, "the cache to be freed")


def _tiny_gpt2(tokenizer):
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(config).eval()


def _tiny_sliding_mistral(tokenizer):
    torch.manual_seed(2)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256, sliding_window=6, bos_token_id=1,
                           eos_token_id=2, pad_token_id=2)
    return MistralForCausalLM(config).eval()


@pytest.mark.parametrize("build", [_tiny_gpt2, _tiny_sliding_mistral],
                         ids=["gpt2", "sliding-mistral"])
def test_other_architectures_batch_and_equal_generate(build, tokenizer, engines):
    model = build(tokenizer)
    engine = engines(model, tokenizer, max_batch=4)
    prompts = [prompt(tokenizer, i) for i in (1, 4, 9, 12)]
    with engine.paused():
        streams = [engine.submit(req(f"o{i}", p, max_tokens=12)) for i, p in enumerate(prompts)]
    for p, s in zip(prompts, streams):
        assert list(s.result(30).token_ids) == greedy(model, p, 12)
    assert engine.record().counters.max_batch_seen == 4


def test_a_model_folder_loads_by_engine_name_with_its_chat_template(llama, tokenizer, tmp_path):
    llama.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    engine = load_engine(tmp_path / "m", engine="torch", device="cpu", dtype="float32", max_batch=4)
    try:
        assert isinstance(engine, TorchEngine) and engine.max_context == 512
        messages = [{"role": "user", "content": "Hello there"}]
        ids = engine.chat_prompt(messages)
        assert ids == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                         return_dict=True)["input_ids"])
        assert engine.tokenize("The quick brown fox") == prompt(tokenizer, 0)
        completion = engine.generate(req("chat", ids, max_tokens=8), timeout=30)
        assert list(completion.token_ids) == greedy(llama, ids, 8)
        full_size = engine.memory_bytes()
    finally:
        engine.close()
    half = load_engine(tmp_path / "m", engine="torch", device="cpu", dtype="bfloat16")
    try:
        assert half.dtype == torch.bfloat16
        assert half.memory_bytes() < full_size
        completion = half.generate(req("bf16", ids, max_tokens=8), timeout=30)
        assert completion.usage.completion_tokens >= 1
    finally:
        half.close()
