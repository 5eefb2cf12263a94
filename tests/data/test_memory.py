"""Bounded memory: at least 2 GB of generated text through an ingest job whose memory
limit is 1.5 GB (the kernel stops a job whose process tree grows past its limit)."""

from __future__ import annotations

import pytest

from data.generate import generate

LIMIT_MB = 1536


@pytest.mark.slow
@pytest.mark.timeout(1800)  # as long as it waits for the job: 2 GB take minutes on 2 cores
def test_two_gigabytes_of_text_within_one_and_a_half_gigabytes(daemon, tmp_path):
    manifest = generate(tmp_path / "big", 2048, seed=1, file_mb=128)
    assert manifest.bytes >= 2 << 30
    recipe = {"steps": ["fix_unicode", "normalize", "strip_control", "collapse_whitespace",
                        {"length": {"min_words": 20}}, "exact_dedup", "near_dedup"]}
    c = daemon.client
    job = c.datasets.ingest("big", [str(tmp_path / "big")], recipe, cpu=2, memory_mb=LIMIT_MB)
    job = daemon.wait_job(job["id"], timeout=1800)
    assert job["state"] == "SUCCEEDED", job["reason"]

    metrics = {m["name"]: m["value"] for m in c.jobs.metrics(job["id"])}
    print(f"peak resident memory: main {metrics['peak_rss_mb_main']:.0f} MB, worker "
          f"{metrics['peak_rss_mb_worker']:.0f} MB")
    # Peak resident memory of the main process plus each of the two workers at their peak:
    # an upper bound of the whole job's resident memory at any moment.
    assert metrics["peak_rss_mb_main"] + 2 * metrics["peak_rss_mb_worker"] < LIMIT_MB, metrics
    version = c.datasets.version("big")
    assert version["stats"]["input"]["documents"] == manifest.documents
    removed = version["stats"]["removed"]
    assert removed["exact_dedup"]["duplicate"] >= len(manifest.exact) * 0.95
    assert job["progress"]["info"]["documents"] == manifest.documents
