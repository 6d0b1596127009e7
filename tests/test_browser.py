"""The entropy notebook in a real browser: JupyterLab on loopback, driven by headless Chromium (Playwright).

Runs every cell of a copy of 03_entropy_visualization.ipynb (pointed at a tiny untrained checkpoint),
checks that the explorer's slider and next-byte bars render, moves the slider with the mouse and the
keyboard, and checks that the bars were redrawn. A second test opens the explorer on 1.1 MB, overlays
patch boundaries and hovers a byte for the model's top guesses. A screenshot goes to the test's tmp_path and to
outputs/test-artifacts/. Debian's chromium is used (Playwright's own browser download does not work here).
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
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from blm_lab.workbench import runner
from blm_lab.checkpoint import save_checkpoint
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from conftest import REPO_ROOT

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO_ROOT / "outputs" / "test-artifacts"
NOTEBOOK = "03_entropy_visualization.ipynb"
TEXT = "def mean(values):\n    return sum(values) / len(values)\n\nThe quick brown fox jumps over the lazy dog.\n"
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
TIMEOUT_MS = 90_000
BIG_BYTES = 1_100_000  # the explorer at file scale: over 1 MB
CANTERBURY = REPO_ROOT.parent / "shared" / "corpora" / "canterbury"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}?token={token}", method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


def fit_briefly(model, data: bytes, steps: int = 400) -> None:
    """A few AdamW steps on random 17-byte windows of ``data`` (seeded): a model that has seen text."""
    generator = torch.Generator().manual_seed(0)
    x = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, x.numel() - 17, (32,), generator=generator)
        windows = torch.stack([x[s:s + 17] for s in starts.tolist()])  # (32, 17)
        _, loss = model(windows[:, :-1], windows[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@contextmanager
def jupyter_lab(tmp_path, parameters: dict, train_on: bytes | None = None):
    """JupyterLab serving tmp_path/root (a copy of the entropy notebook with ``parameters``); yields (url, token, root, home)."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright (python) is not installed: pip install -e '.[test]'"
    if not CHROMIUM.is_file():
        missing = f"{CHROMIUM} is missing: `make test` installs it where it can (sudo apt-get install chromium)"
    if missing and os.environ.get("BLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test must run here (BLM_REQUIRE_BROWSER=1) but {missing}")
    if missing:
        pytest.skip(missing)
    import papermill as pm

    root, home, run_dir = tmp_path / "root", tmp_path / "home", tmp_path / "run"
    root.mkdir()
    torch.manual_seed(0)
    config = BytesGPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = BytesGPT(config)
    if train_on is not None:  # a few steps, so that entropies differ from byte to byte (and patches have lengths)
        fit_briefly(model, train_on)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", {"config": config.to_dict(), "model_state": model.state_dict()})
    # papermill's prepare_only writes the copy with an injected-parameters cell and no outputs
    pm.execute_notebook(str(runner.notebooks_dir() / NOTEBOOK), str(root / NOTEBOOK), prepare_only=True,
                        kernel_name=runner.ensure_kernel(), progress_bar=False,
                        parameters={"checkpoint": str(checkpoint), "run_dir": str(run_dir), "device": "cpu", **parameters})
    user_settings = home / ".jupyter/lab/user-settings/@jupyterlab"
    for path, values in {  # no news popup over the page; every cell in the DOM (no virtual scrolling)
        "apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }.items():
        (user_settings / path).parent.mkdir(parents=True, exist_ok=True)
        (user_settings / path).write_text(json.dumps(values))

    port, token = free_port(), secrets.token_hex(16)
    log = open(tmp_path / "jupyter.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--FileContentsManager.delete_to_trash=False"],
        env={**os.environ, "HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, root, home
    finally:
        try:  # kernels outlive the browser: stop them through the API first
            for session in api(base, token, "/api/sessions") or []:
                api(base, token, f"/api/sessions/{session['id']}", method="DELETE")
        except (urllib.error.URLError, OSError):
            pass
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def lab(tmp_path):
    with jupyter_lab(tmp_path, {"text": TEXT}) as served:
        yield served


@pytest.fixture
def big_lab(tmp_path):
    """The same notebook on a file of BIG_BYTES (Canterbury texts, repeated), every byte analysed."""
    texts = b"".join((CANTERBURY / name).read_bytes() for name in ("alice29.txt", "asyoulik.txt", "lcet10.txt"))
    big = tmp_path / "big.txt"
    big.write_bytes((texts * (BIG_BYTES // len(texts) + 1))[:BIG_BYTES])
    with jupyter_lab(tmp_path, {"file": str(big), "max_bytes": BIG_BYTES}, train_on=texts) as served:
        yield served


@contextmanager
def notebook_page(lab, tmp_path, timeout_ms: int):
    """Chromium on the lab's entropy notebook: yields the page; on failure keeps a screenshot and the HTML."""
    from playwright.sync_api import sync_playwright

    base, token, root, home = lab
    url = f"{base}/lab/workspaces/t{secrets.token_hex(4)}/tree/{NOTEBOOK}?reset&token={token}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
                                    env={**os.environ, "HOME": str(home)})
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(timeout_ms)
        try:
            page.goto(url)
            yield page
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(page.content())
            raise
        finally:
            browser.close()


def keep_screenshot(page, tmp_path, name: str) -> None:
    """The page as a person sees it, in tmp_path and outputs/test-artifacts/."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shot, ARTIFACTS / shot.name)
    assert shot.stat().st_size > 10_000


def test_entropy_explorer_in_jupyterlab(lab, tmp_path):
    with notebook_page(lab, tmp_path, TIMEOUT_MS) as page:
        panel = page.locator(PANEL)
        panel.locator(".jp-Cell").first.wait_for()
        page.get_by_text("| Idle").first.wait_for()  # the kernel is up

        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator("li[data-command='runmenu:run-all']").click()

        slider = panel.locator(".widget-slider").first
        slider.wait_for()
        chart = panel.locator(".blm-bars").first
        chart.wait_for()
        page.get_by_text("| Idle").first.wait_for()
        text = panel.inner_text()
        assert "Traceback" not in text, "a cell raised an error"
        assert "bits/byte" in text  # the analysis cell printed its summary
        before = chart.inner_html()
        assert "blm-bar" in before
        readout = panel.locator(".widget-readout").first
        position_before = readout.inner_text()

        panel.locator(".noUi-handle").first.click()
        for key in ("ArrowLeft", "ArrowLeft", "ArrowLeft"):
            page.keyboard.press(key)
        page.wait_for_function(
            "([sel, old]) => { const bars = document.querySelector(sel); return bars && bars.innerHTML !== old; }",
            arg=[f"{PANEL} .blm-bars", before])
        page.get_by_text("| Idle").first.wait_for()  # every key press has been redrawn
        assert panel.locator(".blm-bars").first.inner_html() != before
        assert readout.inner_text() != position_before

        panel.locator(".widget-vbox").first.scroll_into_view_if_needed()
        keep_screenshot(page, tmp_path, "entropy_explorer.png")


def test_explorer_on_a_megabyte_with_hover_and_patches(big_lab, tmp_path):
    """Over 1 MB analysed: the slider spans it all, patch boundaries overlay the text, hovering a byte shows
    the model's top guesses; the screenshot (outputs/test-artifacts/explorer_1mb.png) shows both."""
    with notebook_page(big_lab, tmp_path, 5 * TIMEOUT_MS) as page:  # longer: the model reads 1.1 MB first
        panel = page.locator(PANEL)
        panel.locator(".jp-Cell").first.wait_for()
        page.get_by_text("| Idle").first.wait_for()
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator("li[data-command='runmenu:run-all']").click()
        explorer = panel.locator(".widget-vbox").last
        explorer.locator(".widget-slider").first.wait_for()
        page.get_by_text("| Idle").first.wait_for()
        assert "Traceback" not in panel.inner_text(), "a cell raised an error"
        assert f"{BIG_BYTES:,} bytes" in panel.inner_text()

        explorer.get_by_text("patch boundaries").click()
        patch = explorer.locator(".blm-surprisal span.blm-patch").first
        patch.wait_for()
        page.get_by_text("| Idle").first.wait_for()
        explorer.locator(".widget-slider").nth(3).locator(".noUi-handle").click()  # θ: up 24 steps of 0.05 nats
        for _ in range(24):
            page.keyboard.press("ArrowRight")
        page.wait_for_function("sel => /θ = 2\\.5/.test(document.querySelector(sel).innerText)",
                               arg=f"{PANEL} .widget-vbox")
        page.get_by_text("| Idle").first.wait_for()
        marked = explorer.locator(".blm-surprisal span.blm-patch").count()
        shown = explorer.locator(".blm-surprisal span[data-pos]").count()
        assert 10 < marked < shown  # some bytes open a patch, not all
        assert "patches (global rule" in explorer.inner_text()
        assert f"of {BIG_BYTES}" in explorer.locator(".blm-surprisal").first.inner_text()

        target = explorer.locator(".blm-surprisal br + span[data-pos]").nth(4)  # at a line's start: room on the right
        target.scroll_into_view_if_needed()
        target.hover()
        hover = target.evaluate("el => getComputedStyle(el, '::after').content")
        assert "top guesses:" in hover
        keep_screenshot(page, tmp_path, "explorer_1mb.png")
