"""The "encoder" serving engine on tiny random BERTs saved as real model folders, with the
all-MiniLM-L6-v2 tokenizer: embeddings as sentence-transformers computes them, classification
with label names, dynamic batching of concurrent requests, limits and aborts."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from offline_models import minilm_dir
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
)

from llmos.serve.engines import (
    ContextLengthExceeded,
    EncodeRequest,
    QueueFull,
    RequestAborted,
    load_engine,
)

SENTENCES = ["A man is eating food.", "The stock market fell sharply today after the report.",
             "Cats sleep a lot", "Quantum computers use qubits, which can be in superpositions.",
             "Hi", "The weather in Paris is mild in spring, with occasional showers and sun."]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


def bert_config(tokenizer, **kw) -> BertConfig:
    return BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, **kw)


def save_folder(path, model, tokenizer, pooling: str | None = "mean"):
    """A model folder as the engine gets it: safetensors, tokenizer, sentence-transformers files."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if pooling is not None:
        shutil.copy(minilm_dir() / "modules.json", path / "modules.json")
        (path / "1_Pooling").mkdir()
        keys = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                "max": "pooling_mode_max_tokens"}
        config = {key: key == keys[pooling] for key in keys.values()}
        (path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def bert(tokenizer):
    torch.manual_seed(0)
    return BertModel(bert_config(tokenizer)).eval()


@pytest.fixture
def engines():
    made = []

    def make(path, **options):
        engine = load_engine(path, engine="encoder", device="cpu", **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def direct_embedding(model, tokenizer, text: str, pooling: str = "mean", **tok) -> torch.Tensor:
    """One text alone through the model, pooled as sentence-transformers does, L2-normalised."""
    inputs = tokenizer(text, return_tensors="pt", **tok)
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state[0]
    if pooling == "cls":
        vector = hidden[0]
    elif pooling == "max":
        vector = hidden.max(dim=0).values
    else:
        vector = hidden.mean(dim=0)
    return F.normalize(vector, dim=-1)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_embeddings_equal_a_direct_pooled_forward_of_the_model(pooling, bert, tokenizer, tmp_path,
                                                              engines):
    engine = engines(save_folder(tmp_path / "m", bert, tokenizer, pooling))
    assert (engine.task, engine.pooling, engine.normalize) == ("embed", pooling, True)
    with engine.paused():  # all in one padded batch
        handles = [engine.submit(EncodeRequest(f"e{i}", [s])) for i, s in enumerate(SENTENCES)]
    for handle, sentence in zip(handles, SENTENCES):
        result = handle.result(30)
        vector = torch.tensor(result.embeddings[0])
        expected = direct_embedding(bert, tokenizer, sentence, pooling)
        assert torch.allclose(vector, expected, atol=1e-5)
        assert result.usage.prompt_tokens == len(tokenizer(sentence)["input_ids"])


def test_concurrent_requests_are_batched_together(bert, tokenizer, tmp_path, engines):
    engine = engines(save_folder(tmp_path / "m", bert, tokenizer), max_batch=16)
    with engine.paused():
        handles = [engine.submit(EncodeRequest(f"r{i}", SENTENCES[i:i + 2])) for i in range(5)]
    for h in handles:
        h.result(30)
    steps = engine.record().steps
    assert len(steps) == 1
    assert steps[0].request_ids == ("r0", "r1", "r2", "r3", "r4")
    assert steps[0].batch_size == 10 and engine.record().counters.tokens == 10


def test_a_request_larger_than_the_batch_is_split_and_comes_back_in_order(bert, tokenizer, tmp_path,
                                                                        engines):
    engine = engines(save_folder(tmp_path / "m", bert, tokenizer), max_batch=4)
    texts = SENTENCES + SENTENCES[:3]
    result = engine.submit(EncodeRequest("big", texts)).result(30)
    assert [s.batch_size for s in engine.record().steps] == [4, 4, 1]
    for vector, text in zip(result.embeddings, texts):
        expected = direct_embedding(bert, tokenizer, text)
        assert torch.allclose(torch.tensor(vector), expected, atol=1e-5)


def test_classification_returns_probabilities_by_label_name(tokenizer, tmp_path, engines):
    torch.manual_seed(1)
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    config = bert_config(tokenizer, num_labels=3, id2label=labels,
                         label2id={v: k for k, v in labels.items()})
    model = BertForSequenceClassification(config).eval()
    engine = engines(save_folder(tmp_path / "clf", model, tokenizer, pooling=None))
    assert engine.task == "classify" and engine.labels == ["negative", "neutral", "positive"]
    result = engine.submit(EncodeRequest("c", SENTENCES[:3])).result(30)
    for sentence, out in zip(SENTENCES[:3], result.classifications):
        with torch.no_grad():
            probs = torch.softmax(model(**tokenizer(sentence, return_tensors="pt")).logits[0], -1)
        expected = dict(zip(labels.values(), probs.tolist()))
        assert out.scores == pytest.approx(expected, abs=1e-5)
        assert out.label == max(expected, key=expected.get)
        assert out.score == pytest.approx(max(expected.values()), abs=1e-5)
        assert sum(out.scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_too_long_inputs_are_truncated_or_refused(bert, tokenizer, tmp_path, engines):
    engine = engines(save_folder(tmp_path / "m", bert, tokenizer))
    long_text = " ".join(["word"] * 200)  # the tiny model has 64 positions
    with pytest.raises(ContextLengthExceeded, match="202 tokens, more than the model's 64"):
        engine.submit(EncodeRequest("no", [long_text], truncate=False))
    vector = engine.submit(EncodeRequest("yes", [long_text])).result(30).embeddings[0]
    expected = direct_embedding(bert, tokenizer, long_text, truncation=True, max_length=64)
    assert torch.allclose(torch.tensor(vector), expected, atol=1e-5)


def test_abort_queue_limit_and_awaiting_results(bert, tokenizer, tmp_path, engines):
    engine = engines(save_folder(tmp_path / "m", bert, tokenizer), max_queue=2)
    with engine.paused():
        doomed = engine.submit(EncodeRequest("doomed", ["x"]))
        kept = engine.submit(EncodeRequest("kept", ["y"]))
        with pytest.raises(QueueFull):
            engine.submit(EncodeRequest("third", ["z"]))
        assert engine.abort("doomed")
    with pytest.raises(RequestAborted, match="doomed was aborted"):
        doomed.result(5)

    async def wait():
        return await kept

    assert len(asyncio.run(wait()).embeddings) == 1
