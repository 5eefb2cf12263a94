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
from offline_models import minilm_dir, smollm2_gguf
from train_helpers import make_bert


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer and chat template alone (no weights), from the GGUF file."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    dest = tmp_path_factory.mktemp("smol_tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_dir())


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("tiny_bert_nodrop"), minilm_dir(), dropout=0.0)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smol_tokenizer_dir) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=0.2)
    dest = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest
