"""Throttling failed authentications cannot lock users out: a valid token is served even
while its address is throttled for others' failures (a proxy, every job on 127.0.0.1),
successes never count as failures, and yet many bad tokens from one address — one token
retried, or a different guess each time — are still slowed down with 429 and
Retry-After."""

from __future__ import annotations

import threading

import httpx

from live import LiveDaemon, program
from llmos.security.throttle import FailureThrottle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_count_per_address_and_token_prefix_and_per_address():
    clock = Clock()
    t = FailureThrottle(free=2, max_delay_s=8, forget_s=60, clock=clock, address_free=5)
    for _ in range(2):
        t.failed("10.0.0.1", "llmos_aaaaaa")
    assert t.wait_s("10.0.0.1", "llmos_aaaaaa") == 1.0  # that prefix must wait
    assert t.wait_s("10.0.0.1", "llmos_bbbbbb") == 0.0  # another client of the address not
    assert t.wait_s("10.0.0.2", "llmos_aaaaaa") == 0.0  # nor another address
    for guess in ("c", "d", "e"):  # five failures from the address in all: a guard for it
        t.failed("10.0.0.1", f"llmos_{guess * 6}")
    assert t.wait_s("10.0.0.1", "llmos_zzzzzz") == 1.0
    clock.now += 1.0
    assert t.wait_s("10.0.0.1", "llmos_zzzzzz") == 0.0
    for _ in range(10):  # the delay doubles, up to the maximum
        t.failed("10.0.0.1", "llmos_aaaaaa")
    assert t.wait_s("10.0.0.1", "llmos_aaaaaa") == 8.0
    clock.now += 60.0  # forgotten a while after the last failure
    assert t.wait_s("10.0.0.1", "llmos_aaaaaa") == 0.0


def test_a_flood_of_bad_tokens_cannot_keep_valid_tokens_or_jobs_out(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_AUTH_FREE_FAILURES": "3"}).start()
    try:
        with httpx.Client(base_url=live.url, timeout=60) as anon:
            def attempt(token: str) -> httpx.Response:
                return anon.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})

            # One bad token retried: 401 with its reason three times, then 429 — and the
            # successes in between do not count as failures.
            same = [attempt("llmos_retried-bad-token") for _ in range(2)]
            assert all(attempt(live.admin_token).status_code == 200 for _ in range(20))
            same += [attempt("llmos_retried-bad-token") for _ in range(2)]
            assert [r.status_code for r in same] == [401, 401, 401, 429]
            assert same[0].json()["error"]["message"] == "invalid token"
            assert int(same[3].headers["retry-after"]) >= 1
            assert "too many failed authentications" in same[3].json()["error"]["message"]
            # Another client of the same address with its own (revoked) token still hears
            # why it fails, instead of being blamed for the first one's failures.
            revoked = live.client.tokens.create("revoked")
            live.client.tokens.revoke(revoked["id"])
            assert "was revoked" in attempt(revoked["token"]).json()["error"]["message"]
            # A different guess every time: the address as a whole is slowed down too.
            guesses = [attempt(f"llmos_{i:04d}guess").status_code for i in range(40)]
            assert guesses.count(429) >= 5 and guesses[-1] == 429

            # Meanwhile valid tokens from the same address are served at once: one never
            # used before, one made by a user created just now, the administrator's.
            fresh = live.client.tokens.create("fresh")["token"]
            newcomer = live.user("newcomer").token
            for token in (fresh, newcomer, live.admin_token):
                assert attempt(token).status_code == 200

            # A job on this host calls the API with its own new token throughout a flood.
            stop = threading.Event()
            flooded: list[int] = []

            def flood():
                with httpx.Client(base_url=live.url, timeout=60) as bad:
                    while not stop.is_set():
                        flooded.append(bad.get("/v1/jobs", headers={
                            "Authorization": "Bearer llmos_flooding"}).status_code)
                        stop.wait(0.01)

            flooder = threading.Thread(target=flood)
            flooder.start()
            try:
                # "/" exists everywhere: the report program's gate is open from the start.
                job = live.client.jobs.submit(program("report"), {"gate": "/"})
                done = live.wait_job(job["id"], timeout=120)
            finally:
                stop.set()
                flooder.join()
            assert done["state"] == "SUCCEEDED", done
            made = live.client.artifacts.list(job_id=job["id"])
            assert sorted(a["name"] for a in made) == ["input.txt", "output.txt"]
            assert flooded and set(flooded) <= {401, 429} and 429 in flooded
    finally:
        live.stop()
        live.client.close()
