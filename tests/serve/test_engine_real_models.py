"""The serving engines on the real offline models: SmolLM2-135M-Instruct through the "torch"
engine, all-MiniLM-L6-v2 through the "encoder" engine."""

from __future__ import annotations

import threading

import pytest
import torch
from offline_models import minilm_dir
from transformers import AutoModel, AutoTokenizer

from llmos.serve.engines import (
    EncodeRequest,
    FinishReason,
    GenerationRequest,
    load_engine,
)

QUESTIONS = [
    "What is the capital of France?", "Give me a synonym for happy.", "Name three primary colors.",
    "How many legs does a spider have?", "What is 12 times 12?", "Write a haiku about snow.",
    "Why is the sky blue?", "What do bees make?", "Tell me a fun fact about octopuses.",
    "What is the boiling point of water?", "Suggest a name for a cat.", "What is photosynthesis?",
    "Translate 'thank you' into Spanish.", "Who wrote Romeo and Juliet?",
    "What is the largest planet?", "Describe a rainbow in one sentence.",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    engine = load_engine(smollm2_dir, engine="torch", device="cpu", max_batch=16)
    yield engine
    engine.close()


@pytest.mark.slow
def test_sixteen_streams_on_smollm2_share_a_batch_and_equal_generate(smollm2):
    prompts = [smollm2.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    completions = {}

    def client(i):
        completions[i] = smollm2.submit(GenerationRequest(f"q{i}", prompts[i], max_tokens=16,
                                                          temperature=0)).result(300)

    with smollm2.paused():
        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
    for t in threads:
        t.join(300)

    assert smollm2.record().max_batch_with({f"q{i}" for i in range(16)}) == 16
    model = smollm2.model
    for i, p in enumerate(prompts):
        expected = model.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False)[0, len(p):]
        assert list(completions[i].token_ids) == expected.tolist(), f"{QUESTIONS[i]!r} differs"
    assert "Paris" in completions[0].text


@pytest.mark.slow
def test_chinese_output_streams_in_whole_characters(smollm2):
    ids = smollm2.chat_prompt([{"role": "user",
                                "content": "Translate to Chinese: 'Good morning, my friend.'"}])
    stream = smollm2.submit(GenerationRequest("zh", ids, max_tokens=30, temperature=0))
    deltas = list(stream)
    completion = stream.result()
    assert completion.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in completion.text)  # it did write Chinese
    assert any(d.token_ids and not d.text for d in deltas)  # characters that span tokens waited
    assert all("\ufffd" not in d.text for d in deltas)
    # a character cut off by max_tokens is dropped, never sent half
    decoded = smollm2.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    assert "".join(d.text for d in deltas) == completion.text == decoded.replace("\ufffd", "")


@pytest.mark.slow
def test_minilm_embeddings_put_similar_sentences_closer():
    with load_engine(minilm_dir(), engine="encoder", device="cpu") as engine:
        assert (engine.pooling, engine.normalize, engine.max_length) == ("mean", True, 256)
        texts = ["A man is eating food.", "A man is eating a piece of bread.",
                 "The new movie is awful.", "Interest rates rose again this quarter."]
        with engine.paused():
            handles = [engine.submit(EncodeRequest(f"t{i}", [t])) for i, t in enumerate(texts)]
        v = torch.tensor([h.result(60).embeddings[0] for h in handles])
        assert engine.record().steps[0].batch_size == 4
    assert torch.allclose(v.norm(dim=-1), torch.ones(4), atol=1e-5)
    similar = float(v[0] @ v[1])
    assert similar > 0.5
    assert similar > float(v[0] @ v[2]) + 0.3 and similar > float(v[0] @ v[3]) + 0.3

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(texts[1], return_tensors="pt")).last_hidden_state[0]
    assert torch.allclose(v[1], torch.nn.functional.normalize(hidden.mean(0), dim=-1), atol=1e-5)
