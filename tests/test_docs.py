"""The README is an entry point and docs/ holds the manual: the configuration reference is the one the config
models generate now, every relative link lands on a file (and heading) that exists, and lines stay short.
(The pages' snippets are run by tests/test_readme.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from fewclip.runner.caption_config import load_caption_config
from fewclip.runner.captioning import embedded_caption_config
from fewclip.configbase import ConfigBlock
from fewclip.data.sources import SOURCES
from fewclip.heads import HEADS, list_heads
from fewclip.runner import config_reference
from fewclip.runner.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
REFERENCE = DOCS / "configuration.md"
MAX_LINE = 120  # prose is wrapped at ~110; a table row or a command with its comment may run a little longer


def test_the_configuration_page_is_what_the_command_prints_now() -> None:
    """Run the command as the docs give it, on another home folder and cache setting: the page is the models'
    descriptions and holds nothing of the machine that wrote it."""
    env = {**os.environ, "HOME": "/nonexistent-home", "FEWCLIP_CACHE": "/elsewhere/cache"}
    printed = subprocess.run(
        [sys.executable, "-m", "fewclip.runner.config_reference"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=True,
    ).stdout
    assert printed == config_reference.render()
    assert REFERENCE.read_text(encoding="utf-8") == printed, (
        f"docs/configuration.md is out of date: run `{config_reference.COMMAND}` and commit the result"
    )


def test_the_reference_has_every_head_block_and_data_source() -> None:
    page = config_reference.render()
    for head in list_heads():
        key = HEADS.get(head).config_key
        if key:
            assert f"#### `{key}`\n" in page and f"- `{key}." in page
    for source in SOURCES.names():
        assert f"#### `dataset.source: {source}`\n" in page
    assert "- `cache.dir` (str; default `~/.cache/fewclip, or $FEWCLIP_CACHE when set`)" in page


def test_a_key_without_a_description_is_an_error_naming_it() -> None:
    class Undocumented(ConfigBlock):
        described: int = Field(1, description="Has one.")
        bare: int = 2

    with pytest.raises(
        config_reference.UndescribedKey,
        match=r"config key `block\.bare` \(.*Undocumented\.bare\) "
        r"has no description",
    ):
        list(config_reference.key_lines(Undocumented, "block."))


@pytest.mark.parametrize("key", config_reference.CAPTION_INTERNAL_KEYS)
def test_the_caption_keys_left_out_of_the_reference_are_refused(key: str, tmp_path: Path) -> None:
    value = "adapter" if key.endswith("method") else "-1"
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_caption_config(None, [f"{key}={value}"], base=embedded_caption_config(tmp_path / "cache"))
    assert f"`{key}`" not in config_reference.render()


def test_the_readme_is_an_entry_point() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"
    first_bash = next(i for i, line in enumerate(lines) if line.startswith("```bash"))
    assert first_bash < 24 and lines[first_bash + 1] == "bash setup.sh && .venv/bin/fewclip run"
    assert "bash setup.sh && .venv/bin/python -m pytest -q" in lines
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()  # "(this is what .ci/run does)"
    assert "bash setup.sh" in ci and ".venv/bin/python -m pytest -q" in ci


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {target for _, target in links(README)}
    assert {f"docs/{page.name}" for page in DOCS.glob("*.md")} <= {t.split("#")[0] for t in linked}


def without_fences(text: str) -> str:
    """The text without its fenced code blocks (a `# comment` in a bash block is no heading)."""
    return re.sub(r"^ *```.*?^ *```[^\n]*$", "", text, flags=re.S | re.M)


def links(page: Path) -> list[tuple[str, str]]:
    """(text, target) of every Markdown link of a page, a link wrapped over two lines included."""
    text = re.sub(r"`[^`\n]*`", "", without_fences(page.read_text(encoding="utf-8")))  # no links in code
    return re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", text.replace("\n", " "))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation but '-' and '_' dropped, spaces to '-',
    a repeated heading numbered (-1, -2, ...)."""
    found: set[str] = set()
    repeats: dict[str, int] = {}
    for line in without_fences(page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6} (.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(f"{slug}-{repeats[slug]}" if slug in repeats else slug)
            repeats[slug] = repeats.get(slug, 0) + 1
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_land_on_files_and_headings_that_exist(page: Path) -> None:
    for text, target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: -- outside the repository
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: [{text}]({target}) points at {file}, which does not exist"
        if anchor:
            assert file.suffix == ".md" and anchor in anchors(file), (
                f"{page.name}: [{text}]({target}): {file.name} has no heading with the anchor #{anchor}"
            )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_lines_are_short(page: Path) -> None:
    long = [
        (number, len(line))
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > MAX_LINE
    ]
    assert not long, f"{page.name}: lines over {MAX_LINE} characters (line, length): {long}"
