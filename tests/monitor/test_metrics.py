"""``/metrics`` after a known sequence of real jobs on one live daemon: every family the
monitor exports is there with its type and labels, the counts match what happened, and a
member of another team sees none of the team's series (only nodes and GPUs, which are
everyone's)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from live import LiveDaemon, program

# family -> (type, labels of its samples; histograms add "le" to their buckets)
FAMILIES = {
    "llmos_jobs": ("gauge", {"team", "state"}),
    "llmos_jobs_finished": ("counter", {"team", "outcome"}),
    "llmos_job_queue_wait_seconds": ("histogram", {"team"}),
    "llmos_job_run_seconds": ("histogram", {"team", "outcome"}),
    "llmos_scheduler_pass_seconds": ("histogram", set()),
    "llmos_scheduler_preemptions": ("counter", {"team"}),
    "llmos_node_cpu_cores": ("gauge", {"node"}),
    "llmos_node_cpu_allocated_cores": ("gauge", {"node"}),
    "llmos_node_cpu_used_cores": ("gauge", {"node"}),
    "llmos_node_memory_bytes": ("gauge", {"node"}),
    "llmos_node_memory_allocated_bytes": ("gauge", {"node"}),
    "llmos_node_memory_used_bytes": ("gauge", {"node"}),
    "llmos_node_gpus": ("gauge", {"node"}),
    "llmos_node_gpus_allocated": ("gauge", {"node"}),
    "llmos_gpu_utilization_ratio": ("gauge", {"node", "gpu"}),
    "llmos_gpu_memory_used_bytes": ("gauge", {"node", "gpu"}),
    "llmos_gpu_memory_bytes": ("gauge", {"node", "gpu"}),
    "llmos_team_cpu_used_cores": ("gauge", {"team"}),
    "llmos_team_memory_used_bytes": ("gauge", {"team"}),
    "llmos_artifact_store_bytes": ("gauge", {"team"}),
    "llmos_artifacts": ("gauge", {"team"}),
    "llmos_sampler_cpu_seconds": ("counter", set()),
}
ARTIFACT = b"the bytes team alpha stored" * 100


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    """Team alpha runs two jobs that succeed, one that fails and one cancelled while it
    runs, and stores one artifact; team beta exists and runs nothing."""
    home = tmp_path_factory.mktemp("metrics") / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_SAMPLE_INTERVAL_S": "0.5"}).start()
    try:
        alpha = live.user("ann", team="alpha")
        beta = live.user("bob", team="beta")
        ids = [alpha.jobs.submit("noop")["id"] for _ in range(2)]
        ids.append(alpha.jobs.submit(program("fail"))["id"])
        long = alpha.jobs.submit(program("sleep_long"), {"seconds": 60})["id"]
        live.wait_job(long, states=("RUNNING",))
        alpha.jobs.cancel(long)
        live.wait_all([*ids, long])
        alpha.artifacts.put(ARTIFACT, name="notes.txt")
        yield live, alpha, beta
    finally:
        live.stop()
        live.client.close()


def scrape(live: LiveDaemon, token: str | None = None) -> dict:
    with live.http(token) as http:
        r = http.get("/metrics")
    assert r.status_code == 200, r.text
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(family, **labels) -> float:
    found = [s.value for s in family.samples
             if s.name == family.name + ("_total" if family.type == "counter" else "")
             and s.labels == labels]
    assert len(found) == 1, (family.name, labels, family.samples)
    return found[0]


def hist_count(family, **labels) -> float:
    return next(s.value for s in family.samples
                if s.name == family.name + "_count" and s.labels == labels)


def test_every_family_is_exported_with_its_type_and_labels(seq):
    live, _, _ = seq
    families = scrape(live)
    for name, (kind, labels) in FAMILIES.items():
        assert name in families, f"{name} missing from /metrics"
        family = families[name]
        assert family.type == kind, (name, family.type)
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            extra = {"le"} if s.name.endswith("_bucket") else set()
            assert set(s.labels) == labels | extra, (s.name, s.labels)
    # this machine's node is measured and accounted (no GPU here: those families are empty
    # on a CPU machine, and filled from NVML on a GPU one)
    node = next(iter(families["llmos_node_cpu_cores"].samples)).labels["node"]
    assert value(families["llmos_node_cpu_cores"], node=node) == 2
    assert value(families["llmos_node_cpu_allocated_cores"], node=node) == 0
    assert 0 < value(families["llmos_node_memory_used_bytes"], node=node)
    assert value(families["llmos_node_cpu_used_cores"], node=node) >= 0
    assert value(families["llmos_sampler_cpu_seconds"]) > 0


def test_the_counts_match_the_jobs_that_ran(seq):
    live, _, _ = seq
    f = scrape(live)
    finished = f["llmos_jobs_finished"]
    assert value(finished, team="alpha", outcome="succeeded") == 2
    assert value(finished, team="alpha", outcome="failed") == 1
    assert value(finished, team="alpha", outcome="cancelled") == 1
    runs = f["llmos_job_run_seconds"]
    assert hist_count(runs, team="alpha", outcome="succeeded") == 2
    assert hist_count(runs, team="alpha", outcome="failed") == 1
    assert hist_count(runs, team="alpha", outcome="cancelled") == 1
    assert hist_count(f["llmos_job_queue_wait_seconds"], team="alpha") == 4
    assert hist_count(f["llmos_scheduler_pass_seconds"]) >= 1
    assert not [s for s in f["llmos_jobs"].samples if s.labels["team"] == "alpha"]  # all ended
    assert value(f["llmos_artifacts"], team="alpha") == 1
    assert value(f["llmos_artifact_store_bytes"], team="alpha") == len(ARTIFACT)


def test_another_team_sees_no_series_of_the_team_but_sees_the_nodes(seq):
    live, alpha, beta = seq
    seen_by_beta = scrape(live, beta.token)
    labelled = [(s.name, s.labels) for f in seen_by_beta.values() for s in f.samples
                if "team" in s.labels]
    assert not [x for x in labelled if x[1]["team"] != "beta"], labelled
    assert seen_by_beta["llmos_node_cpu_cores"].samples  # nodes: every user's
    assert not seen_by_beta["llmos_scheduler_pass_seconds"].samples  # no team: admins only
    assert not seen_by_beta["llmos_sampler_cpu_seconds"].samples
    seen_by_alpha = scrape(live, alpha.token)
    assert value(seen_by_alpha["llmos_jobs_finished"], team="alpha", outcome="succeeded") == 2
