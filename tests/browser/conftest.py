"""Fixtures of the real-browser test (test_lab.py): a tiny trained run in a temporary project,
JupyterLab serving that project on 127.0.0.1, and Debian's Chromium driven by playwright.

Nothing here imports playwright at import time: the main suite collects this directory (and
skips test_lab.py) where playwright or Chromium may be missing.
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
from dataclasses import dataclass
from pathlib import Path

import pytest

import adkit

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the environment running the tests: adkit, papermill, JupyterLab, the kernel
NOTEBOOKS = ("02_extract_attention", "03_metrics", "04_compressors")
CHROMIUM = "/usr/bin/chromium"  # Debian's; playwright's own browser downloads are not used
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1700, "height": 1200}
START_S = 120  # JupyterLab answering
SHOTS: list[Path] = []  # screenshots taken this session, listed at the end of the run
FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed  # the page fixture keeps a screenshot of a failed test
    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if SHOTS:
        terminalreporter.section("browser screenshots")
        for path in SHOTS:
            terminalreporter.write_line(str(path))


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of every process of the test: the temporary project as adkit's home, one thread each."""
    return {**os.environ, "ADKIT_HOME": str(home), "OMP_NUM_THREADS": "1", "ADKIT_THREADS": "1", **extra}


def _run(cmd: list[str], home: Path) -> None:
    done = subprocess.run(cmd, cwd=home, env=_env(home), capture_output=True, text=True, timeout=300)
    if done.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@pytest.fixture(scope="session")
def lab_project(tmp_path_factory) -> Path:
    """A temporary project P (``P/config/profiles`` makes it adkit's home) with a tiny run trained in
    ``P/runs/tiny`` and notebooks 02, 03 and 04 in ``P/notebooks``, parameterised for it (still interactive)."""
    home = tmp_path_factory.mktemp("lab-project")
    (home / "config").mkdir()
    (home / "config" / "profiles").symlink_to(Path(adkit.__file__).parent / "profiles", target_is_directory=True)
    _run([str(BIN / "adkit"), "collect", "-c", "tiny"], home)
    _run([str(BIN / "adkit"), "train", "-c", "tiny", "--run-dir", "runs/tiny"], home)
    (home / "notebooks").mkdir()
    for name in NOTEBOOKS:
        target = home / "notebooks" / f"{name}.ipynb"
        _run([sys.executable, "-m", "papermill", "--prepare-only", "-p", "profile", "tiny",
              "-p", "run_dir", "runs/tiny", str(ROOT / "notebooks" / f"{name}.ipynb"), str(target)], home)
        cells = json.loads(target.read_text())["cells"]
        params = "".join(next(c["source"] for c in cells if "parameters" in c["metadata"].get("tags", [])))
        injected = "".join(next(c["source"] for c in cells if "injected-parameters" in c["metadata"].get("tags", [])))
        assert "interactive = True" in params, f"{name}: the widgets are not on by default:\n{params}"
        assert 'profile = "tiny"' in injected and "interactive" not in injected, injected
    return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT
    token: str
    home: Path  # the served project
    log: Path  # the server's (and its kernels') output

    def request(self, path: str, method: str = "GET", timeout: float = 5):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _stop(proc: subprocess.Popen, lab: Lab) -> None:
    """Shut the server down with its kernels (the kernels run in sessions of their own); signals if it hangs."""
    if proc.poll() is None:
        try:
            lab.request("/api/shutdown", method="POST", timeout=10)
        except (OSError, urllib.error.URLError):
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


@pytest.fixture(scope="session")
def lab(lab_project, tmp_path_factory):
    """JupyterLab on 127.0.0.1 (a free port, a random token, no browser) serving the temporary project;
    its kernels inherit ADKIT_HOME. Settings, workspaces and runtime files live in a temporary directory
    too, so nothing of ~/.jupyter is read or written. Stopped at the end, whatever happened."""
    state = tmp_path_factory.mktemp("lab-state")
    settings = state / "settings"
    notifications = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notifications.parent.mkdir(parents=True)
    notifications.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no news toast
    port = _free_port()
    lab = Lab(url=f"http://127.0.0.1:{port}", token=secrets.token_hex(16), home=lab_project, log=state / "lab.log")
    env = _env(lab_project, JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
               IPYTHONDIR=str(state / "ipython"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={lab.token}",
           f"--ServerApp.root_dir={lab_project}", "--ServerApp.terminals_enabled=False",
           "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate"]
    with lab.log.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=lab_project, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}) before answering:\n{lab.tail()}")
            try:
                json.loads(lab.request("/api/status"))
                break
            except (OSError, urllib.error.URLError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {lab.url} within {START_S} s:\n{lab.tail()}")
                time.sleep(0.5)  # polling a server that is starting: nothing to wait_for
        yield lab
    finally:
        _stop(proc, lab)


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (make test-browser tries)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, lab, shoot, request):
    """A fresh browser context on the lab; any request that would leave 127.0.0.1:PORT is aborted
    (and listed in ``page.blocked``), uncaught page errors are kept in ``page.errors``. A failed
    test leaves a screenshot of the page as it was."""
    context = browser.new_context(viewport=VIEWPORT)
    blocked: list[str] = []

    def local_only(route) -> None:
        if route.request.url.startswith(f"{lab.url}/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.blocked, page.errors = blocked, []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    try:
        yield page
        if request.node.stash.get(FAILED, False):
            shoot(page, f"{request.node.name}-failed")
    finally:
        context.close()


@pytest.fixture(scope="session")
def shoot(tmp_path_factory):
    """``shoot(target, name)``: a PNG of a page or locator under a temporary directory, listed at the end."""
    folder = tmp_path_factory.mktemp("browser-screenshots")

    def shoot(target, name: str) -> Path:
        path = folder / f"{name}.png"
        target.screenshot(path=str(path))
        SHOTS.append(path)
        return path

    return shoot
