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
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS, EXERCISES, LESSONS = ROOT / "solutions", ROOT / "exercises", ROOT / "notebooks"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
SOLUTION_ONLY_TAG = "solution-only"
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
    for index, cell in enumerate(nb.cells):
        if SOLUTION_ONLY_TAG in cell.metadata.get("tags", []):
            continue
        cell = nbformat.from_dict(dict(cell))
        if cell.cell_type == "code":
            cell.source = stub_source(cell.source, f"{solution_path.name} cell {index}")
            cell.outputs, cell.execution_count = [], None
        cell.pop("id", None)
        cells.append(cell)
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"  # stable ids: regenerating gives byte-identical sources
    nb.cells = cells
    return nb


def _sources(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


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
