"""The kiosk page in real headless Chromium (Debian's, driven by Playwright): image + text → answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import CHROMIUM, launch
from tests.conftest import REPO
from tests.serve.conftest import png_bytes

ARTIFACTS = REPO / "out" / "test-artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")


def test_kiosk_page_answers_an_image_and_rtl_emoji_text(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    picture = tmp_path / "digit.png"
    picture.write_bytes(png_bytes(120, 90, (30, 90, 200)))
    base = f"http://127.0.0.1:{server.port}"
    requested: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 1100})
            page.on("request", lambda req: requested.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            # Locators, not wait_for_function: the page's CSP (no unsafe-eval) blocks string predicates.
            page.locator("#status", has_text="Ready").wait_for(timeout=20_000)
            assert page.is_visible("#image-section") and page.is_visible("#text-section")
            page.set_input_files("#image-input", str(picture))
            page.wait_for_selector("#preview:not([hidden])")
            answer = "سبعة 7️⃣ 👍"
            page.fill("#text-input", answer)
            assert page.eval_on_selector("#text-input", "el => el.matches(':dir(rtl)')")
            box = page.locator("#submit-btn").bounding_box()
            assert box["height"] >= 48 and box["width"] >= 48  # touch target
            page.click("#submit-btn")
            page.wait_for_selector("#result-body:not([hidden])", timeout=20_000)
            label = page.text_content("#result-label")
            # No display words in this bundle: the label humanised, never raw snake_case.
            assert label in ("Zero", "One", "Two")
            assert page.get_attribute("#result-label", "data-label") in ("zero", "one", "two")
            assert page.text_content("#result-score").startswith("How sure: ")
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


def test_kiosk_camera_snapshot_and_recorded_answer(server):
    """Chromium's fake camera and microphone: take a photo, record an answer, get a verdict."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    base = f"http://127.0.0.1:{server.port}"
    with sync_api.sync_playwright() as pw:
        browser = launch(pw, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                         "--autoplay-policy=no-user-gesture-required")
        try:
            context = browser.new_context(permissions=["camera", "microphone"])
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            # Locators, not wait_for_function: the page's CSP (no unsafe-eval) blocks string predicates.
            page.locator("#status", has_text="Ready").wait_for(timeout=20_000)
            page.click("#camera-btn")
            page.wait_for_selector("#snap-btn:not([hidden])", timeout=10_000)
            for _ in range(100):
                if page.evaluate("() => document.getElementById('camera').videoWidth") > 0:
                    break
                page.wait_for_timeout(100)
            page.click("#snap-btn")
            page.wait_for_selector("#preview:not([hidden])", timeout=10_000)
            page.click("#record-btn")
            page.wait_for_timeout(800)
            page.click("#record-btn")
            page.wait_for_selector("#playback:not([hidden])", timeout=10_000)
            page.fill("#text-input", "seven")
            page.click("#submit-btn")
            page.wait_for_selector("#result-body:not([hidden])", timeout=20_000)
            assert page.text_content("#result-label") in ("Zero", "One", "Two")
            assert not errors, errors
            # What the page sent: a PNG snapshot and a 16-bit WAV recording (what the server accepts).
            sent = page.evaluate("""async () => {
                const head = async (b) => Array.from(new Uint8Array(await b.slice(0, 16).arrayBuffer()));
                return {image: await head(state.image), audio: await head(state.audio), audioBytes: state.audio.size};
            }""")
            assert bytes(sent["image"][:4]) == b"\x89PNG"
            assert bytes(sent["audio"][:4]) == b"RIFF" and bytes(sent["audio"][8:16]) == b"WAVEfmt "
            assert sent["audioBytes"] > 44 + 2 * 8000 * 0.5  # at least half a second of samples
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "kiosk-camera.png"), full_page=True)
        finally:
            browser.close()
