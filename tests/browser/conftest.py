"""The course as a learner meets it: a real JupyterLab in a real Chromium, driven by Playwright.

These tests carry the `browser` marker and run only when asked (`make test-browser`, or
`pytest tests/browser -m browser`); the root conftest.py leaves them out of a plain `pytest`.

- The browser is the system Chromium (Debian: `apt-get install -y chromium fonts-dejavu-core`), found at
  $MINILLM_CHROMIUM or on the PATH; Playwright comes from pip (`pip install -e ".[dev,browser]"`) and
  never downloads a browser. Without either, every browser test is skipped with a line saying how to
  install it; none passes without having run.
- JupyterLab serves a temporary copy of the working tree (nothing the tests do reaches it) on
  127.0.0.1, a free port, with a token, and with its own empty config, data, settings and workspace
  folders: no news pop-up, no autosave, and no notebook trusted, as on a fresh clone. Kernels inherit
  MINILLM_QUICK=1 from the root conftest.py.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ("install the browser with `apt-get install -y chromium fonts-dejavu-core` (Debian/Ubuntu) and "
           "Playwright with `pip install -e \".[dev,browser]\"`; never `playwright install`")


def chromium_path() -> str | None:
    """The system Chromium: $MINILLM_CHROMIUM, else the first of chromium / chromium-browser on the PATH."""
    chosen = os.environ.get("MINILLM_CHROMIUM")
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


# Settings a learner does not need in a test: the news and update pop-up, and autosave (the tests
# never save a lesson unless they say so).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


class Lab:
    """A `jupyter lab` server on 127.0.0.1 serving `root`."""

    def __init__(self, root: Path, home: Path):
        self.root, self.home = root, home
        self.token = secrets.token_hex(16)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")]:
            env[var] = str(home / sub)
            (home / sub).mkdir(parents=True, exist_ok=True)
        for name, value in LAB_SETTINGS.items():
            path = home / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value), encoding="utf-8")
        self.log_path = home / "lab.log"
        self.log = open(self.log_path, "w", encoding="utf-8")
        # expose_app_in_browser: the tests read the notebook model (dirty flag, execution counts) through
        # window.jupyterapp; every action a learner takes still goes through the page.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
             "--LabApp.expose_app_in_browser=True", "--allow-root"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                self.api("status")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def shutdown_kernels(self) -> None:
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")

    def close(self) -> None:
        try:
            self.shutdown_kernels()
        except Exception:
            pass
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def chromium():
    path = chromium_path()
    if path is None:
        pytest.skip(f"no Chromium found (looked at $MINILLM_CHROMIUM, chromium, chromium-browser): {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"Playwright is not installed: {INSTALL}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory, chromium):
    """JupyterLab over a copy of the working tree."""
    root = tmp_path_factory.mktemp("course") / "minillm"
    # the working tree (lessons read files beside them, e.g. lesson 18 shows ../benchmarks/generation.py),
    # without what is not the course's: the venv, git, runs, caches
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", ".ipynb_checkpoints"))
    server = Lab(root, tmp_path_factory.mktemp("lab-home"))
    server.mtimes = {p.name: p.stat().st_mtime_ns for p in (root / "notebooks").glob("*.ipynb")}
    yield server
    server.close()
