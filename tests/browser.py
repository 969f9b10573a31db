"""Debian's Chromium for the browser tests (Playwright with ``executable_path``): one launch rule."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Offline and quiet: no background fetches, no component updates, no QUIC probes.
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]


def launch(pw: Any, *extra: str) -> Any:
    """A headless Chromium from ``sync_playwright()``'s ``pw``, with :data:`LAUNCH_ARGS` plus ``extra``."""
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*LAUNCH_ARGS, *extra])
