"""Headless Chromium for the report tests: run it offline on a page, and check a report's first screen (the
answer, the headline figure and the leaderboard inside the first 1,000 pixels, nothing wider than its column)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

FIRST_SCREEN_PX = (1280, 1000)
# Injected into a copy of the report (the report itself has no script): the first screen's boxes with every
# <details> closed, as a reader opens the page; then, with all of them open, every rendered element whose right
# edge passes its column (the body's content box), outside the boxes that scroll on purpose (<pre>, wide tables).
LAYOUT_PROBE = """<script>
const box = id => { const r = document.getElementById(id).getBoundingClientRect(); return [r.top, r.bottom]; };
const probe = {answer: box("answer"), figure: box("headline-figure"), image: box("headline-image"),
               leaderboard: box("leaderboard")};
document.querySelectorAll("details").forEach(d => { d.open = true; });
const style = getComputedStyle(document.body), body = document.body.getBoundingClientRect();
const right = body.right - parseFloat(style.paddingRight);
const scrolls = e => { for (let a = e.parentElement; a; a = a.parentElement) {
  if (["auto", "scroll"].includes(getComputedStyle(a).overflowX)) return true; } return false; };
probe.overflowing = [...document.body.querySelectorAll("*")]
  .filter(e => e.getClientRects().length && !scrolls(e) && e.getBoundingClientRect().right > right + 1)
  .map(e => e.tagName + "." + e.className);
probe.page_scrolls = document.documentElement.scrollWidth > document.documentElement.clientWidth;
document.body.setAttribute("data-probe", JSON.stringify(probe));
</script>"""


def chromium(tmp_path: Path, page: Path, *arguments: str) -> str:
    """Run headless Chromium offline on ``page`` with ``arguments``; returns its stdout."""
    if os.environ.get("FEWCLIP_SKIP_BROWSER") == "1":
        pytest.skip("FEWCLIP_SKIP_BROWSER=1")
    browser = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if browser is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (Debian), or set FEWCLIP_SKIP_BROWSER=1")
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            *arguments,
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        text=True,
    )
    return done.stdout


def check_first_screen(tmp_path: Path, report: Path) -> None:
    """The report's first screen at 1280x1000 holds the answer, then the figure (drawn at a readable size and
    not blank), then the leaderboard; with every section open nothing passes its column and the page does not
    scroll sideways."""
    width, height = FIRST_SCREEN_PX
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = chromium(tmp_path, probed, "--dump-dom", f"--window-size={width},{height}")
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the layout probe did not run"
    probe = json.loads(html.unescape(found.group(1)))
    for name in ("answer", "figure", "image", "leaderboard"):  # each box starts and ends on the first screen
        top, bottom = probe[name]
        assert 0 <= top < bottom <= height, (name, probe[name])
    assert probe["answer"][1] <= probe["figure"][0] <= probe["figure"][1] <= probe["leaderboard"][0]
    assert probe["image"][1] - probe["image"][0] > 150  # the figure is drawn at a readable size, not a thumbnail
    assert probe["overflowing"] == [] and not probe["page_scrolls"]
    shot = tmp_path / "first-screen.png"
    chromium(tmp_path, report, f"--screenshot={shot}", f"--window-size={width},{height}")
    with Image.open(shot) as image:
        assert image.size == FIRST_SCREEN_PX
        top, bottom = (round(y) for y in probe["image"])
        figure_colours = image.convert("RGB").crop((0, top, width, bottom)).getcolors(maxcolors=1 << 20)
    assert figure_colours is not None and len(figure_colours) > 100  # the plot itself is on screen, not blank
