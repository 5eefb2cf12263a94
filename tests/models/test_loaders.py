"""Importing models: folder inspection, safe copies, refusals, GGUF conversion, model cards.

Fast tests use tiny randomly initialised models built from a config, with the real
all-MiniLM-L6-v2 tokenizer; the slow tests convert the real SmolLM2-135M GGUF file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from offline_models import minilm_dir, smollm2_gguf
from safetensors.torch import save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from llmos.models import gguf_convert
from llmos.models import (
    GGUFSource,
    ModelImportError,
    ModelInfo,
    import_gguf,
    import_hf_dir,
    inspect_model,
    model_card,
)

MINILM_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_tokenizer(folder: Path) -> Path:
    for name in MINILM_TOKENIZER:
        shutil.copy(minilm_dir() / name, folder / name)
    return folder


def tiny_classifier(folder: Path, labels=("negative", "neutral", "positive"),
                    shard: str | None = None, tokenizer: bool = True) -> Path:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128,
                        id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)})
    model = BertForSequenceClassification(config)
    if shard:
        model.save_pretrained(folder, max_shard_size=shard)
    else:
        model.save_pretrained(folder)
    return add_tokenizer(folder) if tokenizer else folder


def tiny_llama(folder: Path, tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, tie_word_embeddings=tie)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    add_tokenizer(folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return model


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


# -- inspection ---------------------------------------------------------------------------

def test_minilm_info_comes_from_headers_and_matches_the_files():
    folder = minilm_dir()
    info = inspect_model(folder)

    assert (info.architecture, info.model_type, info.task) == ("BertModel", "bert", "encoder")
    assert info.parameters == AutoModel.from_pretrained(folder).num_parameters() == 22_713_216
    assert info.dtypes == ["float32"]
    assert (info.vocab_size, info.context_length, info.chat_template) == (30522, 512, False)
    assert info.has_tokenizer and info.labels is None and info.gguf is None
    paths = [f.path for f in info.files]
    assert "1_Pooling/config.json" in paths and "model.safetensors" in paths
    assert "README.md" not in paths and ".gitattributes" not in paths
    for f in info.files:
        assert f.sha256 == sha256(folder / f.path)
        assert f.size == (folder / f.path).stat().st_size
    assert info.size_bytes == sum(f.size for f in info.files)
    # JSON-able both ways
    assert ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_tied_embeddings_are_counted_once_as_transformers_counts(tmp_path):
    tied = tiny_llama(tmp_path / "tied", tie=True)
    info = inspect_model(tmp_path / "tied")
    assert (info.architecture, info.task) == ("LlamaForCausalLM", "causal_lm")
    assert info.parameters == tied.num_parameters()
    assert info.chat_template and info.context_length == 256

    # an older checkpoint that stores the tied head as a second tensor counts the same
    dup = tmp_path / "duplicated"
    shutil.copytree(tmp_path / "tied", dup)
    state = {k: v.contiguous().clone() for k, v in tied.state_dict().items()}
    assert "lm_head.weight" in state
    save_file(state, dup / "model.safetensors", metadata={"format": "pt"})
    assert inspect_model(dup).parameters == tied.num_parameters()

    untied = tiny_llama(tmp_path / "untied", tie=False)
    assert inspect_model(tmp_path / "untied").parameters == untied.num_parameters() \
        > tied.num_parameters()


def test_classifier_labels_and_sharded_weights(tmp_path):
    src = tiny_classifier(tmp_path / "src", shard="200KB")
    info = inspect_model(src)
    assert info.task == "sequence_classification"
    assert info.labels == ["negative", "neutral", "positive"]
    assert "model.safetensors.index.json" in info.weight_files
    assert len(info.weight_files) > 2   # several shards and the index
    model = AutoModelForSequenceClassification.from_pretrained(src)
    assert info.parameters == model.num_parameters()

    copy = import_hf_dir(src, tmp_path / "out" / "clf")
    assert copy.weight_files == info.weight_files and copy.parameters == info.parameters
    tok = AutoTokenizer.from_pretrained(tmp_path / "out" / "clf")
    batch = tok(["a fine day", "rain again"], return_tensors="pt", padding=True)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "clf")
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, loaded.eval()(**batch).logits)
    assert loaded.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


# -- importing a folder -------------------------------------------------------------------

def test_import_copies_no_pickles_and_no_code(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(minilm_dir(), src)
    torch.save({"w": torch.zeros(2)}, src / "pytorch_model.bin")   # a real pickle
    torch.save({"w": torch.zeros(2)}, src / "training_state.pt")
    (src / "modeling_evil.py").write_text("import os; os.system('echo owned')\n")
    (src / "2_Dense").mkdir()
    (src / "2_Dense" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    dest = tmp_path / "out" / "minilm"

    info = import_hf_dir(src, dest)

    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == sorted(f.path for f in info.files)
    assert not [p for p in copied if p.endswith((".bin", ".pt", ".py"))]
    assert "1_Pooling/config.json" in copied and "modules.json" in copied
    assert {f.path: f.sha256 for f in info.files} == \
        {f.path: f.sha256 for f in inspect_model(src).files}
    assert all(f.sha256 == sha256(dest / f.path) for f in info.files)
    notes = " ".join(info.warnings)
    assert "pytorch_model.bin" in notes and "pickled" in notes
    assert "modeling_evil.py" in notes and "remote code" in notes
    assert leftovers(tmp_path / "out") == ["minilm"]   # no staging folder left
    # the copy is the same model
    tok = AutoTokenizer.from_pretrained(dest)
    batch = tok(["llmos imports models"], return_tensors="pt")
    with torch.no_grad():
        a = AutoModel.from_pretrained(minilm_dir())(**batch).last_hidden_state
        b = AutoModel.from_pretrained(dest)(**batch).last_hidden_state
    assert torch.equal(a, b)


def test_import_into_an_empty_existing_folder_works_but_not_into_a_full_one(tmp_path):
    src = tiny_classifier(tmp_path / "src")
    (tmp_path / "empty").mkdir()
    assert import_hf_dir(src, tmp_path / "empty").task == "sequence_classification"

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ModelImportError, match="already exists and is not empty"):
        import_hf_dir(src, full)
    assert leftovers(full) == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"


def test_a_model_without_tokenizer_imports_but_is_flagged(tmp_path):
    src = tiny_classifier(tmp_path / "src", tokenizer=False)
    info = import_hf_dir(src, tmp_path / "out")
    assert not info.has_tokenizer and info.vocab_size is None
    assert any("cannot be served or trained" in w for w in info.warnings)
    with pytest.raises(ModelImportError, match="no tokenizer.*cannot be served"):
        info.require_tokenizer("served")
    assert "cannot be served or trained" in model_card(info, "clf", 1)


# -- refusals -----------------------------------------------------------------------------

def pickled_only(d: Path) -> None:
    d.mkdir()
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(d)
    torch.save({"w": torch.zeros(2)}, d / "pytorch_model.bin")


def ckpt_only(d: Path) -> None:
    pickled_only(d)
    (d / "pytorch_model.bin").rename(d / "last.ckpt")


def no_config(d: Path) -> None:
    tiny_classifier(d)
    (d / "config.json").unlink()


def no_weights(d: Path) -> None:
    tiny_classifier(d)
    (d / "model.safetensors").unlink()


def missing_shard(d: Path) -> None:
    tiny_classifier(d, shard="200KB")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    (d / max(index["weight_map"].values())).unlink()


def garbage_header(d: Path) -> None:
    tiny_classifier(d)
    (d / "model.safetensors").write_bytes(b"this is not a safetensors file at all")


def truncated_weights(d: Path) -> None:
    tiny_classifier(d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def bad_config(d: Path) -> None:
    tiny_classifier(d)
    (d / "config.json").write_text('{"model_type": "bert", "hidden_size": 32,')


def unknown_model_type(d: Path) -> None:
    tiny_classifier(d)
    config = json.loads((d / "config.json").read_text())
    config.update(model_type="my-own-arch", auto_map={"AutoModel": "modeling_mine.Model"})
    (d / "config.json").write_text(json.dumps(config))


REFUSALS = {
    "pickled": (pickled_only, (r"pickled checkpoint pytorch_model\.bin.*only safetensors "
                               r"or GGUF.*save_pretrained")),
    "ckpt": (ckpt_only, r"pickled checkpoint last\.ckpt"),
    "no config": (no_config, r"no config\.json in"),
    "no weights": (no_weights, r"no weights in .*model\.safetensors"),
    "missing shard": (missing_shard, (r"model\.safetensors\.index\.json .*names shard "
                                      r"model-\d+-of-\d+\.safetensors, which is missing")),
    "garbage header": (garbage_header, r"model\.safetensors in .* not a readable safetensors"),
    "truncated": (truncated_weights, r"model\.safetensors in .* not a readable safetensors"),
    "bad config": (bad_config, r"config\.json in .* does not parse as JSON"),
    "unknown type": (unknown_model_type, r"model_type 'my-own-arch' is not one transformers"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_name_the_problem_and_leave_nothing(tmp_path, case):
    build, message = REFUSALS[case]
    src = tmp_path / "src"
    build(src)
    with pytest.raises(ModelImportError, match=message):
        inspect_model(src)
    with pytest.raises(ModelImportError, match=message):
        import_hf_dir(src, tmp_path / "out" / "model")
    assert leftovers(tmp_path / "out") == []


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(ModelImportError, match=r"model\.gguf is not a GGUF file.*b'PK"):
        import_gguf(fake, tmp_path / "out" / "model")
    assert leftovers(tmp_path / "out") == []
    with pytest.raises(ModelImportError, match="dtype 'int8' is not one of"):
        import_gguf(smollm2_gguf(), tmp_path / "out" / "model", dtype="int8")


def odd_gguf(path: Path) -> Path:
    """A valid GGUF file of an architecture transformers does not know."""
    import gguf

    writer = gguf.GGUFWriter(path, "llmos-test-arch")
    writer.add_name("odd")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_transformers_cannot_convert_leaves_nothing(tmp_path):
    path = odd_gguf(tmp_path / "odd.gguf")
    stages = []
    with pytest.raises(ModelImportError,
                       match=r"transformers cannot convert odd\.gguf \(GGUF architecture "
                             r"'llmos-test-arch', F32\)"):
        import_gguf(path, tmp_path / "out" / "model",
                    progress=lambda done, total, stage: stages.append(stage))
    assert "de-quantizing" in stages   # it failed after the staging folder was made
    assert leftovers(tmp_path / "out") == []


def test_a_gguf_file_is_parsed_once_per_import_and_gguf_is_itself_again_after(tmp_path,
                                                                            monkeypatch):
    import gguf

    path = odd_gguf(tmp_path / "odd.gguf")
    opened = []

    class Counting(gguf.GGUFReader):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    own = gguf.GGUFReader, gguf.get_tensor_name_map
    link = tmp_path / "elsewhere" / "link.gguf"  # transformers reads through such a link
    link.parent.mkdir()
    link.symlink_to(path)
    with gguf_convert.one_parse():
        first = gguf_convert.reader(path)
        assert gguf.GGUFReader(str(link)) is first
        arch = next(iter(gguf.MODEL_ARCH_NAMES))
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert len(opened) == 1
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == own
    opened.clear()
    # An import (this one fails in transformers' tokenizer, after llmos read the header
    # and transformers opened the file again) parses the file once, and gives gguf back.
    with pytest.raises(ModelImportError, match="transformers cannot convert"):
        import_gguf(path, tmp_path / "out" / "model")
    assert len(opened) == 1
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == own


# -- model cards --------------------------------------------------------------------------

def test_model_card_shows_info_lineage_and_metrics_deterministically(tmp_path):
    info = inspect_model(tiny_classifier(tmp_path / "clf"))
    lineage = {"training_params": {"lr": 2e-5, "epochs": 3}, "base_model": "minilm v1",
               "dataset_version": "reviews v4", "job": 17, "seed": 7}
    metrics = {"test": {"f1": 0.8125, "accuracy": 0.9}, "loss": 0.123456789}

    card = model_card(info, "review-sentiment", 2, lineage, metrics)

    assert card == model_card(info, "review-sentiment", 2, dict(reversed(lineage.items())),
                              {"loss": 0.123456789, "test": {"accuracy": 0.9, "f1": 0.8125}})
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification")
    assert "# review-sentiment (version 2)" in card
    assert "| Architecture | BertForSequenceClassification |" in card
    assert info.parameters == 999_171
    assert "| Parameters | 999.2K (999,171) |" in card
    assert "| Context length | 128 tokens |" in card
    assert "| 0 | negative |\n| 1 | neutral |\n| 2 | positive |" in card
    assert "- Base model: minilm v1" in card and "- Dataset version: reviews v4" in card
    assert "- Job: 17" in card and "  - `lr`: 2e-05" in card and "- Seed: 7" in card
    assert "| loss | 0.123457 |\n| test/accuracy | 0.9 |\n| test/f1 | 0.8125 |" in card
    weights = next(f for f in info.files if f.path == "model.safetensors")
    assert f"| model.safetensors | {weights.size:,} | `{weights.sha256}` |" in card
    assert "## Intended use" in card and "## Limitations" in card
    assert "Inputs longer than 128 tokens are not supported." in card


def test_model_card_of_a_gguf_conversion_names_its_source(tmp_path):
    tiny_llama(tmp_path / "llama")
    info = inspect_model(tmp_path / "llama")
    info.gguf = GGUFSource(file="tiny.Q4_1.gguf", sha256="ab" * 32, size=1234,
                           architecture="llama", quantization="Q4_1")
    card = model_card(info, "tiny", "1")
    assert "pipeline_tag: text-generation" in card
    assert f"Converted from GGUF: `tiny.Q4_1.gguf` (Q4_1, architecture llama, " \
           f"1.2 kB (1,234 bytes)), sha256 `{'ab' * 32}`" in card
    assert "de-quantized from Q4_1" in card
    assert "| Chat template | yes |" in card and "No evaluation recorded." in card


# -- the real GGUF file (slow) -------------------------------------------------------------

def greedy(model, tokenizer, n: int = 12) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital "
                                           "of France?"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


@pytest.mark.slow
def test_import_gguf_smollm2_matches_the_gguf_model(tmp_path, smollm2_dir):
    gguf_file = smollm2_gguf()
    stages = []
    dest = tmp_path / "out" / "smollm2"
    info = import_gguf(gguf_file, dest, progress=lambda d, t, s: stages.append((d, t, s)))

    assert stages[-1] == (4, 4, "done")
    assert (info.architecture, info.task) == ("LlamaForCausalLM", "causal_lm")
    assert info.parameters == 134_515_008 and info.dtypes == ["float32"]
    assert info.has_tokenizer and info.vocab_size == 49152 and info.chat_template
    assert info.context_length == 8192 and "model.safetensors" in info.weight_files
    assert info.gguf.file == gguf_file.name and info.gguf.sha256 == sha256(gguf_file)
    assert (info.gguf.architecture, info.gguf.quantization) == ("llama", "Q4_1")
    assert all(f.sha256 == sha256(dest / f.path) for f in info.files)
    kept = next(f for f in info.files if f.path == gguf_file.name)  # for the llamacpp engine
    assert (kept.sha256, kept.size) == (info.gguf.sha256, gguf_file.stat().st_size)
    assert leftovers(tmp_path / "out") == ["smollm2"]
    assert info == ModelInfo.from_dict(json.loads(json.dumps(info.to_dict())))

    converted = AutoModelForCausalLM.from_pretrained(dest)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    # The reference: transformers' own GGUF loader, de-quantized once per session by the test
    # helpers (offline_models.convert_gguf, no llmos code) and saved as float32 as it loaded.
    reference = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ref_tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokens = greedy(converted, tokenizer)
    assert tokens == greedy(reference, ref_tokenizer)
    assert tokenizer.decode(tokens).strip()


@pytest.mark.slow
def test_import_gguf_in_bfloat16_halves_the_size(tmp_path):
    info = import_gguf(smollm2_gguf(), tmp_path / "bf16", dtype="bfloat16")
    weights = next(f for f in info.files if f.path == "model.safetensors")
    assert info.dtypes == ["bfloat16"] and info.parameters == 134_515_008
    assert weights.size < 134_515_008 * 2 + 1_000_000   # 2 bytes a parameter, plus header
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    assert len(greedy(model, AutoTokenizer.from_pretrained(tmp_path / "bf16"), n=4)) == 4
