"""Exercise generation: stubs keep signatures and docstrings, and exercises/ is never stale."""
from __future__ import annotations

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
