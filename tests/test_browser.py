"""The slice viewer in a real JupyterLab, driven in headless Chromium (Debian's package) by
Playwright: run notebook 01, move the slice slider, toggle the overlay, compare screenshots."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a folder with notebook 01 set to a one-case dataset."""
    from tumorseg.synthetic import write_dataset

    root = tmp_path_factory.mktemp("lab")
    write_dataset(root / "data", cases=1, seed=4, progress=False, workers=1)  # a large tumour
    notebook = nbformat.read(ROOT / "notebooks" / "01_data_exploration.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += f"\nDATA = {str(root / 'data')!r}"
    nbformat.write(notebook, root / "01_data_exploration.ipynb")
    for helper in ("util.py", "public_tests.py"):
        shutil.copy(ROOT / helper, root / helper)
    port, token = free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(root / ".jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(root / ".jupyter-runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(root / ".lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(root / ".lab-workspaces"),
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "JupyterLab did not start"
            time.sleep(0.5)
    yield url, token
    server.terminate()
    server.wait(timeout=30)


def wait_for_idle_kernel(url: str, token: str, timeout: float = 180) -> None:
    """Until the notebook's kernel has started and is idle (the REST API says so)."""
    import json

    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"{url}/api/kernels?token={token}", timeout=5) as response:
            kernels = json.load(response)
        if kernels and all(k["execution_state"] == "idle" for k in kernels):
            return
        time.sleep(0.5)
    raise AssertionError("the notebook's kernel did not become idle")


def run_all_cells(page, attempts: int = 3) -> None:
    """Run > Run All Cells, again if no cell started (a click can land while Lab settles)."""
    for _ in range(attempts):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_selector(".jp-OutputArea-output", timeout=60_000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError("Run All Cells did not start the notebook")


def picture(element) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB")).astype(int)


def changed_picture(page, element, reference: np.ndarray, timeout: float = 60) -> np.ndarray:
    """The element's picture once it differs from `reference` (or the last one at the deadline):
    the kernel answers a widget change only after the cells still queued ahead of it."""
    deadline = time.time() + timeout
    while True:
        now = picture(element)
        if now.shape != reference.shape or np.abs(now - reference).mean() > 0.2:
            return now
        if time.time() > deadline:
            return now
        page.wait_for_timeout(500)


def red_pixels(rgb: np.ndarray) -> int:
    """Pixels tinted by the edema overlay (red well above green and blue)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(np.count_nonzero((r - g > 60) & (r - b > 60)))


def test_slice_viewer_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    url, token = lab
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: make test installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/01_data_exploration.ipynb?token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        wait_for_idle_kernel(url, token)
        run_all_cells(page)
        view = page.locator(".widget-image").first
        view.wait_for(state="visible", timeout=300_000)
        view.scroll_into_view_if_needed()
        wait_for_idle_kernel(url, token)
        page.wait_for_timeout(1000)
        before = picture(view)

        handle = page.locator(".widget-slider .noUi-handle").first
        handle.focus()
        for _ in range(6):
            page.keyboard.press("ArrowRight")
        moved = changed_picture(page, view, before)
        assert np.abs(moved - before).mean() > 1.0, "moving the slice slider changed nothing"
        assert red_pixels(before) > 200, "no overlay colours on the slice with most tumour"

        page.get_by_role("checkbox", name="label overlay").first.uncheck()
        plain = changed_picture(page, view, moved)
        assert red_pixels(plain) == 0, "the overlay stayed on"
        assert np.abs(plain - moved).mean() > 0.2
        browser.close()
