"""The README and the pages of docs/ are executable documentation: every code block marked runnable runs and
must exit 0.

Marker convention: the line directly above a ```bash (or ```python) fence is

    <!-- test: runnable -->         runs in the default suite
    <!-- test: runnable slow -->    marked slow (CI still runs it)

Each block runs in a fresh temporary directory holding a `recipes` symlink to the repository's recipes, with
`omnivox` on PATH and this process's environment: bash blocks with `bash -euo pipefail`, python blocks with
`python -`. Also checked: the README opens with the main job and the test command and stays short, CI runs that
test command, every benchmark script the README and docs name exists, and every relative link resolves."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]  # the Markdown files whose marked blocks run
README_MAX_LINES = 260
MARKER = re.compile(r"<!--\s*test:\s*runnable(?P<options>[^>]*?)\s*-->")
FENCE = re.compile(r"```(?P<lang>\w*)\s*$")
LANGUAGES = ("bash", "python")
BLOCK_TIMEOUT_S = 1800  # a hung block fails; generous because CI shares 2 cores with the training block
TAIL_CHARS = 3000


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence in the README
    lang: str  # "bash" or "python"
    code: str
    slow: bool
    source: str = "README.md"  # the file, relative to the repository root

    @property
    def first_line(self) -> str:
        return next((s.strip() for s in self.code.splitlines() if s.strip()), "(empty block)")


def extract_blocks(text: str, source: str = "README.md") -> list[Block]:
    """The runnable blocks of a Markdown text. A marker that is not directly above a bash/python fence, an
    unknown marker option or an unclosed fence raises ValueError naming the line."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        marker = MARKER.fullmatch(line.strip())
        if marker is None:
            continue
        options = marker["options"].split()
        if options not in ([], ["slow"]):
            raise ValueError(f"README line {i + 1}: unknown marker option {options}; "
                             "write <!-- test: runnable --> or <!-- test: runnable slow -->")
        fence = FENCE.fullmatch(lines[i + 1].strip()) if i + 1 < len(lines) else None
        if fence is None or fence["lang"] not in LANGUAGES:
            raise ValueError(f"README line {i + 1}: the runnable marker must be directly above a ```bash or "
                             "```python fence")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README line {i + 2}: the ```{fence['lang']} block is never closed")
        code = "\n".join(lines[i + 2:end]) + "\n"
        blocks.append(Block(line=i + 2, lang=fence["lang"], code=code, slow=options == ["slow"], source=source))
    return blocks


def block_environment() -> dict[str, str]:
    """This process's environment with the directory of this interpreter (and its `omnivox` script) first on
    PATH, so `python`, `pip` and `omnivox` are the ones the tests run with."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_block(block: Block, workdir: Path, timeout_s: float = BLOCK_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run one block in `workdir` (which gets a `recipes` symlink); stdout and stderr come back together.
    A block still running after `timeout_s` is killed with everything it started and reported with
    return code -1."""
    (workdir / "recipes").symlink_to(ROOT / "recipes", target_is_directory=True)
    if block.lang == "bash":
        command, stdin, feed = ["bash", "-euo", "pipefail", "-c", block.code], subprocess.DEVNULL, None
    else:
        command, stdin, feed = [sys.executable, "-"], subprocess.PIPE, block.code
    with subprocess.Popen(command, cwd=workdir, env=block_environment(), stdin=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as process:
        try:
            output, _ = process.communicate(feed, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the block's own process group: its children too
            output, _ = process.communicate()
            return subprocess.CompletedProcess(command, -1, output + f"\n[timed out after {timeout_s} s]")
    return subprocess.CompletedProcess(command, process.returncode, output)


def failure_message(block: Block, result: subprocess.CompletedProcess) -> str:
    return (f"{block.source} block at line {block.line} ({block.first_line!r}) exited {result.returncode}; "
            f"output tail:\n{result.stdout[-TAIL_CHARS:]}")


def readme_params() -> list:
    blocks = [b for page in PAGES for b in extract_blocks(page.read_text(encoding="utf-8"), _name(page))]
    return [pytest.param(b, id=f"{b.source}:line{b.line}", marks=[pytest.mark.slow] if b.slow else [])
            for b in blocks]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("block", readme_params())
def test_readme_block_runs(block: Block, tmp_path):
    result = run_block(block, tmp_path)
    assert result.returncode == 0, failure_message(block, result)


# ---- the harness itself can fail ---------------------------------------------------------------------------
SAMPLE = """intro

<!-- test: runnable -->
```bash
echo ok
```

<!-- test: runnable slow -->
```python
import sys
sys.exit(3)
```

```bash
echo not marked, not run
```

<!-- test: runnable -->
```bash
echo fine
false
echo never reached
```
"""


def test_extractor_finds_marked_blocks_only():
    blocks = extract_blocks(SAMPLE)
    assert [(b.line, b.lang, b.slow) for b in blocks] == [(4, "bash", False), (9, "python", True),
                                                           (19, "bash", False)]
    assert blocks[0].code == "echo ok\n" and blocks[2].first_line == "echo fine"


def test_failing_blocks_fail_with_line_first_line_and_output(tmp_path):
    passing, python_exit3, failing = extract_blocks(SAMPLE)
    for name, block, code in (("a", passing, 0), ("b", python_exit3, 3), ("c", failing, 1)):
        (tmp_path / name).mkdir()
        result = run_block(block, tmp_path / name)
        assert result.returncode == code, result.stdout
    message = failure_message(failing, result)
    assert "line 19" in message and "'echo fine'" in message and "fine\n" in message
    assert "never reached" not in result.stdout


@pytest.mark.parametrize("code", ["echo $UNSET_README_VARIABLE", "false | true", "cd /nonexistent-dir\necho x"])
def test_bash_blocks_run_strict(tmp_path, code):
    """-u, -o pipefail and -e: a typo or a failing pipe stage fails the block instead of passing silently."""
    result = run_block(Block(line=1, lang="bash", code=code + "\n", slow=False), tmp_path)
    assert result.returncode != 0, result.stdout


def test_a_hung_block_fails_with_its_output(tmp_path):
    result = run_block(Block(line=1, lang="bash", code="echo started\nsleep 60\necho after\n", slow=False), tmp_path, 1)
    assert result.returncode == -1 and "started" in result.stdout and "timed out after 1 s" in result.stdout


def test_blocks_run_in_a_fresh_dir_with_recipes_and_omnivox(tmp_path):
    code = 'test "$(ls -A)" = recipes\ntest -f recipes/pipelines/chat_demo.yaml\ncommand -v omnivox\n'
    result = run_block(Block(line=1, lang="bash", code=code, slow=False), tmp_path)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("bad, problem", [
    ("<!-- test: runnable -->\ntext\n", "directly above"),
    ("<!-- test: runnable -->\n```sh\necho\n```\n", "directly above"),
    ("<!-- test: runnable fast -->\n```bash\necho\n```\n", "unknown marker option"),
    ("<!-- test: runnable -->\n```bash\necho\n", "never closed"),
])
def test_malformed_markers_are_errors(bad, problem):
    with pytest.raises(ValueError, match=problem):
        extract_blocks(bad)


# ---- what the README promises about itself -----------------------------------------------------------------
def commands_of_first_block(text: str) -> list[str]:
    """The command lines (comments and blank lines dropped) of the README's first code block."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    end = next(j for j in range(start + 1, len(lines)) if lines[j].strip() == "```")
    return [c for c in (line.split("#")[0].strip() for line in lines[start + 1:end]) if c]


def test_readme_opens_with_main_job_and_test_command():
    assert commands_of_first_block(README.read_text(encoding="utf-8"))[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):  # both install first, then run
        assert re.search(rf"^{target}:.*\binstall\b", makefile, re.M), f"`make {target}` does not depend on install"
    assert re.search(r"^\tomnivox chat ", makefile, re.M), "`make demo` does not run `omnivox chat`"
    assert re.search(r"^\t\$\(PY\) -m pytest", makefile, re.M), "`make test` does not run pytest"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "make test" in commands, ".ci/run does not call `make test`"


def quick_starts(text: str) -> dict[str, str]:
    """Heading -> body of each `## Quick start: ...` section."""
    sections = re.split(r"^(## .*)$", text, flags=re.M)
    pairs = zip(sections[1::2], sections[2::2], strict=True)
    return {heading: body for heading, body in pairs if heading.startswith("## Quick start")}


def test_quick_starts_in_order_and_exercised():
    """One quick start per kind of user, in this order; each one that shows commands runs at least one block."""
    text = README.read_text(encoding="utf-8")
    sections = quick_starts(text)
    topics = [re.search(r"mqtt|http|codec|microphone|training", h, re.I) for h in sections]
    assert [m and m[0].lower() for m in topics] == ["mqtt", "http", "codec", "microphone", "training"], \
        list(sections)
    for heading, body in sections.items():
        if "```" in body:
            assert extract_blocks(body), f"README {heading!r} shows commands but marks none runnable"


def test_benchmarks_named_in_readme_and_docs_exist():
    assert re.search(r"benchmarks/[\w./-]+?\.py", README.read_text(encoding="utf-8")), "the README names no benchmark"
    named = {p for page in PAGES for p in re.findall(r"benchmarks/[\w./-]+?\.py", page.read_text(encoding="utf-8"))}
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"the README or docs name benchmarks that do not exist: {missing}"


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; details go to docs/ (at most {README_MAX_LINES})"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)


def prose(text: str) -> str:
    """`text` without its fenced code blocks (a `](` in code is not a link)."""
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.M | re.S)


def anchor(heading: str) -> str:
    """GitHub's id of a heading: lower case, punctuation but `-` and `_` dropped, each space a `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", prose(page.read_text(encoding="utf-8")), re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file, or whose `#anchor` in a Markdown file, does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (fragment and file.suffix == ".md" and fragment not in anchors(file)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    assert not broken_links(page), f"{_name(page)} links to what does not exist: {broken_links(page)}"


def test_the_link_checker_finds_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#a-page) [gone](docs/b.md) [bad anchor](docs/a.md#nope) [self](#top)\n"
                    "[web](https://example.com)\n```\n[code](not/a/link.md)\n```\n# Top\n")
    assert broken_links(page) == ["docs/b.md", "docs/a.md#nope"]


def test_omnivox_on_path_is_this_installation():
    """The blocks' `omnivox` must be the console script of the interpreter running the tests."""
    found = shutil.which("omnivox", path=block_environment()["PATH"])
    assert found is not None and Path(found).parent == Path(sys.executable).parent
