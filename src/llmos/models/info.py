"""What llmos knows about one model folder: ``ModelInfo``, a plain JSON-able record.

The loaders fill it (``loaders.inspect_model``, ``import_hf_dir``, ``import_gguf``); the
registry stores it with a model version; the card generator renders it. This module owns
the record's fields and its JSON form, nothing else: it reads no files and imports nothing
heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmos.errors import InvalidRequest

#: What a model is for, read from its architecture name (``LlamaForCausalLM`` -> causal_lm).
TASKS = ("causal_lm", "sequence_classification", "token_classification", "masked_lm",
         "encoder", "other")


class ModelImportError(InvalidRequest):
    """A model folder or file llmos refuses to import or use; the message names the file."""


@dataclass(frozen=True)
class FileInfo:
    """One file of a model folder, relative to it (POSIX separators)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class GGUFSource:
    """The GGUF file a model was converted from: its lineage."""

    file: str                 # original file name, no directories
    sha256: str
    size: int
    architecture: str         # general.architecture in the GGUF header (llama, qwen2 ...)
    quantization: str         # general.file_type (Q4_1, Q8_0, F16 ...)
    name: str | None = None   # general.name, when the header has one
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type -> tensor count


@dataclass
class ModelInfo:
    """A model folder described without loading its weights."""

    architecture: str | None          # config ``architectures[0]``
    model_type: str                   # config ``model_type`` (llama, bert ...)
    task: str                         # one of TASKS
    parameters: int                   # from safetensors headers; tied weights counted once
    dtypes: list[str]                 # torch names of the parameters' dtypes, sorted
    size_bytes: int                   # all files together
    files: list[FileInfo]             # every file of the model, sorted by path
    weight_files: list[str]           # the safetensors files (and index) holding weights
    tokenizer_files: list[str]        # empty: no tokenizer
    vocab_size: int | None            # of the tokenizer (with added tokens); None if unknown
    chat_template: bool
    context_length: int | None        # max_position_embeddings / n_positions
    labels: list[str] | None = None   # id2label in id order, for classifiers
    gguf: GGUFSource | None = None    # set when converted from a GGUF file
    warnings: list[str] = field(default_factory=list)

    @property
    def has_tokenizer(self) -> bool:
        return bool(self.tokenizer_files)

    def require_tokenizer(self, purpose: str = "served or trained") -> None:
        """Raise ``ModelImportError`` if the model has no tokenizer (it cannot be ``purpose``)."""
        if not self.has_tokenizer:
            raise ModelImportError(
                f"this {self.architecture or self.model_type} model has no tokenizer "
                f"(tokenizer.json, vocab.txt, vocab.json or tokenizer.model), so it cannot be "
                f"{purpose}; import it again from a folder that includes its tokenizer")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``json.dumps`` works on it as is)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """The inverse of ``to_dict`` (for example from a registry row)."""
        data = dict(data)
        data["files"] = [FileInfo(**f) for f in data.get("files", [])]
        if data.get("gguf") is not None:
            data["gguf"] = GGUFSource(**data["gguf"])
        return cls(**data)
