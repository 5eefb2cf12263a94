"""Sensitive data never touches disk in clear: a sensitive ingest seals its scratch files
(spill, decompressed inputs, shards) as it writes them, with keys that exist only in the
job's memory, and removes them on every exit; a failed or killed one leaves no document in
clear in its job folder. The label values and input paths of a sensitive dataset are sealed
in the database too, and read back in clear through the API."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from live import LiveDaemon

MARKER = "zanzibar-quokka-ledger"  # in every document: found if any document is in clear
LABEL = "label-okapi-vermilion"
FOLDER = "patients-of-dr-narwhal"


def _leaks(folder: Path, *needles: str) -> list[str]:
    """The files under ``folder`` whose bytes hold one of ``needles``."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


def _corpus(folder: Path) -> Path:
    """About 3 MB of JSON lines, compressed: read in several batches, so an ingest stopped
    at its first progress report has spilled documents and holds a decompressed copy."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "records.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(6000):
            f.write(json.dumps({"text": f"record {i} of {MARKER} " + "lorem ipsum " * 40,
                                "label": LABEL}) + "\n")
    return path


KILL_AT_FIRST_PROGRESS = """
import os, signal, sys
from pathlib import Path
from llmos.data.ingest import run
from llmos.data.recipe import parse_recipe

def stop(counters):
    if counters.documents_kept:  # documents spilled, the input still being read
        os.kill(os.getpid(), signal.SIGKILL)

run([sys.argv[1]], parse_recipe({"label_field": "label"}), Path(sys.argv[2]),
    progress=stop, sealed=sys.argv[3] == "sealed")
"""


@pytest.mark.parametrize("sealed", [True, False])
def test_a_killed_ingest_leaves_only_ciphertext_when_sensitive(tmp_path, sealed):
    """SIGKILL leaves no chance to clean up: what is on disk is all there is. Sealed, the
    spill file and the decompressed input are there, and hold no document in clear; the
    same ingest unsealed shows the check would see them."""
    source = _corpus(tmp_path / "in")
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_PROGRESS, str(source),
                           str(work), "sealed" if sealed else "plain"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(p.name for p in work.rglob("*") if p.is_file())
    assert "spill.arrow" in left and any(n.startswith("decompressed-") for n in left), left
    leaks = _leaks(work, MARKER, LABEL)
    if sealed:
        assert leaks == []
    else:
        assert leaks, "the unsealed control run should have left documents in clear"


def test_an_ingest_stopped_by_a_cancel_removes_its_scratch_files(tmp_path):
    """A cancel reaches the program as SystemExit (the runner's SIGTERM handler)."""
    from llmos.data.ingest import run
    from llmos.data.recipe import parse_recipe

    def cancelled(counters):
        if counters.documents_kept:
            raise SystemExit(143)

    work = tmp_path / "work"
    with pytest.raises(SystemExit):
        run([str(_corpus(tmp_path / "in"))], parse_recipe({}), work, progress=cancelled,
            sealed=True)
    assert not work.exists() or [p for p in work.rglob("*") if p.is_file()] == []


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A daemon, the folder its developers may ingest from, and a developer."""
    data = tmp_path_factory.mktemp("data")
    home = tmp_path_factory.mktemp("sensitive") / "home"
    home.mkdir()
    daemon = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": str(data)}).start()
    yield daemon, data, daemon.user("analyst", team="secure")
    daemon.stop()


def test_a_failed_sensitive_ingest_leaves_no_plaintext_in_its_job_folder(live):
    """The ingest fails mid-way (a kept field changes type after its first 1000 values,
    found while shards are written) — its job folder holds no document, and its error
    quotes no value."""
    live, data, dev = live
    folder = data / f"{FOLDER}-failing"
    folder.mkdir()
    with open(folder / "scores.jsonl", "w") as f:
        for i in range(3000):
            score = i if i < 2000 else f"score-{MARKER}"
            f.write(json.dumps({"text": f"document {i} about {MARKER}", "score": score}) + "\n")
    job = dev.datasets.ingest("mixed", [str(folder)], {"fields": ["score"]}, sensitive=True,
                              memory_mb=1024)
    done = live.wait_job(job["id"], timeout=120)
    assert done["state"] == "FAILED"
    assert "field 'score' holds values of different kinds" in done["reason"]
    assert MARKER not in done["reason"]
    job_folder = live.home / "jobs" / str(job["id"])
    assert (job_folder / "stderr.log").exists()
    assert _leaks(job_folder, MARKER) == []
    assert not (job_folder / "ingest").exists()


def _database_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.glob("llmos.db*")))


def test_label_values_and_input_paths_of_a_sensitive_dataset_are_sealed_in_the_database(
        live):
    live, data, dev = live
    folder = data / FOLDER
    folder.mkdir()
    with open(folder / "records.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"text": f"This is note number {i} of the archive kept by the "
                                        f"{MARKER} project, written in plain English words.",
                                "label": LABEL}) + "\n")
    recipe = {"label_field": "label", "steps": [{"language": {"keep": ["en"]}}]}
    job = dev.datasets.ingest("notes", [str(folder)], recipe, sensitive=True, memory_mb=1024)
    assert live.wait_job(job["id"], timeout=120)["state"] == "SUCCEEDED"
    v = dev.datasets.version("notes")  # in clear for those who may read it
    assert v["stats"]["labels"] == {LABEL: 20}
    assert sum(v["stats"]["languages"].values()) == 20
    assert sum(s.get("labels", {}).get(LABEL, 0) for s in v["stats"]["splits"].values()) == 20
    assert v["stats"]["documents"] == 20
    assert v["lineage"]["sources"] == [str(folder)]
    assert v["lineage"]["inputs"][0]["path"] == str(folder / "records.jsonl")
    assert "sealed" not in v["stats"] and "sealed" not in v["lineage"]
    assert [d["versions"][0]["documents"] for d in dev.datasets.list()
            if d["name"] == "notes"] == [20]
    assert live.client.datasets.version("secure/notes")["stats"]["labels"] == {LABEL: 20}
    stored = _database_bytes(live.home)
    assert LABEL.encode() not in stored and FOLDER.encode() not in stored
    # The same data, not sensitive, is in the database in clear: the check above sees it.
    plain = dev.datasets.ingest("plain-notes", [str(folder)], recipe, memory_mb=1024)
    assert live.wait_job(plain["id"], timeout=120)["state"] == "SUCCEEDED"
    stored = _database_bytes(live.home)
    assert LABEL.encode() in stored and FOLDER.encode() in stored
