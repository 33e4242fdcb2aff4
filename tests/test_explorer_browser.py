"""Drive the augmentation explorer (nbs/explore_augmentations.ipynb) in a real browser, save what it shows, train with it.

JupyterLab serves a temporary copy of the project (tests/jupyterlab_driver.py); Debian's chromium
(/usr/bin/chromium, nothing downloaded) is driven by playwright: run all cells, move the epoch
slider and a probability slider with the keyboard, check that the picture changed and that the
readout, the phase buttons and the "on" boxes agree; switch to the GPU path and check the explorer
says where it differs; save the configuration with the Save button, and train a one-epoch run with
it through `brainmri_train --augment` (the same parameter papermill and train.ipynb take).
Screenshots go to tests/_artifacts/explorer_*.png.

    pytest -m browser tests/test_explorer_browser.py

Each slider step re-renders in the kernel (about a second on a busy 2-core box), so the test waits
for the readout to show the final value, then for the picture to settle.
"""
from __future__ import annotations
import json, os, subprocess, time
from pathlib import Path

import pytest
from conftest import bin_path
from jupyterlab_driver import ARTIFACTS, SLOW, browser_page, lab_project, open_notebook, run_cells

pytestmark = pytest.mark.browser


def _settled_png(locator, timeout: float = 60) -> bytes:
    "A screenshot of `locator` once two in a row, 0.5 s apart, are equal (the picture has stopped changing)."
    prev, end = locator.screenshot(), time.time() + timeout
    while time.time() < end:
        time.sleep(0.5)
        cur = locator.screenshot()
        if cur == prev: return cur
        prev = cur
    return prev


def _press_until(handle, key: str, readout, text: str, max_presses: int) -> int:
    "Press `key` on a slider handle until the readout contains `text` (each press changes the value by one step)."
    handle.focus()
    for n in range(1, max_presses + 1):
        handle.press(key)
        if text in readout.inner_text(): return n
    return max_presses


def test_explorer_in_jupyterlab(tmp_path):
    from playwright.sync_api import expect
    with lab_project(tmp_path, 'explorer') as (base, project), browser_page(tmp_path, 'explorer', 1700, 1300) as page:
        open_notebook(page, base, 'nbs/explore_augmentations.ipynb')
        run_cells(page, 'Run All Cells')

        readout = page.locator('.bmri-readout')
        image = page.locator('img.bmri-image')
        phase = page.locator('.bmri-phase')
        expect(readout).to_contain_text('epoch 1 → phase 0', timeout=SLOW)
        expect(image).to_be_visible()
        # the horizontal flip is off in the strong phase: its box is unticked, as the readout says
        expect(readout).to_contain_text('off in this phase (p=0): hflip')
        expect(page.locator('.bmri-hflip_on input')).not_to_be_checked()
        expect(page.locator('.bmri-flip_on input')).to_be_checked()
        image.scroll_into_view_if_needed()
        before = _settled_png(image)
        page.screenshot(path=str(ARTIFACTS / 'explorer_1_start.png'), full_page=True)

        # Epoch 1 → 13 with the arrow keys: into the mild phase; the phase buttons follow.
        epoch_handle = page.locator('.bmri-epoch .noUi-handle')
        _press_until(epoch_handle, 'ArrowRight', readout, 'epoch 13 ', 12)
        expect(readout).to_contain_text('epoch 13 → phase 1 (mild, epochs 11–40)', timeout=SLOW)
        expect(readout).to_contain_text('Rotate(limit=±3°, p=0.1)')
        expect(page.locator('.bmri-epoch .widget-readout')).to_have_text('13')
        expect(phase.locator('button.mod-active')).to_contain_text('mild')
        expect(page.locator('.bmri-rotate_limit .widget-readout')).to_have_text('3.000')   # phase 1's values
        after_epoch = _settled_png(image)
        page.screenshot(path=str(ARTIFACTS / 'explorer_2_epoch13.png'), full_page=True)
        assert after_epoch != before, 'the picture did not change when the epoch moved to 13'

        # Rotation probability 0.1 → 1 with End: every draw is now rotated.
        rotate_p = page.locator('.bmri-rotate_p .noUi-handle')
        rotate_p.focus(); rotate_p.press('End')
        expect(readout).to_contain_text('Rotate(limit=±3°, p=1)', timeout=SLOW)
        expect(page.locator('.bmri-rotate_p .widget-readout')).to_have_text('1.000')
        after_p = _settled_png(image)
        page.screenshot(path=str(ARTIFACTS / 'explorer_3_rotate_p1.png'), full_page=True)
        assert after_p != after_epoch, 'the picture did not change when the rotation probability moved to 1'
        (ARTIFACTS / 'explorer_image_before.png').write_bytes(before)
        (ARTIFACTS / 'explorer_image_after.png').write_bytes(after_p)

        # Noise off in this phase with its box: the readout agrees.
        page.locator('.bmri-noise_on input').uncheck()
        expect(readout).to_contain_text('off in this phase (p=0): hflip, noise', timeout=SLOW)
        expect(page.locator('.bmri-noise_p .widget-readout')).to_have_text('0.000')

        # The minimal phase by its button: the epoch slider moves to its first epoch.
        phase.locator('button', has_text='minimal').click()
        expect(readout).to_contain_text('epoch 41 → phase 2 (minimal', timeout=SLOW)
        expect(page.locator('.bmri-epoch .widget-readout')).to_have_text('41')
        expect(page.locator('.bmri-hflip_on input')).to_be_checked()
        phase.locator('button', has_text='mild').click()
        expect(readout).to_contain_text('epoch 11 → phase 1 (mild', timeout=SLOW)

        # The GPU path: other draws, and the explorer says where it differs.
        page.locator('.bmri-path button', has_text='GPU batch').click()
        expect(readout).to_contain_text('differs from the CPU path', timeout=SLOW)
        _settled_png(image)
        page.screenshot(path=str(ARTIFACTS / 'explorer_4_gpu_path.png'), full_page=True)

        # Save, relative to the project folder (the kernel runs in nbs/).
        save_as = page.locator('.bmri-save_as input')
        save_as.fill('tuned-augment.json'); save_as.press('Enter')
        page.locator('.bmri-save').click()
        status = page.locator('.bmri-save-status')
        expect(status).to_contain_text('saved', timeout=SLOW)
        expect(status).to_contain_text("augment='tuned-augment.json'")
        status.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / 'explorer_5_saved.png'), full_page=True)
    saved = project / 'tuned-augment.json'
    tuned = json.loads(saved.read_text())
    assert tuned['phases'][1]['rotate_p'] == 1.0 and tuned['phases'][1]['noise_p'] == 0.0 and tuned['phases'][0]['rotate_p'] == 0.3

    # Train with it: one tiny epoch from the project's nbs/ folder, relative paths, as a researcher would.
    env = {**os.environ, 'MPLBACKEND': 'Agg'}
    r = subprocess.run([bin_path('brainmri_train'), '--augment', 'tuned-augment.json', '--data-dir', 'data/sample',
                        '--run-dir', 'runs/tuned', '--epochs', '1', '--img-size', '32', '--batch-size', '16', '--grad-accum', '1',
                        '--workers', '0', '--device', 'cpu', '--no-evaluate', '--aug-boundaries', '0', '1'],
                       cwd=project / 'nbs', env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = project / 'runs' / 'tuned'
    params = json.loads((run / 'params.json').read_text())
    assert params['augment'] == 'tuned-augment.json' and len(json.loads((run / 'history.json').read_text())) == 1
    # the run trained in the tuned mild phase (boundaries 0, 1: epoch 1 is mild) and says so
    assert 'augmentation phase 1' in r.stdout, r.stdout[-2000:]
