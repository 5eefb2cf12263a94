"""GGUF export with llama.cpp's own converter and quantizer (optimize.gguf_export), and
perplexity on both sides (optimize.perplexity).

The slow tests export the real SmolLM2-135M (imported once per session into a Hugging Face
folder, tests/offline_models.py) to F16 and Q8_0 once per module. The converter comes from
scripts/fetch-llama-convert (run by scripts/install).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos.optimize.gguf_export import GGUFExportError, export_gguf
from llmos.optimize.perplexity import perplexity_gguf, perplexity_hf
from offline_models import minilm_dir
from tiny_models import bert, llama

# Held out: written for this test, seen by no model or calibration step here (~330 tokens).
HELD_OUT = """\
The old lighthouse on the northern cape was switched off in the spring, after almost a
century of service. For most of that time a keeper lived in the small stone house at its
foot, climbing the spiral stairs every evening to light the lamp and every morning to put
it out. The last keeper, a quiet woman who had taken the post from her father, kept a
logbook in which she wrote down the weather, the ships that passed and the birds that
rested on the gallery rail during storms. When the light was automated, the logbook went to
the town museum, where visitors can now read about gales that lasted four days, a fishing
boat that ran aground in the fog, and a winter so cold that the sea froze along the rocks.
The museum staff say that children are most interested in the entries about the birds, and
that older visitors often ask whether the keeper was lonely. She was not, she told a
reporter once: there was always something to repair, a letter to answer or a book to
finish, and on clear nights the stars were bright enough to read by. Today the tower is
painted white and red again, and a small electric lamp turns at the top, checked twice a
year by an engineer who drives up from the city. The stone house has become a cafe that
opens in the summer months. People sit outside with coffee and cake, watching the waves
break on the reef, and some of them walk up the hill in the evening to see the beam sweep
across the water, just as it did when the keeper climbed the stairs.
"""


# -- refused before anything is converted ---------------------------------------------------

def test_a_bert_folder_is_refused_naming_what_gguf_export_takes(tmp_path):
    src = bert(tmp_path / "bert", minilm_dir(), head="sequence", labels=["a", "b"])
    with pytest.raises(GGUFExportError, match="causal language model") as e:
        export_gguf(src, tmp_path / "out")
    assert "sequence_classification" in e.value.message
    assert not (tmp_path / "out").exists()


def test_an_architecture_the_converter_does_not_know_is_refused(tmp_path):
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    src = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                             ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16,
                             max_position_embeddings=32)).save_pretrained(src)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(src)
    with pytest.raises(GGUFExportError, match="does not know the architecture OPTForCausalLM"):
        export_gguf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_converter_says_how_to_get_it(tmp_path, monkeypatch):
    src = llama(tmp_path / "llama", minilm_dir())
    monkeypatch.setenv("LLMOS_LLAMA_CPP_CONVERT", str(tmp_path / "nowhere"))
    with pytest.raises(GGUFExportError, match="scripts/fetch-llama-convert") as e:
        export_gguf(src, tmp_path / "out")
    assert "convert_hf_to_gguf.py" in e.value.message
    assert not (tmp_path / "out").exists()


def test_an_unknown_quantization_and_a_used_destination_are_refused(tmp_path):
    with pytest.raises(GGUFExportError, match="Q4_0.*not one of F16, Q8_0, Q4_K_M"):
        export_gguf(tmp_path, tmp_path / "out", quantization="Q4_0")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(GGUFExportError, match="not empty"):
        export_gguf(tmp_path, tmp_path / "used")


# -- SmolLM2, for real --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    stages: list[tuple[int, int, str]] = []
    f16 = export_gguf(smollm2_dir, root / "f16", quantization="F16")
    q8 = export_gguf(smollm2_dir, root / "q8", quantization="Q8_0",
                     progress=lambda done, total, stage: stages.append((done, total, stage)))
    return {"root": root, "F16": f16, "Q8_0": q8, "stages": stages}


@pytest.mark.slow
def test_export_writes_a_folder_the_llamacpp_engine_serves(exports, smollm2_dir):
    from llmos.models.loaders import inspect_model
    from llmos.serve.engines.llamacpp import find_gguf

    q8_dir = exports["root"] / "q8"
    stats = exports["Q8_0"]
    assert stats["file"] == "model-Q8_0.gguf" and find_gguf(q8_dir).name == "model-Q8_0.gguf"
    assert sorted(p.name for p in q8_dir.glob("*.gguf")) == ["model-Q8_0.gguf"]
    for name in ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (q8_dir / name).read_bytes() == (smollm2_dir / name).read_bytes(), name
    assert json.loads((q8_dir / "config.json").read_text())["architectures"] == \
        ["LlamaForCausalLM"]
    info = inspect_model(q8_dir)   # what the registry reads when the version is registered
    assert (info.task, info.weight_files) == ("causal_lm", ["model-Q8_0.gguf"])
    assert "Q8_0" in info.dtypes       # the tensors really are Q8_0 (norms stay F32)
    assert stats["architecture"] == "LlamaForCausalLM" and stats["parameters"] > 100e6
    # float32 parent -> F16 (half) -> Q8_0 (8.5 bits a weight)
    f16_bytes = exports["F16"]["bytes_after"]
    assert f16_bytes < 0.55 * stats["bytes_before"]
    assert stats["bytes_f16"] == pytest.approx(f16_bytes, rel=0.01)
    assert stats["bytes_after"] < 0.6 * f16_bytes
    assert exports["stages"][-1] == (4, 4, "done")
    assert [s[0] for s in exports["stages"]] == [0, 1, 2, 3, 4]
    assert not list(exports["root"].glob(".*"))  # no staging folder left behind


@pytest.mark.slow
def test_q8_0_perplexity_is_within_2_percent_of_f16(exports, smollm2_dir):
    root = exports["root"]
    ppl_f16 = perplexity_gguf(root / "f16" / "model-F16.gguf", HELD_OUT)
    ppl_q8 = perplexity_gguf(root / "q8" / "model-Q8_0.gguf", HELD_OUT)
    ppl_hf = perplexity_hf(smollm2_dir, HELD_OUT)
    print(f"perplexity: torch float32 {ppl_hf:.3f}, GGUF F16 {ppl_f16:.3f}, "
          f"Q8_0 {ppl_q8:.3f}")
    assert 1 < ppl_hf < 60            # the model reads English: a real measurement
    assert ppl_f16 == pytest.approx(ppl_hf, rel=0.02)   # the F16 export is the same model
    assert ppl_q8 == pytest.approx(ppl_f16, rel=0.02)
