"""Tiny randomly initialised models built from a config and saved as Hugging Face folders,
with the real offline tokenizers: fast stand-ins for real weights where a test is about
llmos, not about what a model knows.

- :func:`bert`: a BERT (default 2 layers, hidden size 32) with all-MiniLM-L6-v2's tokenizer;
- :func:`llama`: a Llama (2 layers, hidden size 32, tied embeddings) with SmolLM2's byte-level
  BPE tokenizer and chat template.
"""

from __future__ import annotations

from pathlib import Path


def bert(dest: Path, tokenizer_dir: Path, dropout: float = 0.1, vocab_size: int | None = None,
         hidden: int = 32, layers: int = 2, head: str | None = None,
         labels: list[str] | None = None) -> Path:
    """``head``: None (a plain encoder), "sequence" or "token" classification."""
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification,
                              BertForTokenClassification, BertModel)

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    extra = {}
    if labels:
        extra = {"id2label": dict(enumerate(labels)),
                 "label2id": {name: i for i, name in enumerate(labels)}}
    config = BertConfig(vocab_size=vocab_size or len(tok), hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        **extra)
    cls = {None: BertModel, "sequence": BertForSequenceClassification,
           "token": BertForTokenClassification}[head]
    cls(config).save_pretrained(dest)
    tok.save_pretrained(dest)
    return Path(dest)


def llama(dest: Path, tokenizer_dir: Path, hidden: int = 32, layers: int = 2,
          init_std: float = 0.2, max_positions: int = 256, seed: int = 0) -> Path:
    """Weights drawn wider than usual (``init_std``) so that a few training steps, LoRA
    included, visibly move its logits."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=init_std)
    LlamaForCausalLM(config).save_pretrained(dest)
    tok.save_pretrained(dest)
    return Path(dest)


_SMOLLM2_TOKENIZER: dict[str, bytes] = {}  # file name -> bytes, read once per process


def smollm2_tokenizer(dest: Path) -> Path:
    """SmolLM2's tokenizer and chat template alone (no weights), read from the GGUF file.

    Reading it from the GGUF file takes seconds; the files are the same every time, so the
    first call keeps them and later calls write the same bytes (as new files, like
    ``save_pretrained``)."""
    import tempfile

    from transformers import AutoTokenizer

    from offline_models import smollm2_gguf

    if not _SMOLLM2_TOKENIZER:
        gguf = smollm2_gguf()
        with tempfile.TemporaryDirectory() as tmp:
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            files = {f.name: f.read_bytes() for f in Path(tmp).iterdir()}
        _SMOLLM2_TOKENIZER.update(files)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in _SMOLLM2_TOKENIZER.items():
        (dest / name).write_bytes(data)
    return dest
