"""The engine's parts without a model: admission order, incremental detokenization and stop
strings (with the real SmolLM2 tokenizer), request streams, the registry and folder checks."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from llmos.errors import Conflict
from llmos.serve.engines import (
    FinishReason,
    GenerativeEngine,
    ModelLoadError,
    QueueFull,
    StreamDelta,
    UnknownEngine,
    available_engines,
    engine_class,
    load_engine,
    register_engine,
    unregister_engine,
)
from llmos.serve.engines.admission import AdmissionQueue
from llmos.serve.engines.sampling import Sampler
from llmos.serve.engines.stream import RequestStream
from llmos.serve.engines.text import IncrementalText, _OffsetDecoder

MIXED = "Hi 你好, 世界! Emoji 🎉🚀 and ÄÖÜ ß — naïve café; 日本語のテキスト end."


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


# ------------------------------------------------------------------ admission

def test_admission_is_priority_first_then_round_robin_across_tenants_then_fifo():
    q = AdmissionQueue(capacity=100)
    for i in range(4):
        q.push(f"a{i}", f"a{i}", tenant="a")
    q.push("b0", "b0", tenant="b")
    q.push("c0", "c0", tenant="c")
    q.push("urgent", "urgent", priority=5, tenant="a")
    q.push("b1", "b1", tenant="b")
    assert q.peek() == "urgent"
    assert q.drain() == ["urgent", "a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    assert len(q) == 0 and q.pop() is None


def test_admission_queue_is_bounded_and_removal_frees_room():
    q = AdmissionQueue(capacity=2)
    q.push("x", 1)
    q.push("y", 2, tenant="t")
    with pytest.raises(QueueFull, match=r"full \(2 requests\)"):
        q.push("z", 3)
    assert q.remove("x") == 1 and q.remove("x") is None
    q.push("z", 3)
    assert "z" in q and q.drain() == [2, 3]


# ------------------------------------------------------------------ sampling

def test_sampling_follows_the_distribution_and_top_p_cuts_the_tail():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    cpu = torch.device("cpu")
    full, nucleus = Sampler(1.0, 1.0, 3, cpu), Sampler(1.0, 0.8, 3, cpu)
    counts = Counter(full.sample(logits) for _ in range(4000))
    assert [counts[i] / 4000 for i in range(4)] == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.03)
    counts = Counter(nucleus.sample(logits) for _ in range(4000))
    assert set(counts) == {0, 1} and counts[0] / 4000 == pytest.approx(0.625, abs=0.03)
    assert Sampler(0, 1.0, None, cpu).sample(logits) == 0


@pytest.mark.parametrize("top_p", [1.0, 0.95])
def test_a_seed_picks_the_same_tokens_when_logits_move_by_rounding_errors(top_p):
    torch.manual_seed(0)
    rows = torch.randn(200, 49152) * 0.1  # near-uniform: the hardest case
    # a row computed in another batch differs by about this much (measured: 2-3e-7);
    # sorted inverse-CDF sampling (multinomial) changed 7-8 of these 200 draws
    nudged = rows + torch.randn_like(rows) * 3e-7
    cpu = torch.device("cpu")
    first, second = Sampler(0.9, top_p, 11, cpu), Sampler(0.9, top_p, 11, cpu)
    assert [first.sample(r) for r in rows] == [second.sample(r) for r in nudged]


# ------------------------------------------------------------------ text

def feed(text: IncrementalText, ids: list[int]) -> list[str]:
    return [text.add(t) for t in ids]


def test_incremental_decoding_never_emits_broken_characters(tokenizer):
    ids = tokenizer(MIXED, add_special_tokens=False)["input_ids"]
    chunks = feed(IncrementalText(tokenizer), ids)
    assert "".join(chunks) == MIXED
    assert all("\ufffd" not in c for c in chunks)
    assert "" in chunks  # some characters span several tokens and waited for the last one
    for c in chunks:
        c.encode("utf-8")  # each chunk is whole characters


def test_the_offset_window_fallback_decodes_the_same(tokenizer):
    ids = tokenizer(MIXED, add_special_tokens=False)["input_ids"]
    decoder = _OffsetDecoder(tokenizer, [])
    chunks = [decoder.step(t) for t in ids]
    assert "".join(chunks) == MIXED and all("\ufffd" not in c for c in chunks)


def test_the_first_token_decodes_in_the_context_of_the_prompt(tokenizer):
    prompt_ids = tokenizer("The answer is")["input_ids"]
    completion = tokenizer(" forty-two", add_special_tokens=False)["input_ids"]
    text = IncrementalText(tokenizer, prompt_ids=prompt_ids)
    assert "".join(feed(text, completion)) == " forty-two"


def test_a_stop_string_cuts_the_text_and_its_prefix_is_held_back(tokenizer):
    ids = tokenizer("abc ENx then END and more", add_special_tokens=False)["input_ids"]
    text = IncrementalText(tokenizer, stop=["END"])
    chunks = []
    for t in ids:
        chunks.append(text.add(t))
        if text.stopped:
            break
    assert text.stopped and "".join(chunks) == "abc ENx then "
    assert text.add(ids[-1]) == ""  # nothing after a stop


def test_a_multibyte_stop_string_never_leaks_half_a_character(tokenizer):
    ids = tokenizer("Hello 你好世界 more", add_special_tokens=False)["input_ids"]
    text = IncrementalText(tokenizer, stop=["世界"])
    chunks = [text.add(t) for t in ids]
    assert text.stopped and "".join(chunks) == "Hello 你好"


def test_a_character_cut_off_by_the_end_is_dropped_not_sent_broken(tokenizer):
    ids = tokenizer("end 你好", add_special_tokens=False)["input_ids"][:-1]  # half of 好
    text = IncrementalText(tokenizer)
    emitted = "".join(feed(text, ids)) + text.flush()
    assert emitted == tokenizer.decode(ids).replace("\ufffd", "") == "end 你"


def test_held_back_text_is_flushed_when_the_request_ends_otherwise(tokenizer):
    ids = tokenizer("wait for EN", add_special_tokens=False)["input_ids"]
    text = IncrementalText(tokenizer, stop=["END"])
    emitted = "".join(feed(text, ids))
    assert not text.stopped and emitted == "wait for "
    assert emitted + text.flush() == "wait for EN"


# ------------------------------------------------------------------ streams

def produce(stream: RequestStream, n: int) -> threading.Thread:
    def run():
        for i in range(n):
            stream._push(StreamDelta(stream.request_id, (i,), f"t{i} "))
        stream._finish(FinishReason.LENGTH, n)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_stream_reads_the_same_synchronously_and_asynchronously():
    sync_stream, async_stream = RequestStream("s", 3), RequestStream("a", 3)
    produce(sync_stream, 50)
    sync_deltas = list(sync_stream)

    async def consume():
        produce(async_stream, 50)
        return [d async for d in async_stream]

    async_deltas = asyncio.run(consume())
    assert [d.token_ids for d in sync_deltas] == [d.token_ids for d in async_deltas]
    assert sync_deltas[-1].finish_reason == FinishReason.LENGTH
    usage = sync_deltas[-1].usage
    assert usage.prompt_tokens == 3 and usage.completion_tokens == 50
    completion = async_stream.result(1)
    assert completion.token_ids == tuple(range(50)) and completion.text.startswith("t0 t1 ")


def test_result_gathers_the_whole_completion_even_after_partial_reads():
    stream = RequestStream("p", 1)
    thread = produce(stream, 10)
    first = stream.next_delta(timeout=5)
    assert first.token_ids == (0,)
    thread.join()
    assert stream.result(5).token_ids == tuple(range(10))
    with pytest.raises(StopIteration):
        stream.next_delta(timeout=1)


def test_waiting_on_a_silent_stream_times_out():
    stream = RequestStream("quiet", 1)
    with pytest.raises(TimeoutError, match="no output from request quiet"):
        stream.next_delta(timeout=0.05)
    with pytest.raises(TimeoutError, match="did not finish"):
        stream.result(timeout=0.05)


# ------------------------------------------------------------------ registry, folders

@pytest.fixture(autouse=True)
def clean_registry():
    yield
    unregister_engine("echo")


class EchoEngine(GenerativeEngine):
    """A stand-in third-party engine, only to show registration by name."""

    name = "echo"

    def __init__(self, model_dir):
        self.model_dir = model_dir

    @classmethod
    def load(cls, model_dir, *, device="auto", dtype="auto", **options):
        return cls(model_dir)

    def submit(self, request):
        raise NotImplementedError

    def chat_prompt(self, messages, *, add_generation_prompt=True):
        return []

    def tokenize(self, text):
        return []

    def abort(self, request_id):
        return False

    def close(self):
        pass

    def memory_bytes(self):
        return 0

    def occupancy(self):
        raise NotImplementedError

    def record(self):
        raise NotImplementedError


def test_engines_are_picked_by_name():
    assert {"torch", "encoder"} <= set(available_engines())
    assert engine_class("torch").__name__ == "TorchEngine"
    assert engine_class("encoder").__name__ == "TorchEncoderEngine"
    with pytest.raises(UnknownEngine, match="unknown serving engine 'vllm'; available: .*torch"):
        engine_class("vllm")
    register_engine("echo", EchoEngine)
    assert "echo" in available_engines()
    assert isinstance(load_engine("/some/folder", engine="echo"), EchoEngine)
    with pytest.raises(Conflict, match="registered already"):
        register_engine("echo", EchoEngine)
    with pytest.raises(Conflict):
        register_engine("torch", EchoEngine)


def test_folders_without_safetensors_weights_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_engine(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_engine(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin: pickle files are never loaded"):
        load_engine(tmp_path)
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        load_engine(tmp_path, engine="encoder")
