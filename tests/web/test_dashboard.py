"""The web dashboard as a user sees it: Debian's headless Chromium (the system `chromium`,
driven by Playwright; Playwright's own browser download is never used) against one live
daemon for the whole module.

The world: team alpha (developer ada) has a dataset ingested by a real ingest job (labels
and detected languages), a training-like job that reports a loss per step, a model with
two versions whose lineage names that dataset, and a job whose name is HTML. Team beta has
a viewer, bea, who must see nothing of alpha's on any page. Screenshots go to each test's
own folder (tmp_path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from live import LiveDaemon
from playwright.sync_api import Page, expect, sync_playwright

from llmos.sdk import Client

TESTS = Path(__file__).resolve().parents[1]
PROGRAMS = Path(__file__).resolve().parent / "web_programs.py"
XSS = "<img src=x onerror=alert(1)>"
# What only team alpha's members may know: none of it may reach bea's pages.
SECRETS = ("alpha-loss-run", "alpha-corpus", "alpha-clf", "joyful", "gloomy", XSS, "ada",
           "train_loss", "final_loss")
TEXTS = {"en": ["The weather is lovely today and we walk to the park together.",
                "The train was late again and everybody on the platform was angry.",
                "Our neighbours planted apple trees along the quiet country road."],
         "fr": ["Le temps est magnifique aujourd'hui et nous allons au parc ensemble.",
                "Où est la bibliothèque? Près de la gare, à côté du marché."]}


@dataclass
class Lab:
    live: LiveDaemon
    tokens: dict[str, str]
    loss_job: int
    xss_job: int


def _register(live: LiveDaemon, token: str, name: str, lineage: dict, metrics: dict,
              job: int) -> None:
    """A model version made of one small file, registered as a training job registers it."""
    data = json.dumps({"model_type": "bert", "name": name}).encode()
    with live.http(token) as http:
        art = http.post("/v1/artifacts", params={"kind": "file", "name": "config.json"},
                        content=data)
        assert art.status_code == 201, art.text
        art = art.json()
        r = http.post(f"/v1/registry/models/{name}/versions", json={
            "files": [{"path": "config.json", "artifact_id": art["id"]}],
            "info": {"architecture": "BertForSequenceClassification", "model_type": "bert",
                     "task": "sequence_classification", "parameters": 4_400_000,
                     "dtypes": [], "size_bytes": len(data), "weight_files": [],
                     "tokenizer_files": [], "vocab_size": None, "chat_template": False,
                     "context_length": 512, "files": [{"path": "config.json",
                                                      "size": len(data),
                                                      "sha256": art["sha256"]}]},
            "lineage": lineage, "metrics": metrics, "job_id": job})
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    (root / "home").mkdir()
    data = root / "data"
    data.mkdir()
    live = LiveDaemon(root / "home",
                      env={"LLMOS_INGEST_ROOTS": f"{TESTS}:{data}"}).start()
    ada = live.user("ada", team="alpha", role="developer")
    bea = live.user("bea", team="beta", role="viewer")
    records = [{"text": t, "label": "joyful" if i % 2 == 0 else "gloomy"}
               for lang in ("en", "fr") for i, t in enumerate(TEXTS[lang])]
    (data / "reviews.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    ingest = ada.datasets.ingest("alpha-corpus", [data / "reviews.jsonl"], {
        "label_field": "label", "steps": [{"language": {"keep": ["en", "fr"]}}],
        "split": {"train": 0.6, "test": 0.4, "seed": 1}}, memory_mb=1024)
    # half a core each: the three run side by side on the daemon's two
    loss = ada.jobs.submit(f"{PROGRAMS}:loss_curve", {"steps": 25}, name="alpha-loss-run",
                           cpu=0.5)
    xss = ada.jobs.submit("echo", {"message": "hi"}, name=XSS, cpu=0.5)
    for job in (ingest, loss, xss):
        done = live.wait_job(job["id"], timeout=120)
        assert done["state"] == "SUCCEEDED", (done["name"], done["reason"],
                                              live.client.jobs.logs(job["id"])[-3000:])
    dataset = {"name": "alpha-corpus", "version": 1}
    for accuracy in (0.81, 0.93):
        _register(live, ada.token, "alpha-clf", {"dataset": dataset, "method": "full",
                                                 "job": loss["id"]},
                  {"eval:alpha-corpus:1:test": {"accuracy": accuracy}, "train_loss": 0.12},
                  loss["id"])
    yield Lab(live, {"admin": live.admin_token, "ada": ada.token, "bea": bea.token},
              loss["id"], xss["id"])
    live.stop()
    live.client.close()


@pytest.fixture(scope="module")
def browser():
    binary = shutil.which("chromium")
    assert binary, "the dashboard tests need Debian's chromium (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=binary, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.dialogs = []  # any alert() would be an injected script running

    def dialog(d):
        if d.type == "confirm":  # the dashboard's own "Cancel job N?": the user agrees
            return d.accept()
        pg.dialogs.append(d.message)
        return d.dismiss()

    pg.on("dialog", dialog)
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()
    assert not pg.errors, f"the page's scripts failed: {pg.errors}"


def sign_in(page: Page, lab: Lab, who: str) -> None:
    page.goto(lab.live.url + "/")
    page.fill("#token", lab.tokens[who])
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#who")).to_contain_text("admin" if who == "admin" else who)


def visit(page: Page, lab: Lab, route: str) -> str:
    """Go to a dashboard route and wait until it has shown its data; the page's text."""
    target = f"{lab.live.url}/#{route}"
    page.evaluate("() => { delete document.getElementById('main').dataset.ready; }")
    if page.url == target:  # the same route: no hashchange, so load the page again
        page.reload()
    else:
        page.goto(target)
    page.wait_for_selector("#main[data-ready]")
    return page.inner_text("body")


def test_pages_are_served_without_a_token_with_strict_headers_and_no_way_out(lab):
    with httpx.Client(base_url=lab.live.url) as anon:
        index = anon.get("/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        csp = index.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert index.headers["x-content-type-options"] == "nosniff"
        assert index.headers["x-frame-options"] == "DENY"
        script = anon.get("/assets/js/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert anon.get("/assets/vendor/uPlot.iife.min.js").status_code == 200
        assert anon.get("/", headers={"If-None-Match": index.headers["etag"]}).status_code == 304
        for sneaky in ("/assets/../__init__.py", "/assets/%2e%2e/%2e%2e/api/web.py",
                       "/assets/js/../../__init__.py", "/assets/.hidden", "/assets/"):
            r = anon.get(sneaky)  # the gate (a path the client resolved) or a 404
            assert r.status_code in (401, 404) and "__future__" not in r.text, sneaky
        # the data is still behind the token, and a write to a page path is no way in
        assert anon.get("/v1/jobs").status_code == 401
        assert anon.post("/assets/app.css").status_code == 401


def test_sign_in_keeps_the_token_out_of_the_url_and_sign_out_forgets_it(page, lab, tmp_path):
    page.goto(lab.live.url + "/")
    page.fill("#token", "llmos_" + "A" * 43)
    page.click("#signin-form button[type=submit]")
    expect(page.locator(".signin-msg")).to_contain_text("not valid")
    sign_in(page, lab, "ada")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".nav a[href='#/audit']")).to_be_hidden()  # ada is no administrator
    assert lab.tokens["ada"] not in page.url
    assert page.evaluate("sessionStorage.getItem('llmos.token')") == lab.tokens["ada"]
    page.screenshot(path=tmp_path / "overview.png", full_page=True)
    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('llmos.token')") is None
    assert not page.errors, page.errors


def test_a_job_submitted_from_the_cli_appears_and_finishes_on_the_dashboard(page, lab,
                                                                            tmp_path):
    sign_in(page, lab, "ada")
    visit(page, lab, "/jobs")
    cli = subprocess.run([sys.executable, "-m", "llmos.cli.main", "job", "submit",
                          f"{PROGRAMS}:pause", "-p", '{"seconds": 1}', "--name",
                          "cli-watch-job", "-q"], env=lab.live.cli_env(lab.tokens["ada"]),
                         capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode == 0, cli.stderr
    job_id = int(cli.stdout)
    row = page.locator("tr", has=page.locator(f"a[href='#/jobs/{job_id}']"))
    expect(row.first).to_be_visible(timeout=15_000)  # the list polls: no reload
    expect(row.first).to_contain_text("cli-watch-job")
    expect(row.first.locator(".badge")).to_have_text("SUCCEEDED", timeout=30_000)
    page.screenshot(path=tmp_path / "jobs.png", full_page=True)
    row.first.locator(f"a[href='#/jobs/{job_id}']").first.click()
    expect(page.locator("h1")).to_contain_text(f"Job {job_id}")
    expect(page.locator("#job-logs")).to_contain_text("done")
    history = page.locator("section", has=page.locator("h2", has_text="State history"))
    for state in ("PENDING", "RUNNING", "SUCCEEDED"):
        expect(history).to_contain_text(state)
    expect(page.locator("#cancel-job")).to_have_count(0)  # nothing left to cancel


def test_a_training_job_shows_its_loss_curve(page, lab, tmp_path):
    sign_in(page, lab, "ada")
    visit(page, lab, f"/jobs/{lab.loss_job}")
    chart = page.locator("figure[data-chart='loss']")
    expect(chart).to_be_visible()
    expect(chart).to_have_attribute("data-points", "25")
    expect(chart.locator("canvas")).to_have_count(1)
    assert chart.locator("canvas").bounding_box()["width"] > 200
    expect(page.locator("figure[data-chart='accuracy']")).to_have_attribute("data-points", "25")
    # the loss comes first, and its legend names the series
    assert page.locator("figure.chart").first.get_attribute("data-chart") == "loss"
    expect(page.locator("#job-logs")).to_contain_text("step 24 loss")
    chart.screenshot(path=tmp_path / "loss.png")
    page.screenshot(path=tmp_path / "job.png", full_page=True)


def test_a_models_lineage_links_to_its_dataset_and_two_versions_compare(page, lab, tmp_path):
    sign_in(page, lab, "ada")
    visit(page, lab, "/models/alpha%2Falpha-clf")
    expect(page.locator("h2", has_text="Version 2")).to_be_visible()
    expect(page.locator("section", has=page.locator("h2", has_text="Metrics"))
           ).to_contain_text("0.93")
    dataset = page.locator("svg.lineage a", has=page.locator("g[data-kind='dataset']"))
    expect(dataset).to_have_count(1)
    expect(dataset).to_contain_text("alpha/alpha-corpus:1")
    page.screenshot(path=tmp_path / "model.png", full_page=True)
    dataset.click()
    expect(page).to_have_url(f"{lab.live.url}/#/datasets/alpha%2Falpha-corpus/v/1")
    expect(page.locator("h1")).to_have_text("Dataset alpha/alpha-corpus")
    labels = page.locator("section", has=page.locator("h2", has_text="Per label"))
    expect(labels).to_contain_text("joyful")
    expect(labels).to_contain_text("gloomy")
    expect(page.locator("section", has=page.locator("h2", has_text="Per language"))
           ).to_contain_text("fr")
    expect(page.locator("section", has=page.locator("h2", has_text="Sample rows"))
           ).to_contain_text("apple trees")
    # the dataset's own lineage shows the model trained on it, as a link back
    expect(page.locator("svg.lineage g[data-kind='model']").first).to_be_visible()
    page.screenshot(path=tmp_path / "dataset.png", full_page=True)

    visit(page, lab, "/models/alpha%2Falpha-clf/compare/1/2")
    side = page.locator("section", has=page.locator("h2", has_text="Side by side"))
    row = side.locator("tr", has_text="accuracy")
    expect(row).to_contain_text("0.81")
    expect(row).to_contain_text("0.93")
    expect(row).to_contain_text("differs")


def test_a_running_job_is_cancelled_from_its_page(page, lab):
    with Client(lab.live.url, token=lab.tokens["ada"]) as ada:
        job = ada.jobs.submit("sleep", {"seconds": 120}, name="cancel-me", cpu=0.5)
    sign_in(page, lab, "ada")
    visit(page, lab, f"/jobs/{job['id']}")
    title = page.locator(".title-row")
    expect(title.locator(".badge")).to_have_text("RUNNING", timeout=30_000)
    page.click("#cancel-job")
    expect(title.locator(".badge")).to_have_text("CANCELLED", timeout=30_000)
    expect(page.locator("#cancel-job")).to_have_count(0)


def test_a_job_name_made_of_html_is_shown_as_text(page, lab):
    sign_in(page, lab, "ada")
    visit(page, lab, "/jobs")
    expect(page.get_by_text(XSS, exact=True).first).to_be_visible()
    visit(page, lab, f"/jobs/{lab.xss_job}")
    expect(page.locator("h1")).to_contain_text(XSS)
    assert page.locator("img").count() == 0
    assert page.dialogs == [] and not page.errors, (page.dialogs, page.errors)


def test_a_route_id_that_is_not_a_number_is_not_found_and_reaches_no_other_path(page, lab):
    """`#/jobs/..%2Fpipelines%2Fruns%2F3` must not become a request (or a Cancel) outside
    /v1/jobs/: the router answers "not found"; a link to `//host` is never drawn."""
    sign_in(page, lab, "ada")
    asked: list[str] = []
    page.on("request", lambda r: asked.append(f"{r.method} {r.url}"))
    text = visit(page, lab, "/jobs/..%2Fpipelines%2Fruns%2F3")
    assert "Not found" in text and page.locator("#cancel-job").count() == 0
    assert not any("pipelines" in u or u.startswith("POST") for u in asked), asked
    hrefs = page.evaluate("""async () => {
        const { h } = await import('/assets/js/dom.js');
        return ['//evil.example/x', '/\\\\evil.example', 'https://evil.example', '/v1/x',
                '#/jobs/1'].map((v) => h('a', { href: v }).getAttribute('href'));
    }""")
    assert hrefs == ["#/", "#/", "#/", "/v1/x", "#/jobs/1"], hrefs


def test_a_viewer_of_another_team_sees_nothing_of_alpha_on_any_page(page, lab, tmp_path):
    sign_in(page, lab, "bea")
    expect(page.locator(".nav a[href='#/alerts']")).to_be_hidden()
    routes = ["/", "/jobs", f"/jobs/{lab.loss_job}", f"/jobs/{lab.xss_job}", "/datasets",
              "/datasets/alpha%2Falpha-corpus", "/datasets/alpha%2Falpha-corpus/v/1",
              "/models", "/models/alpha%2Falpha-clf/v/1",
              "/models/alpha%2Falpha-clf/compare/1/2", "/deployments", "/alerts", "/audit"]
    for i, route in enumerate(routes):
        text = visit(page, lab, route)
        # a name bea typed may come back in "not found"; nothing bea could not know may
        leaked = [s for s in SECRETS if s in text.replace("alpha%2F", "").replace(
            "alpha/alpha-corpus", "").replace("alpha/alpha-clf", "")]
        assert not leaked, (route, leaked, text[:2000])
        page.screenshot(path=tmp_path / f"bea-{i}.png", full_page=True)
    assert "not found" in visit(page, lab, f"/jobs/{lab.loss_job}")


def test_the_overview_fits_a_phone(browser, lab, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True)
    try:
        page = context.new_page()
        sign_in(page, lab, "admin")
        visit(page, lab, "/")
        expect(page.locator("article.node")).to_have_count(1)
        assert page.evaluate("document.documentElement.scrollWidth") <= 391
        expect(page.locator("#nav")).to_be_hidden()  # folded behind the menu button
        page.click("#menu-toggle")
        expect(page.locator("#nav a[href='#/audit']")).to_be_visible()  # admin pages
        page.screenshot(path=tmp_path / "phone.png", full_page=True)
    finally:
        context.close()


def test_an_administrator_reads_the_audit_log_and_the_alerts(page, lab, tmp_path):
    sign_in(page, lab, "admin")
    expect(page.locator(".nav a[href='#/audit']")).to_be_visible()
    visit(page, lab, "/audit?actor=ada")
    rows = page.locator("table tbody tr")
    expect(rows.first).to_be_visible()
    expect(page.locator("table")).to_contain_text("POST /v1/jobs")
    assert all(a == "ada" for a in page.locator("table tbody tr td:nth-child(3)")
               .all_inner_texts())
    page.click("text=Verify the chain")
    expect(page.locator(".msg.info")).to_contain_text("Intact")
    page.screenshot(path=tmp_path / "audit.png", full_page=True)
    text = visit(page, lab, "/alerts")
    assert "Firing now" in text and "Rules in force" in text
    page.screenshot(path=tmp_path / "alerts.png", full_page=True)


def test_the_deployment_charts_read_the_prometheus_text_llmos_serves(page, lab):
    """The deployment page charts rates and latency quantiles from /metrics: its parser
    reads the daemon's real exposition, and its quantile is Prometheus' interpolation."""
    sign_in(page, lab, "admin")
    assert "not found" in visit(page, lab, "/deployments/nowhere")
    got = page.evaluate("""async () => {
        const m = await import('/assets/js/pages/deployments.js');
        const text = await (await fetch('/metrics', {headers: {Authorization:
            'Bearer ' + sessionStorage.getItem('llmos.token')}})).text();
        const samples = m.parseMetrics(text);
        const jobs = samples.filter((s) => s.name === 'llmos_jobs_finished_total');
        const buckets = new Map([[0.1, 10], [0.5, 30], [1, 40], [Infinity, 40]]);
        return {jobs: jobs.map((s) => [s.labels.team, s.labels.outcome, s.value]),
                p50: m.quantile(0.5, buckets), p95: m.quantile(0.95, buckets),
                none: m.quantile(0.5, new Map())};
    }""")
    finished = {(team, outcome): value for team, outcome, value in got["jobs"]}
    assert finished.get(("alpha", "succeeded"), 0) >= 3, got["jobs"]  # the world's three
    assert abs(got["p50"] - 0.3) < 1e-9 and abs(got["p95"] - 0.9) < 1e-9
    assert got["none"] is None
