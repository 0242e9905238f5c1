"""The README and the documentation site: the site builds with `mkdocs build --strict`, the
README stays a short front door, its examples (and the docs') run against the test Redis,
and every setting in `Settings` is documented under the name the code reads."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from bullwait.settings import Settings

from helpers.common import ROOT
from helpers.nodecompat import HAVE_NODE, NODE, NODE_DIR, SKIP_REASON

README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 200
# A fenced block right after this line is an example the tests run.
RUNNABLE = re.compile(r"^<!-- runnable -->\n```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# Wording that only makes sense to someone who followed the project's history.
HISTORY_WORDS = re.compile(r"\bthe seed\b|\bseed's\b|\bissue\s*#?\d|\bthis session\b|#\d{2,}", re.IGNORECASE)


def runnable_blocks(path: Path, language: str) -> list[str]:
    return [code for lang, code in RUNNABLE.findall(path.read_text()) if lang == language]


def run_python(code: str, env: dict[str, str], tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(code)
    # From tmp_path, so a `.env` in the repository cannot point the example at another Redis.
    return subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed: pip install -e '.[docs]' (bash dev.sh setup installs it)",
)
def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; move detail to docs/ (limit {README_MAX_LINES})"
    )
    text = "\n".join(lines)
    for command in ("bash dev.sh demo", "bash dev.sh test"):
        assert command in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), f"README links to {page}, which does not exist"


def test_dev_sh_has_the_readme_commands() -> None:
    script = (ROOT / "dev.sh").read_text()
    assert re.search(r"^\s*demo\)", script, re.MULTILINE) and re.search(r"^\s*test\)", script, re.MULTILINE)


# Code and scripts: the same words (a cluster's "seed nodes" are a term of their own).
CODE_HISTORY_WORDS = re.compile(r"\bthe seed\b(?!\s+nodes?)|\bseed's\b|\bissue\s*#?\d", re.IGNORECASE)
CODE = [
    *ROOT.glob("bullwait/**/*.py"),
    *ROOT.glob("bench/**/*.py"),
    *(p for p in ROOT.glob("tests/**/*.py") if p.name != "test_docs.py"),
    *(p for p in ROOT.glob("node-compat/**/*.js") if "node_modules" not in p.parts),
    *ROOT.glob("monitoring/*"),
]


def test_no_history_words_in_code_comments() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {match}"
        for path in sorted(CODE)
        if path.is_file()
        for match in CODE_HISTORY_WORDS.findall(path.read_text(errors="replace"))
    ]
    assert not found, "say what is meant instead:\n" + "\n".join(found)


def test_no_history_words_in_readme_or_docs() -> None:
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        found = HISTORY_WORDS.findall(page.read_text())
        assert not found, f"{page.relative_to(ROOT)}: {found}: say what is meant instead"


def test_the_readme_python_example_runs(
    env: dict[str, str], prefix: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    blocks = runnable_blocks(README, "python")
    assert blocks, "README.md has no python block marked <!-- runnable -->"
    for n, code in enumerate(blocks):
        result = run_python(code, env, tmp_path, f"readme_{n}.py")
        assert result.returncode == 0, result.stdout + result.stderr
    assert "cancelled job expiry_w-42" in result.stdout, result.stdout
    # What it enqueued is in the test Redis: the notification waiting, the preference job
    # prioritized, the timer gone again.
    assert sync_redis.llen(f"{prefix}:waitlist-notification:wait") == 1
    assert sync_redis.zcard(f"{prefix}:waitlist-preference-calculation:prioritized") == 1
    assert not sync_redis.exists(f"{prefix}:waitlist-expiry:expiry_w-42")


def test_the_docs_python_examples_run(env: dict[str, str], tmp_path: Path) -> None:
    pages = {page: runnable_blocks(page, "python") for page in sorted(DOCS.glob("*.md"))}
    assert pages[DOCS / "waitlist.md"], "docs/waitlist.md lost its runnable example"
    for page, blocks in pages.items():
        for n, code in enumerate(blocks):
            result = run_python(code, env, tmp_path, f"{page.stem}_{n}.py")
            assert result.returncode == 0, f"{page.name} example {n}:\n{result.stdout}{result.stderr}"


@pytest.mark.node
@pytest.mark.skipif(not HAVE_NODE, reason=SKIP_REASON)
def test_the_readme_node_example_runs(
    env: dict[str, str], prefix: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    blocks = runnable_blocks(README, "javascript")
    assert blocks, "README.md has no javascript block marked <!-- runnable -->"
    shutil.copy(NODE_DIR / "catalog.json", tmp_path / "catalog.json")  # as the example says: next to it
    node_env = dict(env, NODE_PATH=str(NODE_DIR / "node_modules"))
    for n, code in enumerate(blocks):
        script = tmp_path / f"readme_{n}.js"
        script.write_text(code)
        result = subprocess.run(
            [NODE or "node", str(script)], env=node_env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "added send-slot-available" in result.stdout, result.stdout
    assert sync_redis.llen(f"{prefix}:waitlist-notification:wait") == len(blocks)


# --- docs/configuration.md against bullwait/settings.py -----------------------------------
CONFIGURATION = DOCS / "configuration.md"
# Variables in its last table that are read elsewhere, not by `Settings`.
NOT_SETTINGS = {
    "BULLWAIT_PROCESS_INDEX",
    "PROMETHEUS_MULTIPROC_DIR",
    "BULLWAIT_HEALTH_DIR",
    "BULLWAIT_EMBEDDED_DIR",
    "BULLWAIT_REDIS_SERVER",
    "BULLWAIT_CATALOG",
    "BULL_BOARD_",
    "BULLWAIT_SLOW",
}


def _documented_variables() -> set[str]:
    names: set[str] = set()
    for line in CONFIGURATION.read_text().splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)\*?`", first_cell))
    return names


def test_every_setting_is_documented() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    missing = sorted(settings - _documented_variables())
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_every_documented_setting_exists() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    unknown = sorted(_documented_variables() - settings - NOT_SETTINGS)
    assert not unknown, f"docs/configuration.md documents variables no code reads as a setting: {unknown}"
