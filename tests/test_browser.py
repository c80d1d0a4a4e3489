"""The product's face, tested as a user meets it: the exploratory notebooks opened in JupyterLab 4 in a
real headless Chromium (Debian's, driven by Playwright), run top to bottom, a control moved, the plotly
figure checked; and the HTML reports opened offline. Screenshots go to test-artifacts/.
``make test`` installs chromium when it is missing (as root); these tests never skip silently."""

import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
TOKEN = "wbtest"
# small parameters (injected as papermill does) and the control each test moves
CASES = {
    "loss_landscape.ipynb": (dict(steps=7, n_seeds=2), ("slider", 0)),
    "sharpness.ipynb": (dict(seeds=[0], n_hvp=12, archs=["mlp"]), ("slider", 0)),
    "attention.ipynb": (dict(n_sentences=4, stride=10), ("select", 0, "max_logit")),
    "transferability.ipynb": (
        dict(targets=["digits-5to9", "flipped-5to9"], metrics=["logme", "leep", "hscore"], n_boot=50),
        ("select", 1, "hscore"),
    ),
    "tour.ipynb": (dict(steps=5), ("slider", 0)),
    "compare.ipynb": (dict(n_resamples=20), ("slider", 0)),
    "weightspace.ipynb": (dict(steps=5, n_repair=300), ("select", 0, "accuracy")),
    "monitor.ipynb": (dict(steps=120), ("select", 0, "attn_max_logit")),
}


def _need_chromium():
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Debian's chromium is not installed: run `apt-get install chromium chromium-driver` "
            "(make test does this itself when run as root)"
        )


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROMPTS = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim())"


def _wait_all_ran(page, name, dialogs, timeout_s=300, stall_s=20, reruns=2):
    """Wait until every code cell shows an execution count. When execution has stopped short of the last cell for
    ``stall_s`` seconds (no cell queued, some not run, the kernel idle), Run All was lost part-way (JupyterLab
    replaces the first kernel of a fresh lab while it starts: seen in CI, the page then runs a cell or none):
    reload and run all again, at most ``reruns`` times. A notebook that raises stops there on every run: it fails."""
    deadline, stalled_since, done = time.time() + timeout_s, None, 0
    while True:
        prompts = page.evaluate(PROMPTS)
        if prompts and all(re.fullmatch(r"\[\d+\]:", t) for t in prompts):
            return
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if prompts and idle and not any("*" in t for t in prompts):  # execution stopped short of the last cell
            stalled_since = stalled_since or time.time()
            if time.time() - stalled_since > stall_s and done < reruns:
                done, stalled_since = done + 1, None
                page.reload()
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
                _answer_dialogs(page, dialogs, name)
                page.locator("#jp-MainMenu .lm-MenuBar-item", has_text="Run").first.click()
                page.click("li[data-command='runmenu:run-all']")
        else:
            stalled_since = None
        if time.time() > deadline:
            pytest.fail(
                f"{name}: not every cell ran within {timeout_s} s (Run All clicked again {done} times): {prompts}"
            )
        page.wait_for_timeout(1000)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, zoo_built):
    _need_chromium()
    import papermill as pm

    root = tmp_path_factory.mktemp("lab")
    for name, (params, _) in CASES.items():
        nb = pm.iorw.load_notebook_node(str(ROOT / "notebooks" / name))
        nb = pm.parameterize.parameterize_notebook(nb, params)
        pm.iorw.write_ipynb(nb, str(root / name))
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(root / ".jcfg"),
        JUPYTER_RUNTIME_DIR=str(root / ".jrt"),
        WORKBENCH_THREADS="1",
    )
    jupyter = str(Path(os.sys.executable).parent / "jupyter")
    # render every cell (JupyterLab 4 virtualises long notebooks: off-screen outputs are not in the DOM)
    settings = root / ".jcfg" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True, exist_ok=True)
    # and start the notebook's own kernel without asking (a "Select Kernel" dialog otherwise appears now and then)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none", "autoStartDefaultKernel": true}')
    # the "news" pop-up is switched off through settings, not by clicking it away
    subprocess.run(
        [jupyter, "labextension", "disable", "@jupyterlab/apputils-extension:announcements"],
        env=env,
        capture_output=True,
        check=True,
    )
    srv = port = None
    for attempt in range(2):  # the first start after an install can be slow: retry once
        port = _free_port()
        srv = subprocess.Popen(
            [
                jupyter,
                "lab",
                "--allow-root",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.root_dir={root}",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ],
            env=env,
            stdout=open(root / f"lab{attempt}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", timeout=2)
                break
            except Exception:
                time.sleep(0.5)
        else:
            srv.terminate()
            srv.wait(10)
            srv = None
            continue
        break
    assert srv is not None, f"JupyterLab did not start twice; see {root}/lab1.log"
    yield f"http://127.0.0.1:{port}"
    srv.terminate()
    try:
        srv.wait(15)
    except subprocess.TimeoutExpired:
        srv.kill()


@pytest.fixture(scope="module")
def browser():
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _titles(page):
    return page.locator(".js-plotly-plot .gtitle").all_text_contents()


def _answer_dialogs(page, seen, name):
    """A JupyterLab dialog (kernel choice, a kernel that is still starting) blocks every click. Record its
    text and a screenshot, then accept its default button, as a user would; the test fails later if the
    notebook does not then run cleanly."""
    for _ in range(3):
        d = page.locator(".jp-Dialog")
        if d.count() == 0:
            return
        seen.append(" ".join(d.first.inner_text().split())[:300])
        page.screenshot(path=str(ART / f"{name}-dialog{len(seen)}.png"))
        accept = d.first.locator(".jp-Dialog-footer button.jp-mod-accept")
        if accept.count():
            accept.first.click()
        else:
            page.keyboard.press("Escape")
        page.wait_for_timeout(500)


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_in_jupyterlab(name, lab, browser):
    ART.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{lab}/lab/tree/{name}?token={TOKEN}&reset")
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        started = (
            "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]"
            ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))"
        )
        dialogs = []
        for _attempt in range(3):  # a Run All clicked before the kernel is connected does nothing: retry,
            _answer_dialogs(page, dialogs, name)  # after a reload, which connects the page to its kernel anew
            page.locator("#jp-MainMenu .lm-MenuBar-item", has_text="Run").first.click()
            page.click("li[data-command='runmenu:run-all']")
            try:
                page.wait_for_function(started, timeout=30_000)
                break
            except Exception:
                page.keyboard.press("Escape")
                page.reload()
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        else:
            pytest.fail(f"Run All never started the cells of {name}; dialogs seen: {dialogs}")
        assert not [d for d in dialogs if any(w in d.lower() for w in ("died", "error", "restart"))], dialogs
        # every code cell has run: an execution count in its prompt. A Run All that JupyterLab drops (the page
        # bound to a kernel it replaced at start-up: every prompt back to "[ ]", the kernel idle) is clicked again
        _wait_all_ran(page, name, dialogs)
        kind = CASES[name][1]
        control = ".widget-slider .noUi-handle" if kind[0] == "slider" else ".widget-dropdown select"
        page.wait_for_selector(control, timeout=60_000)
        page.wait_for_timeout(1500)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        # every cell ran, no traceback anywhere
        prompts = page.locator(".jp-InputArea-prompt").all_text_contents()
        assert not [p for p in prompts if "[*]" in p or p.strip() == "[ ]:"], prompts
        outputs = " ".join(page.locator(".jp-OutputArea-output").all_text_contents())
        stderr = page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        ).all_text_contents()
        assert "Traceback" not in outputs, outputs[outputs.find("Traceback") :][:1500]
        assert not [e for e in stderr if "Error" in e], stderr
        assert page.locator(".js-plotly-plot .main-svg").count() >= 3  # figures drawn
        page.screenshot(path=str(ART / f"{name}-before.png"))
        before = _titles(page)
        if kind[0] == "slider":
            h = page.locator(control).nth(kind[1])
            h.scroll_into_view_if_needed()
            h.focus()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
        else:
            sel = page.locator(control).nth(kind[1])
            sel.scroll_into_view_if_needed()
            sel.select_option(label=kind[2])
        page.wait_for_function(
            "(before) => { const t = [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
            ".map(e => e.textContent); return JSON.stringify(t) !== JSON.stringify(before); }",
            arg=before,
            timeout=120_000,
        )
        page.wait_for_timeout(500)
        page.screenshot(path=str(ART / f"{name}-after.png"))
        assert _titles(page) != before
    except Exception:
        page.screenshot(path=str(ART / f"{name}-failure.png"))  # what the user would have seen
        raise
    finally:
        page.close()


def test_html_report_renders_offline(browser, tmp_path, zoo_built):
    from workbench import reports

    r = reports.run_report("model_report", dict(steps=5, seeds=2, n_hvp=12, n_samples=300), tmp_path)
    ART.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requested = []

    def block(route):
        requested.append(route.request.url)
        route.abort()

    page.route("http*://**", block)  # the machine is offline: any fetch must fail, and none may be needed
    try:
        page.goto(Path(r["html"]).as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        page.wait_for_timeout(500)
        assert page.locator(".js-plotly-plot .main-svg").count() >= 2
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 1  # data drawn, not just axes
        page.screenshot(path=str(ART / "model_report.png"), full_page=False)
        assert requested == []
    finally:
        page.close()
