"""JupyterLab in Debian's chromium, for the browser tests (test_explorer_browser.py, test_train_browser.py).

`lab_project` copies the project (what git tracks, plus untracked files it does not ignore) into a
temporary folder, with the bundled sample cut to a few images per class so a fit takes seconds,
and starts JupyterLab on 127.0.0.1 (no token) at that copy's root, with its own settings,
workspaces and runtime folders. The notebooks are opened as shipped: the kernel starts in the
copy's nbs/, as a researcher's does. Nothing is written into the checkout. Screenshots and the
server log go to tests/_artifacts/ (ignored by git).
"""
from __future__ import annotations
import json, os, shutil, signal, socket, subprocess, sys, time, urllib.request
from contextlib import contextmanager
from pathlib import Path

from conftest import ROOT, project_copy

ARTIFACTS = ROOT / 'tests' / '_artifacts'
CHROMIUM = os.environ.get('BRAINMRI_CHROMIUM', '/usr/bin/chromium')
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync']
# No news or update pop-up over the notebook, no "Select Kernel" dialog (start the notebook's kernel),
# every cell in the page (no windowing: the tests find cells by position), and no autosave: what a
# test types stays in the browser unless it saves.
LAB_OVERRIDES = {'@jupyterlab/apputils-extension:notification': {'fetchNews': 'false', 'checkForUpdates': False},
                 '@jupyterlab/notebook-extension:tracker': {'autoStartDefaultKernel': True, 'windowingMode': 'none'},
                 '@jupyterlab/docmanager-extension:plugin': {'autosave': False}}
SLOW = 300_000  # ms: kernel start, imports, a fit or a render on a loaded 2-core machine


def small_sample(folder: Path, per_class: int = 24) -> None:
    "Cut the bundled sample in `folder` (image folders + manifest.csv) to its first `per_class` images of each class."
    import pandas as pd
    man = pd.read_csv(folder / 'manifest.csv')
    keep = man.groupby('label').head(per_class)
    for f in set(man.file) - set(keep.file): (folder / f).unlink()
    keep.to_csv(folder / 'manifest.csv', index=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f'jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}')
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f'jupyter lab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}')


def _stop(proc: subprocess.Popen) -> None:
    "SIGTERM lets the server shut its kernels down; SIGKILL its process group if it hangs."
    if proc.poll() is not None: return
    proc.send_signal(signal.SIGTERM)
    try: proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_new_session), nothing else
        proc.wait(10)


@contextmanager
def lab_project(tmp_path: Path, name: str, per_class: int = 24):
    "Yield (base URL, project copy) of a JupyterLab server on a temporary copy of the project."
    project = project_copy(tmp_path / 'project')
    small_sample(project / 'data' / 'sample', per_class)
    settings = tmp_path / 'app-settings'; settings.mkdir()
    (settings / 'overrides.json').write_text(json.dumps(LAB_OVERRIDES))
    port = _free_port()
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(tmp_path / 'config'), 'JUPYTER_DATA_DIR': str(tmp_path / 'data'),
           'JUPYTER_RUNTIME_DIR': str(tmp_path / 'runtime'), 'JUPYTER_PLATFORM_DIRS': '1'}
    env.pop('MPLBACKEND', None)   # a researcher's kernel has matplotlib's inline backend
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', '--IdentityProvider.token=', '--ServerApp.password=',
           f'--ServerApp.root_dir={project}', f'--LabApp.app_settings_dir={settings}',
           f'--LabApp.user_settings_dir={tmp_path / "user-settings"}', f'--LabApp.workspaces_dir={tmp_path / "workspaces"}']
    log = tmp_path / 'jupyter.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f'http://127.0.0.1:{port}'
        _wait_ready(f'{base}/api/status', proc, log)
        yield base, project
    finally:
        _stop(proc)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / f'{name}_jupyter.log')


@contextmanager
def browser_page(tmp_path: Path, name: str, width: int = 1500, height: int = 1200):
    "A chromium page (fresh profile in `tmp_path`); on failure a full-page screenshot `<name>_failure.png`."
    import pytest
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) "
                    'or point BRAINMRI_CHROMIUM at a Chromium binary')
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / 'chromium-profile'), executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_FLAGS, viewport={'width': width, 'height': height})
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.set_default_timeout(SLOW)
        try: yield page
        except Exception:
            try: page.screenshot(path=str(ARTIFACTS / f'{name}_failure.png'), full_page=True)
            except Exception: pass
            raise
        finally: ctx.close()


def open_notebook(page, base: str, path: str) -> None:
    "Open notebook `path` (relative to the server root) and wait for its kernel to be idle."
    page.goto(f'{base}/lab/tree/{path}')
    page.wait_for_selector('.jp-Notebook .jp-Cell')
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    page.wait_for_timeout(1000)
    dialog = page.locator('.jp-Dialog')
    if dialog.count() and dialog.first.is_visible():   # a kernel dialog after all: accept the default
        dialog.locator('button.jp-mod-accept').click()
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')


def menu(page, top: str, item: str) -> None:
    "Click menu `top` ▸ `item` (exact item text)."
    page.locator('.lm-MenuBar-itemLabel', has_text=top).first.click()
    page.locator('.lm-Menu-itemLabel').get_by_text(item, exact=True).first.click()


_PROMPTS = "() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')].map(e => e.textContent).join('|')"


def run_cells(page, item: str, tries: int = 3, started_within: float = 60_000) -> None:
    """Run menu ▸ `item` (e.g. 'Run All Cells') and check that the kernel took it: a prompt turns to [*] or a new number.

    A run given while a new kernel is still connecting can be dropped without a word (seen once, on the first
    kernel of a fresh venv: every cell stayed [ ] and the kernel idle), so the item is clicked again, up to `tries` times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    for _ in range(tries):
        before = page.evaluate(_PROMPTS)
        menu(page, 'Run', item)
        try:
            page.wait_for_function(f"(before) => ({_PROMPTS})() !== before", arg=before, timeout=started_within)
            return
        except PlaywrightTimeout:
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    raise AssertionError(f"Run ▸ {item}: no cell started after {tries} tries")


def wait_idle(page, timeout: float = SLOW) -> None:
    "Wait until the kernel has started executing and is idle again, and no cell is queued."
    page.wait_for_timeout(1500)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=timeout)
    page.wait_for_function("() => ![...document.querySelectorAll('.jp-InputPrompt')].some(e => e.textContent.includes('[*]'))",
                           timeout=timeout)


def cell(page, index: int):
    "The notebook's cell number `index` (0-based, as in the .ipynb)."
    return page.locator('.jp-Notebook .jp-Cell').nth(index)


def outputs_text(page, index: int) -> str:
    "The text of cell `index`'s outputs."
    cell(page, index).scroll_into_view_if_needed()
    return cell(page, index).locator('.jp-OutputArea').inner_text()


def no_kernel_errors(page) -> None:
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    tracebacks = [t for t in errors.all_inner_texts() if 'Traceback' in t or 'Error' in t]
    assert not tracebacks, tracebacks[0][-3000:]
