"""The edge runner of an llmos ONNX bundle: a folder holding ``model.onnx``, the tokenizer
(``tokenizer.json``), the parent's ``config.json``, ``manifest.json`` and this file, copied
verbatim as ``runner.py``.

It imports ONLY numpy, onnxruntime, tokenizers and the standard library, so that a bundle
runs on a machine with nothing else installed::

    pip install onnxruntime tokenizers numpy
    python runner.py BUNDLE "first text" "second text"      # prints JSON, one result a text

or from Python: ``Runner(BUNDLE).classify(texts)`` / ``.logits(texts)`` / ``.embed(texts)``.

Owns: the manifest check (format, every file's sha256 and size), tokenization with the
bundle's own limits, the onnxruntime session, and turning its outputs into probabilities
(softmax, or sigmoid for multi-label models) or pooled, normalised embeddings. Does not own:
exporting (``llmos.optimize.onnx_export``) nor serving (``llmos.serve.engines.onnx_engine``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

if __name__ == "__main__":
    # `python BUNDLE/runner.py` puts the bundle first on the import path: a file there named
    # numpy.py or tokenizers.py must never be what gets imported.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

import numpy as np  # noqa: E402

FORMAT = "llmos-onnx-bundle"
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
RUNNER_FILE = "runner.py"
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE)
# Not pinned by the manifest: the runner is the tool, not the model (a registry that keeps
# no code drops it; `llmos models pull` writes its own; llmos serves through this module).
UNPINNED_FILES = (RUNNER_FILE,)
TASKS = ("classify", "embed")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


class BundleError(ValueError):
    """The folder is not a usable bundle: no manifest, a file missing or changed."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | Path, verify: bool = True) -> dict:
    """The bundle's manifest, once every file it lists has the size and sha256 it records
    (``verify``). Raises BundleError naming the field or the file."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} has no {MANIFEST}: not an llmos ONNX bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{MANIFEST} in {folder} does not parse as JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{MANIFEST} in {folder}: format is not {FORMAT!r}")
    if manifest.get("task") not in TASKS:
        raise BundleError(f"{MANIFEST} in {folder}: task must be one of {', '.join(TASKS)}, "
                          f"got {manifest.get('task')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{MANIFEST} in {folder}: files is not an object of name -> "
                          "{sha256, bytes}")
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{MANIFEST} in {folder}: files does not list {name}")
    if verify:
        for name, entry in sorted(files.items()):
            _verify_file(folder, name, entry)
    return manifest


def _verify_file(folder: Path, name: str, entry: object) -> None:
    if name.startswith("/") or ".." in name.split("/") or name == MANIFEST:
        raise BundleError(f"{MANIFEST} in {folder}: file name {name!r} is not allowed")
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise BundleError(f"{MANIFEST} in {folder}: files.{name} has no sha256")
    path = folder / name
    if name in UNPINNED_FILES:
        return
    if not path.is_file():
        raise BundleError(f"{name} is missing from the bundle {folder}")
    if entry.get("bytes") is not None and path.stat().st_size != entry["bytes"]:
        raise BundleError(f"{name} in {folder} has {path.stat().st_size} bytes, the manifest "
                          f"says {entry['bytes']}: the bundle was changed")
    if sha256_file(path) != entry["sha256"]:
        raise BundleError(f"{name} in {folder} does not match its sha256 in {MANIFEST}: "
                          "the bundle was changed")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Pool token states ``[batch, tokens, dim]`` over the attention mask ``[batch, tokens]``."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(hidden.dtype)
    if mode == "max":
        return np.where(m > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    summed = (hidden * m).sum(axis=1)
    counts = np.clip(m.sum(axis=1), 1e-9, None)
    return summed / (np.sqrt(counts) if mode == "mean_sqrt_len" else counts)


class Runner:
    """One bundle, loaded: ``classify``, ``logits`` and ``embed`` take a list of texts."""

    def __init__(self, folder: str | Path, *, verify: bool = True, threads: int | None = None,
                 providers: list[str] | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder, verify=verify)
        m = self.manifest
        self.task = m["task"]
        self.labels = [str(x) for x in m.get("labels") or []]
        self.multi_label = bool(m.get("multi_label"))
        self.max_length = int(m.get("max_length") or 512)
        self.pooling = m.get("pooling") or "mean"
        self.normalize = bool(m.get("normalize", True))
        self.pad_id = int(m.get("pad_id") or 0)
        if self.task == "classify" and not self.labels:
            raise BundleError(f"{MANIFEST} in {self.folder}: a classify bundle needs labels")
        if self.pooling not in POOLING_MODES:
            raise BundleError(f"{MANIFEST} in {self.folder}: pooling must be one of "
                              f"{', '.join(POOLING_MODES)}, got {self.pooling!r}")
        # two copies: tokenizers' truncation is state, and keeps the special tokens right
        self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self._truncating = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        self._truncating.no_padding()
        self._truncating.enable_truncation(self.max_length)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    # ----------------------------------------------------------------- tokens

    def tokenize(self, texts: list[str], truncate: bool = True) -> list[list[int]]:
        """Token ids of each text, special tokens included; cut to ``max_length`` when
        ``truncate`` (otherwise left whole: the caller refuses what is too long)."""
        tokenizer = self._truncating if truncate else self.tokenizer
        return [e.ids for e in tokenizer.encode_batch(list(texts))]

    def pad(self, batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``input_ids`` and ``attention_mask`` (int64)."""
        width = max(len(x) for x in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, x in enumerate(batch):
            ids[row, :len(x)] = x
            mask[row, :len(x)] = 1
        return ids, mask

    # ----------------------------------------------------------------- the graph

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The graph's output: logits ``[batch, labels]`` (classify) or token states
        ``[batch, tokens, dim]`` (embed)."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return self.session.run(None, feeds)[0]

    def outputs(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Probabilities ``[batch, labels]`` or embeddings ``[batch, dim]`` of padded ids."""
        out = self.forward(input_ids, attention_mask).astype(np.float32)
        if self.task == "classify":
            return sigmoid(out) if self.multi_label else softmax(out)
        vectors = pool(out, attention_mask, self.pooling)
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
            vectors = vectors / np.clip(norms, 1e-12, None)
        return vectors

    # ----------------------------------------------------------------- texts in

    def logits(self, texts: list[str]) -> np.ndarray:
        self._need("classify", "logits")
        return self.forward(*self.pad(self.tokenize(texts))).astype(np.float32)

    def classify(self, texts: list[str]) -> list[dict]:
        """One ``{label, score, probabilities: {label: p}}`` per text."""
        self._need("classify", "classify")
        probs = self.outputs(*self.pad(self.tokenize(texts)))
        results = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"label": self.labels[best], "score": row[best],
                            "probabilities": dict(zip(self.labels, row))})
        return results

    def embed(self, texts: list[str]) -> np.ndarray:
        self._need("embed", "embed")
        return self.outputs(*self.pad(self.tokenize(texts)))

    def _need(self, task: str, what: str) -> None:
        if self.task != task:
            raise BundleError(f"{what}: this bundle's task is {self.task}, not {task}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an llmos ONNX bundle on texts; prints "
                                     "JSON (classifications, or embeddings).")
    parser.add_argument("bundle", help="the bundle folder (holding manifest.json)")
    parser.add_argument("texts", nargs="+", help="texts to classify or embed")
    parser.add_argument("--logits", action="store_true", help="print raw logits too")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        runner = Runner(args.bundle, threads=args.threads)
    except (BundleError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if runner.task == "classify":
        out: dict = {"task": "classify", "results": runner.classify(args.texts)}
        if args.logits:
            out["logits"] = runner.logits(args.texts).tolist()
    else:
        out = {"task": "embed", "embeddings": runner.embed(args.texts).tolist()}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
