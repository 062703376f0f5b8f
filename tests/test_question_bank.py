"""The interview question bank: schema, bad entries named by id, coverage of every lesson and topic, cited numbers."""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from helpers import interview
from helpers.interview import FIELDS, KINDS, InterviewError, load_bank, stale_numbers

ROOT = Path(__file__).resolve().parent.parent
RAW = json.loads(interview.BANK_PATH.read_text())

# The issue's required topics, each mapped to the bank's topic name.
REQUIRED_TOPICS = [
    "what interpretability is", "residual stream", "superposition", "linear representation hypothesis",
    "logit lens and tuned lens", "attention and its limits", "induction heads", "ablation",
    "activation, attribution and path patching", "probes and controls", "steering", "planning",
    "chain-of-thought faithfulness", "refusal, jailbreaks and hallucinations", "research project design",
]
# Subjects inside a topic that the issue names on their own: each must be in some question's text.
REQUIRED_SUBJECTS = ["tuned lens", "path patching", "attribution patching", "jailbreak", "hallucinat", "refusal",
                     "sparse autoencoder", "take-home"]
# The issue's traps, each as words its question must contain, asked as a trap.
TRAPS = [("fully interpret",), ("attention explanation",), ("probe", "95%"), ("ablating", "hurts"),
         ("refusal direction", "safe"), ("step by step", "how it decided")]


@pytest.fixture(scope="module")
def bank():
    return load_bank()


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(data))
    return path


def _broken(tmp_path: Path, index: int, change) -> tuple[Path, str]:
    """A copy of the bank with entry `index` changed by `change(entry)`; returns its path and the entry's id."""
    data = copy.deepcopy(RAW)
    entry = data["questions"][index]
    change(entry)
    return _write(tmp_path, data), entry["id"]


# ----------------------------------------------------------------------------------------- schema


def test_bank_validates_and_has_at_least_60_questions(bank):
    assert len(bank.questions) >= 60


def test_every_entry_has_every_required_field_with_its_type():
    for entry in RAW["questions"]:
        for name, (kind, required) in FIELDS.items():
            if required:
                assert name in entry, f"{entry.get('id')}: missing {name}"
            if name in entry:
                assert isinstance(entry[name], kind), f"{entry['id']}: {name} is {type(entry[name]).__name__}"
        assert 3 <= len(entry["rubric"]) <= 6, entry["id"]
        assert entry["kind"] in KINDS, entry["id"]


def test_ids_are_unique():
    ids = [entry["id"] for entry in RAW["questions"]]
    assert [i for i, n in Counter(ids).items() if n > 1] == []


@pytest.mark.parametrize("field", [name for name, (_, required) in FIELDS.items() if required and name != "id"])
def test_an_entry_missing_a_field_fails_with_its_id(tmp_path, field):
    path, entry_id = _broken(tmp_path, 5, lambda entry: entry.pop(field))
    with pytest.raises(InterviewError, match=rf"'{re.escape(entry_id)}'.*missing field '{field}'"):
        load_bank(path)


def test_an_entry_citing_a_cell_that_does_not_exist_fails_with_its_id(tmp_path):
    path, entry_id = _broken(tmp_path, 7, lambda entry: entry["evidence"][0].update(cell="no-such-cell"))
    with pytest.raises(InterviewError, match=rf"'{entry_id}'.*cites cell 'no-such-cell'"):
        load_bank(path)


def test_an_entry_citing_a_notebook_that_does_not_exist_fails_with_its_id(tmp_path):
    path, entry_id = _broken(tmp_path, 7, lambda entry: entry["evidence"][0].update(notebook="notebooks/99_x.ipynb"))
    with pytest.raises(InterviewError, match=rf"'{entry_id}'.*notebooks/99_x.ipynb"):
        load_bank(path)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(rubric=e["rubric"][:2]), "'rubric' needs 3 to 6 items"),
    (lambda e: e.update(rubric=e["rubric"] + ["x"] * 5), "'rubric' needs 3 to 6 items"),
    (lambda e: e.update(rubric="one long string"), "field 'rubric' must be a list"),
    (lambda e: e.update(kind="quiz"), "kind 'quiz' is not one of"),
    (lambda e: e.update(difficulty="easy"), "difficulty 'easy' is not one of"),
    (lambda e: e.update(topic="astrology"), "topic 'astrology'"),
    (lambda e: e.update(lessons=["42"]), "lesson '42' is not in the bank's lesson list"),
    (lambda e: e.update(question="  "), "field 'question' is empty"),
    (lambda e: e.update(wrong_answers=[""]), "every item of 'wrong_answers'"),
    (lambda e: e.update(evidence=[]), "cites none of its cells"),
    (lambda e: e.update(extra=1), "unknown field"),
    (lambda e: e["evidence"][0].pop("shows"), "each evidence item needs exactly"),
])
def test_a_malformed_entry_fails_with_its_id_and_the_problem(tmp_path, change, message):
    path, entry_id = _broken(tmp_path, 3, change)
    with pytest.raises(InterviewError, match=re.escape(message)) as error:
        load_bank(path)
    assert repr(entry_id) in str(error.value)


def test_a_critique_item_without_its_claim_fails(tmp_path):
    index = next(i for i, e in enumerate(RAW["questions"]) if e["kind"] == "debugging a claim")
    path, entry_id = _broken(tmp_path, index, lambda entry: entry.pop("claim"))
    with pytest.raises(InterviewError, match=rf"'{entry_id}'.*needs a 'claim'"):
        load_bank(path)


def test_a_written_lesson_question_must_cite_a_cell_but_a_planned_one_need_not(tmp_path):
    data = copy.deepcopy(RAW)
    data["lessons"]["10"] = {"title": "A lesson not written yet", "notebook": None, "status": "planned"}
    planned = copy.deepcopy(data["questions"][0])
    planned.update(id="on-a-planned-lesson", lessons=["10"], evidence=[])
    data["questions"].append(planned)
    assert load_bank(_write(tmp_path, data)).get("on-a-planned-lesson").evidence == ()
    planned["lessons"] = ["02"]  # now it claims a written lesson without citing it
    with pytest.raises(InterviewError, match=r"'on-a-planned-lesson'.*lesson 02, which is written, but cites none"):
        load_bank(_write(tmp_path, data))
    planned["lessons"] = ["10"]
    data["lessons"]["10"]["status"] = "written"  # written, yet without a notebook
    with pytest.raises(InterviewError, match=r"'on-a-planned-lesson'.*lesson 10 has no notebook and is not marked planned"):
        load_bank(_write(tmp_path, data))


def test_a_repeated_id_fails(tmp_path):
    data = copy.deepcopy(RAW)
    data["questions"].append(copy.deepcopy(data["questions"][0]))
    with pytest.raises(InterviewError, match="used twice"):
        load_bank(_write(tmp_path, data))


def test_a_bank_that_is_not_json_says_so(tmp_path):
    path = tmp_path / "bank.json"
    path.write_text("{not json")
    with pytest.raises(InterviewError, match="not valid JSON"):
        load_bank(path)


# ----------------------------------------------------------------------------------------- coverage


def _lesson_notebooks() -> dict[str, Path]:
    return {path.name[:2]: path for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
            if path.name[:2] != "09"}  # lesson 09 is the practice lesson itself


def test_every_existing_lesson_is_in_the_bank_as_written_with_questions_citing_its_cells(bank):
    per_lesson = Counter(lesson for q in bank.questions for lesson in {e.notebook[10:12] for e in q.evidence})
    for number, path in _lesson_notebooks().items():
        entry = bank.lessons.get(number)
        assert entry is not None, f"lesson {number} ({path.name}) has no entry in the question bank"
        assert entry["status"] == "written" and entry["notebook"] == f"notebooks/{path.name}", (
            f"lesson {number} exists now: set its notebook to notebooks/{path.name}, mark it written, cite its cells")
        assert per_lesson[number] >= 5, f"lesson {number}: only {per_lesson[number]} questions cite its cells"


def test_planned_lessons_have_questions_too(bank):
    for number, entry in bank.lessons.items():
        if entry["status"] == "planned":
            assert sum(number in q.lessons for q in bank.questions) >= 3, f"planned lesson {number}"


def test_every_required_topic_has_questions(bank):
    counts = Counter(q.topic for q in bank.questions)
    assert [topic for topic in REQUIRED_TOPICS if counts[topic] == 0] == []
    assert set(REQUIRED_TOPICS) <= set(bank.topics)


@pytest.mark.parametrize("subject", REQUIRED_SUBJECTS)
def test_named_subjects_are_asked_about(bank, subject):
    assert any(subject in (q.question + q.model_answer).lower() for q in bank.questions)


@pytest.mark.parametrize("words", TRAPS, ids=[" ".join(w) for w in TRAPS])
def test_each_trap_of_the_issue_is_a_trap_question(bank, words):
    traps = [q for q in bank.questions if q.kind == "trap" and all(w.lower() in q.question.lower() for w in words)]
    assert traps, f"no trap question containing {words}"


def test_every_kind_and_difficulty_is_used_and_critique_items_carry_a_claim(bank):
    assert {q.kind for q in bank.questions} == set(KINDS)
    assert {q.difficulty for q in bank.questions} == set(interview.DIFFICULTIES)
    critiques = [q for q in bank.questions if q.kind == "debugging a claim"]
    assert len(critiques) >= 6 and all(len(q.claim) > 40 for q in critiques)


# ----------------------------------------------------------------------------------------- cited numbers


def test_every_number_an_answer_quotes_is_printed_by_a_cell_it_cites(bank):
    stale = {q.id: stale_numbers(q) for q in bank.questions}
    assert {k: v for k, v in stale.items() if v} == {}
    assert sum(len(interview.decimals(q.model_answer)) for q in bank.questions) >= 10  # the check has work to do


def test_the_number_check_catches_a_number_the_notebook_no_longer_prints(bank):
    question = next(q for q in bank.questions if "0.109" in q.model_answer)
    changed = dataclasses.replace(question, model_answer=question.model_answer.replace("0.109", "0.118"))
    assert stale_numbers(changed) == ["0.118"]


def test_cited_cells_have_output_or_are_markdown(bank):
    """A citation points at computed evidence: a code cell with output, or the lesson's own prose."""
    for q in bank.questions:
        for item in q.evidence:
            shown = interview.cell_evidence(item)
            assert shown["cell_type"] == "markdown" or shown["output"].strip() or shown["images"], (q.id, item.cell)
