"""Drive the augmentation explorer (nbs/explore_augmentations.ipynb) in a real browser.

JupyterLab runs on 127.0.0.1 with no token, from temporary folders (root, settings, workspaces,
runtime), on a copy of the notebook. Debian's chromium (/usr/bin/chromium, nothing downloaded)
is driven by playwright: run all cells, move the epoch slider and a probability slider with the
keyboard, and check that the picture changed and that the readout names the new setting.
Screenshots go to tests/_artifacts/ (gitignored).

    pytest -m browser tests/test_explorer_browser.py

Each slider step re-renders in the kernel (about a second on a busy 2-core box), so the test waits
for the readout to show the final value, then for the picture to settle.
"""
from __future__ import annotations
import json, os, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'nbs' / 'explore_augmentations.ipynb'
ARTIFACTS = REPO / 'tests' / '_artifacts'
CHROMIUM = os.environ.get('BRAINMRI_CHROMIUM', '/usr/bin/chromium')
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync']
# No news or update pop-up over the notebook, and no "Select Kernel" dialog: start the notebook's kernel.
LAB_OVERRIDES = {'@jupyterlab/apputils-extension:notification': {'fetchNews': 'false', 'checkForUpdates': False},
                 '@jupyterlab/notebook-extension:tracker': {'autoStartDefaultKernel': True}}
SLOW = 240_000  # ms: kernel start + imports + first render on a loaded 2-core machine


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


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free port serving a temp copy of the explorer notebook; yields its base URL."
    root, settings = tmp_path / 'root', tmp_path / 'app-settings'
    root.mkdir(); settings.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    (settings / 'overrides.json').write_text(json.dumps(LAB_OVERRIDES))
    port = _free_port()
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(tmp_path / 'config'), 'JUPYTER_DATA_DIR': str(tmp_path / 'data'),
           'JUPYTER_RUNTIME_DIR': str(tmp_path / 'runtime'), 'JUPYTER_PLATFORM_DIRS': '1'}
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', '--IdentityProvider.token=', '--ServerApp.password=',
           f'--ServerApp.root_dir={root}', f'--LabApp.app_settings_dir={settings}',
           f'--LabApp.user_settings_dir={tmp_path / "user-settings"}', f'--LabApp.workspaces_dir={tmp_path / "workspaces"}']
    log = tmp_path / 'jupyter.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f'http://127.0.0.1:{port}'
        _wait_ready(f'{base}/api/status', proc, log)
        yield base
    finally:
        _stop(proc)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / 'explorer_jupyter.log')


def _settled_png(locator, timeout: float = 60) -> bytes:
    "A screenshot of `locator` once two in a row, 0.5 s apart, are equal (the picture has stopped changing)."
    prev, end = locator.screenshot(), time.time() + timeout
    while time.time() < end:
        time.sleep(0.5)
        cur = locator.screenshot()
        if cur == prev: return cur
        prev = cur
    return prev


def _press_until(page, handle, key: str, readout, text: str, max_presses: int) -> int:
    "Press `key` on a slider handle until the readout contains `text` (each press changes the value by one step)."
    handle.focus()
    for n in range(1, max_presses + 1):
        handle.press(key)
        if text in readout.inner_text(): return n
    return max_presses


def test_explorer_in_jupyterlab(lab, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f'{CHROMIUM} not found: install Debian\'s chromium (apt-get install chromium) '
                    'or point BRAINMRI_CHROMIUM at a Chromium binary')
    from playwright.sync_api import expect, sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        if True:  # a fresh profile (--user-data-dir) in this test's temp dir
            ctx = p.chromium.launch_persistent_context(str(tmp_path / 'chromium-profile'), executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_FLAGS, viewport={'width': 1700, 'height': 1300})
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.set_default_timeout(SLOW)
                page.goto(f'{lab}/lab/tree/{NOTEBOOK.name}')
                page.wait_for_selector('.jp-Notebook .jp-Cell')
                # Wait for the kernel (accepting the kernel dialog should one still appear), then Run ▸ Run All Cells.
                page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
                page.wait_for_timeout(1000)
                dialog = page.locator('.jp-Dialog')
                if dialog.count() and dialog.first.is_visible():
                    page.screenshot(path=str(ARTIFACTS / 'explorer_0_dialog.png'))
                    dialog.locator('button.jp-mod-accept').click()
                    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
                page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
                page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()

                readout = page.locator('.bmri-readout')
                image = page.locator('img.bmri-image')
                expect(readout).to_contain_text('epoch 0 → phase 0', timeout=SLOW)
                expect(image).to_be_visible()
                image.scroll_into_view_if_needed()
                before = _settled_png(image)
                page.screenshot(path=str(ARTIFACTS / 'explorer_1_start.png'), full_page=True)

                # Epoch 0 → 12 with the arrow keys: into the mild phase.
                epoch_handle = page.locator('.bmri-epoch .noUi-handle')
                _press_until(page, epoch_handle, 'ArrowRight', readout, 'epoch 12 ', 12)
                expect(readout).to_contain_text('epoch 12 → phase 1 (mild', timeout=SLOW)
                expect(readout).to_contain_text('Rotate(limit=±3°, p=0.1)')
                expect(page.locator('.bmri-epoch .widget-readout')).to_have_text('12')
                # The rotate sliders now show phase 1's values.
                expect(page.locator('.bmri-rotate_limit .widget-readout')).to_have_text('3.000')
                after_epoch = _settled_png(image)
                page.screenshot(path=str(ARTIFACTS / 'explorer_2_epoch12.png'), full_page=True)
                assert after_epoch != before, 'the picture did not change when the epoch moved to 12'

                # Rotate probability 0.1 → 1 with End: every draw is now rotated.
                rotate_p = page.locator('.bmri-rotate_p .noUi-handle')
                rotate_p.focus(); rotate_p.press('End')
                expect(readout).to_contain_text('Rotate(limit=±3°, p=1)', timeout=SLOW)
                expect(page.locator('.bmri-rotate_p .widget-readout')).to_have_text('1.000')
                after_p = _settled_png(image)
                page.screenshot(path=str(ARTIFACTS / 'explorer_3_rotate_p1.png'), full_page=True)
                assert after_p != after_epoch, 'the picture did not change when rotate p moved to 1'
                (ARTIFACTS / 'explorer_image_before.png').write_bytes(before)
                (ARTIFACTS / 'explorer_image_after.png').write_bytes(after_p)
            except Exception:
                try: page.screenshot(path=str(ARTIFACTS / 'explorer_failure.png'), full_page=True)
                except Exception: pass
                raise
            finally:
                ctx.close()
