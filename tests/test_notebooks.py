"""Exercise generation: stubs keep signatures and docstrings, and exercises/ is never stale."""
from __future__ import annotations

import re

import nbformat
import pytest

from helpers import notebooks

SOLUTION_CELL = '''def top_k(logits, k):
    """Return the ids of the k largest logits."""
    # BEGIN SOLUTION
    return logits.topk(k).indices
    # END SOLUTION

print("after")'''


def test_stub_keeps_signature_and_docstring():
    stubbed = notebooks.stub_source(SOLUTION_CELL)
    assert 'def top_k(logits, k):\n    """Return the ids of the k largest logits."""' in stubbed
    assert "logits.topk" not in stubbed
    assert "    raise NotImplementedError" in stubbed
    assert stubbed.endswith('print("after")')


def test_stub_compiles():
    compile(notebooks.stub_source(SOLUTION_CELL), "<cell>", "exec")


def test_unbalanced_markers_are_an_error():
    with pytest.raises(notebooks.SolutionMarkerError):
        notebooks.stub_source("# BEGIN SOLUTION\nx = 1\n")


def test_solution_only_cells_are_dropped(tmp_path):
    nb = nbformat.v4.new_notebook()
    secret = nbformat.v4.new_markdown_cell("SECRET: the answer is 42")
    secret.metadata["tags"] = ["solution-only"]
    nb.cells = [nbformat.v4.new_code_cell(SOLUTION_CELL), secret]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    exercise = notebooks.exercise_notebook(path)
    assert all("SECRET" not in cell.source for cell in exercise.cells)
    assert all("topk" not in cell.source for cell in exercise.cells)


def test_exercises_are_in_sync_with_solutions():
    assert notebooks.out_of_date() == [], "run ./course exercises"


def test_no_solution_code_leaks_into_exercises():
    for path in notebooks.EXERCISES.glob("*.ipynb"):
        text = path.read_text()
        assert notebooks.BEGIN not in text and notebooks.END not in text, path.name


def test_committed_notebooks_are_executed():
    for folder in (notebooks.LESSONS, notebooks.SOLUTIONS, notebooks.EXERCISES):
        for path in folder.glob("*.ipynb"):
            nb = nbformat.read(path, as_version=4)
            code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
            assert code and all(c.execution_count for c in code), f"{path.name} has unexecuted cells"


def _text_outputs(cell) -> str:
    """A code cell's printed and displayed text, without use_or_reference's notice (images left out)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data") and "image/png" not in out.data:
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
    return re.sub(r"^Using the reference implementation of .*\n", "", "".join(parts), flags=re.M)


def test_follow_up_cells_skipped_in_exercises_show_what_their_solutions_twins_show():
    """Cells tagged nbval-skip in exercises/ are not re-run by the suite: they run the same code on the same
    inputs as in solutions/, which is. Their committed outputs must be the solutions' ones."""
    skipped = 0
    for path in sorted(notebooks.EXERCISES.glob("*.ipynb")):
        exercise = nbformat.read(path, as_version=4)
        twins = {}
        for cell in nbformat.read(notebooks.SOLUTIONS / path.name, as_version=4).cells:
            twins.setdefault(cell.source, cell)
        for cell in exercise.cells:
            if notebooks.SKIP_TAG not in cell.metadata.get("tags", []):
                continue
            skipped += 1
            twin = twins.get(cell.source)
            assert twin is not None, f"{path.name} {cell.id}: no identical cell in solutions/{path.name}"
            assert cell.execution_count and _text_outputs(cell) == _text_outputs(twin), (
                f"{path.name} {cell.id} shows other output than its solutions twin; re-execute both, or tag the "
                f"solutions cell {notebooks.RERUN_TAG!r} so that the suite runs it in both")
            assert "check_" not in cell.source, f"{path.name} {cell.id}: a check cell must run"
    assert skipped >= 20


def test_follow_ups_and_what_reads_them_are_skipped_but_checks_run(tmp_path):
    cells = [nbformat.v4.new_code_cell(source) for source in (
        "model = load()",
        "result = check_f(f, model)",
        "f = use_or_reference(result, f, reference)\nmodel = load_other()\nx = f(model)",  # follow-up, rebinds model
        "print(x)",                          # reads the follow-up's x: skipped too
        "y = 2\nprint(y)",                   # independent: runs
        "result = check_g(g, model)",        # a check reading the follow-up's model: so the follow-up must run
        "g = use_or_reference(result, g, reference)\nz = g()",
        "x = 1\nprint(x)",                   # rebinds x itself: runs
        "print(z)",                          # reads the second follow-up's z: skipped
    )]
    nb = nbformat.v4.new_notebook(cells=cells)
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    skip = [notebooks.SKIP_TAG in cell.metadata.get("tags", []) for cell in notebooks.exercise_notebook(path).cells
            if cell.cell_type == "code"]
    assert skip == [False, False, False, False, False, False, True, False, True]
