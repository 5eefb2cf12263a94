"""Fixtures for the training tests: tiny randomly initialised models (built from a config,
saved as Hugging Face folders) with the real offline tokenizers.

- ``tiny_bert``: a 2-layer BERT (hidden size 32, dropout 0.1) with all-MiniLM-L6-v2's
  WordPiece tokenizer;
- ``tiny_llama``: a 2-layer Llama (hidden size 32, tied embeddings) with SmolLM2's
  byte-level BPE tokenizer and chat template (read from the packaged GGUF file). Its
  weights are drawn wider than usual (std 0.2), so that LoRA adapters on a random model
  can move its logits within a few steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_models
from offline_models import minilm_dir


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer and chat template alone (no weights), from the GGUF file."""
    return tiny_models.smollm2_tokenizer(tmp_path_factory.mktemp("smol_tokenizer"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny_models.bert(tmp_path_factory.mktemp("tiny_bert"), minilm_dir())


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory) -> Path:
    return tiny_models.bert(tmp_path_factory.mktemp("tiny_bert_nodrop"), minilm_dir(),
                            dropout=0.0)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smol_tokenizer_dir) -> Path:
    return tiny_models.llama(tmp_path_factory.mktemp("tiny_llama"), smol_tokenizer_dir)
