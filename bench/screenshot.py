"""The README's picture of the dashboard (docs/dashboard.png), taken from a real daemon.

A fresh daemon in a temporary folder gets a little work — a finished job that reported a
loss curve, two running jobs and one that waits for cores — and, once the sampler has
measured the node for a few rounds, Debian's headless Chromium (the system `chromium`,
driven by Playwright) signs in with the administrator's token and photographs the
overview.

    .venv/bin/python bench/screenshot.py [--out docs/dashboard.png] [--wait 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from live import LiveDaemon  # (found through the path to tests/ above)

PROGRAMS = ROOT / "tests" / "web" / "web_programs.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--wait", type=float, default=20.0,
                        help="seconds of sampling before the picture (the node chart)")
    args = parser.parse_args()
    binary = shutil.which("chromium")
    if not binary:
        print("needs Debian's chromium: apt-get install chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        live = LiveDaemon(home, env={"LLMOS_SAMPLE_INTERVAL_S": "2"}).start()
        try:
            c = live.client
            done = c.jobs.submit(f"{PROGRAMS}:loss_curve", {"steps": 40}, name="train-demo")
            live.wait_job(done["id"])
            running = [c.jobs.submit("sleep", {"seconds": 300}, name=name, cpu=1)
                       for name in ("tokenize-corpus", "eval-sweep")]
            c.jobs.submit("sleep", {"seconds": 300}, name="finetune-large", cpu=2,
                          priority="low")
            for job in running:
                live.wait_job(job["id"], states=("RUNNING",))
            time.sleep(args.wait)  # the sampler's rounds: what the node chart shows
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=binary, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(live.url + "/")
                page.fill("#token", live.admin_token)
                page.click("#signin-form button[type=submit]")
                page.wait_for_selector("#main[data-ready]")
                page.wait_for_selector("figure.chart[data-points]:not([data-points='0'])",
                                       timeout=30_000)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
            print(f"wrote {args.out}")
        finally:
            live.stop()
            live.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
