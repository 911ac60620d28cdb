"""report.html in a real browser: headless Chromium (the system's, driven by Playwright for Python) opens the
page from disk with no server and no network, shows every claim row and every figure (no broken image),
filters the claims table by verdict and sorts it, and takes a screenshot."""
import shutil
from pathlib import Path

import pytest

from lmlab.experiments.base import ArmResult, Experiment
from lmlab.registry import EXPERIMENTS

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).exists()), None)
ARGS = ["--no-sandbox", "--disable-gpu"]


def open_page(p, html: Path, width: int = 1300):
    """A Chromium page showing `html` from disk, with every request other than file:// and data: refused."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": width, "height": 900})
    blocked = []

    def guard(route):
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.goto(html.resolve().as_uri())
    page.wait_for_load_state("load")
    return browser, page, blocked


def screenshot(html: Path, png: Path, width: int = 1300, height: int = 1500) -> Path:
    """The top `height` pixels of the page (used for the README's picture of a report)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page, _ = open_page(p, html, width)
        page.screenshot(path=str(png), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": height})
        browser.close()
    return png


def _register():
    def run(arm, seed, scale, out):
        off = {"base": 0.0, "tech": -0.5, "other": 0.2}[arm]
        return ArmResult({"val_loss": 3.0 + off + 0.05 * seed},
                         {"val_loss": [(s, 4.0 + off + 0.05 * seed - 0.01 * s) for s in (0, 50, 100)],
                          "speedup_vs_batch": [(b, b ** 0.3 + off) for b in (1, 2, 4, 8)]},
                         info={"seed": seed, "examples": [f"{arm} says hello"]})

    names = []
    for name, tech, direction in (("_html_a", "tech", "lower"), ("_html_b", "other", "lower"),
                                  ("_html_c", "tech", "higher")):
        if name not in EXPERIMENTS:
            EXPERIMENTS.register(name, Experiment(
                name=name, paper="Fake paper", claim=f"{tech} beats base", metric="val_loss", run=run,
                arms=["base", "tech", "other"], baseline="base", technique=tech, direction=direction,
                plots=["val_loss", "speedup_vs_batch"]))
        names.append(name)
    return names


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from lmlab.experiments.runner import reproduce

    return reproduce(_register(), "quick", 3, tmp_path_factory.mktemp("rep"), show_progress=False)


def test_report_html_renders_in_chromium(report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium found (/usr/bin/chromium); `.ci/run` installs it with apt-get")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'lmlab[web]')")
    import json

    rows = json.loads((report / "claims.json").read_text())
    n_figs = 1 + sum(len(r["figures"]) for r in rows)              # the forest plot + each experiment's
    with sync_api.sync_playwright() as p:
        browser, page, blocked = open_page(p, report / "report.html")
        names = page.eval_on_selector_all("#claims tbody tr", "rs => rs.map(r => r.cells[0].textContent)")
        assert names == [r["name"] for r in rows]
        imgs = page.eval_on_selector_all("img", "is => is.map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(imgs) == n_figs and n_figs >= 1 + 3 * 3
        assert all(done and width > 0 for done, width, _ in imgs), imgs     # no broken image
        assert blocked == []
        page.select_option("#f-verdict", "not reproduced")                # the filter hides the other rows
        shown = page.eval_on_selector_all("#claims tbody tr:not(.hidden)", "rs => rs.map(r => r.dataset.verdict)")
        assert shown == [r["verdict"] for r in rows if r["verdict"] == "not reproduced"] and 0 < len(shown) < len(rows)
        page.select_option("#f-verdict", "")
        page.click("#claims th:nth-child(1)")                             # sort by name, then reversed
        page.click("#claims th:nth-child(1)")
        names = page.eval_on_selector_all("#claims tbody tr", "rs => rs.map(r => r.cells[0].textContent)")
        assert names == sorted((r["name"] for r in rows), reverse=True)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
