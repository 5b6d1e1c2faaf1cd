"""The documentation holds: README.md stays a front door, every relative link in README.md and
docs/*.md resolves (files, and headings for #anchors, with GitHub's slugs), and the snippets marked
runnable run.

A fenced block whose info string is ``sh runnable`` runs with ``bash -euo pipefail`` from the
repository root, with ``.build/release`` first on PATH, in a process group of its own; it must exit
0 within 60 s (whatever it started is killed afterwards, but it should stop its own servers). A
``swift runnable`` block is type-checked as a file of its own against the modules of the release
build (``swiftc -typecheck -I .build/release/Modules``, plus the module maps of the C modules they
import). Blocks without the marker are not run.

No server is needed: shell snippets start (and stop) their own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
DOC_FILES = [README, *DOCS]
README_MAX_LINES = 200
SNIPPET_TIMEOUT = 60
RELEASE = REPO_ROOT / ".build" / "release"

FENCE_RE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
LINK_RE = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE_RE = re.compile(r"!\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE_RE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING_RE = re.compile(r"^ {0,3}(#{1,6})\s+(?P<text>.*?)\s*#*\s*$")


# -- Markdown, as much of it as these files use ------------------------------------------------

@dataclass(frozen=True)
class Block:
    path: Path
    line: int          # 1-based line of the opening fence
    info: str          # the info string, e.g. "sh runnable"
    body: str

    @property
    def words(self) -> list[str]:
        return self.info.split()

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def split_markdown(path: Path) -> tuple[list[tuple[int, str]], list[Block]]:
    """The lines outside fenced code blocks (with their 1-based numbers) and the fenced blocks."""
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    lines = path.read_text("utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, info, start = m.group("fence"), m.group("info").strip(), i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = FENCE_RE.match(lines[i])
            if close and close.group("fence")[0] == fence[0] and len(close.group("fence")) >= len(fence) \
                    and not close.group("info").strip():
                break
            body.append(lines[i])
            i += 1
        i += 1  # past the closing fence (or the end of an unclosed block)
        blocks.append(Block(path, start + 1, info, "\n".join(body) + "\n"))
    return prose, blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, with everything but letters,
    digits, spaces, hyphens and underscores dropped, and spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)                             # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.lower()
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LN" or cat == "Mn":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_markdown(path)
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in prose:
        m = HEADING_RE.match(line)
        if not m:
            continue
        slug = github_slug(m.group("text"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        result.add(slug if n == 0 else f"{slug}-{n}")
    for m in re.finditer(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text("utf-8")):
        result.add(m.group(1))
    return result


def links(path: Path) -> list[tuple[int, str]]:
    prose, _ = split_markdown(path)
    found: list[tuple[int, str]] = []
    for number, line in prose:
        line = INLINE_CODE_RE.sub("", line)
        for regex in (LINK_RE, IMAGE_RE):
            for m in regex.finditer(line):
                found.append((number, m.group("target")))
    return found


def runnable_blocks() -> list[Block]:
    return [b for p in DOC_FILES for b in split_markdown(p)[1] if "runnable" in b.words[1:]]


# -- The front door ----------------------------------------------------------------------------

def test_readme_is_a_front_door():
    lines = README.read_text("utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_docs_exist():
    assert DOCS, "docs/*.md: none found"


# -- Links -------------------------------------------------------------------------------------

def check_link(source: Path, target: str) -> str | None:
    """Why `target` (a link in `source`) does not resolve, or None."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):   # http:, https:, mailto: ...
        return None
    path_part, _, fragment = target.partition("#")
    if path_part:
        resolved = (source.parent / path_part).resolve()
        try:
            resolved.relative_to(REPO_ROOT)
        except ValueError:
            return f"{target}: outside the repository"
        if not resolved.exists():
            return f"{target}: no such file {resolved.relative_to(REPO_ROOT)}"
    else:
        resolved = source
    if fragment:
        if resolved.is_dir() or resolved.suffix.lower() != ".md":
            return f"{target}: an anchor into something that is not a Markdown file"
        if fragment not in anchors(resolved):
            return f"{target}: no heading with anchor #{fragment} in {resolved.relative_to(REPO_ROOT)}"
    return None


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = [f"line {n}: {why}" for n, target in links(doc) if (why := check_link(doc, target))]
    assert not broken, f"{doc.relative_to(REPO_ROOT)}: broken links:\n" + "\n".join(broken)


def test_link_checker_catches_what_it_should(tmp_path):
    """The checker itself: a missing file, a missing anchor and GitHub's slugs."""
    doc = REPO_ROOT / "docs" / "seats.md"
    assert check_link(doc, "no-such-page.md") is not None
    assert check_link(doc, "deployment.md#no-such-heading") is not None
    assert check_link(doc, "#the-protocol") is None
    assert github_slug("TLS: https:// and wss://") == "tls-https-and-wss"
    assert github_slug("Seats extension: `env.stateroom_client_connected`") == \
        "seats-extension-envstateroom_client_connected"
    assert github_slug("Across nodes (`--store`)") == "across-nodes---store"


# -- Runnable snippets -------------------------------------------------------------------------

def test_there_are_runnable_snippets():
    blocks = runnable_blocks()
    kinds = {b.words[0] for b in blocks}
    assert len(blocks) >= 5 and {"sh", "swift"} <= kinds, [b.where for b in blocks]
    assert any(b.path == README for b in blocks), "README.md has no runnable snippet"
    for b in blocks:
        assert b.words[0] in ("sh", "swift"), f"{b.where}: runnable blocks are sh or swift, not {b.words[0]}"


def run_shell(block: Block) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{RELEASE}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block.body], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=SNIPPET_TIMEOUT)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    finally:
        try:  # anything the snippet left behind (a server it did not stop)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if timed_out:
        pytest.fail(f"{block.where}: did not finish within {SNIPPET_TIMEOUT} s\n"
                    f"stdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}", pytrace=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def swiftc_arguments() -> list[str]:
    """-I for the Swift modules of the release build, and the module maps of the C modules their
    interfaces import (CUring, CTLS, ... and the system-library ones kept in Sources/)."""
    args = ["-swift-version", "6", "-I", str(RELEASE / "Modules")]
    maps = sorted(RELEASE.glob("*.build/module.modulemap")) + sorted((REPO_ROOT / "Sources").glob("*/module.modulemap"))
    for m in maps:
        args += ["-Xcc", f"-fmodule-map-file={m}"]
    return args


def typecheck_swift(block: Block, tmp_path: Path) -> subprocess.CompletedProcess:
    if not (RELEASE / "Modules" / "Stateroom.swiftmodule").exists():
        pytest.fail(f"no release build at {RELEASE} (make build) to type-check against", pytrace=False)
    swiftc = shutil.which("swiftc")
    if swiftc is None:
        pytest.fail("swiftc is not on PATH", pytrace=False)
    source = tmp_path / "main.swift"
    source.write_text(block.body, "utf-8")
    return subprocess.run([swiftc, "-typecheck", *swiftc_arguments(), str(source)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=SNIPPET_TIMEOUT)


def run_block(block: Block, tmp_path: Path) -> subprocess.CompletedProcess:
    if block.words[0] == "swift":
        return typecheck_swift(block, tmp_path)
    for binary in ("stateroom-server", "stateroom-bench", "stateroom"):
        if re.search(rf"(?<![\w-]){re.escape(binary)}(?![\w-])", block.body) and not (RELEASE / binary).exists():
            pytest.fail(f"{RELEASE / binary} is not built (make build)", pytrace=False)
    for tool in ("curl", "openssl", "python3", "redis-server", "redis-cli", "wat2wasm"):
        if re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", block.body) and shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (make test's set-up installs it)", pytrace=False)
    return run_shell(block)


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.where)
def test_runnable_snippet(block: Block, tmp_path: Path):
    result = run_block(block, tmp_path)
    assert result.returncode == 0, (
        f"{block.where}: the {block.words[0]} snippet failed (exit {result.returncode})\n"
        f"--- snippet ---\n{block.body}--- stdout ---\n{result.stdout[-4000:]}\n"
        f"--- stderr ---\n{result.stderr[-4000:]}")


def test_a_failing_snippet_fails(tmp_path: Path):
    """The runner reports failure: a shell snippet whose last command fails, one whose middle
    command fails (errexit), a failed pipeline stage (pipefail), and Swift that does not type-check."""
    swift = [b for b in runnable_blocks() if b.words[0] == "swift"]
    for body in ("true\nfalse\n", "false\ntrue\n", "false | true\n", "echo ok | grep -q ko\n"):
        broken = Block(README, 0, "sh runnable", body)
        assert run_shell(broken).returncode != 0, body
    if swift:
        broken = Block(README, 0, "swift runnable", swift[0].body + "\nlet _: Int = \"not an Int\"\n")
        result = typecheck_swift(broken, tmp_path)
        assert result.returncode != 0, "a Swift snippet that does not type-check passed"
