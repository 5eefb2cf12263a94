"""Generated text corpora of any size, for the memory test and bench/data.py.

Documents are English-like (real function words, Zipf-distributed invented content words,
sentences, paragraphs) with some Chinese ones; a share are exact copies or near copies
(a few words changed) of earlier documents. Files are JSON Lines, some gzip-compressed,
each record ``{"id": "<file stem>#L<line>", "text": ...}``; ``manifest`` says which
records are planted duplicates and of what.
"""

from __future__ import annotations

import gzip
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FUNCTION_WORDS = ("the of and to a in that is was he for it with as his on be at by i this "
                  "had not are but from or have an they which one you were her all she there "
                  "would their we him been has when who will more no if out so said what up "
                  "its about into than them can only other new some could time these two may "
                  "then do first any my now such like our over man me even most made after "
                  "also did many before must through back years where much your way well").split()
SYLLABLES = ("ka ri to mel san dor vi len ta ro mi nal ber tin gos pra fe lun cor dis "
             "ven tal mor sil quin har bel ost rin pal").split()


@dataclass
class Manifest:
    files: list[Path] = field(default_factory=list)
    documents: int = 0
    bytes: int = 0
    exact: dict[str, str] = field(default_factory=dict)  # duplicate id -> original id
    near: dict[str, str] = field(default_factory=dict)


def _vocabulary(rng: np.random.Generator) -> list[str]:
    """Every two- and three-syllable word (27,900), in a seeded order."""
    words = [a + b for a in SYLLABLES for b in SYLLABLES]
    words += [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES]
    order = rng.permutation(len(words))
    return FUNCTION_WORDS + [words[i] for i in order]


class _Sampler:
    """``np.searchsorted(cdf, r)`` for uniform ``r`` in [0, 1), the same answers several times
    faster: a table of the answer at each of 2**22 equal bins' edges settles every draw whose
    bin holds no edge of the cdf; only the rest (under 1 %) are searched."""

    BITS = 22

    def __init__(self, cdf: np.ndarray):
        self.cdf = cdf
        edges = np.arange((1 << self.BITS) + 1, dtype=np.float64) / (1 << self.BITS)
        at = np.searchsorted(cdf, edges)
        # bin b holds [b, b + 1) / 2**22: its answer, or -1 where the cdf steps inside it
        self.answer = np.where(at[:-1] == at[1:], at[:-1], -1)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        out = self.answer[(r * (1 << self.BITS)).astype(np.intp)]  # exact: a power of two
        unsettled = out < 0
        out[unsettled] = np.searchsorted(self.cdf, r[unsettled])
        return out


def generate(folder: Path, total_mb: float, seed: int = 0, file_mb: float = 64,
             exact_share: float = 0.05, near_share: float = 0.05,
             chinese_share: float = 0.03, gzip_every: int = 4) -> Manifest:
    """Write about ``total_mb`` of JSON Lines under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    v = len(vocab)
    # Zipf-like word frequencies; function words on top.
    weights = 1.0 / np.arange(1, v + 1) ** 1.05
    cdf = np.cumsum(weights / weights.sum())
    sample = _Sampler(cdf)
    dotted = [w + "." for w in vocab]
    table = np.array(vocab + dotted, dtype=object)  # indexed by whole arrays at once
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    manifest = Manifest()
    recent: list[tuple[str, str]] = []  # (id, text) of earlier documents to copy from
    target = int(total_mb * (1 << 20))
    file_limit = int(file_mb * (1 << 20))
    writer, written = ThreadPoolExecutor(max_workers=1), []
    k = 0
    while manifest.bytes < target:
        name = f"part-{k:04d}.jsonl" + (".gz" if gzip_every and k % gzip_every == 1 else "")
        path = folder / name
        stem = name.split(".")[0]
        lines, size = [], 0
        while size < file_limit and manifest.bytes + size < target:
            doc_id = f"{stem}#L{len(lines) + 1}"
            roll = rng.random()
            if recent and roll < exact_share:
                orig_id, text = recent[int(rng.integers(len(recent)))]
                manifest.exact[doc_id] = orig_id
            elif recent and roll < exact_share + near_share:
                orig_id, orig = recent[int(rng.integers(len(recent)))]
                words = orig.split(" ")
                for pos in rng.integers(0, len(words), max(1, len(words) // 100)):
                    words[pos] = vocab[int(rng.integers(v))]
                text = " ".join(words)
                manifest.near[doc_id] = orig_id
            elif roll < exact_share + near_share + chinese_share:
                chars = rng.choice(cjk, int(rng.integers(200, 1200)))
                text = "".join(chars[:-1]) + "。"
            else:
                n = int(rng.integers(150, 1200))
                idx = np.minimum(sample(rng.random(n)), v - 1)
                idx[rng.random(n) < 0.07] += v  # sentence ends
                idx[-1] = idx[-1] % v + v
                text = " ".join(table[idx].tolist())
                text = text[0].upper() + text[1:]
            if len(recent) < 2000:
                recent.append((doc_id, text))
            elif rng.random() < 0.05:
                recent[int(rng.integers(len(recent)))] = (doc_id, text)
            # json.dumps(..., ensure_ascii=False) to the byte: no character here needs escaping
            line = f'{{"id": "{doc_id}", "text": "{text}"}}'
            lines.append(line)
            size += (len(line) if line.isascii() else len(line.encode())) + 1
        if written:
            written[-1].result()  # one file waits to be written at most: memory stays flat
        written.append(writer.submit(_write, path, lines))
        manifest.files.append(path)
        manifest.documents += len(lines)
        manifest.bytes += size
        k += 1
    writer.shutdown()
    for done in written:
        done.result()  # raises what a write raised
    return manifest


def _write(path: Path, lines: list[str]) -> None:
    """One file; run in a thread beside the next file's making (zlib and the write release
    the GIL, so the compression of a ``.gz`` file uses a second core)."""
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
