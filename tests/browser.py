"""Headless Chromium for the browser tests (the dashboard and the report): render a URL to
a screenshot and its DOM's visible text. Skipped with the reason on a machine without the
browser, except under CI (``CI=true``, where .ci/run installs it and a missing browser is
a failure)."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900", "--virtual-time-budget=10000",
)


def chromium() -> str:
    """The browser's path; skips (fails under ``CI=true``) when there is none."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    reason = ("headless Chromium is not installed: run `apt-get install -y chromium` "
              "(Debian's package; .ci/run installs it)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def visible_text(dom: str) -> str:
    """The text a reader sees in ``dom``: scripts and styles dropped, one line per text
    node, entities decoded, blank lines removed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", "\n", text))
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def render(url: str, out_dir: Path, name: str) -> tuple[Path, str]:
    """Loads ``url`` in a fresh headless Chromium; returns (screenshot, visible text)."""
    shot = out_dir / f"{name}.png"
    cmd = [
        chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={out_dir / f'profile-{name}'}",
        f"--screenshot={shot}", "--dump-dom", url,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    dom = done.stdout.decode()
    (out_dir / f"{name}.html").write_text(dom)
    return shot, visible_text(dom)


def assert_screenshot(shot: Path, *, min_bytes: int = 20_000, min_colours: int = 100) -> None:
    """The screenshot is a 1280x900 PNG that is not (nearly) blank."""
    data = shot.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes, f"screenshot is only {len(data)} bytes"
    with Image.open(shot) as im:
        assert im.size == (1280, 900)
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > min_colours, "the page rendered (nearly) blank"
