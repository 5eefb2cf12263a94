"""Reading a GGUF file and de-quantizing it once into safetensors (``import_gguf``).

GGUF's own Python reader (``gguf.GGUFReader``) parses every metadata field when it opens a
file, the tokenizer's vocabulary of tens of thousands of strings included: seconds for a
small model. transformers opens the file three times to convert it (tokenizer, config,
weights) and builds gguf's tensor-name map once per submodule (hundreds of times). Both
are pure functions of their arguments, so while one file converts (:func:`one_parse`)
each is done once: SmolLM2-135M's import takes about a third of the time it took.
"""

from __future__ import annotations

import functools
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmos.models.info import ModelImportError

_PATCHING = threading.RLock()  # one_parse: one thread's imports at a time


def check_file(path: Path) -> None:
    """ModelImportError unless ``path`` is a file that starts as a GGUF file does."""
    if path.is_dir():
        raise ModelImportError(f"{path} is a folder; a Hugging Face folder goes through "
                               f"import_hf_dir")
    if not path.is_file():
        raise ModelImportError(f"no GGUF file at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelImportError(f"{path.name} is not a GGUF file: it starts with {magic!r}, "
                               f"not b'GGUF'")


def reader(path: Path):
    """The file's ``gguf.GGUFReader`` (the one already parsed, inside :func:`one_parse`);
    ModelImportError for a truncated or malformed file."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - truncated or malformed header
        raise ModelImportError(f"{path.name} is not a readable GGUF file: {e}") from None


def header(path: Path) -> dict[str, Any]:
    """Architecture, quantization and name from a GGUF header."""
    from gguf import LlamaFileType

    read = reader(path)

    def value(key: str) -> Any:
        f = read.fields.get(key)
        return f.contents() if f is not None else None

    arch = value("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelImportError(f"{path.name} has no general.architecture in its GGUF header")
    types = Counter(t.tensor_type.name for t in read.tensors)
    file_type = value("general.file_type")
    try:
        quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except (ValueError, TypeError):
        quant = types.most_common(1)[0][0] if types else "unknown"
    name = value("general.name")
    return {"architecture": arch, "quantization": quant,
            "name": name if isinstance(name, str) else None,
            "tensor_types": dict(sorted(types.items()))}


@contextmanager
def one_parse() -> Iterator[None]:
    """Within: ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` answer a second call
    with the same arguments from the first (transformers imports both from ``gguf`` when it
    calls them, so it sees these); outside, both are gguf's own again. The readers are
    read-only memory maps, dropped when the block ends. One thread at a time (the names
    are the module's, for the whole process): a second thread's import waits."""
    import gguf

    with _PATCHING:
        own_reader, own_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict[tuple[str, str], Any] = {}

        def cached_reader(path, mode="r"):
            key = (str(Path(path).resolve()), mode)
            if key not in readers:
                readers[key] = own_reader(path, mode)
            return readers[key]

        gguf.GGUFReader = cached_reader
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(own_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = own_reader, own_map
            readers.clear()


def dequantize(gguf_path: Path, out: Path, dtype: str, header: dict) -> None:
    """Load the GGUF file with transformers (de-quantizing it) and save safetensors. Called
    inside :func:`one_parse` (as ``import_gguf`` does), the file is parsed once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="llmos-gguf-") as link_dir:
        # transformers reads from a folder: give it one holding only this file.
        link = Path(link_dir) / gguf_path.name
        link.symlink_to(gguf_path.resolve())
        try:
            tokenizer = AutoTokenizer.from_pretrained(link_dir, gguf_file=link.name)
            model = AutoModelForCausalLM.from_pretrained(
                link_dir, gguf_file=link.name, dtype=getattr(torch, dtype))
        except Exception as e:  # noqa: BLE001 - transformers' many ways to refuse a file
            raise ModelImportError(
                f"transformers cannot convert {gguf_path.name} (GGUF architecture "
                f"{header['architecture']!r}, {header['quantization']}): "
                f"{type(e).__name__}: {e}") from None
    # The weights are de-quantized already: save them as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
