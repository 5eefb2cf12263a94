"""Ingest: files -> documents -> recipe steps -> split Parquet shards.

Two passes keep memory bounded whatever the input size:

1. **Stream.** The main process reads files into batches of about 1 MB of text; workers
   (processes, one per allotted core) run the cleaning and filter steps and compute each
   document's fingerprints. The main process appends the surviving documents to a spill
   file (Arrow IPC) in the work folder and keeps only the fingerprints in memory.
2. **Resolve and write.** Deduplication decides which documents stay, splits are assigned,
   and the spill file is read back batch by batch: annotation steps run on the documents
   kept, which are written into ``{split}-{n:05d}.parquet`` shards.

Every file the ingest writes (spill, decompressed inputs, shards) is a scratch file
(``scratch``): for a sensitive dataset (``sealed``) each is sealed as it is written with a
key held only in this process's memory, so no document is ever on disk in clear, and the
work folder is removed when the ingest fails, whatever the exception (``SystemExit`` from a
cancel's SIGTERM included). Sources are held to ``read_roots`` when given
(``readers.expand_sources``).

The order of documents is the order of the files and of the records within them, whatever
the number of workers, so a recipe run twice on the same input writes the same bytes.
This module knows nothing of jobs or the store: ``program`` connects it to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from llmos.data import clean, splits
from llmos.data import recipe as r
from llmos.data.dedup import Signer
from llmos.data.readers import BadFile, Doc, FileReader, FileReport, expand_sources
from llmos.data.scratch import Scratch
from llmos.data.steps import StepParams

BATCH_BYTES = 1 << 20
CLUSTERS_IN_REPORT = 100
MEMBERS_IN_REPORT = 20
EMPTY = "empty"  # documents with no text left (read so, or cleaned so), in the report


@dataclass
class Shard:
    path: Path
    split: str
    rows: int
    text_bytes: int
    sha256: str = ""


@dataclass
class Result:
    shards: list[Shard]
    schema: dict[str, str]
    stats: dict
    report: dict
    inputs: list[dict]
    content_hash: str
    scratch: Scratch  # where the shards are (sealed or not); cleared once uploaded


@dataclass
class Counters:
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    documents_read: int = 0
    documents_kept: int = 0
    tally: clean.Tally = field(default_factory=clean.Tally)


ProgressFn = Callable[[Counters], None]


def step_labels(steps: list[StepParams]) -> list[str]:
    """Names for the report: a step's name, numbered when the recipe uses it twice."""
    names = [s.step for s in steps]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names, 1)]


# -- workers ---------------------------------------------------------------------------------


class _Worker:
    """Per-process state: the document steps and the fingerprint signer. Documents with
    no text (as read, or once a cleaning step has emptied them) are dropped and counted as
    ``empty`` before any filter sees them, whatever the recipe."""

    def __init__(self, recipe: r.Recipe):
        self.steps = []
        for cfg, label in zip(recipe.steps, step_labels(recipe.steps)):
            if cfg.phase == "document":
                step = cfg.build()
                step.name = label
                self.steps.append(step)
        self.signer = Signer(recipe.step("near_dedup"))

    def process(self, docs: list[Doc]) -> dict:
        tally = clean.Tally()
        n_in = len(docs)
        docs = _drop_empty(docs, tally)
        for step in self.steps:
            docs = step.apply(docs, tally)
            if not step.removes:
                docs = _drop_empty(docs, tally)
        texts = [d.text for d in docs]
        fp = self.signer.fingerprints(texts)
        return {"n_in": n_in, "text": texts, "source": [d.source for d in docs],
                "label": [d.label for d in docs], "lang": [d.lang for d in docs],
                "extra": [d.extra for d in docs],
                "content": fp.content, "bands": fp.bands, "tally": tally.counts}


def _drop_empty(docs: list[Doc], tally: clean.Tally) -> list[Doc]:
    kept = [d for d in docs if d.text and not d.text.isspace()]
    tally.add(EMPTY, "no_text", len(docs) - len(kept))
    return kept


_WORKER: _Worker | None = None


def _init_worker(recipe_dict: dict) -> None:
    global _WORKER
    _WORKER = _Worker(r.parse_recipe(recipe_dict))


def _work(docs: list[Doc]) -> dict:
    assert _WORKER is not None
    return _WORKER.process(docs)


def _ordered_map(fn_inline: Callable, batches: Iterator, workers: int, recipe: r.Recipe
                 ) -> Iterator[dict]:
    """Results of the batches in order; at most 2 x workers batches in flight."""
    if workers <= 1:
        for batch in batches:
            yield fn_inline(batch)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(recipe.to_dict(),)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(_work, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# -- the pipeline ------------------------------------------------------------------------------


def run(sources: list[str], recipe: r.Recipe, workdir: Path, workers: int = 1,
        progress: ProgressFn | None = None, read_roots: list[Path] | None = None,
        sealed: bool = False) -> Result:
    """Ingest ``sources`` with ``recipe``; shards and spill files go under ``workdir``
    (sealed as written when ``sealed``). Only files inside ``read_roots`` are read (None:
    any). On failure nothing is left in ``workdir``."""
    scratch = Scratch(workdir, sealed)
    try:
        return _run(sources, recipe, Path(workdir), workers, progress, read_roots, scratch)
    except BaseException:
        scratch.clear()
        raise


def _run(sources: list[str], recipe: r.Recipe, workdir: Path, workers: int,
         progress: ProgressFn | None, read_roots: list[Path] | None, scratch: Scratch
         ) -> Result:
    import pyarrow as pa

    workdir.mkdir(parents=True, exist_ok=True)
    annotators = [s.build() for s in recipe.phase("annotate")]
    files = expand_sources(sources, read_roots)
    counters = Counters(files_total=len(files), bytes_total=sum(f.stat().st_size for f in files))
    reports = [FileReport(path=str(f)) for f in files]
    reader = FileReader(recipe.text_field, recipe.label_field, recipe.readers, workdir / "tmp",
                        recipe.fields, scratch)
    worker = _Worker(recipe) if workers <= 1 else None

    spill_path = workdir / "spill.arrow"
    spill_schema = pa.schema([("text", pa.string()), ("source", pa.string()),
                              ("label", pa.string()), ("lang", pa.string()),
                              ("extra", pa.string())])
    contents, bands = [], []
    last_report = 0.0
    with _sink(scratch, spill_path) as sink, pa.ipc.new_file(sink, spill_schema) as spill:
        batches = _batches(files, reports, reader, counters)
        for out in _ordered_map(lambda b: worker.process(b), batches, workers, recipe):
            counters.tally.merge(out["tally"])
            counters.documents_kept += len(out["text"])
            if out["text"]:
                spill.write_batch(pa.record_batch(
                    [pa.array(out[c], pa.string())
                     for c in ("text", "source", "label", "lang", "extra")],
                    schema=spill_schema))
                contents.append(out["content"])
                if out["bands"] is not None:
                    bands.append(out["bands"])
            if progress and time.monotonic() - last_report > 0.5:
                last_report = time.monotonic()
                progress(counters)
    if progress:
        progress(counters)

    n = counters.documents_kept
    content = np.concatenate(contents) if contents else np.zeros((0, 2), np.uint64)
    band_keys = np.concatenate(bands) if bands else None
    del contents, bands
    alive = np.ones(n, bool)
    dedup_report = []
    for cfg, label in zip(recipe.steps, step_labels(recipe.steps)):
        if cfg.phase != "dedup":
            continue
        clusters = cfg.build().clusters(content, band_keys, alive)
        removed = clusters.removed & alive
        alive &= ~removed
        counters.tally.add(label, "duplicate", int(removed.sum()))
        dedup_report.append((label, clusters))

    shards, schema, stats = _write(scratch, spill_path, workdir, recipe, content, alive,
                                   annotators)
    report = _report(reports, counters, recipe, dedup_report, scratch, spill_path)
    scratch.remove(spill_path)
    stats["input"] = {"files": len(files), "bytes": counters.bytes_total,
                      "bad_files": sum(1 for f in reports if f.error),
                      "bad_records": sum(f.bad_records for f in reports),
                      "documents": counters.documents_read}
    # What each step did: removals (filters, dedup) by reason, and changes (cleaning).
    cleaning = {label for cfg, label in zip(recipe.steps, step_labels(recipe.steps))
                if cfg.phase == "document" and not cfg.step_class.removes}
    stats["removed"] = {k: v for k, v in counters.tally.counts.items() if k not in cleaning}
    stats["changed"] = {k: v for k, v in counters.tally.counts.items() if k in cleaning}
    inputs = [{"path": f.path, "sha256": _sha256(Path(f.path)), "bytes": f.bytes,
               "format": f.format, "encoding": f.encoding, "error": f.error}
              for f in reports]
    digest = hashlib.sha256()
    for s in shards:
        digest.update(f"{s.split}\t{s.path.name}\t{s.sha256}\n".encode())
    return Result(shards, schema, stats, report, inputs, digest.hexdigest(), scratch)


def _sink(scratch: Scratch, path: Path):
    """An Arrow output stream onto a new scratch file."""
    import pyarrow as pa

    if not scratch.sealed:
        return pa.OSFile(str(path), "wb")
    return pa.PythonFile(scratch.create(path), mode="w")


def _source(scratch: Scratch, path: Path):
    """An Arrow random-access input onto a scratch file."""
    import pyarrow as pa

    if not scratch.sealed:
        return pa.OSFile(str(path), "rb")
    return pa.PythonFile(scratch.open(path), mode="r")


def _detail(e: Exception, sealed: bool) -> str:
    """Arrow's words for a type error quote the value: not for sensitive data, whose
    errors end up in the job's log and record."""
    return "" if sealed else f" ({e})"


def _field_types(spill, names: list[str], sealed: bool = False) -> dict:
    """The Arrow type of each kept field, from its values in the spill file (a field never
    seen is a string column)."""
    import pyarrow as pa

    samples: dict[str, list] = {n: [] for n in names}
    for i in range(spill.num_record_batches):
        if all(len(v) >= 1000 for v in samples.values()):
            break
        for raw in spill.get_batch(i).column("extra").to_pylist():
            record = json.loads(raw) if raw else {}
            for n in names:
                if record.get(n) is not None and len(samples[n]) < 1000:
                    samples[n].append(record[n])
    types = {}
    for n, values in samples.items():
        try:
            types[n] = pa.array(values).type if values else pa.string()
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise FieldTypeError(f"field {n!r} holds values of different kinds"
                                 f"{_detail(e, sealed)}") from None
    return types


def _add_fields(cols: dict, extras: list, types: dict, sealed: bool = False) -> None:
    import pyarrow as pa

    records = [json.loads(raw) if raw else {} for raw in extras]
    for n, t in types.items():
        values = [r.get(n) for r in records]
        try:
            pa.array(values, type=t)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise FieldTypeError(f"field {n!r} holds values of different kinds: "
                                 f"expected {t}{_detail(e, sealed)}") from None
        cols[n] = values


class FieldTypeError(ValueError):
    """A kept field whose values do not share one type (the ingest fails, naming it)."""


def _batches(files: list[Path], reports: list[FileReport], reader: FileReader,
             counters: Counters) -> Iterator[list[Doc]]:
    batch: list[Doc] = []
    size = 0
    for path, report in zip(files, reports):
        try:
            for doc in reader.read(path, report):
                counters.documents_read += 1
                batch.append(doc)
                size += len(doc.text)
                if size >= BATCH_BYTES:
                    yield batch
                    batch, size = [], 0
        except BadFile as e:
            report.error = str(e)
        counters.files_done += 1
        counters.bytes_done += report.bytes
    if batch:
        yield batch


def _write(scratch: Scratch, spill_path: Path, workdir: Path, recipe: r.Recipe,
           content: np.ndarray, alive: np.ndarray, annotators: list
           ) -> tuple[list[Shard], dict, dict]:
    """Read the spill file back, annotate the documents kept and write the shards."""
    import pyarrow as pa

    labels_present = recipe.label_field is not None
    langs_present = recipe.step("language") is not None
    with _source(scratch, spill_path) as src:
        spill = pa.ipc.open_file(src)
        label_col = _label_codes(spill) if labels_present else None
        idx = np.flatnonzero(alive)
        codes = np.zeros(len(alive), np.int8)
        if len(idx):
            codes[idx] = splits.assign(
                content[idx], label_col[idx] if label_col is not None else
                np.zeros(len(idx), np.int64), recipe.split.fractions(), recipe.split.seed)
        fields = [("id", pa.string()), ("text", pa.string()), ("source", pa.string())]
        if labels_present:
            fields.append(("label", pa.string()))
        if langs_present:
            fields.append(("lang", pa.string()))
        for a in annotators:
            for name, kind in a.columns.items():
                fields.append((name, pa.int32() if kind == "int32" else pa.list_(pa.string())))
        kept_types = _field_types(spill, recipe.fields, scratch.sealed)
        counted_tokens = recipe.step("tokenize") is not None
        fields += list(kept_types.items())
        schema = pa.schema(fields)
        writer = _ShardWriter(scratch, workdir / "shards", schema, recipe.shard_mb << 20)
        stats = {"splits": {}}
        start = 0
        for i in range(spill.num_record_batches):
            batch = spill.get_batch(i)
            rows = np.arange(start, start + batch.num_rows)
            start += batch.num_rows
            keep = alive[rows]
            if not keep.any():
                continue
            kept = batch.filter(pa.array(keep))
            cols = {"id": [content[j].tobytes().hex() for j in rows[keep]],
                    "text": kept.column("text").to_pylist(),
                    "source": kept.column("source").to_pylist()}
            if labels_present:
                cols["label"] = kept.column("label").to_pylist()
            if langs_present:
                cols["lang"] = kept.column("lang").to_pylist()
            if kept_types:
                _add_fields(cols, kept.column("extra").to_pylist(), kept_types, scratch.sealed)
            for a in annotators:
                a.apply(cols["text"], cols)
            split_codes = codes[rows[keep]]
            for code, split in enumerate(splits.SPLITS):
                sel = np.flatnonzero(split_codes == code)
                if len(sel):
                    part = {k: [v[j] for j in sel] for k, v in cols.items()}
                    writer.add(split, pa.table(part, schema=schema))
                    _count(stats["splits"], split, part, counted_tokens)
        shards = writer.close()
    schema_out = {f.name: str(f.type) for f in schema}
    totals = {"documents": 0, "text_bytes": 0}
    for s in stats["splits"].values():
        for k in ("documents", "text_bytes", "tokens"):
            if k in s:
                totals[k] = totals.get(k, 0) + s[k]
    stats.update(totals)
    # Counts per label and per detected language, over all splits (each split has its own).
    for key, present in (("labels", labels_present), ("languages", langs_present)):
        if present:
            total: dict[str, int] = {}
            for s in stats["splits"].values():
                for k, v in s.get(key, {}).items():
                    total[k] = total.get(k, 0) + v
            stats[key] = dict(sorted(total.items()))
    return shards, schema_out, stats


def _label_codes(spill) -> np.ndarray:
    import pyarrow as pa

    parts = []
    for i in range(spill.num_record_batches):
        col = spill.get_batch(i).column("label")
        parts.append(col)
    if not parts:
        return np.zeros(0, np.int64)
    encoded = pa.chunked_array(parts, pa.string()).combine_chunks().dictionary_encode()
    return np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)


def _count(split_stats: dict, split: str, part: dict, counted_tokens: bool) -> None:
    s = split_stats.setdefault(split, {"documents": 0, "text_bytes": 0})
    s["documents"] += len(part["text"])
    s["text_bytes"] += sum(len(t.encode("utf-8", "surrogatepass")) for t in part["text"])
    if counted_tokens:  # the tokenize annotation's counts (not a kept "tokens" field)
        s["tokens"] = s.get("tokens", 0) + int(sum(part["tokens"]))
    if "label" in part:
        labels = s.setdefault("labels", {})
        for label in part["label"]:
            key = "(none)" if label is None else label
            labels[key] = labels.get(key, 0) + 1
    if "lang" in part:
        langs = s.setdefault("languages", {})
        for lang in part["lang"]:
            langs[lang] = langs.get(lang, 0) + 1


class _ShardWriter:
    """Per-split Parquet writers that start a new shard past ``limit`` bytes of text."""

    ROW_GROUP_BYTES = 32 << 20

    def __init__(self, scratch: Scratch, folder: Path, schema, limit: int):
        self.scratch = scratch
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.limit = limit
        self.open: dict[str, tuple] = {}
        self.pending: dict[str, list] = {}
        self.done: list[Shard] = []
        self.count: dict[str, int] = {}

    def add(self, split: str, table) -> None:
        self.pending.setdefault(split, []).append(table)
        if sum(t.nbytes for t in self.pending[split]) >= self.ROW_GROUP_BYTES:
            self._flush(split)

    def _flush(self, split: str) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        tables = self.pending.pop(split, [])
        if not tables:
            return
        table = pa.concat_tables(tables)
        if split not in self.open:
            n = self.count.get(split, 0)
            self.count[split] = n + 1
            path = self.folder / f"{split}-{n:05d}.parquet"
            sink = _sink(self.scratch, path)
            writer = pq.ParquetWriter(sink, self.schema, compression="zstd",
                                      write_statistics=False, store_schema=True)
            self.open[split] = (writer, sink, Shard(path, split, 0, 0))
        writer, _, shard = self.open[split]
        writer.write_table(table, row_group_size=max(1, table.num_rows))
        shard.rows += table.num_rows
        shard.text_bytes += pc.sum(pc.binary_length(table.column("text"))).as_py() or 0
        if shard.text_bytes >= self.limit:
            self._close(split)

    def _close(self, split: str) -> None:
        writer, sink, shard = self.open.pop(split)
        writer.close()
        sink.close()
        shard.sha256 = self.scratch.sha256(shard.path)
        self.done.append(shard)

    def close(self) -> list[Shard]:
        for split in list(self.pending):
            self._flush(split)
        for split in list(self.open):
            self._close(split)
        order = {s: i for i, s in enumerate(splits.SPLITS)}
        return sorted(self.done, key=lambda s: (order[s.split], s.path.name))


def _report(reports: list[FileReport], counters: Counters, recipe: r.Recipe,
            dedup: list, scratch: Scratch, spill_path: Path) -> dict:
    """What happened to every file and every document removed, with duplicate clusters
    (up to CLUSTERS_IN_REPORT per step; documents named by their source)."""
    found = {label: clusters.groups(CLUSTERS_IN_REPORT) for label, clusters in dedup}
    wanted = {i for _, groups in found.values() for k, m in groups
              for i in [k, *m[:MEMBERS_IN_REPORT]]}
    source = _sources(scratch, spill_path, wanted)
    out_dedup = {}
    for label, clusters in dedup:
        total, groups = found[label]
        out_dedup[label] = {
            "removed": int(clusters.removed.sum()), "clusters": total,
            "examples": [{"kept": source[k], "removed": [source[i] for i in m[:MEMBERS_IN_REPORT]],
                          "removed_total": len(m)} for k, m in groups]}
    return {"files": [asdict(f) for f in reports], "steps": counters.tally.counts,
            "dedup": out_dedup, "documents_read": counters.documents_read,
            "recipe": recipe.to_dict()}


def _sources(scratch: Scratch, spill_path: Path, wanted: set[int]) -> dict[int, str]:
    """The source column of the spilled documents at indices ``wanted``."""
    import pyarrow as pa

    out: dict[int, str] = {}
    if not wanted:
        return out
    targets = np.array(sorted(wanted))
    with _source(scratch, spill_path) as src:
        spill = pa.ipc.open_file(src)
        start = 0
        for i in range(spill.num_record_batches):
            batch = spill.get_batch(i)
            end = start + batch.num_rows
            inside = targets[(targets >= start) & (targets < end)]
            if len(inside):
                col = batch.column("source")
                for j in inside:
                    out[int(j)] = col[int(j) - start].as_py()
            start = end
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(4 << 20):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
