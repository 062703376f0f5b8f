"""Interview practice: the question bank, its schema, a score book that persists, and a practice widget.

The bank (`helpers/data/question_bank.json`) is data, not prose: every entry names the lesson cells whose
computed outputs back its answer, so "show me the evidence" can open them from the committed notebooks.

    bank = load_bank()                                   # validated; a bad entry fails with its id
    pick = filter_questions(bank, lesson="02", kind="trap")
    book = ScoreBook()                                   # $MICROSCOPE_INTERVIEW_SCORES, else the user's config dir
    book.record(pick[0], covered=[0, 2])                 # ticked rubric points 0 and 2
    book.topic_scores()                                  # per topic: attempts, latest and mean share covered
    practice_widget(bank)                                # the ipywidgets practice tool (offline)
"""
from __future__ import annotations

import html
import json
import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nbformat

from helpers.errors import MicroscopeError

ROOT = Path(__file__).resolve().parent.parent
BANK_PATH = Path(__file__).resolve().parent / "data" / "question_bank.json"
SCORES_ENV = "MICROSCOPE_INTERVIEW_SCORES"
KINDS = ("concept", "experiment design", "debugging a claim", "trap")
DIFFICULTIES = ("warm-up", "core", "stretch")
FIELDS = {  # field -> (type, required)
    "id": (str, True), "topic": (str, True), "kind": (str, True), "difficulty": (str, True),
    "lessons": (list, True), "evidence": (list, True), "question": (str, True), "claim": (str, False),
    "rubric": (list, True), "wrong_answers": (list, True), "follow_ups": (list, True), "model_answer": (str, True),
}
RUBRIC_POINTS = (3, 6)
# A decimal number in an answer (0.81, -7.55, 4.3e-06 is not matched on purpose: write those as the cell prints them).
DECIMAL = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.])")


class InterviewError(MicroscopeError):
    """A question bank, filter or score file that the practice tool cannot use."""


# ----------------------------------------------------------------------------------------------- the bank


@dataclass(frozen=True)
class Evidence:
    """One lesson cell whose computed output backs an answer."""

    notebook: str  # path from the repository root, e.g. "notebooks/02_induction_heads.ipynb"
    cell: str  # the cell's nbformat id
    shows: str  # what to look for in it


@dataclass(frozen=True)
class Question:
    id: str
    topic: str
    kind: str
    difficulty: str
    lessons: tuple[str, ...]
    evidence: tuple[Evidence, ...]
    question: str
    rubric: tuple[str, ...]
    wrong_answers: tuple[str, ...]
    follow_ups: tuple[str, ...]
    model_answer: str
    claim: str = ""


@dataclass(frozen=True)
class Bank:
    lessons: dict  # "02" -> {"title": ..., "notebook": path or None, "status": "written" | "planned"}
    topics: tuple[str, ...]
    questions: tuple[Question, ...] = field(default=())

    def get(self, question_id: str) -> Question:
        for question in self.questions:
            if question.id == question_id:
                return question
        raise InterviewError(f"no question with id {question_id!r} in the bank; ids look like "
                             f"{', '.join(repr(q.id) for q in self.questions[:3])}")


def _entry_error(entry_id: str, problem: str) -> InterviewError:
    return InterviewError(f"question bank entry {entry_id!r}: {problem}. Fix the entry in the bank file.")


def _check_strings(entry_id: str, name: str, values: list, low: int = 1, high: int | None = None) -> None:
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise _entry_error(entry_id, f"every item of {name!r} must be a non-empty string")
    if len(values) < low or (high is not None and len(values) > high):
        span = f"{low} to {high}" if high is not None else f"at least {low}"
        raise _entry_error(entry_id, f"{name!r} needs {span} items, has {len(values)}")


def _notebook_cells(path: Path, cache: dict) -> dict:
    if path not in cache:
        cache[path] = {cell.get("id"): cell for cell in nbformat.read(path, as_version=4).cells}
    return cache[path]


def validate_entry(entry, lessons: dict, topics: tuple[str, ...], root: Path = ROOT,
                   cells: dict | None = None) -> Question:
    """One bank entry as a Question, or an InterviewError naming its id and what is wrong."""
    cells = {} if cells is None else cells
    entry_id = entry.get("id", "<no id>") if isinstance(entry, dict) else "<not an object>"
    if not isinstance(entry, dict):
        raise _entry_error(entry_id, f"an entry must be a JSON object, got {type(entry).__name__}")
    if not isinstance(entry_id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", entry_id):
        raise _entry_error(str(entry_id), "the id must be lower-case letters, digits and hyphens")
    for name, (kind, required) in FIELDS.items():
        if name not in entry:
            if required:
                raise _entry_error(entry_id, f"missing field {name!r}")
            continue
        if not isinstance(entry[name], kind):
            raise _entry_error(entry_id, f"field {name!r} must be a {kind.__name__}, got {type(entry[name]).__name__}")
        if kind is str and not entry[name].strip():
            raise _entry_error(entry_id, f"field {name!r} is empty")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise _entry_error(entry_id, f"unknown field(s) {unknown}; the fields are {sorted(FIELDS)}")
    if entry["kind"] not in KINDS:
        raise _entry_error(entry_id, f"kind {entry['kind']!r} is not one of {list(KINDS)}")
    if entry["difficulty"] not in DIFFICULTIES:
        raise _entry_error(entry_id, f"difficulty {entry['difficulty']!r} is not one of {list(DIFFICULTIES)}")
    if entry["topic"] not in topics:
        raise _entry_error(entry_id, f"topic {entry['topic']!r} is not one of the bank's topics")
    if entry["kind"] == "debugging a claim" and "claim" not in entry:
        raise _entry_error(entry_id, "a 'debugging a claim' entry needs a 'claim' (the flawed analysis to critique)")
    _check_strings(entry_id, "rubric", entry["rubric"], *RUBRIC_POINTS)
    _check_strings(entry_id, "wrong_answers", entry["wrong_answers"])
    _check_strings(entry_id, "follow_ups", entry["follow_ups"])
    _check_strings(entry_id, "lessons", entry["lessons"])
    for lesson in entry["lessons"]:
        if lesson not in lessons:
            raise _entry_error(entry_id, f"lesson {lesson!r} is not in the bank's lesson list {sorted(lessons)}")
    evidence = []
    for item in entry["evidence"]:
        if not isinstance(item, dict) or set(item) != {"notebook", "cell", "shows"} or not all(
                isinstance(v, str) and v for v in item.values()):
            raise _entry_error(entry_id, "each evidence item needs exactly 'notebook', 'cell' and 'shows' (strings)")
        path = root / item["notebook"]
        if not path.is_file():
            raise _entry_error(entry_id, f"cites notebook {item['notebook']!r}, which does not exist")
        if item["cell"] not in _notebook_cells(path, cells):
            raise _entry_error(entry_id, f"cites cell {item['cell']!r} of {item['notebook']}, which has no such cell")
        evidence.append(Evidence(item["notebook"], item["cell"], item["shows"]))
    cited = {_lesson_of(e.notebook) for e in evidence}
    for lesson in entry["lessons"]:
        if lessons[lesson].get("notebook") and lesson not in cited:
            raise _entry_error(entry_id, f"lists lesson {lesson}, which is written, but cites none of its cells")
        if not lessons[lesson].get("notebook") and lessons[lesson].get("status") != "planned":
            raise _entry_error(entry_id, f"lesson {lesson} has no notebook and is not marked planned")
    if not evidence and not all(lessons[lesson].get("status") == "planned" for lesson in entry["lessons"]):
        raise _entry_error(entry_id, "cites no cell; only questions on planned lessons may "
                                     "(cite the cells behind the answer)")
    return Question(
        id=entry_id, topic=entry["topic"], kind=entry["kind"], difficulty=entry["difficulty"],
        lessons=tuple(entry["lessons"]), evidence=tuple(evidence), question=entry["question"],
        rubric=tuple(entry["rubric"]), wrong_answers=tuple(entry["wrong_answers"]),
        follow_ups=tuple(entry["follow_ups"]), model_answer=entry["model_answer"], claim=entry.get("claim", ""))


def _lesson_of(notebook: str) -> str:
    return Path(notebook).name[:2]


def load_bank(path: str | Path = BANK_PATH, root: Path = ROOT) -> Bank:
    """The validated question bank; any bad entry raises an InterviewError naming its id."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InterviewError(f"no question bank at {path}; pass the path of a bank file") from None
    except json.JSONDecodeError as error:
        raise InterviewError(f"{path} is not valid JSON ({error}); fix the file") from None
    if not isinstance(data, dict) or not {"lessons", "topics", "questions"} <= set(data):
        raise InterviewError(f"{path} must be a JSON object with 'lessons', 'topics' and 'questions'")
    lessons, topics = data["lessons"], tuple(data["topics"])
    for number, lesson in lessons.items():
        notebook = lesson.get("notebook")
        if notebook and not (root / notebook).is_file():
            raise InterviewError(f"{path}: lesson {number} points at {notebook}, which does not exist; "
                                 "fix the path or mark the lesson planned (notebook null)")
    cells: dict = {}
    questions, seen = [], set()
    for entry in data["questions"]:
        question = validate_entry(entry, lessons, topics, root, cells)
        if question.id in seen:
            raise _entry_error(question.id, "the id is used twice")
        seen.add(question.id)
        questions.append(question)
    return Bank(lessons=lessons, topics=topics, questions=tuple(questions))


def filter_questions(bank: Bank, lesson: str | None = None, kind: str | None = None,
                     difficulty: str | None = None, topic: str | None = None) -> list[Question]:
    """The questions matching every filter given (None = any), in bank order."""
    for name, value, allowed in (("lesson", lesson, tuple(bank.lessons)), ("kind", kind, KINDS),
                                 ("difficulty", difficulty, DIFFICULTIES), ("topic", topic, bank.topics)):
        if value is not None and value not in allowed:
            raise InterviewError(f"{name} {value!r} is not one of {list(allowed)}; pass one of them or None for any")
    return [q for q in bank.questions
            if (lesson is None or lesson in q.lessons) and (kind is None or q.kind == kind)
            and (difficulty is None or q.difficulty == difficulty) and (topic is None or q.topic == topic)]


def cell_evidence(evidence: Evidence, root: Path = ROOT, max_chars: int = 3000) -> dict:
    """The cited cell as committed: {'source', 'output' (its text outputs), 'images' (base64 PNGs), 'cell_type'}."""
    path = root / evidence.notebook
    if not path.is_file():
        raise InterviewError(f"{evidence.notebook} is not here (installed without the notebooks?); "
                             "open the course's repository to see the evidence")
    cell = _notebook_cells(path, {}).get(evidence.cell)
    if cell is None:
        raise InterviewError(f"{evidence.notebook} has no cell {evidence.cell!r}; the bank is out of date")
    texts, images = [], []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            texts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            data = output.get("data", {})
            if "image/png" in data:
                images.append(data["image/png"])
            elif "application/vnd.jupyter.widget-view+json" in data:
                continue  # a widget's text is a repr, not evidence
            elif "text/plain" in data:
                texts.append(data["text/plain"] + "\n")
        elif output.output_type == "error":
            texts.append(f"{output.ename}: {output.evalue}\n")
    text = _PROGRESS.sub("", "".join(texts))
    if len(text) > max_chars:
        text = text[:max_chars] + f"\n... ({len(text) - max_chars} more characters in the notebook)"
    return {"source": cell.source, "output": text, "images": images, "cell_type": cell.cell_type}


_PROGRESS = re.compile(r"[^\n]*\d+%\|[^\n]*?(?:it/s\]|s/it\]|\?it/s\])")


def evidence_text(evidence: Evidence, root: Path = ROOT) -> str:
    """The cited cell as plain text: where it is, what to look for, its source and its text output."""
    shown = cell_evidence(evidence, root)
    parts = [f"{evidence.notebook}, cell {evidence.cell}: {evidence.shows}", "--- source ---", shown["source"].rstrip()]
    if shown["output"].strip():
        parts += ["--- output ---", shown["output"].rstrip()]
    if shown["images"]:
        parts.append(f"(+ {len(shown['images'])} figure(s))")
    return "\n".join(parts)


def decimals(text: str) -> list[str]:
    """The decimal numbers written in a text (what a citation test compares with the cited cells' outputs)."""
    return [number.lstrip("+") for number in DECIMAL.findall(text)]


def stale_numbers(question: Question, root: Path = ROOT) -> list[str]:
    """Decimal numbers in the model answer or rubric that no cited cell's output prints (should be empty).

    Numbers are compared as written (to the digits the cell prints), ignoring the sign.
    """
    printed = set()
    for item in question.evidence:
        printed.update(n.lstrip("-") for n in decimals(cell_evidence(item, root, max_chars=10**9)["output"]))
    written = decimals(question.model_answer + "\n" + "\n".join(question.rubric))
    return [number for number in written if number.lstrip("-") not in printed]  # a sign may be in the prose


# ----------------------------------------------------------------------------------------------- scores


def default_scores_path() -> Path:
    """$MICROSCOPE_INTERVIEW_SCORES, else interview_scores.json in the user's config directory."""
    if os.environ.get(SCORES_ENV):
        return Path(os.environ[SCORES_ENV]).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ai-microscope" / "interview_scores.json"


class ScoreBook:
    """Attempts per question, kept in a local JSON file so progress survives sessions."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_scores_path()
        self.attempts = self._read()

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
            attempts = data["attempts"]
            if not isinstance(attempts, list) or not all(
                    isinstance(a, dict) and {"id", "topic", "covered", "total"} <= set(a) for a in attempts):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InterviewError(f"the score file {self.path} is damaged; move or delete it to start a new one "
                                 f"(or set {SCORES_ENV} to another file)") from None
        return attempts

    def record(self, question: Question, covered, seconds: float | None = None) -> dict:
        """Save one attempt: the indices of the rubric points the learner covered."""
        covered = sorted(set(covered))
        if not all(isinstance(i, int) and 0 <= i < len(question.rubric) for i in covered):
            raise InterviewError(f"covered must be rubric indices from 0 to {len(question.rubric) - 1} for "
                                 f"{question.id!r}, got {covered}")
        attempt = {"id": question.id, "topic": question.topic, "covered": covered, "total": len(question.rubric),
                   "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if seconds is not None:
            attempt["seconds"] = round(float(seconds), 1)
        self.attempts.append(attempt)
        self._write()
        return attempt

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write a temporary file and rename it, so an interrupted save never leaves half a file.
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".interview_scores.")
        with os.fdopen(handle, "w") as out:
            json.dump({"version": 1, "attempts": self.attempts}, out, indent=1)
        os.replace(temporary, self.path)

    def topic_scores(self) -> dict[str, dict]:
        """Per topic: attempts, questions tried, mean share covered (latest attempt per question) and all attempts."""
        latest: dict[str, dict] = {}
        for attempt in self.attempts:
            latest[attempt["id"]] = attempt
        scores: dict[str, dict] = {}
        for attempt in self.attempts:
            entry = scores.setdefault(attempt["topic"], {"attempts": 0, "questions": 0, "latest": 0.0, "all": 0.0})
            entry["attempts"] += 1
            entry["all"] += len(attempt["covered"]) / attempt["total"]
        for attempt in latest.values():
            entry = scores[attempt["topic"]]
            entry["questions"] += 1
            entry["latest"] += len(attempt["covered"]) / attempt["total"]
        for entry in scores.values():
            entry["latest"] = round(entry["latest"] / entry["questions"], 3)
            entry["all"] = round(entry["all"] / entry["attempts"], 3)
        return dict(sorted(scores.items()))


def _shown_path(path: Path) -> str:
    """The path with the home folder written as ~ (shorter, and the same for every learner)."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def scores_html(book: ScoreBook) -> str:
    """The per-topic score table as HTML (what the widget shows)."""
    scores = book.topic_scores()
    if not scores:
        return f"<i>No scores yet. They will be kept in {html.escape(_shown_path(book.path))}.</i>"
    rows = "".join(
        f"<tr><td>{html.escape(topic)}</td><td>{s['questions']}</td><td>{s['attempts']}</td>"
        f"<td>{s['latest']:.0%}</td></tr>" for topic, s in scores.items())
    return ("<table class='interview-scores'><tr><th>topic</th><th>questions</th><th>attempts</th>"
            f"<th>rubric covered (latest)</th></tr>{rows}</table>"
            f"<div style='font-size: 85%'>Kept in {html.escape(_shown_path(book.path))}</div>")


# ----------------------------------------------------------------------------------------------- the widget


def _seconds(total: int) -> str:
    return f"{total // 60}:{total % 60:02d}"


ANY = "any"


class Practice:
    """The practice tool's state and logic; `.view` is the ipywidgets view (tests drive the logic without a browser)."""

    def __init__(self, bank: Bank | None = None, scores: ScoreBook | str | Path | None = None, seed: int = 0):
        import ipywidgets as widgets

        self.bank = bank if bank is not None else load_bank()
        self.book = scores if isinstance(scores, ScoreBook) else ScoreBook(scores)
        self.rng = random.Random(seed)
        self.matching: list[Question] = []
        self.position = 0
        self.revealed = False
        self.mock: list[Question] | None = None  # the mock interview's questions, when one runs
        self.followed_up = False
        self.mock_scores: list[float] = []

        any_ = [("any", ANY)]  # a string, not None: a Dropdown shows None as an empty box
        self.lesson = widgets.Dropdown(description="lesson", options=any_ + [
            (f"{n} {info['title']}", n) for n, info in self.bank.lessons.items()], value=ANY)
        self.kind = widgets.Dropdown(description="kind", options=any_ + [(k, k) for k in KINDS], value=ANY)
        self.difficulty = widgets.Dropdown(description="difficulty", options=any_ + [(d, d) for d in DIFFICULTIES],
                                           value=ANY)
        self.count = widgets.HTML()
        self.header = widgets.HTML()
        self.question_html = widgets.HTML(layout=widgets.Layout(max_width="760px"))
        self.answer = widgets.Textarea(placeholder="Write your answer here, as you would say it in the interview.",
                                       layout=widgets.Layout(width="760px", height="120px"))
        self.answer.add_class("interview-answer")
        button = lambda label, **style: widgets.Button(description=label, layout=widgets.Layout(width="auto"), **style)
        self.reveal_button = button("Reveal rubric", button_style="info")
        self.evidence_button = button("Show me the evidence")
        self.next_button = button("Next question")
        self.record_button = button("Record my score", button_style="success", disabled=True)
        self.checkboxes: list = []
        self.rubric_box = widgets.VBox()
        self.rubric_box.add_class("interview-rubric")
        self.after_html = widgets.HTML(layout=widgets.Layout(max_width="760px"))
        self.evidence_box = widgets.VBox()
        self.evidence_box.add_class("interview-evidence")
        self.status = widgets.HTML()
        self.status.add_class("interview-status")
        self.scores = widgets.HTML(scores_html(self.book))
        self.scores.add_class("interview-score-table")
        self.mock_size = widgets.BoundedIntText(value=3, min=1, max=20, description="questions",
                                                layout=widgets.Layout(width="160px"))
        self.mock_minutes = widgets.BoundedIntText(value=4, min=1, max=30, description="min each",
                                                   layout=widgets.Layout(width="160px"))
        self.mock_button = button("Start mock interview", button_style="warning")
        self.timer = widgets.Play(value=0, min=0, max=240, interval=1000, show_repeat=False)
        self.clock = widgets.HTML()
        self.follow_up_html = widgets.HTML(layout=widgets.Layout(max_width="760px"))

        for dropdown in (self.lesson, self.kind, self.difficulty):
            dropdown.observe(self._on_filter, names="value")
        self.reveal_button.on_click(self._on_reveal_button)
        self.evidence_button.on_click(lambda _: self.show_evidence())
        self.next_button.on_click(lambda _: self.next_question())
        self.record_button.on_click(lambda _: self.record())
        self.mock_button.on_click(self._on_mock_button)
        self.timer.observe(self._on_tick, names="value")

        title = widgets.HTML("<b>Interview practice</b>: write an answer, reveal the rubric, tick what you "
                             "covered, record it. Filter the bank, or start a timed mock interview.")
        self.view = widgets.VBox([
            title,
            widgets.HBox([self.lesson, self.kind, self.difficulty]), self.count,
            widgets.HBox([self.mock_button, self.mock_size, self.mock_minutes, self.timer, self.clock]),
            self.header, self.question_html, self.follow_up_html, self.answer,
            widgets.HBox([self.reveal_button, self.evidence_button, self.next_button]),
            self.rubric_box, self.record_button, self.status, self.after_html, self.evidence_box,
            widgets.HTML("<b>Your scores per topic</b>"), self.scores,
        ])
        self.view.add_class("interview-practice")  # the browser test finds the widget by this class
        self._on_filter()

    # --- filtering and moving between questions
    @property
    def current(self) -> Question | None:
        questions = self.mock if self.mock is not None else self.matching
        return questions[self.position] if self.position < len(questions) else None

    def _on_filter(self, _=None) -> None:
        self.mock = None
        self.timer.playing = False
        self.clock.value = ""
        self.mock_button.description = "Start mock interview"
        chosen = [None if box.value == ANY else box.value for box in (self.lesson, self.kind, self.difficulty)]
        self.matching = filter_questions(self.bank, *chosen)
        self.count.value = f"{len(self.matching)} of {len(self.bank.questions)} questions match"
        self.position = 0
        self.show()

    def next_question(self) -> None:
        questions = self.mock if self.mock is not None else self.matching
        if self.mock is not None and self.position + 1 >= len(questions):
            self._finish_mock()
            return
        self.position = (self.position + 1) % max(1, len(questions))
        self.show()

    def _show(self) -> None:
        """Display the current question with the answer box cleared and the rubric hidden."""
        question = self.current
        self.revealed = self.followed_up = False
        self.follow_up_html.value = ""
        self.reveal_button.description = "Done: follow-up?" if self.mock is not None else "Reveal rubric"
        self.answer.value = ""
        self.rubric_box.children, self.checkboxes = (), []
        self.after_html.value, self.status.value = "", ""
        self.evidence_box.children = ()
        self.record_button.disabled = True
        self.reveal_button.disabled = question is None
        self.evidence_button.disabled = question is None or not question.evidence
        if question is None:
            self.header.value = ""
            self.question_html.value = "<i>No question matches these filters.</i>"
            return
        where = (f"mock interview, question {self.position + 1} of {len(self.mock)}" if self.mock is not None
                 else f"question {self.position + 1} of {len(self.matching)}")
        lessons = ", ".join(question.lessons) or "none"
        self.header.value = (f"<span style='color: #555'>{where} · {html.escape(question.kind)} · "
                             f"{html.escape(question.difficulty)} · topic: {html.escape(question.topic)} · "
                             f"lesson {lessons} · id {question.id}</span>")
        body = f"<p><b>{html.escape(question.question)}</b></p>"
        if question.claim:
            body += ("<blockquote style='border-left: 3px solid #c77; padding-left: 8px'>"
                     f"{html.escape(question.claim)}</blockquote>")
        self.question_html.value = body

    # --- reveal, tick, record
    def reveal(self) -> None:
        """Show the rubric as boxes to tick, the model answer, common wrong answers and follow-ups."""
        import ipywidgets as widgets

        question = self.current
        if question is None or self.revealed:
            return
        self.revealed = True
        self.timer.playing = False
        # The point's text sits beside the box (a Checkbox's own description is cut off when long).
        self.checkboxes = [widgets.Checkbox(value=False, indent=False, layout=widgets.Layout(width="28px"))
                           for _ in question.rubric]
        rows = [widgets.HBox([box, widgets.HTML(html.escape(point), layout=widgets.Layout(max_width="720px"))])
                for box, point in zip(self.checkboxes, question.rubric)]
        self.rubric_box.children = [widgets.HTML("<b>Rubric</b>: tick each point your answer covered.")] + rows
        self.record_button.disabled = False
        items = lambda values: "".join(f"<li>{html.escape(v)}</li>" for v in values)
        self.after_html.value = (
            "<details open><summary><b>A model answer</b></summary>"
            f"<p>{html.escape(question.model_answer)}</p></details>"
            f"<details><summary><b>Common wrong answers</b></summary><ul>{items(question.wrong_answers)}</ul></details>"
            f"<p><b>The interviewer follows up</b>:</p><ul>{items(question.follow_ups)}</ul>")

    def _on_reveal_button(self, _=None) -> None:
        # In a mock interview the interviewer first asks a follow-up; the rubric opens on the second press.
        if self.mock is not None and not self.followed_up:
            self.ask_follow_up()
        else:
            self.reveal()

    def ask_follow_up(self) -> str | None:
        """Mock interview: show the interviewer's first follow-up, to answer in the same box before the rubric."""
        question = self.current
        if question is None or self.followed_up:
            return None
        self.followed_up = True
        self.follow_up_html.value = (f"<p><b>The interviewer follows up</b>: {html.escape(question.follow_ups[0])}</p>")
        self.reveal_button.description = "Reveal rubric"
        return question.follow_ups[0]

    def tick(self, *indices: int) -> None:
        """Tick rubric points (what clicking the boxes does)."""
        if not self.revealed:
            raise InterviewError("reveal the rubric first (the Reveal rubric button), then tick what you covered")
        for i in indices:
            if not isinstance(i, int) or not 0 <= i < len(self.checkboxes):
                raise InterviewError(f"rubric point {i!r} does not exist; this question has points 0 to "
                                     f"{len(self.checkboxes) - 1}")
            self.checkboxes[i].value = True

    def record(self) -> dict | None:
        """Save the ticked points to the score book and refresh the per-topic scores."""
        question = self.current
        if question is None or not self.revealed:
            return None
        covered = [i for i, box in enumerate(self.checkboxes) if box.value]
        seconds = self.timer.value if self.mock is not None else None
        attempt = self.book.record(question, covered, seconds)
        self.record_button.disabled = True
        self.status.value = (f"<b>Recorded: {len(covered)} of {len(question.rubric)} rubric points</b> "
                             f"for {html.escape(question.topic)}.")
        if self.mock is not None:
            self.mock_scores.append(len(covered) / len(question.rubric))
        self.scores.value = scores_html(self.book)
        return attempt

    # --- evidence
    def show_evidence(self) -> None:
        """Show each cited lesson cell's source and output, read from the committed notebook."""
        import base64

        import ipywidgets as widgets

        question = self.current
        if question is None:
            return
        children = []
        for item in question.evidence:
            try:
                shown = cell_evidence(item)
            except InterviewError as error:
                children.append(widgets.HTML(f"<i>{html.escape(str(error))}</i>"))
                continue
            children.append(widgets.HTML(
                f"<b>{html.escape(item.notebook)}</b>, cell <code>{html.escape(item.cell)}</code>: "
                f"{html.escape(item.shows)}"
                "<pre style='background: #f4f4f4; max-height: 220px; overflow: auto'>"
                f"{html.escape(shown['source'])}</pre>"
                + (f"<pre style='max-height: 260px; overflow: auto'>{html.escape(shown['output'])}</pre>"
                   if shown["output"].strip() else "")))
            for image in shown["images"][:1]:
                children.append(widgets.Image(value=base64.b64decode(image), format="png",
                                              layout=widgets.Layout(max_width="560px")))
        if not question.evidence:
            children.append(widgets.HTML("<i>This question's lesson is planned; no cell to show yet.</i>"))
        self.evidence_box.children = children

    # --- the mock interview
    def start_mock(self, n_questions: int = 3, seconds_each: int = 240) -> list[Question]:
        """A timed sequence of questions drawn from the current filter; the rubric opens when time runs out."""
        if not self.matching:
            raise InterviewError("no question matches the filters; widen them before starting a mock interview")
        if n_questions < 1 or seconds_each < 1:
            raise InterviewError("a mock interview needs at least 1 question and 1 second per question")
        self.mock = self.rng.sample(self.matching, min(n_questions, len(self.matching)))
        self.mock_scores = []
        self.position = 0
        self.timer.max = seconds_each
        self.mock_button.description = "Stop mock interview"
        self.show()
        return self.mock

    def _start_timer(self, seconds: int) -> None:
        self.timer.playing = False
        self.timer.max = seconds
        self.timer.value = 0
        self.clock.value = f"{_seconds(seconds)} left"
        self.timer.playing = True  # the browser ticks the Play widget once a second; no kernel thread

    def show(self) -> None:
        """Display the current question; in a mock interview, restart the clock for it."""
        self._show()
        if self.mock is not None and self.current is not None:
            self._start_timer(self.timer.max)

    def _on_tick(self, change) -> None:
        if self.mock is None:
            return
        left = self.timer.max - change["new"]
        self.clock.value = f"{_seconds(left)} left" if left > 0 else "<b>time is up</b>"
        if left <= 0 and not self.revealed:
            self.reveal()

    def _on_mock_button(self, _=None) -> None:
        if self.mock is not None:
            self._finish_mock()
        else:
            self.start_mock(self.mock_size.value, self.mock_minutes.value * 60)

    def _finish_mock(self) -> None:
        done, scores = len(self.mock or []), self.mock_scores
        self.mock = None
        self.timer.playing = False
        self.clock.value = ""
        self.mock_button.description = "Start mock interview"
        mean = f"{sum(scores) / len(scores):.0%}" if scores else "nothing recorded"
        self.position = 0
        self._show()
        self.status.value = (f"<b>Mock interview over</b>: {done} questions, {len(scores)} recorded, "
                             f"mean rubric covered {mean}.")


def practice_widget(bank: Bank | None = None, scores: ScoreBook | str | Path | None = None, seed: int = 0):
    """The interview practice tool as an ipywidgets view."""
    return Practice(bank, scores, seed).view
