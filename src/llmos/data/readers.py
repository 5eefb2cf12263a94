"""Readers: files, folders and globs become documents, whatever their format or encoding.

Formats (by suffix): .txt/.text/.md, .jsonl/.ndjson, .json, .csv/.tsv, .parquet,
.html/.htm, each optionally compressed as .gz or .zst. Every file is checked whole before
it yields anything: a compressed file is first decompressed into the work folder (a
truncated archive is found there), and a text file's encoding is established over all of
its bytes (the byte-order mark, then strict UTF-8, then charset-normalizer's candidates),
preferring an encoding a user knows when it reads the text as well (``latin-1`` rather
than ``cp1250`` for a Latin-1 file). So a bad file contributes no half-read documents; it
is recorded in the report with its reason, and the rest goes on. A bad record inside a good
file (a line that is not JSON, a row without the text column) is counted in the file's
report.

The readers know nothing about cleaning, filtering or storage.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import glob
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from llmos.data.recipe import Readers
from llmos.data.scratch import Scratch
from llmos.security import paths

TEXT_SUFFIXES = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl",
                 ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
                 ".parquet": "parquet", ".html": "html", ".htm": "html"}
COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_CHUNK = 4 << 20
# Encodings users know, most familiar first: a file that reads as well under one of these as
# under the detector's choice (the same text, or text no messier) is read and reported so.
FAMILIAR_ENCODINGS = ("latin-1", "cp1252", "iso-8859-15")
MESS_SLACK = 0.1
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


class BadFile(Exception):
    """A file that contributes nothing; the message is the reason in the report."""


class Doc:
    """One document on its way through the pipeline."""

    __slots__ = ("text", "source", "label", "is_html", "lang", "extra")

    def __init__(self, text: str, source: str, label: str | None = None,
                 is_html: bool = False, lang: str | None = None, extra: str | None = None):
        self.text = text
        self.source = source
        self.label = label
        self.is_html = is_html
        self.lang = lang
        self.extra = extra  # the recipe's other fields of the record, as a JSON object

    def __reduce__(self):
        return Doc, (self.text, self.source, self.label, self.is_html, self.lang, self.extra)


@dataclass
class FileReport:
    path: str
    format: str | None = None
    compression: str | None = None
    encoding: str | None = None
    bytes: int = 0
    documents: int = 0
    bad_records: int = 0
    bad_record_examples: list[str] = field(default_factory=list)
    error: str | None = None

    def bad_record(self, where: str, why: str) -> None:
        self.bad_records += 1
        if len(self.bad_record_examples) < 5:
            self.bad_record_examples.append(f"{where}: {why}")


def expand_sources(sources: list[str], roots: Sequence[Path] | None = None) -> list[Path]:
    """Files named by ``sources`` (files, folders walked recursively, globs), sorted within
    each source and without repeats. Raises FileNotFoundError naming a source that matches
    nothing.

    With ``roots`` (the folders the caller may read; None: anywhere) every source is held
    to them: its fixed part is checked before anything is listed, a glob is matched only
    below it (never through '..'), and a link met on the way is checked where it leads —
    so what lies outside the roots is never listed, and a refusal
    (:func:`llmos.security.paths.refusal`) is the same whether it exists or not."""
    out: list[Path] = []
    seen: set[Path] = set()
    for src in sources:
        anywhere = roots is None or paths.ANYWHERE in roots
        found = _expand(src) if anywhere else _expand_within(src, roots)
        for f in found:
            f = f.resolve()
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


def _expand(src: str) -> list[Path]:
    p = Path(src).expanduser()
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    if p.is_file():
        return [p]
    if glob.has_magic(src):
        found = sorted(Path(f) for f in glob.glob(os.path.expanduser(src), recursive=True)
                       if os.path.isfile(f))
        if not found:
            raise FileNotFoundError(f"no file matches {src!r}")
        return found
    raise FileNotFoundError(f"no such file or folder: {src}")


def _expand_within(src: str, roots: Sequence[Path]) -> list[Path]:
    base = paths.within(paths.static_part(src), roots, shown=src)
    try:
        pattern = Path(src).expanduser().parts[len(paths.static_part(src).parts):]
    except RuntimeError:  # '~nosuchuser' (within() has refused it already)
        raise paths.refusal(src, roots) from None
    if ".." in pattern:  # a glob may not climb back out of its fixed part
        raise paths.refusal(src, roots)
    if not pattern:
        if base.is_file():
            return [base]
        if not base.is_dir():
            raise FileNotFoundError(f"no such file or folder: {src}")
        entries = _walk(base)
    else:
        entries = sorted(_match(base, list(pattern), roots)) if base.is_dir() else []
    found = []
    for entry in entries:
        real = paths.within(entry, roots) if entry.is_symlink() else entry
        if real.is_file():
            found.append(entry)
    if pattern and not found:
        raise FileNotFoundError(f"no file matches {src!r}")
    return found


def _walk(folder: Path) -> list[Path]:
    """Every entry below ``folder`` (files and links, links to folders not followed)."""
    out = []
    for where, dirs, files in os.walk(folder, followlinks=False):
        out += [Path(where) / n for n in files]
        out += [Path(where) / n for n in dirs if (Path(where) / n).is_symlink()]
    return sorted(out)


def _match(folder: Path, pattern: list[str], roots: Sequence[Path]) -> Iterator[Path]:
    """Entries below ``folder`` matching the glob components ``pattern`` ('**': any depth),
    as glob matches them (a leading '.' only by a pattern that starts with one). A link to
    a folder is followed only when it leads inside the roots, and never by '**'."""
    part, rest = pattern[0], pattern[1:]
    if part == "**":
        if not rest:
            yield from _walk(folder)
            return
        yield from _match(folder, rest, roots)
        for where, dirs, _ in os.walk(folder, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for d in dirs:
                yield from _match(Path(where) / d, rest, roots)
        return
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        if name.startswith(".") and not part.startswith("."):
            continue
        if not fnmatch.fnmatchcase(name, part):
            continue
        entry = folder / name
        if not rest:
            yield entry
        elif entry.is_symlink():
            real = paths.within(entry, roots)
            if real.is_dir():
                yield from _match(real, rest, roots)
        elif entry.is_dir():
            yield from _match(entry, rest, roots)


class FileReader:
    """Reads one file at a time into documents; ``tmp_dir`` holds decompressed copies."""

    def __init__(self, text_field: str, label_field: str | None, options: Readers,
                 tmp_dir: Path, fields: list[str] = (), scratch: Scratch | None = None):
        self.text_field = text_field
        self.label_field = label_field
        self.fields = list(fields)
        self.options = options
        self.tmp_dir = Path(tmp_dir)
        # Decompressed copies go through the scratch files (sealed for sensitive data).
        self.scratch = scratch or Scratch(self.tmp_dir)

    def read(self, path: Path, report: FileReport) -> Iterator[Doc]:
        """Documents of ``path``; raises BadFile before yielding anything if the file is
        unusable."""
        report.bytes = path.stat().st_size
        suffixes = [s.lower() for s in path.suffixes[-2:]]
        compression = COMPRESSED.get(suffixes[-1]) if suffixes else None
        inner = suffixes[-2] if compression and len(suffixes) == 2 else (
            suffixes[-1] if suffixes and not compression else None)
        fmt = TEXT_SUFFIXES.get(inner or "")
        report.format, report.compression = fmt, compression
        if fmt is None:
            raise BadFile(f"unsupported file type {''.join(path.suffixes) or '(no suffix)'!r}")
        if report.bytes == 0:
            raise BadFile("empty file")
        if compression:
            plain = self._decompress(path, compression)
            try:
                yield from self._read_plain(_Source(lambda: self.scratch.open(plain),
                                                    self.scratch.size(plain)),
                                            fmt, str(path), report)
            finally:
                self.scratch.remove(plain)
        else:
            yield from self._read_plain(_Source(lambda: open(path, "rb"), report.bytes),
                                        fmt, str(path), report)

    def _decompress(self, path: Path, compression: str) -> Path:
        out = self.tmp_dir / f"decompressed-{os.getpid()}.tmp"
        try:
            with self.scratch.create(out) as dst:
                if compression == "gzip":
                    with gzip.open(path, "rb") as src:
                        while chunk := src.read(_CHUNK):
                            dst.write(chunk)
                else:
                    with open(path, "rb") as src:
                        _unzstd(src, dst)
        except (EOFError, OSError, zlib.error) as e:
            self.scratch.remove(out)
            raise BadFile(f"truncated or corrupt {compression} archive: {e}") from None
        except BadFile:
            self.scratch.remove(out)
            raise
        except Exception as e:  # zstandard.ZstdError
            self.scratch.remove(out)
            raise BadFile(f"corrupt {compression} archive: {e}") from None
        if self.scratch.size(out) == 0:
            self.scratch.remove(out)
            raise BadFile("empty file (after decompression)")
        return out

    def _read_plain(self, path: _Source, fmt: str, source: str, report: FileReport
                    ) -> Iterator[Doc]:
        if fmt == "parquet":
            yield from self._parquet(path, source, report)
            return
        encoding = detect_encoding(path)
        report.encoding = encoding
        if fmt in ("txt", "html"):
            yield from self._text(path, encoding, fmt, source, report)
        elif fmt == "jsonl":
            with path.text(encoding, newline="") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield from self._record(_json_or_error(line), f"{source}#L{n}", report)
        elif fmt == "json":
            yield from self._json(path, encoding, source, report)
        else:
            yield from self._csv(path, encoding, source, report)

    def _text(self, path: _Source, encoding: str, fmt: str, source: str, report: FileReport
              ) -> Iterator[Doc]:
        mode = "file" if fmt == "html" else self.options.txt
        if mode == "file":
            limit = self.options.max_document_mb << 20
            if path.size > limit:
                raise BadFile(f"larger than one document may be ({self.options.max_document_mb}"
                              " MB); read it by line or paragraph (readers: {txt: line})")
            with path.text(encoding, newline=None) as f:
                yield self._doc(f.read(), source, None, report, is_html=fmt == "html")
            return
        with path.text(encoding, newline=None) as f:
            if mode == "line":
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield self._doc(line.rstrip("\n"), f"{source}#L{n}", None, report)
                return
            block: list[str] = []
            start = 1
            for n, line in enumerate(f, 1):
                if line.strip():
                    if not block:
                        start = n
                    block.append(line)
                elif block:
                    yield self._doc("".join(block).rstrip("\n"), f"{source}#L{start}", None,
                                    report)
                    block = []
            if block:
                yield self._doc("".join(block).rstrip("\n"), f"{source}#L{start}", None, report)

    def _json(self, path: _Source, encoding: str, source: str, report: FileReport
              ) -> Iterator[Doc]:
        if path.size > self.options.max_document_mb << 20:
            raise BadFile(f"a .json file over {self.options.max_document_mb} MB must be JSON "
                          "Lines (.jsonl), which is streamed")
        with path.text(encoding) as f:
            try:
                data = json.load(f)
            except ValueError as e:
                raise BadFile(f"not valid JSON: {e}") from None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise BadFile("a .json file holds a list of records (or of strings)")
        for i, item in enumerate(data):
            yield from self._record(item, f"{source}#{i}", report)

    def _csv(self, path: _Source, encoding: str, source: str, report: FileReport
             ) -> Iterator[Doc]:
        csv.field_size_limit(self.options.max_document_mb << 20)
        with path.text(encoding, newline="") as f:
            sample = f.read(64 << 10)
            f.seek(0)
            delimiter = "\t" if ".tsv" in Path(source).name.lower() else ","
            if "\t" in sample and "," not in sample:
                delimiter = "\t"
            rows = csv.DictReader(f, delimiter=delimiter)
            if not rows.fieldnames or self.text_field not in rows.fieldnames:
                raise BadFile(f"no {self.text_field!r} column (columns: "
                              f"{', '.join(rows.fieldnames or [])})")
            errors_in_a_row = 0
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    break
                except csv.Error as e:  # a malformed row: count it and go on
                    report.bad_record(f"{source}#L{rows.line_num}", f"malformed CSV: {e}")
                    errors_in_a_row += 1
                    if errors_in_a_row > 1000:
                        raise BadFile("not CSV: over 1000 malformed rows in a row") from None
                    continue
                errors_in_a_row = 0
                yield from self._record(row, f"{source}#L{rows.line_num}", report)

    def _parquet(self, path: _Source, source: str, report: FileReport) -> Iterator[Doc]:
        import pyarrow.parquet as pq

        with path.open() as f:
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:
                raise BadFile(f"not a readable Parquet file: {e}") from None
            yield from self._parquet_rows(pf, source, report)

    def _parquet_rows(self, pf, source: str, report: FileReport) -> Iterator[Doc]:
        names = pf.schema_arrow.names
        if self.text_field not in names:
            raise BadFile(f"no {self.text_field!r} column (columns: {', '.join(names)})")
        wanted = [self.text_field, self.label_field, *self.fields]
        columns = list(dict.fromkeys(c for c in wanted if c in names))
        row = 0
        for batch in pf.iter_batches(columns=columns, batch_size=4096):
            cols = batch.to_pydict()
            for i in range(batch.num_rows):
                record = {c: cols[c][i] for c in columns}
                yield from self._record(record, f"{source}#{row}", report)
                row += 1

    def _record(self, record, where: str, report: FileReport) -> Iterator[Doc]:
        if isinstance(record, _BadLine):
            report.bad_record(where, record.reason)
            return
        extra = None
        if isinstance(record, str):
            text, label = record, None
        elif isinstance(record, dict):
            text = _as_text(record.get(self.text_field))
            label = record.get(self.label_field) if self.label_field else None
            if self.fields:
                extra = json.dumps({f: record.get(f) for f in self.fields}, ensure_ascii=False)
        else:
            report.bad_record(where, "not an object")
            return
        if not isinstance(text, str):
            report.bad_record(where, f"no text in field {self.text_field!r}")
            return
        if label is not None and not isinstance(label, str):
            label = json.dumps(label) if isinstance(label, (list, dict)) else str(label)
        yield self._doc(text, where, label, report, extra=extra)

    @staticmethod
    def _doc(text: str, source: str, label: str | None, report: FileReport,
             is_html: bool = False, extra: str | None = None) -> Doc:
        report.documents += 1
        return Doc(text, source, label, is_html, extra=extra)


def _as_text(value):
    """The text of a record's text field: a string as it is; a list of words (NER data) joined
    by spaces; a list of chat messages ({role, content}) joined by lines."""
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return " ".join(value)
        if all(isinstance(v, dict) and isinstance(v.get("content"), str) for v in value):
            return "\n".join(v["content"] for v in value)
    return value


class _BadLine:
    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _json_or_error(line: str):
    try:
        return json.loads(line)
    except ValueError as e:
        return _BadLine(f"not JSON ({e.msg})")


def _unzstd(src, dst) -> None:
    """Decompress every frame of ``src`` into ``dst``; a stream cut short mid-frame is an
    error (zstandard's streaming reader would end quietly)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj, in_frame = dctx.decompressobj(), False
    while chunk := src.read(_CHUNK):
        while chunk:
            dst.write(dobj.decompress(chunk))
            in_frame = True
            if dobj.eof:
                chunk, in_frame = dobj.unused_data, False
                dobj = dctx.decompressobj()
            else:
                chunk = b""
    if in_frame:
        raise BadFile("truncated zstd archive: the last frame is cut short")


class _Source:
    """A file to read: how to open its bytes (a plain file, or a scratch copy that may be
    sealed) and its size."""

    def __init__(self, open_binary, size: int):
        self.open = open_binary
        self.size = size

    def text(self, encoding: str, newline: str | None = None):
        return io.TextIOWrapper(self.open(), encoding=encoding, newline=newline)


def detect_encoding(path: Path | _Source) -> str:
    """The text encoding of the whole file, or BadFile for binary or undecodable bytes."""
    if not isinstance(path, _Source):
        path = _Source(lambda p=path: open(p, "rb"), Path(path).stat().st_size)
    with path.open() as f:
        head = f.read(64 << 10)
    for bom, name in _BOMS:
        if head.startswith(bom):
            if _decodes(path, name):
                return name
            raise BadFile(f"starts with a {name} byte-order mark but does not decode as {name}")
    if b"\x00" in head:
        raise BadFile("binary file (NUL bytes)")
    if _decodes(path, "utf-8"):
        return "utf-8"
    from charset_normalizer import from_bytes

    with path.open() as f:
        sample = f.read(1 << 20)
    matches = from_bytes(sample, cp_isolation=None)
    for match in matches:
        name = codecs.lookup(match.encoding).name
        if _decodes(path, name):
            return _familiar_name(path, sample, name)
    raise BadFile("could not find a text encoding that decodes the whole file (binary?)")


def _familiar_name(path: _Source, sample: bytes, name: str) -> str:
    """``name``, or the first familiar encoding that reads the whole file and reads its head
    as plausibly (charset-normalizer's mess ratio, within MESS_SLACK): short Latin-1 texts
    are often taken for cp1250 or mac_latin2, which turns "niño" into "nińo"."""
    from charset_normalizer.md import mess_ratio

    head = sample[:64 << 10]
    chosen = _decode_head(head, name)
    mess = mess_ratio(chosen, 1.0) if chosen else 1.0
    for familiar in FAMILIAR_ENCODINGS:
        if codecs.lookup(familiar).name == name:
            return familiar
        text = _decode_head(head, familiar)
        if text is not None and mess_ratio(text, 1.0) <= mess + MESS_SLACK and _decodes(
                path, familiar):
            return familiar
    return name


def _decode_head(sample: bytes, encoding: str) -> str | None:
    try:
        return codecs.getincrementaldecoder(encoding)(errors="strict").decode(sample)
    except (UnicodeDecodeError, ValueError):
        return None


def _decodes(path: _Source, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        with path.open() as f:
            while chunk := f.read(_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except (UnicodeDecodeError, ValueError):
        return False
    return True
