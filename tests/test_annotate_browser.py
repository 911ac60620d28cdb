"""Browser tests of `lmlab annotate` with Playwright driving the system's Chromium: sign-up by invite, login,
the three activities (write, re-annotate, rate + compare) in English and in Arabic (right-to-left), review and
export. LMLAB_SCREENSHOTS=docs rewrites the screenshots under docs/ that the README shows."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from lmlab.annotate.app import create_app
from lmlab.annotate.db import Pair, Preference, Rating, read

from _annotate_db import fast_argon2  # noqa: F401 - autouse fixture
from _annotate_web import PASSWORDS, make_site
from _helpers import serving

ROOT = Path(__file__).resolve().parents[1]


def chromium_path() -> str | None:
    for p in (os.environ.get("LMLAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser")):
        if p and Path(p).exists():
            return p
    return None


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install lmlab[web])")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found (/usr/bin/chromium or LMLAB_CHROMIUM): browser tests skipped")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_invite_signup_three_activities_in_english_and_arabic_review_and_export(browser, tmp_path):
    shots = ROOT / "docs" if os.environ.get("LMLAB_SCREENSHOTS") == "docs" else tmp_path / "shots"
    shots.mkdir(exist_ok=True)
    url = f"sqlite:///{tmp_path / 'b.db'}"
    make_site(url)
    app = create_app(url, secret="browser-secret-0123456789")
    with serving(app) as base:
        base = base[: -len("/v1")]

        def context(**kw):
            ctx = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True, **kw)
            ctx.set_default_timeout(20_000)
            return ctx, ctx.new_page()

        def log_in(page, name):
            page.goto(base + "/login")
            page.fill("input[name=username]", name)
            page.fill("input[name=password]", PASSWORDS[name])
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")

        # --- admin: log in, invite an annotator for English and Arabic
        actx, admin = context()
        admin.goto(base + "/login")
        admin.screenshot(path=str(shots / "annotate-login.png"))
        log_in(admin, "root")
        admin.goto(base + "/admin")
        admin.select_option("select[name=role]", "annotator")
        admin.fill("form[action='/admin/invites'] input[name=languages]", "en, ar")
        admin.click("form[action='/admin/invites'] button")
        link = admin.input_value("input.invite-link")
        assert "/signup?token=" in link
        admin.screenshot(path=str(shots / "annotate-admin.png"), full_page=True)

        # --- a new annotator signs up by the invite
        lctx, layla = context()
        layla.goto(link)
        layla.fill("input[name=username]", "layla")
        layla.fill("input[name=password]", "layla-password")
        layla.fill("input[name=password2]", "layla-password")
        layla.click("button[type=submit]")
        layla.wait_for_url(base + "/")
        assert "Hello layla" in layla.content()
        layla.screenshot(path=str(shots / "annotate-home.png"), full_page=True)

        # --- (a) original annotation, English then Arabic (typed, right-to-left)
        for lang, prompt, completion in (
                ("en", "Give me a tip for learning a language.", "Read a little every day, aloud if you can."),
                ("ar", "أعطني نصيحة لتعلم لغة جديدة.", "اقرأ قليلا كل يوم، وبصوت عال إن استطعت.")):
            layla.goto(f"{base}/annotate/new?lang={lang}")
            layla.fill("textarea[name=prompt]", prompt)
            layla.type("textarea[name=completion]", completion)
            if lang == "ar":
                assert layla.eval_on_selector("textarea[name=completion]", "e => getComputedStyle(e).direction") == "rtl"
                layla.screenshot(path=str(shots / "annotate-write-ar.png"), full_page=True)
            layla.click("button[value=submit]")
            layla.wait_for_url("**/pairs/*?saved=1")
            shown = layla.locator("div.text.completion")
            assert shown.inner_text() == completion
            assert shown.get_attribute("dir") == ("rtl" if lang == "ar" else "ltr")
            assert shown.evaluate("e => getComputedStyle(e).direction") == ("rtl" if lang == "ar" else "ltr")

        # --- (b) re-annotation of a seeded pair, English then Arabic; the diff shows
        for lang, addition in (("en", " (King James Version)"), ("ar", " (ترجمة فاندايك)")):
            layla.goto(f"{base}/reannotate?lang={lang}")
            layla.wait_for_url("**/edit")
            assert layla.locator("details.original").is_visible()
            ta = layla.locator("textarea[name=completion]")
            ta.fill(ta.input_value() + addition)
            layla.click("button[value=submit]")
            layla.wait_for_url("**/pairs/*?saved=1")
            assert layla.locator("ins").first.inner_text().strip() == addition.strip()
            if lang == "ar":
                assert layla.locator("div.diff").first.get_attribute("dir") == "rtl"
                layla.screenshot(path=str(shots / "annotate-reannotate-ar.png"), full_page=True)

        # --- (c) feedback: rating 1-5 with a reason and pairwise preference, English then Arabic
        for lang, reason in (("en", "Accurate and complete."), ("ar", "دقيق وكامل.")):
            layla.goto(f"{base}/feedback/rate?lang={lang}")
            layla.keyboard.press("4")                          # the page's 1-5 shortcut
            assert layla.locator(".stars input[value='4']").is_checked()
            layla.fill("textarea[name=reason]", reason)
            layla.click("form.rate button[type=submit]")
            layla.wait_for_load_state()
            layla.goto(f"{base}/feedback/compare?lang={lang}")
            a_text = layla.locator("label.side").nth(0).inner_text()
            pick = 0 if ("Hello" in a_text or "أهلا" in a_text) else 1
            layla.locator("label.side").nth(pick).click()
            layla.fill("textarea[name=reason]", reason)
            if lang == "ar":
                layla.screenshot(path=str(shots / "annotate-compare-ar.png"), full_page=True)
            layla.click("form.compare button[type=submit]")
            layla.wait_for_url("**/feedback/compare?*")
        with read(app.state.factory) as s:
            assert s.scalar(select(func.count(Rating.id))) == 2 and s.scalar(select(func.count(Preference.id))) == 2

        # --- review: rita approves the queue
        rctx, rita = context()
        log_in(rita, "rita")
        rita.goto(base + "/review")
        rita.screenshot(path=str(shots / "annotate-review.png"), full_page=True)
        for _ in range(10):
            buttons = rita.locator("button[value=approve]")
            if buttons.count() == 0:
                break
            buttons.first.click()
            rita.wait_for_url("**/review?*")
        with read(app.state.factory) as s:
            assert s.scalar(select(func.count(Pair.id)).where(Pair.status == "approved")) == 4
            assert s.scalar(select(func.count(Preference.id)).where(Preference.status == "approved")) == 2

        # --- export: the approved data downloads as chat and preference JSONL
        got = {}
        for name in ("sft", "preferences"):
            with rita.expect_download() as dl:
                rita.click(f"a[href='/export/{name}.jsonl']")
            got[name] = [json.loads(x) for x in Path(dl.value.path()).read_text().splitlines()]
        assert len(got["sft"]) == 4 and len(got["preferences"]) == 2
        assert {r["language"] for r in got["sft"]} == {"en", "ar"}
        assert "اقرأ قليلا كل يوم، وبصوت عال إن استطعت." in [r["messages"][1]["content"] for r in got["sft"]]

        layla.goto(base + "/progress")
        assert "layla" in layla.content()
        layla.screenshot(path=str(shots / "annotate-progress.png"), full_page=True)
        # --- a phone: the Arabic writing page at 390 px, nothing wider than the screen
        pctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                   storage_state=lctx.storage_state())
        phone = pctx.new_page()
        phone.goto(f"{base}/annotate/new?lang=ar")
        phone.fill("textarea[name=prompt]", "ما هي أطول سلسلة جبال في العالم؟")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.screenshot(path=str(shots / "annotate-phone-ar.png"), full_page=True)
        for c in (actx, lctx, rctx, pctx):
            c.close()
    app.state.engine.dispose()
