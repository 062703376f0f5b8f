"""Lesson 01 in a real browser: JupyterLab on localhost, headless Chromium, every cell run, the explorer rendered.

Uses Debian's chromium (no browser download) through Playwright's Python client. The screenshot lands
in artifacts/attention_explorer.png, which CI keeps.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
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


def _fresh_copy(folder: Path) -> Path:
    """The lesson without outputs or saved widget state, so only a fresh run can show the explorer."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    path = folder / NOTEBOOK.name
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


def test_lesson_01_runs_in_jupyterlab_and_the_explorer_renders(tmp_path):
    from playwright.sync_api import sync_playwright

    notebook = _fresh_copy(tmp_path)
    port, token = _free_port(), secrets.token_hex(16)
    log_path = tmp_path / "jupyterlab.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=None", f"--LabApp.user_settings_dir={_quiet_settings(tmp_path)}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")},
    )
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", server, log_path)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
                page.wait_for_function(KERNEL_IDLE, timeout=120_000, polling=500)
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
                assert explorer.locator("input[type=range], .widget-slider").count() >= 3

                umbrella = tokens.nth(5)  # ' umbrella': where head 18.6 sends the second ' red'
                background = "el => getComputedStyle(el).backgroundColor"
                assert umbrella.evaluate(background) not in ("rgba(0, 0, 0, 0)", "transparent")
                SCREENSHOT.parent.mkdir(exist_ok=True)
                explorer.screenshot(path=str(SCREENSHOT))
                # Hovering 'Alice' (query 1) shows that token's row instead: all on BOS, none on ' umbrella'.
                tokens.nth(1).hover()
                assert umbrella.evaluate(background) == "rgba(0, 0, 0, 0)"
                assert tokens.nth(0).evaluate(background) != "rgba(0, 0, 0, 0)"
            finally:
                browser.close()
    finally:
        _stop(server)
        log.close()
    assert SCREENSHOT.stat().st_size > 10_000
    shutil.rmtree(tmp_path / "runtime", ignore_errors=True)
