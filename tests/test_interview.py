"""Interview practice: filtering, the score book that persists across sessions, evidence, and the widget's logic."""
from __future__ import annotations

import dataclasses
import json

import pytest

from helpers import interview
from helpers.interview import (Evidence, InterviewError, Practice, ScoreBook, cell_evidence, default_scores_path,
                               evidence_text, filter_questions, load_bank)


@pytest.fixture(scope="module")
def bank():
    return load_bank()


@pytest.fixture
def scores_path(tmp_path):
    return tmp_path / "config" / "scores.json"


# ----------------------------------------------------------------------------------------- filtering


def test_filters_combine_and_keep_bank_order(bank):
    traps = filter_questions(bank, kind="trap")
    assert traps and all(q.kind == "trap" for q in traps)
    lesson_03_core = filter_questions(bank, lesson="03", difficulty="core")
    assert lesson_03_core and all("03" in q.lessons and q.difficulty == "core" for q in lesson_03_core)
    both = filter_questions(bank, lesson="04", kind="debugging a claim")
    assert {q.id for q in both} == {q.id for q in traps + list(bank.questions)
                                    if "04" in q.lessons and q.kind == "debugging a claim"}
    order = [q.id for q in bank.questions]
    assert [q.id for q in both] == sorted((q.id for q in both), key=order.index)
    assert len(filter_questions(bank)) == len(bank.questions)


def test_a_question_on_two_lessons_matches_either(bank):
    two = next(q for q in bank.questions if len(q.lessons) == 2)
    for lesson in two.lessons:
        assert two in filter_questions(bank, lesson=lesson)


@pytest.mark.parametrize("kwargs, name", [({"lesson": "3"}, "lesson"), ({"kind": "Trap"}, "kind"),
                                          ({"difficulty": "hard"}, "difficulty"), ({"topic": "SAEs"}, "topic")])
def test_an_unknown_filter_value_names_the_filter_and_the_choices(bank, kwargs, name):
    with pytest.raises(InterviewError, match=rf"^{name} .* is not one of \["):
        filter_questions(bank, **kwargs)


def test_get_unknown_id_is_an_error(bank):
    with pytest.raises(InterviewError, match="no question with id 'nope'"):
        bank.get("nope")


# ----------------------------------------------------------------------------------------- scores


def test_scores_persist_across_sessions(bank, scores_path):
    first, other = bank.questions[0], bank.questions[1]
    ScoreBook(scores_path).record(first, [0, 2])
    later = ScoreBook(scores_path)  # a new session reads the same file
    assert [a["id"] for a in later.attempts] == [first.id]
    later.record(first, [0, 1, 2])
    later.record(other, [])
    scores = ScoreBook(scores_path).topic_scores()
    n = len(first.rubric)
    if first.topic != other.topic:
        assert scores[first.topic] == {"attempts": 2, "questions": 1, "latest": round(3 / n, 3),
                                       "all": round((2 / n + 3 / n) / 2, 3)}
        assert scores[other.topic]["latest"] == 0.0


def test_topic_score_averages_the_latest_attempt_of_each_question(bank, scores_path):
    topic = bank.questions[0].topic
    same_topic = [q for q in bank.questions if q.topic == topic][:2]
    assert len(same_topic) == 2
    book = ScoreBook(scores_path)
    book.record(same_topic[0], [])
    book.record(same_topic[0], range(len(same_topic[0].rubric)))  # improved: all points
    book.record(same_topic[1], [0])
    expected = (1.0 + 1 / len(same_topic[1].rubric)) / 2
    assert book.topic_scores()[topic]["latest"] == round(expected, 3)
    assert book.topic_scores()[topic]["attempts"] == 3


def test_recording_writes_no_stray_temporary_files(bank, scores_path):
    ScoreBook(scores_path).record(bank.questions[0], [1])
    assert [p.name for p in scores_path.parent.iterdir()] == ["scores.json"]
    assert json.loads(scores_path.read_text())["attempts"][0]["covered"] == [1]


@pytest.mark.parametrize("covered", [[99], [-1], ["0"]])
def test_recording_points_the_rubric_does_not_have_is_an_error(bank, scores_path, covered):
    with pytest.raises(InterviewError, match="covered must be rubric indices from 0 to"):
        ScoreBook(scores_path).record(bank.questions[0], covered)
    assert not scores_path.exists()


@pytest.mark.parametrize("content", ["{broken", '{"attempts": 3}', '{"version": 1}', '{"attempts": [{"id": "x"}]}'])
def test_a_damaged_score_file_says_where_it_is_and_what_to_do(scores_path, content):
    scores_path.parent.mkdir(parents=True)
    scores_path.write_text(content)
    with pytest.raises(InterviewError, match=rf"{scores_path.name} is damaged; move or delete it"):
        ScoreBook(scores_path)


def test_the_score_file_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(interview.SCORES_ENV, str(tmp_path / "mine.json"))
    assert default_scores_path() == tmp_path / "mine.json"
    assert ScoreBook().path == tmp_path / "mine.json"
    monkeypatch.delenv(interview.SCORES_ENV)
    monkeypatch.setattr(interview.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_scores_path() == tmp_path / "xdg" / "ai-microscope" / "interview_scores.json"


# ----------------------------------------------------------------------------------------- evidence


def test_evidence_is_the_committed_cell_source_and_text_output():
    shown = cell_evidence(Evidence("notebooks/02_induction_heads.ipynb", "l02-13", "ablation vs random heads"))
    assert "run_with_heads_ablated" in shown["source"] or "ablat" in shown["source"]
    assert "second-copy loss: clean" in shown["output"]
    assert "it/s" not in shown["output"]  # progress bars are dropped


def test_evidence_keeps_figures_as_images():
    shown = cell_evidence(Evidence("notebooks/02_induction_heads.ipynb", "l02-05", "loss per position"))
    assert shown["images"] and "mean loss" in shown["output"]


def test_evidence_text_names_the_cell_and_what_to_look_for():
    text = evidence_text(Evidence("notebooks/00_ai_microscope.ipynb", "484b0253", "additivity"))
    assert text.startswith("notebooks/00_ai_microscope.ipynb, cell 484b0253: additivity")
    assert "--- source ---" in text and "--- output ---" in text


def test_evidence_for_a_cell_that_is_gone_is_a_clear_error(tmp_path):
    with pytest.raises(InterviewError, match="has no cell 'gone'; the bank is out of date"):
        cell_evidence(Evidence("notebooks/00_ai_microscope.ipynb", "gone", "x"))
    with pytest.raises(InterviewError, match="is not here"):
        cell_evidence(Evidence("notebooks/00_ai_microscope.ipynb", "x", "x"), root=tmp_path)


# ------------------------------------------------------------------------------ the widget, without a browser


@pytest.fixture
def practice(bank, scores_path):
    return Practice(bank, scores_path, seed=0)


def test_the_widget_starts_on_the_first_question_with_the_rubric_hidden(practice, bank):
    assert practice.current == bank.questions[0]
    assert bank.questions[0].question in practice.question_html.value
    assert practice.rubric_box.children == () and practice.record_button.disabled
    assert f"{len(bank.questions)} of {len(bank.questions)} questions match" == practice.count.value
    # The text a notebook saves for the widget starts with a fixed title, so nbval compares the same text every run.
    assert repr(practice.view).startswith("VBox(children=(HTML(value='<b>Interview practice</b>")


def test_filters_in_the_widget_change_the_questions(practice, bank):
    assert (practice.lesson.value, practice.kind.value, practice.difficulty.value) == ("any", "any", "any")
    assert practice.lesson.label == "any"  # shown as a word, not an empty box
    practice.lesson.value = "03"
    practice.kind.value = "trap"
    expected = filter_questions(bank, lesson="03", kind="trap")
    assert practice.matching == expected and practice.current == expected[0]
    practice.lesson.value = "08"  # no trap question on lesson 08
    assert practice.matching == [] and practice.current is None
    assert "No question matches" in practice.question_html.value and practice.reveal_button.disabled
    practice.lesson.value = practice.kind.value = "any"
    assert practice.matching == list(bank.questions)


def test_answer_reveal_tick_record_updates_the_score_table_and_the_file(practice, scores_path):
    question = practice.current
    practice.answer.value = "Interpretability explains the computation inside, e.g. the residual stream..."
    with pytest.raises(InterviewError, match="reveal the rubric first"):
        practice.tick(0)
    practice.reveal()
    assert len(practice.checkboxes) == len(question.rubric)
    shown = [row.children[1].value for row in practice.rubric_box.children[1:]]
    assert shown == [interview.html.escape(point) for point in question.rubric]
    assert question.model_answer[:40] in practice.after_html.value
    assert question.follow_ups[0][:30] in practice.after_html.value
    practice.tick(0, 2)
    practice.record_button.click()
    assert f"Recorded: 2 of {len(question.rubric)} rubric points" in practice.status.value
    assert "interview-scores" in practice.scores.value and question.topic in practice.scores.value
    assert practice.record_button.disabled  # one record per reveal
    assert json.loads(scores_path.read_text())["attempts"][0] == {
        **json.loads(scores_path.read_text())["attempts"][0], "id": question.id, "covered": [0, 2]}
    with pytest.raises(InterviewError, match="does not exist"):
        practice.tick(len(question.rubric))


def test_the_answer_box_and_rubric_reset_on_the_next_question(practice, bank):
    practice.answer.value = "something"
    practice.reveal()
    practice.next_button.click()
    assert practice.current == bank.questions[1]
    assert practice.answer.value == "" and practice.rubric_box.children == () and not practice.revealed


def test_show_me_the_evidence_shows_each_cited_cell(practice, bank):
    question = practice.current
    practice.evidence_button.click()
    shown = " ".join(child.value for child in practice.evidence_box.children if isinstance(child.value, str))
    for item in question.evidence:
        assert item.cell in shown and item.shows[:30] in shown


def test_a_question_without_evidence_has_no_evidence_button(bank, scores_path):
    planned = dataclasses.replace(bank.questions[0], id="planned", evidence=())
    practice = Practice(dataclasses.replace(bank, questions=(planned,)), scores_path)
    assert practice.current == planned and practice.evidence_button.disabled


def test_a_mock_interview_is_timed_follows_up_and_ends_with_a_summary(practice, bank, scores_path):
    practice.kind.value = "trap"
    questions = practice.start_mock(2, 90)
    assert len(questions) == 2 and all(q.kind == "trap" for q in questions)
    again = Practice(bank, scores_path, seed=0)
    again.kind.value = "trap"
    assert again.start_mock(2, 90) == questions  # seeded: the same draw every time
    assert practice.timer.playing and practice.timer.max == 90 and practice.clock.value == "1:30 left"
    assert "mock interview, question 1 of 2" in practice.header.value
    practice.reveal_button.click()  # the interviewer's follow-up comes first
    assert questions[0].follow_ups[0][:30] in practice.follow_up_html.value and not practice.revealed
    practice.timer.value = 30  # the browser ticks the Play widget once a second
    assert practice.clock.value == "1:00 left"
    practice.timer.value = 90  # time is up: the rubric opens by itself
    assert practice.revealed and "time is up" in practice.clock.value
    practice.tick(0)
    practice.record()
    assert json.loads(scores_path.read_text())["attempts"][0]["seconds"] == 90
    practice.next_question()
    assert "question 2 of 2" in practice.header.value and practice.timer.value == 0 and not practice.revealed
    practice.next_question()
    assert practice.mock is None and "Mock interview over</b>: 2 questions, 1 recorded" in practice.status.value


def test_a_mock_interview_needs_matching_questions(practice):
    with pytest.raises(InterviewError, match="at least 1 question"):
        practice.start_mock(0, 60)
    practice.lesson.value = "08"
    practice.kind.value = "trap"
    assert practice.matching == []
    with pytest.raises(InterviewError, match="no question matches the filters"):
        practice.start_mock(3, 60)
