"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright): every
page on real data (a RegMix study at two fidelities with a worker training one run, a finished
Aioli trial), every chart drawn with data, a new trial showing up without a reload, and no
JavaScript error. Screenshots go to ``artifacts/screenshots/``."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.browser.data import aioli_trial, regmix_study
from tests.conftest import JOIN_SECRET, ROOT, free_port
from tests.helpers import known_losses, study_body

CHROMIUM = Path(os.environ.get("MIXOPT_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"

# What a chart holds once drawn: its traces' data, and the marks Plotly put in the DOM for them.
CHART_STATS = """(id) => {
  const node = document.getElementById(id);
  if (!node || !node.data) return {drawn: false, placeholder: node ? node.textContent.trim() : null};
  const points = node.data.reduce((n, t) => n + Math.max(
    (t.x && t.x.length) || 0, (t.y && t.y.length) || 0, (t.z && t.z.length) || 0,
    (t.dimensions && t.dimensions[0] && t.dimensions[0].values.length) || 0), 0);
  const marks = node.querySelectorAll(
    "path.point, g.point path, path.js-line, path.js-fill, g.hm image, canvas").length;
  return {drawn: true, traces: node.data.length, points, marks};
}"""


def _needs_browser() -> None:
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (make test installs Debian's chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The real app over real HTTP (uvicorn in a thread) on a SQLite file, with the studies."""
    _needs_browser()
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    tmp = tmp_path_factory.mktemp("dashboard-browser")
    url = f"sqlite:///{tmp / 'mixopt.db'}"
    settings = Settings(database_url=url, sweep_interval_s=0.5, recommend_interval_s=0.0, long_poll_s=0.5,
                        join_secret=JOIN_SECRET, data_dir=tmp / "data")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, migrate=True), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=60) as http:
        data = {"regmix": regmix_study(http, url), "aioli": aioli_trial(http), "http": http, "base": base}
        yield data
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser(live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Page:
    """A page that records JavaScript errors (uncaught exceptions and console errors)."""

    def __init__(self, browser, base: str):
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.base, self.errors = base, []
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)

    def open(self, path: str, charts: list[str]) -> dict[str, dict]:
        self.page.goto(self.base + path)
        # the dot turns on once the page's script has loaded its data
        self.page.wait_for_function("() => document.getElementById('live-dot').classList.contains('on')",
                                    timeout=30_000)
        return self.drawn(charts)

    def drawn(self, charts: list[str]) -> dict[str, dict]:
        """Scroll to each chart (those below the fold are drawn when seen), wait until it is drawn."""
        for c in charts:
            self.page.locator(f"#{c}").scroll_into_view_if_needed()
            self.page.wait_for_function(
                "(id) => { const n = document.getElementById(id); return n.data || n.querySelector('.placeholder'); }",
                arg=c, timeout=30_000)
        self.page.wait_for_timeout(300)  # let Plotly finish its async drawing (parcoords, WebGL)
        return {c: self.page.evaluate(CHART_STATS, c) for c in charts}

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.page.close()
        assert self.errors == [], self.errors


def _assert_drawn(stats: dict[str, dict], min_points: dict[str, int] | None = None) -> None:
    for chart, s in stats.items():
        assert s["drawn"], f"{chart} was not drawn: {s.get('placeholder')!r}"
        assert s["points"] >= (min_points or {}).get(chart, 1), f"{chart} has no data: {s}"
        assert s["marks"] > 0, f"{chart} drew no marks: {s}"


def test_study_page_regmix(live, browser):
    sid = live["regmix"]["id"]
    page = Page(browser, live["base"])
    charts = ["chart-progress", "chart-recommendation", "chart-rec-history", "chart-cost", "chart-mixtures",
              "chart-parcoords", "chart-predictions"]
    stats = page.open(f"/dashboard/studies/{sid}", charts)
    _assert_drawn(stats, {"chart-progress": 48, "chart-predictions": 48})
    p = page.page
    p.select_option("#mix-fidelity", "0")  # the 48 design runs at `small`
    p.wait_for_function("() => document.getElementById('chart-parcoords').data[0].dimensions[0].values.length === 48")
    _assert_drawn(page.drawn(["chart-mixtures", "chart-parcoords"]), {"chart-mixtures": 48 * 5, "chart-parcoords": 48})
    assert p.text_content("#study-name") == "pile-4 regmix" and p.text_content("#study-state") == "running"
    assert "Spearman" in p.text_content("#pred-caption")
    assert p.locator("#trials-table tbody tr").count() == 50  # the first page
    assert p.locator("#aioli-card").is_hidden()
    page.shot("study-regmix")

    # heatmap view, and the table's sort and filter
    p.select_option("#mix-view", "heatmap")
    p.wait_for_function("() => document.getElementById('chart-mixtures').data[0].type === 'heatmap'")
    _assert_drawn({"chart-mixtures": p.evaluate(CHART_STATS, "chart-mixtures")}, {"chart-mixtures": 48})
    big = live["http"].get(f"/api/v1/studies/{sid}/trials", params={"fidelity": "big"}).json()["total"]
    p.fill("#filter-expr", "fidelity=big")
    p.wait_for_function(f"() => document.querySelectorAll('#trials-table tbody tr').length === {big}")
    p.fill("#filter-expr", "")
    p.click("#trials-table th:has-text('objective')")
    first = p.locator("#trials-table tbody tr").first.locator("td").nth(3).text_content()
    best = min(t["objective"] for t in live["http"].get(f"/api/v1/studies/{sid}/trials", params={"limit": 1000})
               .json()["items"] if t["objective"] is not None)
    assert float(first) == pytest.approx(best, rel=1e-3)

    # a new trial appears without a reload
    p.evaluate("() => { window.__noReload = true; }")
    before = p.text_content("#trials-count")
    held = live["regmix"]["client_trial_id"]
    mixture = live["http"].get(f"/api/v1/trials/{held}").json()["mixture"]
    new = live["http"].post(f"/api/v1/studies/{sid}/trials", json={
        "mixture": mixture, "fidelity": "small", "result": {"losses": known_losses(mixture, "small")}})
    assert new.status_code == 201, new.text
    number = new.json()["number"]
    p.click("#trials-table th:has-text('#')")
    p.click("#trials-table th:has-text('#')")  # twice: newest first
    p.wait_for_function(f"() => [...document.querySelectorAll('#trials-table tbody tr td:first-child')]"
                        f".some((td) => td.textContent === '#{number}')", timeout=15_000)
    assert p.evaluate("() => window.__noReload") is True
    assert p.text_content("#trials-count") != before
    page.close()


def test_study_page_aioli(live, browser):
    page = Page(browser, live["base"])
    stats = page.open(f"/dashboard/studies/{live['aioli']['study_id']}",
                      ["chart-aioli-schedule", "chart-aioli-losses", "chart-progress", "chart-recommendation", "chart-cost"])
    _assert_drawn(stats, {"chart-aioli-schedule": 2, "chart-aioli-losses": 2})
    assert page.page.locator("#aioli-card").is_visible()
    assert "no model predictions" in page.page.text_content("#pred-empty")
    page.shot("study-aioli")
    page.close()


def test_trial_pages(live, browser):
    page = Page(browser, live["base"])
    tid = live["regmix"]["worker_trial_id"]
    stats = page.open(f"/dashboard/trials/{tid}", ["chart-trial-mixture", "chart-trial-curve", "chart-trial-losses"])
    _assert_drawn({k: v for k, v in stats.items() if k != "chart-trial-losses"}, {"chart-trial-curve": 3})
    assert "no result yet" in stats["chart-trial-losses"]["placeholder"]  # it is still running
    p = page.page
    assert p.locator("#leases-table tbody tr").count() == 2
    assert "gpu-node-3:0" in p.text_content("#leases-table") and "failed" in p.text_content("#leases-table")
    assert "[train] step 300" in p.text_content("#log-tail")
    page.shot("trial-command")

    charts = ["chart-trial-mixture", "chart-trial-losses", "chart-trial-curve", "chart-trial-schedule",
              "chart-trial-segment-losses"]
    _assert_drawn(page.open(f"/dashboard/trials/{live['aioli']['trial_id']}", charts))
    assert p.locator("#trial-aioli").is_visible()
    page.shot("trial-aioli")
    page.close()


def test_studies_and_workers_pages(live, browser):
    page = Page(browser, live["base"])
    page.open("/dashboard/", [])
    p = page.page
    p.wait_for_function("() => document.querySelectorAll('#studies-table tbody tr').length >= 2")
    assert "pile-4 regmix" in p.text_content("#studies-table") and "pile-4 aioli" in p.text_content("#studies-table")
    page.shot("studies")
    p.click("text=pile-4 aioli")
    p.wait_for_url("**/dashboard/studies/*")

    _assert_drawn(page.open("/dashboard/workers", ["chart-throughput"]))
    assert p.locator("#workers-table tbody tr").count() >= 2
    assert "busy" in p.text_content("#workers-table") and "300 / 800" in p.text_content("#workers-table")
    page.shot("workers")
    page.close()


TICKS = """(sel) => { const n = document.querySelector(sel); return n ? [...n.querySelectorAll('text')].map((t) => t.textContent) : []; }"""
CUT = """() => [...document.querySelectorAll('.stat .s, .stat .v')].filter((n) => n.scrollWidth > n.clientWidth + 1)
  .map((n) => n.textContent)"""


def test_studies_list_is_in_the_first_html(live, browser):
    """Before (or without) its script, the studies page shows the studies and when they were read."""
    page = browser.new_page(viewport={"width": 1400, "height": 900}, java_script_enabled=False)
    page.goto(live["base"] + "/dashboard/")
    assert "pile-4 regmix" in page.text_content("#studies-table") and "pile-4 aioli" in page.text_content("#studies-table")
    assert page.locator("#studies-table tbody tr").count() >= 2
    assert page.locator("#studies-table thead th").count() == 10
    assert page.text_content("#last-updated").endswith("UTC")
    assert page.locator("#studies-empty").is_hidden()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "studies-no-script.png"), full_page=True)
    page.close()


def test_aioli_study_axes_and_header_cards(live, browser):
    """One recommendation made the moment the study finished: its history is drawn (points, over a
    minute of time, not milliseconds), the rank axis of a single trial reads 1 once, no card is cut."""
    page = Page(browser, live["base"])
    stats = page.open(f"/dashboard/studies/{live['aioli']['study_id']}", ["chart-rec-history", "chart-mixtures"])
    _assert_drawn(stats)
    p = page.page
    times = p.evaluate(TICKS, "#chart-rec-history .xaxislayer-above")
    assert times and not any(re.search(r"\d:\d\d\.\d", t) for t in times), times  # no fractions of a second
    ranks = [t for t in p.evaluate(TICKS, "#chart-mixtures .xaxislayer-above") if t.strip()]
    assert ranks == ["1"], ranks
    assert p.evaluate(CUT) == []
    page.shot("study-aioli-axes")
    page.close()


def test_trial_with_only_the_end_of_run_evaluation_draws_its_curve(live, browser):
    http = live["http"]
    sid = http.post("/api/v1/studies", json={**study_body(name="final-eval only", dispatch="ask",
                                                           budget={"max_trials": 1}, parallelism=1),
                                             "start": True}).json()["id"]
    t = http.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]
    losses = known_losses(t["mixture"], t["fidelity"])
    r = http.post(f"/api/v1/trials/{t['id']}/result", json={
        "losses": losses, "lease_id": t["lease_id"],
        "curve": [{"step": 24, "tokens": 98_304, "train_loss": None, "losses": losses}]})
    assert r.status_code == 200, r.text
    page = Page(browser, live["base"])
    stats = page.open(f"/dashboard/trials/{t['id']}", ["chart-trial-curve"])
    _assert_drawn(stats)
    assert stats["chart-trial-curve"]["marks"] >= len(losses), stats  # a visible point per domain
    assert page.page.evaluate(CUT) == []  # e.g. the "created" card's date
    page.shot("trial-final-eval-only")
    page.close()


def test_worker_name_with_markup_is_text_in_charts(live, browser):
    """Attack: a worker registers as ``<a href="https://evil.example/">...</a>``; Plotly reads <a> in
    labels as markup, so the workers chart would show a clickable link. The chart's label helper
    escapes it: real Plotly draws the tag as text, and no link appears."""
    page = Page(browser, live["base"])
    page.open("/dashboard/workers", ["chart-throughput"])
    p = page.page
    name = '<a href="https://evil.example/">update your token</a>'
    found = p.evaluate("""async (name) => {
        const node = document.createElement("div");
        document.body.appendChild(node);
        await Plotly.newPlot(node, [{ type: "bar", orientation: "h", x: [1], y: [MX.plotText(name + " #7")] }]);
        const links = [...node.querySelectorAll("a")].map((a) => a.getAttribute("href") || a.getAttribute("xlink:href"));
        const labels = [...node.querySelectorAll(".ytick text")].map((t) => t.textContent);
        return { links, labels };
    }""", name)
    assert not any("evil.example" in (h or "") for h in found["links"]), found
    assert any("<a href" in label for label in found["labels"]), found
    page.close()
