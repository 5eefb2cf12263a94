"""Data benchmark: llmos ingest vs HuggingFace datatrove on the same generated corpus.

    .venv/bin/pip install -e '.[bench]'        # datatrove and spaCy (datatrove's tokenizer)
    .venv/bin/python bench/data.py [--mb 512] [--workers 2] [--dir /tmp/llmos-bench-data]

The corpus (tests/data/generate.py): English-like and Chinese documents in JSON Lines,
a quarter of the files gzip-compressed, with planted exact copies (5%) and near copies
(5%: one word in a hundred changed). Both systems run the same work with the same number
of worker processes:

    read JSON Lines -> repair unicode (ftfy) -> Gopher repetition and quality filters
    -> exact dedup -> MinHash near dedup (5-gram shingles, 14 bands x 8 rows) -> Parquet

llmos runs it as one ingest job through a live daemon (the figure includes storing the
shards and registering the version); datatrove as its usual chain of local pipelines
(filter -> exact signature/find/filter -> minhash signature/buckets/cluster/filter).
Printed: MB/s of input text for each, the ratio, and duplicate recall (planted copies
removed while their original was kept). Then llmos stage by stage (ingest only, + clean,
+ filters, + exact, + near), run in-process. Never fails on timing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is itself "data"; let tests/data (the corpus generator) win that name.
sys.path[0] = str(ROOT / "tests")

from data.generate import Manifest, generate  # noqa: E402
from live import LiveDaemon  # noqa: E402

CLEAN = ["fix_unicode", "normalize", "strip_control", "collapse_whitespace"]
FILTERS = ["gopher_repetition", "gopher_quality"]
NEAR = {"near_dedup": {"num_perm": 112, "bands": 14, "rows": 8, "ngram": 5}}


def recipe(*steps) -> dict:
    return {"steps": list(steps)}


def doc_id(source: str) -> str:
    """'/x/part-0003.jsonl.gz#L12' -> 'part-0003#L12' (the generator's id)."""
    path, _, line = source.rpartition("#")
    return f"{Path(path).name.split('.')[0]}#{line}"


def recall(manifest: Manifest, kept: set[str]) -> dict[str, float]:
    out = {}
    for kind, planted in (("exact", manifest.exact), ("near", manifest.near)):
        eligible = [d for d, orig in planted.items() if orig in kept]
        removed = sum(1 for d in eligible if d not in kept)
        out[kind] = removed / len(eligible) if eligible else float("nan")
    return out


# -- llmos --------------------------------------------------------------------------------


def run_llmos_job(corpus: Path, home: Path, workers: int, mb: float) -> tuple[float, set[str]]:
    import pyarrow.parquet as pq

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    daemon = LiveDaemon(home, cpus=workers).start()
    try:
        c = daemon.client
        start = time.perf_counter()
        job = c.datasets.ingest("bench", [str(corpus)],
                                recipe(*CLEAN, *FILTERS, "exact_dedup", NEAR),
                                cpu=workers, memory_mb=8192)
        job = c.jobs.wait(job["id"], timeout=7200)
        wall = time.perf_counter() - start
        if job["state"] != "SUCCEEDED":
            raise SystemExit(f"llmos ingest {job['state']}: {job['reason']}")
        version = c.datasets.version("bench")
        kept: set[str] = set()
        for shard in version["shards"]:
            blob = home / "shard.parquet"
            c.artifacts.download(shard["artifact_id"], blob)
            kept.update(doc_id(s) for s in pq.read_table(blob, columns=["source"])
                        .column(0).to_pylist())
            blob.unlink()
        print(f"  llmos ingest job         {wall:7.1f} s  {mb / wall:6.1f} MB/s  "
              f"({version['stats']['documents']} documents kept)")
        return wall, kept
    finally:
        daemon.stop()


def llmos_stages(corpus: Path, work: Path, workers: int, mb: float) -> None:
    from llmos.data.ingest import run
    from llmos.data.recipe import parse_recipe

    ladder = [("ingest only (read, write shards)", recipe()),
              ("+ clean", recipe(*CLEAN)),
              ("+ Gopher filters", recipe(*CLEAN, *FILTERS)),
              ("+ exact dedup", recipe(*CLEAN, *FILTERS, "exact_dedup")),
              ("+ near dedup", recipe(*CLEAN, *FILTERS, "exact_dedup", NEAR))]
    for label, raw in ladder:
        shutil.rmtree(work, ignore_errors=True)
        start = time.perf_counter()
        run([str(corpus)], parse_recipe(raw), work, workers=workers)
        took = time.perf_counter() - start
        print(f"  llmos {label:<32} {took:7.1f} s  {mb / took:6.1f} MB/s")
    shutil.rmtree(work, ignore_errors=True)


# -- datatrove ------------------------------------------------------------------------------


def text_of(doc) -> bytes:
    return doc.text.encode("utf-8")


def run_datatrove(corpus: Path, work: Path, workers: int, mb: float, tokenizer: str
                  ) -> tuple[float, set[str]]:
    """datatrove's chain; ``tokenizer`` 'spacy' is its default word tokenizer for English,
    'whitespace' its own fast fallback (WhitespaceTokenizer)."""
    import pyarrow.parquet as pq
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (ExactDedupConfig, ExactDedupFilter,
                                          ExactDedupSignature, ExactFindDedups)
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets,
                                                  MinhashDedupCluster, MinhashDedupFilter,
                                                  MinhashDedupSignature)
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import FTFYFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

    from datatrove.utils.word_tokenizers import WhitespaceTokenizer

    shutil.rmtree(work, ignore_errors=True)
    lang = "en" if tokenizer == "spacy" else WhitespaceTokenizer()
    tasks = max(workers, len(list(corpus.iterdir())))
    exact_cfg = ExactDedupConfig(content_getter=text_of)
    mh_cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)

    def reader(folder: Path):
        return JsonlReader(str(folder), glob_pattern="*.jsonl*")

    stages = [
        ("clean + filter", [reader(corpus), FTFYFormatter(), GopherRepetitionFilter(language=lang),
                            GopherQualityFilter(language=lang),
                            JsonlWriter(str(work / "filtered"), compression=None)], tasks),
        ("exact: signatures", [reader(work / "filtered"),
                               ExactDedupSignature(str(work / "exact_sigs"), exact_cfg)], tasks),
        ("exact: find", [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"),
                                         exact_cfg)], 1),
        ("exact: filter", [reader(work / "filtered"),
                           ExactDedupFilter(str(work / "exact_dups"), exact_cfg),
                           JsonlWriter(str(work / "exact"), compression=None)], tasks),
        ("minhash: signatures", [reader(work / "exact"),
                                 MinhashDedupSignature(str(work / "mh_sigs"), mh_cfg,
                                                       language=lang)], tasks),
        ("minhash: buckets", [MinhashDedupBuckets(str(work / "mh_sigs"),
                                                  str(work / "mh_buckets"), config=mh_cfg)],
         mh_cfg.num_buckets),
        ("minhash: cluster", [MinhashDedupCluster(str(work / "mh_buckets"),
                                                  str(work / "mh_remove"), config=mh_cfg)], 1),
        ("minhash: filter", [reader(work / "exact"), MinhashDedupFilter(str(work / "mh_remove")),
                             ParquetWriter(str(work / "final"))], tasks),
    ]
    total = 0.0
    for label, pipeline, n in stages:
        start = time.perf_counter()
        LocalPipelineExecutor(pipeline, tasks=n, workers=min(workers, n),
                              logging_dir=str(work / "logs" / label.replace(" ", "_").replace(
                                  ":", "")), skip_completed=False).run()
        took = time.perf_counter() - start
        total += took
        print(f"    datatrove ({tokenizer}) {label:<22} {took:7.1f} s")
    kept: set[str] = set()
    for f in sorted((work / "final").glob("*.parquet")):
        kept.update(pq.read_table(f, columns=["id"]).column(0).to_pylist())
    print(f"  datatrove ({tokenizer}) pipeline {total:7.1f} s  {mb / total:6.1f} MB/s  "
          f"({len(kept)} documents kept)")
    return total, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=512, help="corpus size in MB (default 512)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes for both")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llmos-bench-data"))
    ap.add_argument("--skip-stages", action="store_true", help="skip the llmos stage ladder")
    ap.add_argument("--datatrove", nargs="*", default=["whitespace", "spacy"],
                    choices=["whitespace", "spacy"],
                    help="datatrove word tokenizers to run (default: both)")
    args = ap.parse_args()

    corpus = args.dir / "corpus"
    shutil.rmtree(args.dir, ignore_errors=True)
    start = time.perf_counter()
    manifest = generate(corpus, args.mb)
    mb = manifest.bytes / (1 << 20)
    print(f"corpus: {mb:.0f} MB of JSON Lines, {manifest.documents} documents in "
          f"{len(manifest.files)} files, {len(manifest.exact)} exact and {len(manifest.near)} "
          f"near copies planted (generated in {time.perf_counter() - start:.0f} s); "
          f"{args.workers} workers each\n")

    llmos_s, llmos_kept = run_llmos_job(corpus, args.dir / "home", args.workers, mb)
    r_llmos = recall(manifest, llmos_kept)
    print(f"  llmos duplicate recall: exact {r_llmos['exact']:.3f}, near {r_llmos['near']:.3f}")
    for tokenizer in args.datatrove:
        dt_s, dt_kept = run_datatrove(corpus, args.dir / "datatrove", args.workers, mb,
                                      tokenizer)
        r_dt = recall(manifest, dt_kept)
        print(f"  datatrove ({tokenizer}) duplicate recall: exact {r_dt['exact']:.3f}, "
              f"near {r_dt['near']:.3f}; documents kept {len(dt_kept)} "
              f"({len(llmos_kept & dt_kept)} also kept by llmos)")
        print(f"  throughput ratio llmos / datatrove ({tokenizer}): {dt_s / llmos_s:.2f}x "
              f"(target >= 1.0)\n")
    if not args.skip_stages:
        llmos_stages(corpus, args.dir / "stages", args.workers, mb)
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
