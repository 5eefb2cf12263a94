"""Every example of README.md runs verbatim, in order, against one live daemon.

The README's fenced blocks are read from the file itself:

- ```` ```bash ```` (or ``sh``) blocks run in ``bash``, one logical command at a time in
  one shell per block, and each command must exit 0;
- ```` ```python ```` blocks run in the test's Python (the virtual environment);
- a block right under ``<!-- file: NAME -->`` is not run: it is the file ``NAME`` that a
  later command uses (the ``train.py`` program);
- a block right under ``<!-- not tested: REASON -->`` is not run, and says why; nothing
  else is skipped.

The commands run in a folder holding what the README presumes the reader brings: the
clone's ``.venv`` and ``examples/``, a small crawl (``./crawl``, ``more/*.jsonl.gz``), a
``./tokenizer``, a Hugging Face folder (``./my-hf-folder``: all-MiniLM-L6-v2), the
SmolLM2 GGUF file and ``topics.jsonl``. As on the machine that ran ``llmos up``, the CLI
finds the administrator's token in ``LLMOS_HOME/credentials.json``; the daemon, too, runs
in that folder (the reader starts ``llmos up`` in the clone). Blocks depend on the
ones before them (models imported, then trained, then served), like a reader's session.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from live import LiveDaemon
from offline_models import minilm_dir, smollm2_gguf

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\S*)\s*$")
MARK = re.compile(r"^<!--\s*(not tested|file):\s*(.+?)\s*-->$")
SHELLS = ("bash", "sh")

# What the README says a block prints, by a command that appears in that block only.
EXPECT = {
    "llmos job submit echo": ["SUCCEEDED", "Metrics (", "loss"],
    "llmos data diff web:1 2": ["web:1", "web:2"],
    "llmos models rm $V": ["minilm:2", "removed minilm:2",
                           "RUNNING"],  # progress lines, though not on a terminal
    "--metric loss": ["Metrics (", "loss"],
    "curl -N": ["data: [DONE]"],
    "llmos audit verify": ["ok"],
    "with Client() as llmos": ["SUCCEEDED"],
}


@dataclass
class Block:
    line: int
    lang: str
    text: str
    mark: str | None = None
    value: str | None = None

    @property
    def id(self) -> str:
        return f"line {self.line} {self.lang}"


def blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = MARK.match(lines[i - 1].strip()) if i else None
        found.append(Block(i + 1, m.group(1), "\n".join(lines[i + 1:end]),
                           above.group(1) if above else None,
                           above.group(2) if above else None))
        i = end + 1
    return found


BLOCKS = blocks()
RUN = [b for b in BLOCKS if b.mark is None]


def commands(text: str) -> list[str]:
    """Logical command lines: continuation lines joined, blank and comment lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        current += line + "\n"
        if line.endswith("\\"):
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            out.append(current.rstrip("\n"))
        current = ""
    return out


def shell_script(text: str) -> str:
    """The block, each command echoed and followed by a check of its exit status."""
    parts = ["set -o pipefail"]
    for n, command in enumerate(commands(text), 1):
        first = command.splitlines()[0]
        parts += [f"printf '%s\\n' {shlex.quote('$ ' + first)}", command,
                  f"__s=$?; if [ $__s -ne 0 ]; then echo {shlex.quote(f'README command {n}')}"
                  f"\" exited $__s: \"{shlex.quote(first)} >&2; exit 1; fi"]
    return "\n".join(parts) + "\n"


def test_every_block_is_run_or_says_why_not():
    assert RUN, "README.md has no examples"
    for b in BLOCKS:
        assert b.lang in (*SHELLS, "python"), f"{b.id}: a fence needs bash, sh or python"
        assert b.mark != "not tested" or len(b.value) > 10, f"{b.id}: say why it is not run"
    print("\nREADME examples run by tests/test_readme.py:")
    for b in BLOCKS:
        what = {None: "runs", "file": f"is the file {b.value}"}.get(b.mark,
                                                                  f"not tested: {b.value}")
        print(f"  {b.id:<18} {what}")
    assert {b.value for b in BLOCKS if b.mark == "file"} == {"train.py"}
    assert all(key in "\n".join(b.text for b in RUN) for key in EXPECT), "EXPECT is stale"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A live daemon and the reader's folder."""
    root = tmp_path_factory.mktemp("readme")
    (root / "home").mkdir()
    work = root / "work"
    work.mkdir()
    reader_files(work)
    here = Path.cwd()
    os.chdir(work)  # the reader runs `llmos up` in the clone, where the commands run too
    try:
        live = LiveDaemon(root / "home").start()
    finally:
        os.chdir(here)
    for b in BLOCKS:
        if b.mark == "file":
            (work / b.value).write_text(b.text + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(LLMOS_URL=live.url, LLMOS_HOME=str(live.home), COLUMNS="100",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    yield live, work, env
    live.stop()
    live.client.close()


def reader_files(work: Path) -> None:
    """What the README presumes the reader has, next to the clone's .venv and examples."""
    (work / ".venv").symlink_to(Path(sys.prefix))
    (work / "examples").symlink_to(ROOT / "examples")
    (work / "my-hf-folder").symlink_to(minilm_dir())
    (work / "tokenizer").symlink_to(minilm_dir())
    (work / smollm2_gguf().name).symlink_to(smollm2_gguf())
    (work / "crawl").mkdir()
    (work / "more").mkdir()
    for i, text in enumerate(web_documents()):
        if i % 2:
            (work / "crawl" / f"page{i}.html").write_text(
                f"<html><body><h1>Page {i}</h1><p>{text}</p></body></html>")
        else:
            (work / "crawl" / f"note{i}.txt").write_text(text)
    with gzip.open(work / "more" / "extra.jsonl.gz", "wt") as f:
        for text in web_documents(offset=7):
            f.write(json.dumps({"text": text}) + "\n")
    spec = importlib.util.spec_from_file_location(
        "topic_corpus", Path(__file__).parent / "topic_corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    (work / "topics.jsonl").write_text("\n".join(json.dumps(r) for r in corpus.train_rows()))


TOPICS = ["the harbour", "a small bakery", "the mountain railway", "an old library",
          "the city council", "a community garden", "the night market", "a river ferry",
          "the science museum", "a village school", "the football club", "a jazz band"]


def web_documents(offset: int = 0, n: int = 6) -> list[str]:
    """English prose long enough for the web recipe's length and quality filters."""
    docs = []
    for i in range(offset, offset + n):
        topic = TOPICS[i % len(TOPICS)]
        docs.append(
            f"Visitors who come to {topic} in the early morning often find it quiet and calm. "
            f"Over the years, {topic} has changed a great deal, yet people still describe it "
            f"as one of the places that give the town its character. Local historians have "
            f"written about how {topic} began, who worked there, and why so many families "
            f"remember it fondly. This year a new group of volunteers, number {i}, started "
            f"collecting photographs and letters so that the story of {topic} can be shared "
            f"with children who will grow up long after the current residents have moved on.")
    return docs


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_readme_example_runs_verbatim(session, block):
    live, work, env = session
    print(f"\nrunning README.md {block.id}:\n{block.text}")
    if block.lang in SHELLS:
        cmd = ["bash", "-c", shell_script(block.text)]
    else:
        cmd = [sys.executable, "-c", block.text]
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                            timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"README.md {block.id} failed:\n{output[-6000:]}"
    for key, expected in EXPECT.items():
        if key in block.text:
            for text in expected:
                assert text in output, f"README.md {block.id}: no {text!r} in\n{output[-6000:]}"
    if "artifacts get $ART" in block.text:
        assert (work / "copy.txt").read_text() == (work / "data.txt").read_text()
