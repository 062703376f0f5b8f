"""Notebook tooling: generate exercises/ from solutions/, check they are in sync, execute notebooks.

    python -m helpers.notebooks exercises          # regenerate exercises/ and execute them
    python -m helpers.notebooks check              # exit 1 if exercises/ is out of date
    python -m helpers.notebooks execute PATH...    # execute notebooks in place (seeded, outputs saved)

In a solutions notebook, solution code sits between two marker lines in a code cell:

    def top_k(logits, k):
        \"\"\"Docstring stays.\"\"\"
        # BEGIN SOLUTION
        values, ids = logits.topk(k)
        return ids
        # END SOLUTION

The exercise keeps everything outside the markers and replaces the block with a stub at the same
indentation. Cells tagged ``solution-only`` (e.g. a worked explanation) are dropped from exercises.

An exercise notebook's follow-up cells (``fn = use_or_reference(result, fn, reference)`` and what
they compute) run the reference until the learner's answer passes, so on a blank notebook they
repeat the solutions notebook's cells exactly. They are tagged ``nbval-skip`` in exercises/, with
every later cell that reads a name they set: the test suite runs them once, in solutions/, and
``tests/test_notebooks.py`` checks that their committed outputs in exercises/ are the same. A
solutions cell tagged ``exercise-rerun`` is run in both (its output differs by design).
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS, EXERCISES, LESSONS = ROOT / "solutions", ROOT / "exercises", ROOT / "notebooks"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
SOLUTION_ONLY_TAG = "solution-only"
SKIP_TAG, RERUN_TAG, USE_CALL = "nbval-skip", "exercise-rerun", "use_or_reference("
_BLOCK = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*(\n|$)", re.M | re.S)


class SolutionMarkerError(ValueError):
    """Unbalanced BEGIN/END SOLUTION markers in a cell."""


def stub_source(source: str, where: str = "") -> str:
    """A code cell's source with every solution block replaced by a stub."""
    if source.count(BEGIN) != source.count(END):
        raise SolutionMarkerError(f"{where}: {source.count(BEGIN)} BEGIN vs {source.count(END)} END SOLUTION markers")

    def replace(match: re.Match) -> str:
        indent = match.group(1)
        return (f"{indent}# YOUR CODE HERE\n"
                f"{indent}raise NotImplementedError(\"Exercise: write this function, then run the check below.\")"
                + match.group(2))

    return _BLOCK.sub(replace, source)


class _Names(ast.NodeVisitor):
    """Names a cell binds at top level (not inside functions, classes, lambdas or comprehensions), and the
    names it reads before binding them itself (anywhere, in evaluation order: an assignment's value first)."""

    def __init__(self):
        self.bound, self.read, self._depth = set(), set(), 0

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            if node.id not in self.bound:
                self.read.add(node.id)
        elif self._depth == 0:
            self.bound.add(node.id)

    def visit_Assign(self, node):
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_AugAssign(self, node):
        if isinstance(node.target, ast.Name) and node.target.id not in self.bound:
            self.read.add(node.target.id)
        self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node):
        self.visit(node.iter)
        self.visit(node.target)
        for child in node.body + node.orelse:
            self.visit(child)

    def _scope(self, node, name=None):
        if name and self._depth == 0:
            self.bound.add(name)
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    def visit_FunctionDef(self, node):
        self._scope(node, node.name)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self._scope(node)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_Lambda

    def visit_Import(self, node):
        if self._depth == 0:
            self.bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)

    visit_ImportFrom = visit_Import


def _cell_names(source: str) -> tuple[set[str], set[str]]:
    """(bound, read) names of a code cell; IPython magics and shell lines are left out."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    names = _Names()
    try:
        names.visit(ast.parse("\n".join(lines)))
    except SyntaxError:  # not plain Python: treat it as reading everything
        return set(), {"*"}
    return names.bound, names.read


def _tag_repeated_follow_ups(cells: list, rerun: set[int]) -> None:
    """Tag nbval-skip on follow-up cells (see the module docstring) and on later cells reading what they set.

    A check cell (one that calls a ``check_`` function) and an ``exercise-rerun`` cell always run: a
    follow-up whose names such a cell reads (e.g. one that loads the model for the next exercise) is not
    skipped either.
    """
    code = [(i, cell, *_cell_names(cell.source)) for i, cell in enumerate(cells) if cell.cell_type == "code"]
    kept: set[int] = set()
    while True:
        origin: dict[str, set[int]] = {}  # a name bound by a skipped cell -> the follow-ups it stems from
        skipped, conflict = [], set()
        for i, cell, bound, read in code:
            hit = set(origin) if "*" in read else read & set(origin)
            follow_up = USE_CALL in cell.source and i not in rerun and i not in kept
            if ("check_" in cell.source or i in rerun) and not follow_up:
                conflict |= set().union(*(origin[name] for name in hit))
            elif follow_up or hit:
                skipped.append(cell)
                roots = set().union({i} if follow_up else set(), *(origin[name] for name in hit))
                origin.update(dict.fromkeys(bound, roots))
                continue
            for name in bound:
                origin.pop(name, None)
        if not conflict:
            break
        kept |= conflict
    for cell in skipped:
        cell.metadata["tags"] = [*cell.metadata.get("tags", []), SKIP_TAG]


def exercise_notebook(solution_path: Path) -> nbformat.NotebookNode:
    """The exercise version of a solutions notebook (outputs cleared, solutions stubbed)."""
    nb = nbformat.read(solution_path, as_version=4)
    cells = []
    banner = nbformat.v4.new_markdown_cell(
        f"> **Exercise notebook**, generated from `solutions/{solution_path.name}` by `./course exercises`. "
        "Write your code where it says `# YOUR CODE HERE`; the check after each exercise tells you how you did. "
        "Stuck? The solutions notebook has a worked answer.")
    banner.metadata["tags"] = ["generated-banner"]
    cells.append(banner)
    rerun = set()
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if SOLUTION_ONLY_TAG in tags:
            continue
        cell = nbformat.from_dict(dict(cell))
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items() if k != "execution"})
        if RERUN_TAG in tags:
            rerun.add(len(cells))
            cell.metadata["tags"] = [tag for tag in tags if tag != RERUN_TAG]
            if not cell.metadata["tags"]:
                del cell.metadata["tags"]
        if cell.cell_type == "code":
            cell.source = stub_source(cell.source, f"{solution_path.name} cell {index}")
            cell.outputs, cell.execution_count = [], None
        cell.pop("id", None)
        cells.append(cell)
    _tag_repeated_follow_ups(cells, rerun)
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"  # stable ids: regenerating gives byte-identical sources
    nb.cells = cells
    return nb


def _sources(nb: nbformat.NotebookNode) -> list[tuple[str, str, bool]]:
    return [(cell.cell_type, cell.source, SKIP_TAG in cell.metadata.get("tags", [])) for cell in nb.cells]


def out_of_date() -> list[str]:
    """Names of exercise notebooks missing, stale, or without a solutions counterpart."""
    problems = []
    for solution in sorted(SOLUTIONS.glob("*.ipynb")):
        target = EXERCISES / solution.name
        if not target.exists():
            problems.append(f"{target.name}: missing")
        elif _sources(nbformat.read(target, as_version=4)) != _sources(exercise_notebook(solution)):
            problems.append(f"{target.name}: differs from what solutions/{solution.name} generates")
    for orphan in sorted(set(p.name for p in EXERCISES.glob("*.ipynb")) - set(p.name for p in SOLUTIONS.glob("*.ipynb"))):
        problems.append(f"{orphan}: no solutions/{orphan}")
    return problems


def execute(path: Path, timeout: int = 1200) -> None:
    """Execute a notebook in place with the current Python, in its own folder, and save outputs."""
    import os

    from nbclient import NotebookClient

    # Same thread count as the test suite, so printed numbers match what nbval recomputes.
    os.environ["OMP_NUM_THREADS"] = "1"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    nbformat.write(nb, path)
    print(f"executed {path.relative_to(ROOT)}")


def generate(names: list[str] | None = None, run: bool = True) -> list[Path]:
    """Write exercises/ from solutions/ (all, or those named) and execute them."""
    EXERCISES.mkdir(exist_ok=True)
    written = []
    for solution in sorted(SOLUTIONS.glob("*.ipynb")):
        if names and solution.stem not in names and solution.name not in names:
            continue
        target = EXERCISES / solution.name
        nbformat.write(exercise_notebook(solution), target)
        if run:
            execute(target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate, check and execute the course notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("exercises", help="regenerate exercises/ from solutions/ and execute them")
    gen.add_argument("names", nargs="*", help="only these notebooks (stem or file name)")
    gen.add_argument("--no-run", action="store_true", help="write without executing")
    sub.add_parser("check", help="exit 1 if exercises/ is out of date")
    ex = sub.add_parser("execute", help="execute notebooks in place")
    ex.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "exercises":
        generate(args.names or None, run=not args.no_run)
    elif args.command == "check":
        problems = out_of_date()
        if problems:
            print("exercises/ is out of date; run ./course exercises\n  " + "\n  ".join(problems))
            return 1
        print("exercises/ is up to date")
    else:
        for path in args.paths:
            execute(path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
