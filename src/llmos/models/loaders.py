"""Importing models into llmos: describe a model folder, copy a Hugging Face folder, convert
a GGUF file once into safetensors.

Safe formats only. A folder is read through its ``config.json``, the headers of its
safetensors files (``safetensors.safe_open``: no weights are loaded) and its tokenizer
files. Pickled checkpoints (``*.bin``, ``*.pt`` ...) are never opened and never copied, nor
is code (``*.py``: llmos runs no remote code). An import writes into a hidden folder beside
the destination and renames it at the end, so a failed import leaves nothing behind.

Owns: which files make a model and are safe to take, ``ModelInfo`` from a folder, the
copy, the one-time GGUF de-quantization. Does not own: the registry (names, versions, the
database), model cards (``card``), loading models to serve or train them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import extensions
from llmos.models import gguf_convert
from llmos.models.info import FileInfo, GGUFSource, ModelImportError, ModelInfo

#: Files taken from a Hugging Face folder (besides the safetensors weights and their index).
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json")
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json",
                               "config_sentence_transformers.json", "1_Pooling/config.json")
KEEP_FILES = frozenset(CONFIG_FILES + TOKENIZER_FILES + SENTENCE_TRANSFORMERS_FILES
                       + ("manifest.json",))
#: Files whose presence means "this folder has a tokenizer" (the rest only configure one).
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CODE_SUFFIXES = (".py", ".pyc", ".so", ".dll", ".dylib", ".sh", ".ipynb")
GGUF_DTYPES = ("float32", "bfloat16", "float16")

# safetensors dtype -> torch name, for tensors that count as parameters.
_FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
# Quantized weights count as parameters (their scales and zero points do not).
_QUANT_DTYPES = {"I8": "int8", "U8": "uint8", "INT8": "int8", "UINT8": "uint8"}
# ONNX TensorProto data types -> the names used above.
_ONNX_DTYPES = {1: "F32", 10: "F16", 16: "BF16", 11: "F64", 3: "INT8", 2: "UINT8"}
# Buffers some checkpoints carry beside their parameters (transformers does not count them),
# and the scales and zero points of quantized weights.
_BUFFER_SUFFIXES = ("position_ids", "rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias",
                    "_scale", "_zero_point")
#: An ONNX export's graph and its external weights (optimize/onnx_export.py).
ONNX_FILE, ONNX_DATA = "model.onnx", "model.onnx.data"
_CHUNK = 8 << 20

#: ``progress(done, total, stage)``: step ``done`` of ``total``, now doing ``stage``.
ProgressFn = Callable[[int, int, str], None]


# -- reading a folder ---------------------------------------------------------------------

@dataclass
class _Folder:
    """A validated model folder: what to keep and what its headers say."""

    root: Path
    config: dict[str, Any]
    hf_config: Any                     # the transformers config object
    keep: list[str]                    # relative paths of the model's files, sorted
    weight_files: list[str]            # shards (and index) holding the weights
    tensors: dict[str, tuple[tuple[int, ...], str]]   # name -> (shape, safetensors dtype)
    skipped: dict[str, str] = field(default_factory=dict)   # relative path -> why


def _read_folder(root: Path) -> _Folder:
    root = Path(root)
    if not root.is_dir():
        hint = "; a GGUF file goes through import_gguf" if root.suffix == ".gguf" else ""
        raise ModelImportError(f"{root} is not a folder{hint}")
    top = sorted(os.listdir(root))
    files = {n for n in top if (root / n).is_file()}
    config, hf_config = _read_config(root, files)
    weights, index, weight_map = _weight_files(root, files)
    tensors = _read_headers(root, weights, index, weight_map)
    keep = sorted({n for n in files if n in KEEP_FILES} | set(weights)
                  | ({index} if index else set()))
    if (root / "1_Pooling" / "config.json").is_file():
        keep.append("1_Pooling/config.json")
        keep.sort()
    skipped = {}
    for name in top:
        if name in keep:
            continue
        if (root / name).is_dir():
            if name != "1_Pooling":
                skipped[name + "/"] = "folder, not needed"
        elif name not in files:
            skipped[name] = "not a regular file"
        elif name.endswith(PICKLE_SUFFIXES):
            skipped[name] = "pickled checkpoint, never opened"
        elif name.endswith(CODE_SUFFIXES):
            skipped[name] = "code; llmos runs no remote code"
        elif name.endswith(".safetensors"):
            skipped[name] = "safetensors file the weight index does not name"
        else:
            skipped[name] = "not needed"
    return _Folder(root, config, hf_config, keep, sorted(weights) + ([index] if index else []),
                   tensors, skipped)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelImportError(f"{path.name} in {path.parent} does not parse as JSON "
                               f"({what}): {e}") from None


def _read_config(root: Path, files: set[str]) -> tuple[dict, Any]:
    if "config.json" not in files:
        raise ModelImportError(
            f"no config.json in {root}: a Hugging Face model folder needs one "
            f"(a GGUF file goes through import_gguf)")
    raw = _read_json(root / "config.json", "the model configuration")
    if not isinstance(raw, dict):
        raise ModelImportError(f"config.json in {root} is not a JSON object")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelImportError(f"config.json in {root} has no model_type")
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ModelImportError(
            f"config.json in {root}: model_type {model_type!r} is not one transformers "
            f"{transformers.__version__} knows, and llmos runs no remote code")
    try:
        hf_config = CONFIG_MAPPING[model_type].from_dict(raw)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad config file
        raise ModelImportError(f"config.json in {root} is not a valid {model_type} "
                               f"configuration: {type(e).__name__}: {e}") from None
    return raw, hf_config


def _weight_files(root: Path, files: set[str]) -> tuple[list[str], str | None, dict | None]:
    indexes = sorted(n for n in files if n.endswith(".safetensors.index.json"))
    if indexes:
        index = "model.safetensors.index.json" if "model.safetensors.index.json" in files \
            else indexes[0]
        data = _read_json(root / index, "the safetensors weight index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise ModelImportError(f"{index} in {root} has no weight_map of tensor -> shard")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if "/" in shard or "\\" in shard or shard.startswith("."):
                raise ModelImportError(f"{index} in {root} names shard {shard!r}, which is "
                                       f"not a file name in the folder")
            if shard not in files:
                raise ModelImportError(f"{index} in {root} names shard {shard}, which is "
                                       f"missing from the folder")
        return shards, index, weight_map
    found = sorted(n for n in files if n.endswith(".safetensors"))
    if "model.safetensors" in found:
        found = ["model.safetensors"]
    if found:
        return found, None, None
    # An export (optimize/): ONNX graph (with its external data, when any) or one GGUF file.
    if ONNX_FILE in files:
        return [ONNX_FILE] + ([ONNX_DATA] if ONNX_DATA in files else []), None, None
    ggufs = sorted(n for n in files if n.endswith(".gguf"))
    if len(ggufs) == 1:
        return ggufs, None, None
    pickles = sorted(n for n in files if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelImportError(
            f"pickled checkpoint {pickles[0]} in {root}; llmos loads only safetensors or "
            f"GGUF (loading a pickle can run any code). Convert it once, where you trust "
            f"the file: python -c \"from transformers import AutoModel; "
            f"AutoModel.from_pretrained('{root}').save_pretrained('{root}-safetensors')\" "
            f"(use the model's AutoModelFor... class to keep its head), then import "
            f"{root}-safetensors")
    raise ModelImportError(f"no weights in {root}: expected model.safetensors, shards "
                           f"named by model.safetensors.index.json, {ONNX_FILE} or one "
                           f".gguf file")


def _read_headers(root: Path, shards: list[str], index: str | None,
                  weight_map: dict | None) -> dict[str, tuple[tuple[int, ...], str]]:
    if shards and shards[0] == ONNX_FILE:
        return _onnx_headers(root / ONNX_FILE)
    if shards and shards[0].endswith(".gguf"):
        return _gguf_tensors(root / shards[0])
    from safetensors import safe_open

    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    where: dict[str, str] = {}
    for shard in shards:
        if (root / shard).exists() and not os.access(root / shard, os.R_OK):
            # a job runs as its team's own user (the sandbox), not as the file's owner;
            # safetensors writes its files 0600, readable by their owner only
            raise ModelImportError(
                f"{shard} in {root} is not readable by this job's user (uid {os.getuid()}; "
                f"the file is mode {oct((root / shard).stat().st_mode & 0o777)}): make the "
                f"folder readable to it, e.g. chmod -R a+rX {root}")
        try:
            with safe_open(root / shard, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                    sl = f.get_slice(name)
                    tensors[name] = (tuple(sl.get_shape()), sl.get_dtype())
                    where[name] = shard
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: unreadable file
            raise ModelImportError(f"{shard} in {root} is not a readable safetensors file: "
                                   f"{e}") from None
        if shard not in where.values():
            raise ModelImportError(f"{shard} in {root} holds no tensors")
    for name, shard in (weight_map or {}).items():
        if where.get(name) != shard:
            raise ModelImportError(f"{index} in {root} says tensor {name} is in {shard}, "
                                   f"which does not hold it")
    return tensors


def _onnx_headers(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """The graph's initializers (its weights), without loading external data."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001 - protobuf's parse errors
        raise ModelImportError(f"{path.name} in {path.parent} is not a readable ONNX model: "
                               f"{e}") from None
    return {t.name: (tuple(t.dims), _ONNX_DTYPES.get(t.data_type, "other"))
            for t in graph.initializer}


def _gguf_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    return {t.name: (tuple(int(d) for d in t.shape), f"GGUF_{t.tensor_type.name}")
            for t in gguf_convert.reader(path).tensors}


# -- describing a folder ------------------------------------------------------------------

def _task(architecture: str | None) -> str:
    arch = architecture or ""
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    for suffix, task in (("ForSequenceClassification", "sequence_classification"),
                         ("ForTokenClassification", "token_classification"),
                         ("ForMaskedLM", "masked_lm")):
        if arch.endswith(suffix):
            return task
    if arch.endswith("Model") and "For" not in arch:
        return "encoder"
    return "other"


def _tie_pairs(architecture: str | None) -> dict[str, str]:
    """Tied parameter -> the parameter it shares, as the transformers class declares."""
    fallback = {"lm_head.weight": "model.embed_tokens.weight"}
    if not architecture or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", architecture):
        return fallback
    import transformers

    try:
        cls = getattr(transformers, architecture)
    except Exception:  # noqa: BLE001 - unknown name or a backend missing
        return fallback
    keys = getattr(cls, "_tied_weights_keys", None)
    if isinstance(keys, dict):
        return {k: v for k, v in keys.items() if isinstance(k, str) and isinstance(v, str)}
    return fallback


def _count_parameters(folder: _Folder, architecture: str | None) -> tuple[int, list[str]]:
    tensors = folder.tensors
    tied: set[str] = set()
    if getattr(folder.hf_config, "tie_word_embeddings", False):
        tied = {target for target, source in _tie_pairs(architecture).items()
                if target in tensors and tensors.get(source) == tensors[target]}
    total, dtypes = 0, set()
    for name, (shape, dtype) in tensors.items():
        if name in tied or name.endswith(_BUFFER_SUFFIXES):
            continue
        kind = _FLOAT_DTYPES.get(dtype) or _QUANT_DTYPES.get(dtype) or (
            dtype.removeprefix("GGUF_") if dtype.startswith("GGUF_") else None)
        if kind is None:
            continue
        total += math.prod(shape)
        dtypes.add(kind)
    return total, sorted(dtypes)


def _vocab_size(root: Path, names: set[str]) -> int | None:
    if "tokenizer.json" in names:
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(root / "tokenizer.json")).get_vocab_size(
                with_added_tokens=True)
        except Exception as e:  # noqa: BLE001 - the tokenizers library's parse errors
            raise ModelImportError(f"tokenizer.json in {root} does not parse: {e}") from None
    if "vocab.txt" in names:
        return len((root / "vocab.txt").read_text(encoding="utf-8").splitlines())
    if "vocab.json" in names:
        vocab = _read_json(root / "vocab.json", "the tokenizer vocabulary")
        return len(vocab) if isinstance(vocab, dict) else None
    if "tokenizer.model" in names:
        try:
            import sentencepiece
            return sentencepiece.SentencePieceProcessor(
                model_file=str(root / "tokenizer.model")).get_piece_size()
        except ImportError:
            return None
        except Exception as e:  # noqa: BLE001 - sentencepiece's parse errors
            raise ModelImportError(f"tokenizer.model in {root} does not parse: {e}") from None
    return None


def _chat_template(root: Path, names: set[str]) -> bool:
    if "chat_template.jinja" in names or "chat_template.json" in names:
        return True
    if "tokenizer_config.json" in names:
        cfg = _read_json(root / "tokenizer_config.json", "the tokenizer configuration")
        return isinstance(cfg, dict) and bool(cfg.get("chat_template"))
    return False


def _context_length(hf_config: Any) -> int | None:
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    for cfg in (text, hf_config):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length",
                    "seq_length", "n_ctx"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _labels(hf_config: Any, task: str) -> list[str] | None:
    id2label = getattr(hf_config, "id2label", None)
    if task not in ("sequence_classification", "token_classification") or not id2label:
        return None
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def _describe(folder: _Folder, hashes: dict[str, FileInfo],
              gguf: GGUFSource | None = None) -> ModelInfo:
    root, names = folder.root, set(folder.keep)
    arch = folder.config.get("architectures")
    arch = arch[0] if isinstance(arch, list) and arch and isinstance(arch[0], str) else None
    task = _task(arch)
    parameters, dtypes = _count_parameters(folder, arch)
    tokenizer = [n for n in TOKENIZER_FILES if n in names] \
        if any(n in names for n in VOCAB_FILES) else []
    info = ModelInfo(
        architecture=arch, model_type=folder.config["model_type"], task=task,
        parameters=parameters, dtypes=dtypes,
        size_bytes=sum(f.size for f in hashes.values()),
        files=[hashes[p] for p in folder.keep], weight_files=folder.weight_files,
        tokenizer_files=tokenizer,
        vocab_size=_vocab_size(root, names) if tokenizer else None,
        chat_template=_chat_template(root, names),
        context_length=_context_length(folder.hf_config),
        labels=_labels(folder.hf_config, task), gguf=gguf)
    info.warnings = _warnings(folder, info)
    return info


def _warnings(folder: _Folder, info: ModelInfo) -> list[str]:
    notes = []
    if not info.has_tokenizer:
        notes.append("no tokenizer (tokenizer.json, vocab.txt, vocab.json or "
                     "tokenizer.model): this model cannot be served or trained until one "
                     "is added")
    if info.task == "causal_lm" and info.has_tokenizer and not info.chat_template:
        notes.append("no chat template: chat completions cannot format a conversation; "
                     "plain completions work")
    if info.task == "other":
        notes.append(f"architecture {info.architecture!r} is not one llmos serves or trains "
                     f"(causal LM, sequence or token classification, encoder)")
    if "auto_map" in folder.config:
        notes.append("config.json names remote code (auto_map); llmos ignores it and loads "
                     "the model with transformers' own classes")
    by_reason: dict[str, list[str]] = {}
    for path, reason in sorted(folder.skipped.items()):
        by_reason.setdefault(reason, []).append(path)
    for reason, paths in by_reason.items():
        shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10
                                         else "")
        notes.append(f"not imported ({reason}): {shown}")
    return notes


def _sha256_file(path: Path) -> FileInfo:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return FileInfo(path.name, path.stat().st_size, digest)


def _hash_all(folder: _Folder) -> dict[str, FileInfo]:
    out = {}
    for rel in folder.keep:
        f = _sha256_file(folder.root / rel)
        out[rel] = FileInfo(rel, f.size, f.sha256)
    return out


def inspect_model(path: str | Path) -> ModelInfo:
    """Describe a Hugging Face model folder without loading its weights.

    Raises ``ModelImportError`` (naming the file) for a folder llmos would refuse to import:
    no config.json, a config that does not parse, pickled weights only, no weights, a
    missing shard, an unreadable safetensors header. ``files`` lists only what an import
    would keep; ``warnings`` says what it would leave out and why.
    """
    folder = _read_folder(Path(path))
    return _describe(folder, _hash_all(folder))


# -- importing ----------------------------------------------------------------------------

@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A hidden folder beside ``dest``, renamed to ``dest`` on success, removed on failure."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ModelImportError(f"destination {dest} already exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".importing", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_hashed(src: Path, dst: Path, rel: str) -> FileInfo:
    """Copy ``src`` to a new file ``dst`` in chunks, hashing what is written."""
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while chunk := fi.read(_CHUNK):
            digest.update(chunk)
            fo.write(chunk)
            size += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return FileInfo(rel, size, digest.hexdigest())


def import_hf_dir(src: str | Path, dest: str | Path) -> ModelInfo:
    """Copy the safe, needed files of a Hugging Face folder ``src`` into a new folder ``dest``.

    Takes config.json, generation_config.json, the safetensors weights (and index), the
    tokenizer and chat template files and a sentence-transformers pooling config; never a
    pickle, never code. Atomic: ``dest`` appears complete or not at all. Returns the info
    of the copy; its ``warnings`` name the files left out.
    """
    source = _read_folder(Path(src))
    with _staging(Path(dest)) as tmp:
        copied = {}
        for rel in source.keep:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            copied[rel] = _copy_hashed(source.root / rel, tmp / rel, rel)
        copy = _read_folder(tmp)   # the copy is what we describe (and re-validate)
        copy.skipped = source.skipped
        info = _describe(copy, copied)
    return info


# -- GGUF ---------------------------------------------------------------------------------

def import_gguf(gguf_path: str | Path, dest: str | Path, dtype: str = "float32",
                progress: ProgressFn | None = None) -> ModelInfo:
    """Convert a GGUF file once into a new folder ``dest`` of safetensors + tokenizer, and
    keep the GGUF file beside them (the ``llamacpp`` serving engine runs it as it is).

    De-quantizes with transformers into ``dtype`` (float32, or bfloat16 / float16 at half
    the size), saves the tokenizer and chat template, and records the source file (name,
    sha256, quantization, architecture) in ``info.gguf``. Atomic like ``import_hf_dir``.
    ``progress(done, total, stage)`` is called between stages.
    """
    gguf_path = Path(gguf_path)
    if dtype not in GGUF_DTYPES:
        raise ModelImportError(f"dtype {dtype!r} is not one of {', '.join(GGUF_DTYPES)}")
    report = progress or (lambda done, total, stage: None)
    gguf_convert.check_file(gguf_path)
    report(0, 4, "reading GGUF header")
    with gguf_convert.one_parse():  # the header read once, for this and for transformers
        header = gguf_convert.header(gguf_path)
        with _staging(Path(dest)) as tmp:
            report(1, 4, "de-quantizing")
            gguf_convert.dequantize(gguf_path, tmp, dtype, header)
            report(2, 4, "hashing the converted files")
            folder = _read_folder(tmp)
            hashes = _hash_all(folder)
            report(3, 4, "keeping the GGUF file")
            kept = _copy_hashed(gguf_path, tmp / gguf_path.name, gguf_path.name)
            source = GGUFSource(file=gguf_path.name, sha256=kept.sha256, size=kept.size,
                                **header)
            info = _describe(folder, hashes, gguf=source)
            info.files = sorted([*info.files, kept], key=lambda f: f.path)
            info.size_bytes += kept.size
    report(4, 4, "done")
    return info


# -- the formats, as extensions -----------------------------------------------------------

@dataclass(frozen=True)
class ModelLoader:
    """One way a model enters llmos, registered by name in the ``model_loaders`` kind of
    :mod:`llmos.extensions` (``llmos.model_loaders`` entry points: ``hf`` and ``gguf``
    built in). ``matches`` picks it for ``format: auto``; ``check`` refuses what can be
    refused without reading weights (before any job exists); ``load`` imports into a new
    folder and returns the info and the lineage of the source."""

    name: str
    matches: Callable[[Path], bool]
    check: Callable[[Path], None]
    load: Callable[[Path, Path, str, ProgressFn | None], tuple[ModelInfo, dict[str, Any]]]


def _load_hf(src: Path, dest: Path, dtype: str, progress: ProgressFn | None
             ) -> tuple[ModelInfo, dict[str, Any]]:
    return import_hf_dir(src, dest), {"kind": "huggingface", "path": str(src)}


def _load_gguf(src: Path, dest: Path, dtype: str, progress: ProgressFn | None
               ) -> tuple[ModelInfo, dict[str, Any]]:
    info = import_gguf(src, dest, dtype=dtype, progress=progress)
    return info, {"kind": "gguf", "file": info.gguf.file, "sha256": info.gguf.sha256,
                  "quantization": info.gguf.quantization, "dtype": dtype}


HF_FOLDER = ModelLoader("hf", Path.is_dir, _read_folder, _load_hf)
GGUF_FILE = ModelLoader("gguf", Path.is_file, gguf_convert.check_file, _load_gguf)


def model_loader(fmt: str, path: Path) -> ModelLoader:
    """The loader registered as ``fmt`` (``auto``: the first, by name, that matches
    ``path``). Raises ModelImportError naming the formats there are."""
    names = extensions.model_loaders.names()
    if fmt == "auto":
        for name in names:
            loader = extensions.model_loaders.load(name)
            if loader.matches(path):
                return loader
        raise ModelImportError(f"no model format ({', '.join(names)}) reads {path}")
    try:
        return extensions.model_loaders.load(fmt)
    except extensions.UnknownExtension as e:
        raise ModelImportError(str(e)) from None
