"""The kiosk page in real headless Chromium (Debian's, driven by Playwright): image + text → answer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.serve.conftest import png_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "out" / "test-artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")


def test_kiosk_page_answers_an_image_and_rtl_emoji_text(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    picture = tmp_path / "digit.png"
    picture.write_bytes(png_bytes(120, 90, (30, 90, 200)))
    base = f"http://127.0.0.1:{server.port}"
    requested: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 1100})
            page.on("request", lambda req: requested.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('status').textContent === 'Ready'", timeout=20_000)
            assert page.is_visible("#image-section") and page.is_visible("#text-section")
            page.set_input_files("#image-input", str(picture))
            page.wait_for_selector("#preview:not([hidden])")
            answer = "سبعة 7️⃣ 👍"
            page.fill("#text-input", answer)
            assert page.eval_on_selector("#text-input", "el => el.matches(':dir(rtl)')")
            box = page.locator("#submit-btn").bounding_box()
            assert box["height"] >= 48 and box["width"] >= 48  # touch target
            page.click("#submit-btn")
            page.wait_for_selector("#result:not([hidden])", timeout=20_000)
            label = page.text_content("#result-label")
            assert label in ("zero", "one", "two")
            assert page.text_content("#result-score").startswith("Confidence: ")
            assert page.is_hidden("#error") and page.is_hidden("#snap-btn")
            # Emoji render as colour glyphs (an emoji font is installed), not as empty boxes.
            coloured = page.evaluate("""() => {
                const c = document.createElement('canvas'); c.width = 64; c.height = 64;
                const ctx = c.getContext('2d'); ctx.font = '48px ' + getComputedStyle(document.body).fontFamily;
                ctx.fillText('👍', 4, 52);
                const d = ctx.getImageData(0, 0, 64, 64).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && Math.abs(d[i] - d[i + 2]) > 60) n++;
                return n; }""")
            assert coloured > 50, "emoji rendered without colour: is fonts-noto-color-emoji installed?"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "kiosk.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert requested and all(url.startswith((base, "blob:" + base)) for url in requested), requested
    assert (ARTIFACTS / "kiosk.png").stat().st_size > 10_000
