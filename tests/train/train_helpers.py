"""Helpers for the training tests: a job context that is asked to yield
at a given step, the job's reported events, and small toy data sets a tiny model can learn."""

from __future__ import annotations

import json
from pathlib import Path

from llmos.kernel.context import EVENTS_FILE, JobContext


class YieldAt(JobContext):
    """A real job context whose kernel asks it to yield once progress reaches ``step``
    (what preemption does, at a chosen moment). Progress is reported every ``log_every``
    steps, so tests set ``log_every: 1``."""

    def __init__(self, workdir: Path, step: int | None = None, attempt: int = 1):
        Path(workdir).mkdir(parents=True, exist_ok=True)
        super().__init__(job_id=1, attempt=attempt, workdir=Path(workdir))
        self.yield_step = step

    def progress(self, done, total=None, unit=None, **info):
        super().progress(done, total, unit, **info)
        if self.yield_step is not None and unit == "steps" and done >= self.yield_step:
            self._request_yield()


def job(workdir: Path, attempt: int = 1) -> JobContext:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return JobContext(job_id=1, attempt=attempt, workdir=Path(workdir))


def events(workdir: Path) -> list[dict]:
    path = Path(workdir) / EVENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metric_values(workdir: Path, name: str) -> list[tuple[int, float]]:
    return [(e["step"], e["value"]) for e in events(workdir)
            if e["type"] == "metric" and e["name"] == name]


TOPICS = {
    "sport": ["goal", "team", "match", "ball", "coach", "score"],
    "food": ["soup", "bread", "basil", "salt", "cheese", "pasta"],
    "tech": ["laptop", "chip", "code", "screen", "keyboard", "server"],
}


def topic_rows(n_per_topic: int) -> list[dict]:
    """Rows of two or three words of one topic each (``id``, ``text``, ``label``)."""
    rows = []
    for i in range(n_per_topic):
        for label, words in TOPICS.items():
            picked = [words[i % 6], words[(i + 1 + i // 6) % 6]] + ([words[(i + 3) % 6]]
                                                                  if i % 2 else [])
            rows.append({"id": f"{label}-{i}", "text": " ".join(picked), "label": label})
    return rows


PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
CITIES = ["paris", "tokyo", "lima", "oslo", "cairo", "delhi"]


def ner_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        who, where = PEOPLE[i % len(PEOPLE)], CITIES[(i * 5) % len(CITIES)]
        rows.append({"tokens": [who, "smith", "went", "to", where, "today"],
                     "tags": ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]})
    return rows


WORDS = ["cat", "dog", "sun", "sea", "red", "big", "hot", "old", "tea", "owl"]


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"repeat {w}"},
                          {"role": "assistant", "content": f"{w} {w} {w}"}]}
            for w in (WORDS * (n // len(WORDS) + 1))[:n]]


def completion_rows(n: int) -> list[dict]:
    return [{"prompt": f"repeat {w}:", "completion": f" {w} {w} {w}"}
            for w in (WORDS * (n // len(WORDS) + 1))[:n]]


def text_rows(n: int) -> list[dict]:
    return [{"text": f"{w} {w} {w} {w}"} for w in (WORDS * (n // len(WORDS) + 1))[:n]]
