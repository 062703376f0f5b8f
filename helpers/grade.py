"""The offline autograder for a class: execute every submitted exercises notebook, record every check.

    ./course grade SUBMISSIONS_DIR [--out DIR] [--lesson NN] [--timeout S] [--workers N]

SUBMISSIONS_DIR holds one folder per student (any number of exercises notebooks inside), or
notebooks directly (the file name, minus the lesson part, is then the student). Each notebook runs
offline in its own process and kernel, with a time limit. After the student's cells, the grader
appends one cell of its own that re-imports the course's check functions fresh (so a check that a
student redefined or monkeypatched does not count) and runs the official check of every exercise
on the student's function. The pristine check cells come from ``exercises/``.

Written to ``--out`` (default SUBMISSIONS_DIR/grades): ``grades.csv`` (one row per student and
lesson: 1 per passed exercise, a total, and notes) and ``feedback/STUDENT.md`` (each exercise's
status and the check's message). A submission that crashes, hangs, deletes or edits a check cell,
or cannot be read gets a clear status in its row and the run goes on.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
_CHECK_CALL = re.compile(r"^\s*result\s*=\s*((?:[A-Za-z_][\w]*\.)?check_(\w+)\(.*\))\s*\n\s*result\s*$", re.S)
_LESSON_PREFIX = re.compile(r"^(\d\d)_")
# Code a student has no reason to write: redefining a check, faking a result, patching the checks module.
_TAMPER = [(re.compile(r"^\s*def\s+check_\w+\s*\(", re.M), "defines its own check_ function"),
           (re.compile(r"CheckResult\s*\("), "builds a CheckResult by hand"),
           (re.compile(r"\bchecks\.\w+\s*=|\bl\d\d\.check_\w+\s*=|\bcheck_\w+\s*=(?!=)"), "reassigns a check function"),
           (re.compile(r"\bPASSED\s*=(?!=)|status\s*=\s*['\"]passed"), "forces a passed status")]
PASSED = "passed"


class GradingError(Exception):
    """A problem with the grader's own inputs (no submissions, no exercises folder)."""


@dataclass
class LessonSpec:
    """What the grader needs from one pristine exercises notebook."""

    lesson: str  # "02"
    notebook: Path
    calls: dict[str, str]  # exercise -> check call source, e.g. "l02.check_induction_score(induction_score)"
    check_cells: dict[str, str]  # exercise -> the pristine check cell's source
    import_sources: list[str]  # the pristine code lines that import the check functions

    @property
    def exercises(self) -> list[str]:
        return list(self.calls)


@dataclass
class Submission:
    student: str
    path: Path
    lesson: str | None = None
    notes: list[str] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def lesson_specs(exercises_dir: Path = EXERCISES) -> dict[str, LessonSpec]:
    """{lesson: spec} for every exercises notebook with at least one check cell."""
    if not exercises_dir.is_dir():
        raise GradingError(f"No exercises folder at {exercises_dir}.")
    specs = {}
    for path in sorted(exercises_dir.glob("*.ipynb")):
        match = _LESSON_PREFIX.match(path.name)
        if not match:
            continue
        nb = nbformat.read(path, as_version=4)
        calls, cells, imports = {}, {}, []
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            found = _CHECK_CALL.match(cell.source)
            if found:
                calls[found.group(2)] = found.group(1)
                cells[found.group(2)] = cell.source
            imports += _import_statements(cell.source)
        if calls:
            specs[match.group(1)] = LessonSpec(match.group(1), path, calls, cells, imports)
    return specs


def _import_statements(source: str) -> list[str]:
    """Whole import statements (parenthesised ones included) that bring in check functions or exercise modules."""
    statements, current = [], []
    for line in source.splitlines():
        if current:
            current.append(line)
            if ")" in line:
                statements.append("\n".join(current))
                current = []
        elif re.match(r"^(from|import)\s", line) and ("check_" in line or "exercises" in line):
            if "(" in line and ")" not in line:
                current = [line]
            else:
                statements.append(line)
    return statements


def _student_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root)
    if len(relative.parts) > 1:
        return relative.parts[0]
    stem = _LESSON_PREFIX.sub("", path.stem)
    return re.sub(r"^\d\d_\w+?[-_]{2}", "", stem) or stem


def find_submissions(root: Path) -> tuple[list[Submission], list[str]]:
    """Notebooks under `root` (skipping the grader's own output and checkpoints), and notes on other files."""
    if not root.is_dir():
        raise GradingError(f"{root} is not a folder of submissions.")
    found, notes = [], []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or ".ipynb_checkpoints" in path.parts or "grades" in path.relative_to(root).parts[:1]:
            continue
        if path.suffix != ".ipynb":
            notes.append(f"skipped {path.relative_to(root)}: not a notebook (.ipynb)")
            continue
        found.append(Submission(_student_name(path, root), path))
    if not found:
        raise GradingError(f"No notebooks (.ipynb) found in {root}: put one folder per student there, each with "
                           "the student's exercises notebooks.")
    return found, notes


def identify_lesson(nb: nbformat.NotebookNode, path: Path, specs: dict[str, LessonSpec]) -> str | None:
    """The lesson a notebook belongs to: its file-name prefix, else the exercise module it imports."""
    match = _LESSON_PREFIX.match(path.name)
    if match and match.group(1) in specs:
        return match.group(1)
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    for lesson in specs:
        if re.search(rf"helpers\.exercises(\.l{lesson}\b| import .*\bl{lesson}\b)", text):
            return lesson
    return None


def tampering(nb: nbformat.NotebookNode, spec: LessonSpec) -> list[str]:
    """Sentences describing edited or deleted check cells and code that fakes a result."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    notes = []
    for exercise, pristine in spec.check_cells.items():
        if pristine not in sources:
            edited = any(f"check_{exercise}" in s for s in sources)
            notes.append(f"check cell of {exercise} {'edited' if edited else 'deleted'}")
    student_code = "\n".join(s for s in sources if s not in spec.check_cells.values())
    for pattern, what in _TAMPER:
        if pattern.search(student_code):
            notes.append(f"tampering: the notebook {what}")
    return notes


def grader_cell(spec: LessonSpec, results_path: Path) -> str:
    """Source of the cell appended after the student's: fresh imports, then every official check."""
    calls = json.dumps(spec.calls)
    imports = "\n".join(spec.import_sources)
    return f'''
import json as _g_json, sys as _g_sys
for _g_name in [m for m in list(_g_sys.modules) if m == "helpers" or m.startswith("helpers.")]:
    del _g_sys.modules[_g_name]  # the course's checks, fresh: not any version the notebook patched
_g_namespace = dict(globals())
exec({imports!r}, _g_namespace)
_g_results = {{}}
for _g_exercise, _g_call in {calls}.items():
    _g_function = _g_call.split("(", 1)[1].split(",")[0].split(")")[0].strip()
    if _g_function not in globals():
        _g_results[_g_exercise] = {{"status": "missing", "message": f"no function named {{_g_function}} in the notebook"}}
        continue
    try:
        _g_result = eval(_g_call, _g_namespace)
        _g_results[_g_exercise] = {{"status": _g_result.status, "message": _g_result.message}}
    except BaseException as _g_error:
        _g_results[_g_exercise] = {{"status": "error", "message": f"the check could not run: {{type(_g_error).__name__}}: {{_g_error}}"}}
with open({str(results_path)!r}, "w") as _g_handle:
    _g_json.dump(_g_results, _g_handle)
'''


def run_one(notebook: Path, lesson: str, results_path: Path, cell_timeout: int, exercises_dir: Path = EXERCISES) -> int:
    """Execute one submission with the grader cell appended (runs in its own process); 0 if it ran to the end."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    spec = lesson_specs(exercises_dir)[lesson]
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(grader_cell(spec, results_path)))
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()
    except CellTimeoutError:
        return 3
    except DeadKernelError:
        return 4
    errors = sum(1 for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.get("outputs", []) if out.get("output_type") == "error")
    results_path.with_suffix(".cells").write_text(str(errors))
    return 0


def _grade_submission(sub: Submission, specs: dict[str, LessonSpec], timeout: int, workdir: Path,
                      exercises_dir: Path) -> Submission:
    spec = specs[sub.lesson]
    results = workdir / f"{abs(hash((sub.student, str(sub.path))))}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "helpers.grade", "_one", str(sub.path), sub.lesson, str(results),
               "--timeout", str(timeout), "--exercises", str(exercises_dir)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout + 60)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the kernel is a grandchild: end the whole group
        output, code = b"", 3
    sub.seconds = time.perf_counter() - start
    if code == 3:
        sub.notes.append(f"timed out: a cell ran longer than {timeout} s (an endless loop?); later cells did not run")
    elif code == 4:
        sub.notes.append("the kernel died while running the notebook (out of memory, or the notebook exited it)")
    elif code != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        sub.notes.append(f"could not be executed: {tail[0][:200]}")
    if results.is_file():
        sub.results = json.loads(results.read_text())
        cells = results.with_suffix(".cells")
        if cells.is_file() and int(cells.read_text()):
            sub.notes.append(f"{cells.read_text()} cell(s) raised an error")
    for exercise in spec.exercises:
        sub.results.setdefault(exercise, {"status": "not run", "message": "the notebook stopped before the checks ran"})
    return sub


def grade(root: Path, out: Path | None = None, lesson: str | None = None, timeout: int = 600, workers: int = 2,
          exercises_dir: Path = EXERCISES, progress: bool = True) -> Path:
    """Grade every submission under `root`; write grades.csv and feedback/; return the CSV's path."""
    specs = lesson_specs(exercises_dir)
    if lesson is not None and lesson not in specs:
        raise GradingError(f"No lesson {lesson!r} with checks in {exercises_dir}; lessons: {', '.join(specs)}.")
    submissions, notes = find_submissions(root)
    runnable = []
    for sub in submissions:
        try:
            nb = nbformat.read(sub.path, as_version=4)
        except Exception as error:  # noqa: BLE001 - corrupt JSON, wrong format, unreadable file
            sub.notes.append(f"unreadable notebook ({type(error).__name__}): not graded")
            continue
        sub.lesson = identify_lesson(nb, sub.path, specs)
        if sub.lesson is None:
            sub.notes.append("not an exercises notebook of this course (no known lesson): not graded")
        elif lesson is not None and sub.lesson != lesson:
            sub.notes.append(f"a notebook of lesson {sub.lesson}, not lesson {lesson}: not graded")
            sub.lesson = None
        else:
            sub.notes += tampering(nb, specs[sub.lesson])
            runnable.append(sub)
    out = out or root / "grades"
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grade-") as workdir, ThreadPoolExecutor(max(1, workers)) as pool:
        jobs = [pool.submit(_grade_submission, sub, specs, timeout, Path(workdir), exercises_dir) for sub in runnable]
        for done, job in enumerate(jobs, 1):
            sub = job.result()
            if progress:
                print(f"[{done}/{len(jobs)}] {sub.student} lesson {sub.lesson}: "
                      f"{sum(r['status'] == PASSED for r in sub.results.values())}/{len(sub.results)} passed "
                      f"({sub.seconds:.0f} s)", flush=True)
    return _write(submissions, specs, lesson, out, notes)


def _write(submissions: list[Submission], specs: dict[str, LessonSpec], lesson: str | None, out: Path,
           notes: list[str]) -> Path:
    lessons = [lesson] if lesson else sorted({s.lesson for s in submissions if s.lesson})
    columns = [f"L{l}:{e}" for l in lessons for e in specs[l].exercises]
    path = out / "grades.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "file", "lesson", *columns, "total", "out_of", "notes"])
        for sub in sorted(submissions, key=lambda s: (s.student, str(s.path))):
            passed = {f"L{sub.lesson}:{e}": int(r["status"] == PASSED) for e, r in sub.results.items()}
            row = [passed.get(c, "") for c in columns]
            out_of = len(specs[sub.lesson].exercises) if sub.lesson else 0
            writer.writerow([sub.student, sub.path.name, sub.lesson or "", *row, sum(passed.values()), out_of,
                             "; ".join(sub.notes)])
    by_student: dict[str, list[Submission]] = {}
    for sub in submissions:
        by_student.setdefault(sub.student, []).append(sub)
    for student, subs in by_student.items():
        lines = [f"# Feedback for {student}", ""]
        for sub in subs:
            lines += [f"## {sub.path.name}" + (f" (lesson {sub.lesson})" if sub.lesson else ""), ""]
            lines += [f"- note: {note}" for note in sub.notes]
            for exercise, result in sub.results.items():
                message = f": {result['message']}" if result.get("message") else ""
                lines.append(f"- **{exercise}**: {result['status']}{message}")
            lines.append("")
        (out / "feedback" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', student)}.md").write_text("\n".join(lines))
    if notes:
        (out / "skipped.txt").write_text("\n".join(notes) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./course grade", description="Grade a class's exercises notebooks offline.")
    if argv and argv[0] == "_one":  # internal: one submission in its own process
        parser.add_argument("mode")
        parser.add_argument("notebook", type=Path)
        parser.add_argument("lesson")
        parser.add_argument("results", type=Path)
        parser.add_argument("--timeout", type=int, default=600)
        parser.add_argument("--exercises", type=Path, default=EXERCISES)
        args = parser.parse_args(argv)
        return run_one(args.notebook, args.lesson, args.results, args.timeout, args.exercises)
    parser.add_argument("submissions", type=Path, help="folder with one sub-folder (or notebook) per student")
    parser.add_argument("--out", type=Path, help="where grades.csv and feedback/ go (default SUBMISSIONS/grades)")
    parser.add_argument("--lesson", help="grade only this lesson (e.g. 02); other lessons' notebooks are flagged")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default 600)")
    parser.add_argument("--workers", type=int, default=2, help="notebooks graded at once (default 2)")
    args = parser.parse_args(argv)
    try:
        path = grade(args.submissions.resolve(), args.out, args.lesson, args.timeout, args.workers)
    except GradingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.parent / 'feedback'}/")
    skipped = path.parent / "skipped.txt"
    if skipped.is_file():
        print(skipped.read_text().rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
