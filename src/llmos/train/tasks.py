"""Models per task: check the folder, load tokenizer and model (safetensors only), check
that they belong together, add LoRA adapters, and compute the summed loss.

    sequence_classification  AutoModelForSequenceClassification (id2label / label2id)
    token_classification     AutoModelForTokenClassification
    causal_lm                AutoModelForCausalLM

Every check runs before training starts and raises ModelError naming the folder and the
problem. This module knows nothing about data formats (see ``encode``) or the loop.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from llmos.models.quantized import is_int8, load_int8
from llmos.train.errors import ModelError
from llmos.train.recipe import LoraSpec

_AUTO = {"sequence_classification": "AutoModelForSequenceClassification",
         "token_classification": "AutoModelForTokenClassification",
         "causal_lm": "AutoModelForCausalLM"}
_PEFT_TASK = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
              "causal_lm": "CAUSAL_LM"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "tokenizer.model")
_SPECIAL = ("pad", "bos", "eos", "unk", "cls", "sep", "mask")


def check_model_dir(model_dir: str | Path) -> Path:
    """The folder, once it is known to hold a config, safetensors weights and a tokenizer."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelError(f"model folder {str(folder)!r} does not exist")
    names = sorted(p.name for p in folder.iterdir())
    listing = ", ".join(names[:20]) or "none"
    if "config.json" not in names:
        raise ModelError(f"model folder {folder.name!r} has no config.json (files: {listing})")
    if not any(n.endswith(".safetensors") for n in names):
        pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        why = (f"it has only pickled weights ({', '.join(pickled)}), which llmos never loads;"
               " convert them to safetensors first") if pickled else f"files: {listing}"
        raise ModelError(f"model folder {folder.name!r} has no safetensors weights ({why})")
    if not any(n in names for n in _TOKENIZER_FILES):
        raise ModelError(f"model folder {folder.name!r} has no tokenizer (expected "
                         f"tokenizer.json or tokenizer_config.json; files: {listing})")
    return folder


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - a broken tokenizer raises many types
        raise ModelError(f"the tokenizer in {folder.name!r} cannot be loaded: "
                         f"{type(e).__name__}: {e}") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"the tokenizer in {folder.name!r} has neither a padding nor an "
                             "end-of-sequence token")
        tok.pad_token = tok.eos_token
    return tok


def load_model(task: str, folder: Path, labels: list[str] | None, tokenizer):
    """The model for ``task`` in float32 on the CPU (the loop moves it); a classifier gets
    a head for ``labels`` (re-initialised when the folder's head has another size)."""
    import torch
    import transformers

    auto = getattr(transformers, _AUTO[task])
    if is_int8(folder):
        return _load_int8(auto, task, folder, labels, tokenizer)
    kwargs = {}
    if labels is not None:
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {name: i for i, name in enumerate(labels)},
                  "ignore_mismatched_sizes": True}
    try:
        model = auto.from_pretrained(folder, use_safetensors=True, dtype=torch.float32,
                                     **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ModelError(f"the model in {folder.name!r} ({_model_type(folder)}) has no "
                             f"{task.replace('_', ' ')} form in transformers") from None
        if "does not recognize this architecture" in str(e):
            raise ModelError(f"the model in {folder.name!r} has model type "
                             f"{_model_type(folder)!r}, which this transformers version does "
                             "not know") from None
        raise ModelError(f"the model in {folder.name!r} cannot be loaded: {e}") from None
    except OSError as e:
        raise ModelError(f"the model in {folder.name!r} cannot be loaded: {e}") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    check_tokenizer_fits(tokenizer, model, folder.name)
    return model


def _load_int8(auto, task: str, folder: Path, labels: list[str] | None, tokenizer):
    """An int8-quantized folder (``llmos.models.quantized``): evaluated on the CPU, never
    trained (its linear layers have no float weights to update)."""
    if labels is not None:
        raise ModelError(f"the model in {folder.name!r} is int8-quantized and cannot be "
                         "trained; fine-tune its float parent and quantize the result")
    try:
        model = load_int8(auto, folder)
    except (ValueError, OSError, KeyError) as e:
        raise ModelError(f"the int8 model in {folder.name!r} cannot be loaded as "
                         f"{task.replace('_', ' ')}: {e}") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    check_tokenizer_fits(tokenizer, model, folder.name)
    return model


def _model_type(folder: Path) -> str:
    import json

    try:
        return json.loads((folder / "config.json").read_text()).get("model_type", "unknown")
    except (OSError, ValueError):
        return "unknown"


def embedding_rows(model) -> int:
    return model.get_input_embeddings().num_embeddings


def check_tokenizer_fits(tokenizer, model, name: str) -> None:
    """Raise ModelError when the tokenizer can produce ids the model has no embedding for."""
    rows = embedding_rows(model)
    if len(tokenizer) > rows:
        raise ModelError(f"the tokenizer of {name!r} does not match its model: it has "
                         f"{len(tokenizer)} tokens but the model's embeddings have {rows} rows")
    for kind in _SPECIAL:
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(tid, int) and not 0 <= tid < rows:
            raise ModelError(f"the tokenizer of {name!r} does not match its model: its {kind} "
                             f"token id {tid} is beyond the model's {rows} embedding rows")


def check_token_ids(max_id: int, model, split: str) -> None:
    rows = embedding_rows(model)
    if max_id >= rows:
        raise ModelError(f"the tokenizer does not match the model: {split} text becomes token "
                         f"id {max_id}, beyond the model's {rows} embedding rows")


def add_lora(model, task: str, spec: LoraSpec):
    """Wrap ``model`` with LoRA adapters; only they (and a classifier head) train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=spec.target_modules, task_type=_PEFT_TASK[task])
    try:
        with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated name
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated",
                                    FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:
        if spec.target_modules is None:
            raise ModelError(f"peft has no default LoRA target modules for model type "
                             f"{model.config.model_type!r}; set lora.target_modules "
                             "(e.g. [q_proj, v_proj] or all-linear)") from None
        raise ModelError(f"lora.target_modules: {e}") from None


def loss_sum(logits, labels):
    """Cross-entropy summed over the labels that count (float32 whatever the precision)."""
    import torch.nn.functional as F

    if labels.dim() == 1:
        return F.cross_entropy(logits.float(), labels, reduction="sum")
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                           reduction="sum")


def forward_loss(model, batch):
    return loss_sum(model(**batch.inputs).logits, batch.labels)
