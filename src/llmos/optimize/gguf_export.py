"""GGUF export of a causal language model, with llama.cpp's own tools.

A Hugging Face folder (safetensors, config.json, tokenizer) becomes a new folder holding one
``.gguf`` file plus the parent's config.json, generation_config.json and tokenizer files, so
the registered version is served by the ``llamacpp`` engine (which runs the ``.gguf`` and
tokenizes with the folder's tokenizer). Two steps:

1. llama.cpp's ``convert_hf_to_gguf.py`` (from the llama-cpp-python sdist of the installed
   version: ``scripts/fetch-llama-convert``) writes an F16 GGUF. It runs as a subprocess of
   this Python with its own ``gguf-py`` first on ``PYTHONPATH``: the converter's ``gguf``
   package never meets the ``gguf`` package transformers and llmos import.
2. ``llama_cpp.llama_model_quantize`` (the quantizer of the llama.cpp that serves the file)
   turns it into Q8_0 or Q4_K_M.

Owns: finding the converter, the checks before converting (a causal LM, an architecture the
converter knows, unquantized weights), the two steps, the output folder. Does not own: jobs,
the registry, recipes (``optimize.program`` / ``optimize.recipe``), serving.
"""

from __future__ import annotations

import ast
import ctypes
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.errors import InvalidRequest
from llmos.models.loaders import CONFIG_FILES, TOKENIZER_FILES

log = logging.getLogger(__name__)

#: GGUF types this export writes -> llama_ftype (llama.h) for llama_model_quantize.
QUANTIZATIONS = {"F16": 1, "Q8_0": 7, "Q4_K_M": 15}
CONVERTER = "convert_hf_to_gguf.py"
CONVERTER_ENV = "LLMOS_LLAMA_CPP_CONVERT"
FETCH_HINT = ("run scripts/fetch-llama-convert (it copies convert_hf_to_gguf.py from the "
              "llama-cpp-python sdist of the installed version into "
              "<venv>/share/llmos/llama.cpp/), or set LLMOS_LLAMA_CPP_CONVERT to a "
              "llama.cpp checkout or its convert_hf_to_gguf.py")
_TAIL = 4000  # characters of the converter's output kept for an error message

ProgressFn = Callable[[int, int, str], None]


class GGUFExportError(InvalidRequest):
    """A folder that cannot be exported to GGUF, or a converter that is not installed."""


# -- the converter --------------------------------------------------------------------------

def find_converter() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``: ``$LLMOS_LLAMA_CPP_CONVERT`` (the script, or a
    folder holding it), else ``<venv>/share/llmos/llama.cpp/``. Raises GGUFExportError
    saying how to get it."""
    configured = os.environ.get(CONVERTER_ENV)
    candidates = [Path(configured)] if configured else \
        [Path(sys.prefix) / "share" / "llmos" / "llama.cpp"]
    for path in candidates:
        script = path / CONVERTER if path.is_dir() else path
        if script.is_file() and script.name == CONVERTER:
            if not (script.parent / "gguf-py" / "gguf").is_dir():
                raise GGUFExportError(f"{script} has no gguf-py/ beside it (the converter "
                                      f"needs its own gguf package): {FETCH_HINT}")
            return script
    where = f"{CONVERTER_ENV}={configured}" if configured else str(candidates[0])
    raise GGUFExportError(f"llama.cpp's converter ({CONVERTER}) is not at {where}: "
                          f"{FETCH_HINT}")


def converter_version(script: Path) -> str | None:
    """The llama-cpp-python version the converter was fetched from (its VERSION stamp)."""
    stamp = script.parent / "VERSION"
    return stamp.read_text().strip() if stamp.is_file() else None


def _warn_if_other_release(script: Path) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("llama-cpp-python")
    except PackageNotFoundError:
        return
    fetched = converter_version(script)
    if fetched and fetched != installed:
        log.warning("llama.cpp's converter at %s comes from llama-cpp-python %s, not the "
                    "installed %s: run scripts/fetch-llama-convert again", script.parent,
                    fetched, installed)


def supported_architectures(script: Path) -> set[str] | None:
    """Hugging Face architectures the converter knows (its ``TEXT_MODEL_MAP``), read from
    its source without importing it; None when its layout is not the one expected (the
    converter then decides, and its own message is passed on)."""
    source = script.parent / "conversion" / "__init__.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else \
            (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
             else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value:
            try:
                return set(ast.literal_eval(node.value))
            except ValueError:
                return None
    return None


# -- checks ---------------------------------------------------------------------------------

def _check_model(src: Path) -> tuple[Any, str]:
    """The parent's description, refused unless a causal LM with unquantized safetensors
    weights and a tokenizer (no converter needed to tell)."""
    from llmos.models.loaders import inspect_model

    info = inspect_model(src)   # ModelImportError (422) naming the file for a bad folder
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    arch = info.architecture or "(none)"
    if info.task != "causal_lm":
        raise GGUFExportError(
            f"{src} is a {info.task} model ({arch}): GGUF export takes a causal language "
            f"model (an architecture ending in ForCausalLM), which llama.cpp generates with")
    if "llmos_quantization" in config or "quantization_config" in config:
        raise GGUFExportError(
            f"{src} holds quantized weights: export the unquantized parent to GGUF "
            f"(llama.cpp quantizes from F16)")
    if not any(f.endswith(".safetensors") for f in info.weight_files):
        raise GGUFExportError(f"{src} holds no safetensors weights for llama.cpp's converter "
                              f"to read (a version already in GGUF is exported as it is)")
    if not info.tokenizer_files:
        raise GGUFExportError(f"{src} has no tokenizer: a GGUF file carries its vocabulary")
    return info, arch


def _check_architecture(src: Path, arch: str, script: Path) -> None:
    known = supported_architectures(script)
    if known is not None and arch not in known:
        raise GGUFExportError(
            f"llama.cpp's converter (from llama-cpp-python "
            f"{converter_version(script) or '(unknown version)'}) does not know the "
            f"architecture {arch} of {src}; it converts {len(known)} others "
            f"(python {script} --print-supported-models lists them)")


# -- the two steps --------------------------------------------------------------------------

def _converter_input(src: Path, folder: Path) -> Path:
    """What the converter reads: the weights (linked) and copies of the config and
    tokenizer files with any ``auto_map`` removed — the converter loads some tokenizers
    with ``trust_remote_code=True``, and no code from a model folder may run."""
    folder.mkdir()
    for path in sorted(src.iterdir()):
        if not path.is_file():
            continue
        if path.name.endswith((".safetensors", ".safetensors.index.json")):
            (folder / path.name).symlink_to(path.resolve())
        elif path.name in CONFIG_FILES + TOKENIZER_FILES:
            if path.suffix == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    data.pop("auto_map", None)
                (folder / path.name).write_text(json.dumps(data), encoding="utf-8")
            else:
                shutil.copyfile(path, folder / path.name)
    return folder


def _convert_f16(script: Path, src: Path, out: Path) -> None:
    """Run the converter to an F16 GGUF at ``out`` (a subprocess: its gguf-py first),
    offline, on a copy of ``src`` that holds no code (``_converter_input``)."""
    env = dict(os.environ)
    gguf_py = str(script.parent / "gguf-py")
    env["PYTHONPATH"] = os.pathsep.join([gguf_py, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("NO_LOCAL_GGUF", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    staged = _converter_input(src, out.parent / ".converter-input")
    cmd = [sys.executable, str(script), str(staged), "--outfile", str(out), "--outtype", "f16"]
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", check=False)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if proc.returncode != 0 or not out.is_file():
        tail = proc.stdout[-_TAIL:].strip()
        if "is not supported" in tail or "not supported!" in tail:
            raise GGUFExportError(f"llama.cpp's converter does not support {src}: "
                                  f"{tail.splitlines()[-1]}")
        missing = re.findall(r"No module named '([\w.]+)'", tail)
        if missing:
            package = missing[-1].split(".")[0]
            raise GGUFExportError(f"llama.cpp's converter needs the Python package {package}, "
                                  f"which this environment lacks: pip install {package}")
        raise GGUFExportError(f"llama.cpp's converter failed on {src} (exit "
                              f"{proc.returncode}); its last output:\n{tail}")


def quantize_gguf(f16: str | Path, out: str | Path, quantization: str) -> None:
    """Quantize the F16 GGUF file ``f16`` into ``out`` (Q8_0 or Q4_K_M) with the installed
    llama.cpp's ``llama_model_quantize``."""
    f16, out = Path(f16), Path(out)
    if quantization not in QUANTIZATIONS or quantization == "F16":
        raise GGUFExportError(f"quantization {quantization!r} is not one of "
                              f"{', '.join(q for q in QUANTIZATIONS if q != 'F16')}")
    if not f16.is_file():
        raise GGUFExportError(f"no GGUF file at {f16}")
    try:
        import llama_cpp
    except ImportError:
        raise GGUFExportError("quantizing GGUF needs llama-cpp-python: run scripts/install "
                              "(or pip install -e '.[llamacpp]')") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZATIONS[quantization]
    params.nthread = int(os.environ.get("OMP_NUM_THREADS") or 0)  # 0: every core
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(),
                                        ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise GGUFExportError(f"llama.cpp could not quantize {f16.name} to {quantization} "
                              f"(llama_model_quantize returned {rc})")


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in (*CONFIG_FILES, *TOKENIZER_FILES):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


# -- the export -----------------------------------------------------------------------------

def export_gguf(src: str | Path, dst: str | Path, quantization: str = "Q8_0",
                progress: ProgressFn | None = None) -> dict[str, Any]:
    """Export the causal LM folder ``src`` to a new folder ``dst`` (must not exist, or be
    empty) holding ``model-<quantization>.gguf`` plus the parent's config and tokenizer
    files. ``quantization``: F16, Q8_0 or Q4_K_M. Returns JSON-able stats (sizes in bytes,
    seconds per step). Raises GGUFExportError (or ModelImportError for a folder llmos would
    not import) before converting anything when the export cannot work."""
    src, dst = Path(src), Path(dst)
    report = progress or (lambda done, total, stage: None)
    if quantization not in QUANTIZATIONS:
        raise GGUFExportError(f"quantization {quantization!r} is not one of "
                              f"{', '.join(QUANTIZATIONS)}")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise GGUFExportError(f"destination {dst} already exists and is not empty")
    total = 3 if quantization == "F16" else 4
    report(0, total, "checking the model")
    info, arch = _check_model(src)
    script = find_converter()
    _check_architecture(src, arch, script)
    _warn_if_other_release(script)
    weights = set(info.weight_files)
    stats: dict[str, Any] = {
        "architecture": arch, "parameters": info.parameters,
        "bytes_before": sum(f.size for f in info.files if f.path in weights)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".exporting", dir=dst.parent))
    try:
        name = f"model-{quantization}.gguf"
        f16 = tmp / ("model-F16.gguf" if quantization == "F16" else ".model-F16.gguf")
        report(1, total, "converting to F16 GGUF (llama.cpp convert_hf_to_gguf.py)")
        started = time.monotonic()
        _convert_f16(script, src, f16)
        stats["seconds_convert"] = round(time.monotonic() - started, 2)
        stats["bytes_f16"] = f16.stat().st_size
        if quantization != "F16":
            report(2, total, f"quantizing to {quantization} (llama.cpp)")
            started = time.monotonic()
            quantize_gguf(f16, tmp / name, quantization)
            stats["seconds_quantize"] = round(time.monotonic() - started, 2)
            f16.unlink()
        report(total - 1, total, "copying config and tokenizer")
        stats["files"] = sorted([name, *_copy_side_files(src, tmp)])
        if dst.exists():
            dst.rmdir()
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(total, total, "done")
    stats.update(quantization=quantization, file=name, bytes_after=(dst / name).stat().st_size,
                 converter=converter_version(script))
    log.info("exported %s to GGUF %s: %d -> %d bytes", src.name, quantization,
             stats["bytes_before"], stats["bytes_after"])
    return stats
