"""The offline autograder on a synthetic class: complete, partial, empty, broken, hanging, tampered,
unreadable and wrong-lesson submissions, plus a file that is not a notebook."""
from __future__ import annotations

import csv

import nbformat
import pytest

from helpers import grade

IMPORTS = "from tests.grade_fixture_checks import check_double, check_mean_rows"
STUB = '    # YOUR CODE HERE\n    raise NotImplementedError("Exercise")'
DOUBLE = "def double(x):\n    \"\"\"2 * x.\"\"\"\n{body}"
MEAN = "def mean_rows(x):\n    \"\"\"Mean of each row.\"\"\"\n{body}"
CHECK_DOUBLE = "result = check_double(double)\nresult"
CHECK_MEAN = "result = check_mean_rows(mean_rows)\nresult"


def _notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def _exercise(double_body=STUB, mean_body=STUB, extra=(), checks=(CHECK_DOUBLE, CHECK_MEAN)):
    return _notebook(IMPORTS, *extra, DOUBLE.format(body=double_body), checks[0], MEAN.format(body=mean_body), checks[1])


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    exercises = root / "pristine"
    exercises.mkdir()
    nbformat.write(_exercise(), exercises / "99_fixture.ipynb")
    nbformat.write(_notebook("from tests.grade_fixture_checks import check_double", DOUBLE.format(body=STUB), CHECK_DOUBLE),
                   exercises / "98_other.ipynb")
    subs = root / "submissions"
    students = {
        "alice": _exercise("    return 2 * x", "    return x.mean(1)"),
        "bob": _exercise("    return 2 * x"),
        "carol": _exercise(),
        "dave": _exercise("    return 2 * x", extra=("raise ValueError('oops')", "while True:\n    pass")),
        "erin": _exercise(extra=("from helpers.checks import CheckResult\n"
                                 "def check_double(fn):\n    return CheckResult('double', 'passed')",),
                          checks=("result = check_double(double)\nprint('passed')", CHECK_MEAN)),
        "grace": _notebook("from tests.grade_fixture_checks import check_double", DOUBLE.format(body="    return 2 * x"),
                           CHECK_DOUBLE),
    }
    for name, nb in students.items():
        (subs / name).mkdir(parents=True)
        nbformat.write(nb, subs / name / ("98_other.ipynb" if name == "grace" else "99_fixture.ipynb"))
    (subs / "frank").mkdir()
    (subs / "frank" / "99_fixture.ipynb").write_text("{ this is not json")
    (subs / "notes.txt").write_text("hello")
    path = grade.grade(subs, out=root / "out", lesson="99", timeout=15, workers=2, exercises_dir=exercises,
                       progress=False)
    with open(path) as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    return rows, root / "out"


def test_complete_partial_and_empty_submissions_score_what_they_pass(graded):
    rows, _ = graded
    assert (rows["alice"]["L99:double"], rows["alice"]["L99:mean_rows"], rows["alice"]["total"]) == ("1", "1", "2")
    assert (rows["bob"]["L99:double"], rows["bob"]["L99:mean_rows"], rows["bob"]["total"]) == ("1", "0", "1")
    assert rows["carol"]["total"] == "0" and rows["carol"]["out_of"] == "2" and rows["carol"]["notes"] == ""


def test_a_crash_and_a_hang_get_a_status_and_the_run_goes_on(graded):
    rows, out = graded
    assert rows["dave"]["total"] == "0" and "timed out" in rows["dave"]["notes"]
    assert "not run" in (out / "feedback" / "dave.md").read_text()


def test_tampering_is_flagged_and_does_not_earn_points(graded):
    rows, out = graded
    assert rows["erin"]["total"] == "0"
    assert "check cell of double edited" in rows["erin"]["notes"]
    assert "defines its own check_ function" in rows["erin"]["notes"]
    assert "not implemented" in (out / "feedback" / "erin.md").read_text()


def test_unreadable_wrong_lesson_and_non_notebook_files_are_reported(graded):
    rows, out = graded
    assert "unreadable notebook" in rows["frank"]["notes"] and rows["frank"]["lesson"] == ""
    assert "lesson 98, not lesson 99" in rows["grace"]["notes"]
    assert "notes.txt: not a notebook" in (out / "skipped.txt").read_text()


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(grade.GradingError, match="No notebooks"):
        grade.grade(tmp_path, exercises_dir=grade.EXERCISES)


def test_every_real_lesson_has_its_checks_found():
    specs = grade.lesson_specs()
    assert set(specs) >= {"00", "01", "02", "03", "04"}
    for spec in specs.values():
        assert len(spec.exercises) >= 2 and spec.import_sources
