"""Lesson 01 in a real browser: JupyterLab on localhost, headless Chromium, every cell run, the explorer rendered.

Uses Debian's chromium (no browser download) through Playwright's Python client. The screenshot lands
in artifacts/attention_explorer.png, which CI keeps.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = ROOT / "notebooks" / "01_attention_patterns.ipynb"
SCREENSHOT = ROOT / "artifacts" / "attention_explorer.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 600

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")]

# JavaScript run in the page; `window.jupyterapp` exists because the server starts with expose_app_in_browser.
KERNEL_IDLE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle';
}"""
ALL_CELLS_RUN = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session.kernel;
  const cells = panel.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type === 'code' && cell.sharedModel.getSource().trim() && !cell.executionCount) return false;
  }
  return kernel.status === 'idle';
}"""
ERRORS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const errors = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    for (const output of cell.outputs.toJSON()) {
      if (output.output_type === 'error') errors.push(`cell ${i}: ${output.ename}: ${output.evalue}`);
    }
  }
  return errors;
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _copy(folder: Path, name: str, keep_outputs: bool, through_explorer: bool = False) -> Path:
    """The lesson as committed, or without outputs and saved widget state (only a fresh run can then show the explorer).

    `through_explorer` keeps the cells up to the one that shows the explorer (nbval runs the whole lesson)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if through_explorer:
        last = next(i for i, cell in enumerate(nb.cells) if cell.source.startswith("attention_explorer("))
        nb.cells = nb.cells[:last + 1]
    if not keep_outputs:
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("widgets", None)
    path = folder / name
    nbformat.write(nb, path)
    return path


def _quiet_settings(folder: Path) -> Path:
    """User settings that stop JupyterLab asking the network for news and updates."""
    settings = folder / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return folder / "user-settings"


def _wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout} s")


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and the kernels it started (they share its process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _env(folder: Path) -> dict[str, str]:
    """One kernel thread, and Jupyter's runtime and data (notebook trust database) kept inside the test's folder."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
            "JUPYTER_DATA_DIR": str(folder / "data")}


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on a free localhost port with a random token: (base URL, token, its folder)."""
    folder = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    log_path = folder / "jupyterlab.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=None", f"--LabApp.user_settings_dir={_quiet_settings(folder)}",
             f"--LabApp.workspaces_dir={folder / 'workspaces'}", "--LabApp.extension_manager=readonly",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=_env(folder),
        )
        try:
            _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", server, log_path)
            yield f"http://127.0.0.1:{port}", token, folder
        finally:
            _stop(server)


@pytest.fixture
def page():
    """A page in headless Debian Chromium, closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def _open(page, jupyterlab, notebook: Path) -> None:
    base, token, _ = jupyterlab
    # A workspace per notebook, reset, so JupyterLab does not reopen another test's notebook beside it.
    page.goto(f"{base}/lab/workspaces/{notebook.stem}/tree/{notebook.name}?token={token}&reset")
    page.wait_for_function(KERNEL_IDLE, timeout=120_000, polling=500)


def test_committed_lesson_shows_the_explorer_from_saved_widget_state(jupyterlab, page):
    folder = jupyterlab[2]
    notebook = _copy(folder, "committed.ipynb", keep_outputs=True)
    # Jupyter shows widget outputs only in trusted notebooks; trusting is what a learner does with
    # File > Trust Notebook (or by running it).
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(notebook)], env=_env(folder), check=True,
                   capture_output=True)
    _open(page, jupyterlab, notebook)
    explorer = page.locator(".attention-explorer")
    explorer.wait_for(timeout=60_000)
    assert explorer.locator(".strip .tok").count() == 18
    assert page.get_by_text("Error displaying widget").count() == 0


def test_lesson_01_runs_in_jupyterlab_up_to_the_explorer_which_renders(jupyterlab, page):
    _open(page, jupyterlab, _copy(jupyterlab[2], "fresh.ipynb", keep_outputs=False, through_explorer=True))
    assert page.locator(".attention-explorer").count() == 0
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(ALL_CELLS_RUN, timeout=RUN_TIMEOUT_S * 1000, polling=1000)
    assert page.evaluate(ERRORS) == []

    explorer = page.locator(".attention-explorer")
    explorer.scroll_into_view_if_needed()
    assert explorer.is_visible()
    assert page.get_by_text("Error displaying widget").count() == 0
    heatmap_width = explorer.locator("img").evaluate("img => img.complete ? img.naturalWidth : 0")
    assert heatmap_width > 100, "the heatmap image did not load"
    tokens = explorer.locator(".strip .tok")
    assert tokens.count() == 18  # BOS + the 17 tokens of the lesson's prompt
    assert explorer.locator(".widget-slider").count() >= 3

    umbrella = tokens.nth(5)  # ' umbrella': where head 18.6 sends the second ' red'
    background = "el => getComputedStyle(el).backgroundColor"
    assert umbrella.evaluate(background) != "rgba(0, 0, 0, 0)"
    SCREENSHOT.parent.mkdir(exist_ok=True)
    explorer.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    # Hovering 'Alice' (query 1) shows that token's row instead: all on BOS, none on ' umbrella'.
    tokens.nth(1).hover()
    assert umbrella.evaluate(background) == "rgba(0, 0, 0, 0)"
    assert tokens.nth(0).evaluate(background) != "rgba(0, 0, 0, 0)"


INTERVIEW_NOTEBOOK = ROOT / "notebooks" / "09_interview_practice.ipynb"
INTERVIEW_SCREENSHOT = ROOT / "artifacts" / "interview_practice.png"


def test_lesson_09_practice_widget_answer_reveal_tick_and_score_in_jupyterlab(jupyterlab, page):
    from helpers.interview import load_bank

    folder = jupyterlab[2]
    scores = folder / "interview_scores.json"
    nb = nbformat.read(INTERVIEW_NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    # Scores go to a file in the test's folder, never to the learner's own score file.
    nb.cells.insert(1, nbformat.v4.new_code_cell(f"import os\nos.environ['MICROSCOPE_INTERVIEW_SCORES'] = {str(scores)!r}"))
    path = folder / "interview.ipynb"
    nbformat.write(nb, path)
    _open(page, jupyterlab, path)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(ALL_CELLS_RUN, timeout=RUN_TIMEOUT_S * 1000, polling=1000)
    assert page.evaluate(ERRORS) == []

    widget = page.locator(".interview-practice")
    widget.scroll_into_view_if_needed()
    assert widget.is_visible() and page.get_by_text("Error displaying widget").count() == 0
    question = load_bank().questions[0]  # the widget opens on the bank's first question
    assert widget.get_by_text(question.question).is_visible()
    widget.locator(".interview-answer textarea").fill("It explains the computation inside the model, e.g. ...")
    widget.get_by_role("button", name="Reveal rubric").click()
    boxes = widget.locator(".interview-rubric input[type=checkbox]")
    boxes.first.wait_for(timeout=30_000)
    assert boxes.count() == len(question.rubric)
    boxes.nth(0).check()
    boxes.nth(2).check()
    widget.get_by_role("button", name="Record my score").click()
    status = widget.locator(".interview-status")
    status.get_by_text(f"Recorded: 2 of {len(question.rubric)} rubric points").wait_for(timeout=30_000)
    table = widget.locator(".interview-score-table")
    assert table.get_by_text(question.topic).is_visible()
    assert table.locator("td", has_text=f"{2 / len(question.rubric):.0%}").count() == 1  # latest share covered
    attempts = json.loads(scores.read_text())["attempts"]
    assert [(a["id"], a["covered"]) for a in attempts] == [(question.id, [0, 2])]

    # "Show me the evidence" opens the cited lesson cell in the widget.
    widget.get_by_role("button", name="Show me the evidence").click()
    evidence = widget.locator(".interview-evidence")
    evidence.get_by_text(question.evidence[0].cell, exact=True).first.wait_for(timeout=30_000)
    assert evidence.locator("pre").count() >= 1
    INTERVIEW_SCREENSHOT.parent.mkdir(exist_ok=True)
    widget.screenshot(path=str(INTERVIEW_SCREENSHOT))


def test_committed_lesson_08_shows_the_feature_browser_from_saved_widget_state(jupyterlab, page):
    """Lesson 08's feature browser renders in JupyterLab from the committed notebook: a dropdown and context rows."""
    folder = jupyterlab[2]
    source = nbformat.read(ROOT / "notebooks" / "08_features.ipynb", as_version=4)
    notebook = folder / "features_committed.ipynb"
    nbformat.write(source, notebook)
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(notebook)], env=_env(folder), check=True,
                   capture_output=True)
    _open(page, jupyterlab, notebook)
    browser = page.locator(".feature-browser")
    browser.wait_for(timeout=60_000)
    browser.scroll_into_view_if_needed()
    assert browser.is_visible()
    assert page.get_by_text("Error displaying widget").count() == 0
    assert browser.locator("select").count() == 1
    assert browser.locator("tr.context").count() >= 3
    assert "promotes" in browser.inner_text()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.screenshot(path=str(SCREENSHOT.parent / "feature_browser.png"))
