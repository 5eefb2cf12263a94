"""Rows a task cannot use are refused before training starts, with a message naming the
split, the row and the column; Parquet shards (llmos datasets) train like dict rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from train_helpers import events, job, ner_rows, topic_rows

from llmos.train import DataError, run_training

CLS = {"task": "sequence_classification", "max_length": 16, "batch_size": 4, "max_steps": 2}
NER = {"task": "token_classification", "max_length": 16, "batch_size": 4, "max_steps": 2}
CHAT = {"task": "causal_lm", "messages_field": "messages", "max_length": 32, "max_steps": 1}


def refused(tmp_path, model, recipe, train, val=None) -> str:
    work = tmp_path / "job"
    with pytest.raises(DataError) as e:
        run_training(job(work), recipe, model, train, val, tmp_path / "out")
    assert not any(ev["type"] in ("progress", "metric", "checkpoint") for ev in events(work))
    assert not (tmp_path / "out").exists()
    return str(e.value)


def test_a_missing_label_column_lists_the_columns_present(tmp_path, tiny_bert):
    rows = [{"id": "a1", "text": "hello", "category": "x"}]
    msg = refused(tmp_path, tiny_bert, CLS, rows)
    assert msg == "training row 1 (id 'a1') has no 'label' column (columns: id, text, category)"


def test_a_wrong_text_field_names_it(tmp_path, tiny_bert):
    msg = refused(tmp_path, tiny_bert, {**CLS, "text_field": "body"}, topic_rows(2))
    assert msg == "training row 1 (id 'sport-0') has no 'body' column (columns: id, text, label)"


def test_an_empty_training_set(tmp_path, tiny_bert):
    assert refused(tmp_path, tiny_bert, CLS, []) == "the training set is empty"


def test_an_empty_text(tmp_path, tiny_bert):
    rows = topic_rows(2) + [{"id": "blank", "text": "   ", "label": "food"}]
    assert refused(tmp_path, tiny_bert, CLS, rows) == \
        "training row 7 (id 'blank'): empty text in column 'text'"


def test_validation_labels_unknown_to_training(tmp_path, tiny_bert):
    val = [{"text": "a poem about rain", "label": "poetry"},
           {"text": "stocks fell", "label": "finance"}]
    assert refused(tmp_path, tiny_bert, CLS, topic_rows(2), val) == (
        "validation rows have labels unknown to training: 'finance', 'poetry' "
        "(training labels: food, sport, tech)")


def test_training_labels_missing_from_the_recipe_labels(tmp_path, tiny_bert):
    msg = refused(tmp_path, tiny_bert, {**CLS, "labels": ["food", "sport"]}, topic_rows(2))
    assert msg == ("training rows have labels the recipe does not list: 'tech' "
                   "(recipe labels: food, sport)")


def test_a_single_label_is_not_a_classifier(tmp_path, tiny_bert):
    rows = [{"text": "one", "label": 1}, {"text": "two", "label": 1}]
    assert "the training rows have one label only ('1')" in refused(tmp_path, tiny_bert, CLS, rows)


@pytest.mark.parametrize("row,message", [
    ({"tokens": ["alice", "went", "home"], "tags": ["B-PER", "O"]},
     "training row 2: 3 words in 'tokens' but 2 tags in 'tags'; give one tag per word"),
    ({"tokens": ["alice", "went", "home"], "tags": ["PER", "O", "O"]},
     "training row 2: tag 'PER' at position 1 is not BIO (O, B-TYPE or I-TYPE)"),
    ({"tokens": ["alice", "smith", "left"], "tags": ["O", "I-PER", "O"]},
     "training row 2: tag 'I-PER' at position 2 follows 'O'; in BIO an entity starts with B-PER"),
    ({"tokens": ["alice", "smith", "left"], "tags": ["B-LOC", "I-PER", "O"]},
     "training row 2: tag 'I-PER' at position 2 follows 'B-LOC'"),
    ({"tokens": [], "tags": []}, "training row 2: column 'tokens' holds no list of words"),
])
def test_ner_rows_must_be_bio_and_aligned(tmp_path, tiny_bert, row, message):
    assert message in refused(tmp_path, tiny_bert, NER, ner_rows(1) + [row])


@pytest.mark.parametrize("messages,message", [
    ([{"role": "user", "content": "hi"}], "no assistant message in 'messages' (nothing to learn)"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
     "message 2 in 'messages' has empty content"),
    ([{"role": "user", "text": "hi"}], "message 1 in 'messages' is not a {role, content} mapping"),
    ("hi there", "column 'messages' holds no list of messages"),
])
def test_chat_rows_must_be_conversations(tmp_path, tiny_llama, messages, message):
    assert message in refused(tmp_path, tiny_llama, CHAT, [{"messages": messages}])


def test_eval_every_needs_validation_rows(tmp_path, tiny_bert):
    assert refused(tmp_path, tiny_bert, {**CLS, "eval_every": 1}, topic_rows(2)) == \
        "eval_every and early_stopping need validation rows"


def write_shards(folder, rows, n=2):
    folder.mkdir()
    paths = []
    for i in range(n):
        part = rows[i::n]
        path = folder / f"part-{i}.parquet"
        pq.write_table(pa.Table.from_pylist(part), path)
        paths.append(path)
    return paths


def test_parquet_shards_train_and_a_missing_column_is_named(tmp_path, tiny_bert):
    shards = write_shards(tmp_path / "shards", topic_rows(4))
    result = run_training(job(tmp_path / "job"), CLS, tiny_bert, [str(p) for p in shards],
                          shards[0], tmp_path / "out")
    assert result.export["labels"] == ["food", "sport", "tech"]
    assert result.metrics["eval_samples"] == 6
    (tmp_path / "again").mkdir()
    msg = refused(tmp_path / "again", tiny_bert, {**CLS, "label_field": "topic"}, shards)
    assert msg == "training data file 'part-0.parquet' has no 'topic' column (columns: id, text, label)"


def test_a_missing_parquet_file(tmp_path, tiny_bert):
    msg = refused(tmp_path, tiny_bert, CLS, [tmp_path / "nowhere.parquet"])
    assert msg.startswith("training data file ") and msg.endswith("does not exist")
