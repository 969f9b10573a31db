"""The kiosk page a child uses, in real headless Chromium (Debian's, driven by Playwright).

A tiny bundle exported with ``edgemm export --display`` (en + zh words for ``match`` / ``no_match``)
behind a real ``edgemm serve``. At the kiosk screen sizes (1024 × 768, 1280 × 800, an 800 × 480
touch screen, and portrait) the verdict's display name is inside the viewport after Check; the
axe-core audit finds no serious or critical violation. Screenshots and the axe results are kept
under ``tests/artifacts/kiosk/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, launch
from tests.conftest import REPO
from tests.serve.conftest import Server, start_server, stop_server

ARTIFACTS = REPO / "tests" / "artifacts" / "kiosk"
AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"
LABELS = ["no_match", "match"]
DISPLAY_TOML = """\
default_language = "en"

[languages.en]
instruction = "Does the word match the picture?"
labels.match = { name = "Yes, that's right!", message = "Great job!" }
labels.no_match = { name = "Not quite — try again", message = "Look at the picture again." }

[languages.zh]
instruction = "答案和图片上的数字一样吗？"
labels.match = { name = "对了！", message = "真棒！" }
labels.no_match = { name = "不太对，再试一次", message = "再看看图片。" }
"""
NAMES = {"en": {"Yes, that's right!", "Not quite — try again"}, "zh": {"对了！", "不太对，再试一次"}}
VIEWPORTS = [(1024, 768), (1280, 800), (800, 480), (480, 800)]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")


def cli(*args: str):
    from click.testing import CliRunner

    from edgemm.cli import cli as group

    return CliRunner().invoke(group, list(args))


@pytest.fixture(scope="module")
def kiosk_ckpt(tmp_path_factory, minilm_dir) -> Path:
    from transformers import AutoTokenizer

    from tests.factories import build_fusion

    root = tmp_path_factory.mktemp("kiosk")
    return build_fusion(root / "ckpt", AutoTokenizer.from_pretrained(minilm_dir), labels=LABELS)


@pytest.fixture(scope="module")
def kiosk_bundle(kiosk_ckpt, tmp_path_factory) -> Path:
    """The tiny match / no_match bundle, its display words given with ``edgemm export --display FILE.toml``."""
    root = tmp_path_factory.mktemp("kiosk-bundle")
    (root / "display.toml").write_text(DISPLAY_TOML, encoding="utf-8")
    result = cli("export", str(kiosk_ckpt), "-o", str(root / "kiosk.bundle"), "--display", str(root / "display.toml"))
    assert result.exit_code == 0, result.output
    return root / "kiosk.bundle"


@pytest.fixture(scope="module")
def kiosk_server(kiosk_bundle, tmp_path_factory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("kiosk-serve"), str(kiosk_bundle), "--device", "cpu", "--max-delay-ms", "5")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pw = sync_api.sync_playwright().start()
    chromium = launch(pw)
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    """An 8 × 8 scan, as digit-match's are: it must be drawn large and crisp."""
    from PIL import Image

    seven = ["........", ".######.", "......#.", ".....#..", "....#...", "...#....", "...#....", "........"]
    image = Image.new("L", (8, 8), 255)
    image.putdata([0 if c == "#" else 255 for row in seven for c in row])
    path = tmp_path_factory.mktemp("pictures") / "digit-7.png"
    image.save(path)
    return path


def open_page(browser, server: Server, *, width: int = 1024, height: int = 768, locale: str = "en-US"):
    context = browser.new_context(viewport={"width": width, "height": height}, locale=locale)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Subscribe to file choosers now, not in expect_file_chooser: Playwright turns Chromium's interception
    # on fire-and-forget, so a key pressed right after subscribing can open an uninterceptable chooser
    # (3 of 25 keyboard picks timed out here, and one in CI; 0 of 50 with this early listener).
    page.on("filechooser", lambda _chooser: None)
    page.goto(f"http://127.0.0.1:{server.port}/")
    # Locators, not wait_for_function: the page's CSP (no unsafe-eval) blocks string predicates.
    page.locator("#text-section:not([hidden])").wait_for(timeout=20_000)
    return context, page, errors


def in_viewport(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    return (box is not None and box["width"] > 0 and box["x"] >= 0 and box["y"] >= 0
            and box["x"] + box["width"] <= size["width"] and box["y"] + box["height"] <= size["height"])


def axe_audit(page, name: str) -> list[dict]:
    """Run axe-core in the page; keep its JSON result; return the serious and critical violations."""
    if not AXE.is_file():
        pytest.fail(f"{AXE.relative_to(REPO)} is missing: run `make setup` (npm ci installs axe-core from package.json)")
    # Through the DevTools protocol: the page's CSP (script-src 'self') rightly refuses an inline script tag.
    page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate("async () => JSON.parse(JSON.stringify(await axe.run(document)))")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"axe-{name}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    assert result["passes"], "axe ran no checks"
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize(("width", "height"), VIEWPORTS, ids=[f"{w}x{h}" for w, h in VIEWPORTS])
def test_verdict_in_view_after_check(browser, kiosk_server, picture, width, height):
    context, page, errors = open_page(browser, kiosk_server, width=width, height=height)
    try:
        assert page.text_content("#instruction") == "Does the word match the picture?"
        assert page.get_attribute("html", "lang") == "en"
        page.set_input_files("#image-input", str(picture))
        page.wait_for_selector("#preview.pixelated", state="attached", timeout=10_000)
        # The 8 × 8 scan fills its box, drawn as crisp pixels (no blur).
        shown = page.locator("#preview").bounding_box()
        assert min(shown["width"], shown["height"]) >= 80, shown
        assert page.eval_on_selector("#preview", "el => getComputedStyle(el).imageRendering") == "pixelated"
        page.fill("#text-input", "seven")
        page.click("#submit-btn")
        page.wait_for_selector("#result-body:not([hidden])", timeout=20_000)
        label = page.text_content("#result-label")
        assert label in NAMES["en"], label
        assert page.get_attribute("#result-label", "data-label") in LABELS
        message = page.text_content("#result-message")
        assert message in ("Great job!", "Look at the picture again.")
        assert in_viewport(page, "#result-label"), (width, height, page.locator("#result-label").bounding_box())
        assert in_viewport(page, "#next-btn")
        assert page.is_hidden("#error-box")
        assert page.evaluate("() => document.scrollingElement.scrollWidth") <= width, "the page scrolls sideways"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"kiosk-{width}x{height}.png"))  # the viewport: what a child sees
        assert page.is_hidden("#camera-btn"), "no camera here: no 'Take a photo'"
        serious = axe_audit(page, f"{width}x{height}")
        assert not serious, serious
        assert not errors, errors
    finally:
        context.close()


def test_chinese_browser_gets_chinese_words(browser, kiosk_server, picture):
    context, page, errors = open_page(browser, kiosk_server, width=1024, height=768, locale="zh-CN")
    try:
        assert page.get_attribute("html", "lang") == "zh"
        assert page.text_content("#instruction") == "答案和图片上的数字一样吗？"
        assert page.text_content("#submit-btn").strip().startswith("检查")
        assert page.locator("#status", has_text="准备好了").count() == 1
        page.set_input_files("#image-input", str(picture))
        page.fill("#text-input", "七")
        page.click("#submit-btn")
        page.wait_for_selector("#result-body:not([hidden])", timeout=20_000)
        assert page.text_content("#result-label") in NAMES["zh"]
        assert page.text_content("#result-message") in ("真棒！", "再看看图片。")
        assert page.text_content("#result-score").startswith("把握：")
        assert in_viewport(page, "#result-label")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "kiosk-zh-1024x768.png"))
        serious = axe_audit(page, "zh-1024x768")
        assert not serious, serious
        assert not errors, errors
    finally:
        context.close()
    assert (ARTIFACTS / "kiosk-zh-1024x768.png").stat().st_size > 10_000


def test_keyboard_only_check_and_next_question(browser, kiosk_server, picture):
    """Tab to every control, pick the picture, type, Enter checks; Enter on "Next question" starts over."""
    context, page, errors = open_page(browser, kiosk_server, width=800, height=480)
    try:
        page.locator("#status", has_text="Ready").wait_for(timeout=20_000)
        focused: list[str] = []
        for _ in range(4):
            page.keyboard.press("Tab")
            focused.append(page.evaluate("() => document.activeElement.id"))
        assert focused[:3] == ["image-input", "text-input", "submit-btn"], focused
        page.focus("#image-input")
        # Focus is visible: the picture button (the label of the focused file input) gets an outline.
        assert page.eval_on_selector("#image-label", "el => getComputedStyle(el).outlineStyle") != "none"
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Space")
        chooser.value.set_files(str(picture))
        page.wait_for_selector("#preview:not([hidden])")
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.id") == "text-input"
        page.keyboard.type("seven")
        page.keyboard.press("Enter")
        page.wait_for_selector("#result-body:not([hidden])", timeout=20_000)
        assert page.text_content("#result-label") in NAMES["en"]
        # Focus lands on "Next question", visibly.
        page.locator("#next-btn:focus").wait_for(timeout=5_000)
        assert page.eval_on_selector("#next-btn", "el => getComputedStyle(el).outlineStyle") != "none"
        assert in_viewport(page, "#result-label")
        page.keyboard.press("Enter")
        page.wait_for_selector("#result-body", state="hidden")
        assert page.is_visible("#result-placeholder") and page.is_hidden("#next-btn")
        assert page.input_value("#text-input") == "" and page.is_hidden("#preview") and page.is_visible("#no-image")
        assert page.evaluate("() => state.image === null && document.activeElement.id === 'image-input'")
        assert page.text_content("#result-label") == ""
        assert not errors, errors
    finally:
        context.close()


def test_errors_read_as_friendly_translated_words(browser, kiosk_server):
    from edgemm.serve.httperrors import CODES

    for locale, missing_image in (("en-US", "Add a picture first."), ("zh-CN", "请先加一张图片。")):
        context, page, errors = open_page(browser, kiosk_server, width=1280, height=800, locale=locale)
        try:
            page.locator("#status", has_text="Ready" if locale == "en-US" else "准备好了").wait_for(timeout=20_000)
            # Every stable error code has friendly words, in every language the page speaks.
            covered = page.evaluate("""() => Object.keys(ERRORS).filter((code) =>
                Object.keys(ERROR_TEXT).every((lang) => ERROR_TEXT[lang][ERRORS[code]]))""")
            assert set(CODES) <= set(covered), sorted(set(CODES) - set(covered))
            page.fill("#text-input", "seven")
            page.click("#submit-btn")  # no picture: the server answers 422 missing_modality
            page.wait_for_selector("#error-box:not([hidden])", timeout=20_000)
            assert page.text_content("#error") == missing_image
            assert "missing_modality" in page.text_content("#error-detail")  # small print, for a grown-up
            assert page.get_attribute("#error", "role") == "alert"
            assert in_viewport(page, "#error")
            assert page.is_hidden("#result-body")
            if locale == "zh-CN":
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "kiosk-zh-error-1280x800.png"))
            assert not errors, errors
        finally:
            context.close()


def test_export_refuses_display_words_that_leave_out_a_label(kiosk_ckpt, tmp_path):
    bad = tmp_path / "display.json"
    bad.write_text(json.dumps({"languages": {"en": {"instruction": "Match?", "labels": {
        "match": {"name": "Yes", "message": "Good"}}}}}), encoding="utf-8")
    result = cli("export", str(kiosk_ckpt), "-o", str(tmp_path / "b"), "--display", str(bad))
    assert result.exit_code == 2, result.output
    assert "leaves out ['no_match']" in result.output
    assert not (tmp_path / "b").exists()


def test_served_model_info_carries_the_display_words(kiosk_server, kiosk_bundle):
    from edgemm.bundle.manifest import Manifest

    info = kiosk_server.get("/v1/model").json()
    assert info["display"]["languages"]["zh"]["labels"]["match"]["name"] == "对了！"
    manifest = Manifest.from_json((kiosk_bundle / "edgemm.json").read_bytes())
    assert manifest.display_texts().choose_language(["zh-TW", "en"]) == "zh"
    assert info["display"] == manifest.display
