"""nbs/train.ipynb as a researcher uses it: opened as shipped in JupyterLab (Debian's chromium, playwright).

On a temporary copy of the project (its sample cut to a few images per class), the test adds one
cell under the parameters (a tiny fit that stops after its first epoch), runs everything above
"Go on", checks the data, model and history outputs, then runs "Go on" and the evaluation and
checks the continued history and the inline report. The kernel starts in nbs/, so the default
`data_dir='data/sample'` must resolve to the project's sample, and the store and the run must land
in the project's prepared/ and runs/, not in nbs/. Screenshots: tests/_artifacts/train_*.png.

    pytest -m browser tests/test_train_browser.py
"""
from __future__ import annotations
import json

import pytest
from jupyterlab_driver import (ARTIFACTS, SLOW, browser_page, cell, lab_project, no_kernel_errors, open_notebook, run_cells,
                               outputs_text, wait_idle)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TINY = "epochs = 2; stop_after = 1; img_size = 32; batch_size = 16; grad_accum = 1; workers = 0; n_boot = 20; device = 'cpu'"


def _cell_index(page, startswith: str) -> int:
    "Index of the first cell whose source starts with `startswith`."
    sources = page.locator('.jp-Notebook .jp-Cell .jp-InputArea-editor').all_inner_texts()
    return next(i for i, s in enumerate(sources) if s.lstrip().startswith(startswith))


def test_train_notebook_in_jupyterlab(tmp_path):
    from playwright.sync_api import expect
    with lab_project(tmp_path, 'train') as (base, project), browser_page(tmp_path, 'train', 1400, 1400) as page:
        open_notebook(page, base, 'nbs/train.ipynb')
        # A researcher's edit: one cell under the parameters with a tiny fit that stops after epoch 1.
        params = _cell_index(page, "preset = ")
        cell(page, params).locator('.jp-InputArea-editor').click()
        page.keyboard.press('Escape'); page.keyboard.press('b'); page.keyboard.press('Enter')
        page.keyboard.insert_text(TINY)
        page.keyboard.press('Escape')
        # Run everything above "Go on".
        go_on = _cell_index(page, 'if len(learn.history) < cfg.epochs')
        cell(page, go_on).locator('.jp-InputArea-editor').click(); page.keyboard.press('Escape')
        run_cells(page, 'Run All Above Selected Cell')
        wait_idle(page)
        no_kernel_errors(page)
        setup, data, model = params + 2, params + 4, params + 6
        fit, history = params + 8, params + 10
        assert 'grad_accum=1' in outputs_text(page, setup)              # underscores as typed, in plain text
        expect(cell(page, data).locator('.jp-OutputArea')).to_contain_text('groups (patients)')
        assert cell(page, data).locator('.jp-OutputArea img').count() == 1   # a few images per class
        expect(cell(page, model).locator('.jp-OutputArea')).to_contain_text('block 2')
        expect(cell(page, fit).locator('.jp-OutputArea')).to_contain_text('epoch   1/1')
        assert cell(page, history).locator('.jp-OutputArea img').count() == 1
        cell(page, history).scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / 'train_1_after_stop.png'), full_page=False)
        cell(page, history).locator('.jp-OutputArea').screenshot(path=str(ARTIFACTS / 'train_2_history_epoch1.png'))
        cell(page, data).locator('.jp-OutputArea').screenshot(path=str(ARTIFACTS / 'train_0_data.png'))
        cell(page, setup).locator('.jp-OutputArea').screenshot(path=str(ARTIFACTS / 'train_0_parameters.png'))
        # The store and the run are in the project's folders, not in nbs/.
        runs = [d for d in (project / 'runs').iterdir() if (d / 'last.pt').exists()]
        assert len(runs) == 1 and (project / 'prepared' / 'sample-256' / 'meta.json').exists()
        assert not (project / 'nbs' / 'runs').exists() and not (project / 'nbs' / 'prepared').exists()
        # Go on, then the evaluation.
        cell(page, go_on).locator('.jp-InputArea-editor').click(); page.keyboard.press('Escape')
        run_cells(page, 'Run Selected Cell and All Below')
        wait_idle(page)
        no_kernel_errors(page)
        expect(cell(page, go_on).locator('.jp-OutputArea')).to_contain_text('resumed from')
        assert cell(page, go_on).locator('.jp-OutputArea img').count() == 1    # the history again, two epochs now
        assert len(json.loads((runs[0] / 'history.json').read_text())) == 2
        evaluation = params + 14
        report = cell(page, evaluation).locator('.jp-OutputArea')
        expect(report).to_contain_text('accuracy 95% CI')
        expect(report).to_contain_text('best.pt:')
        assert report.locator('img').count() == 5   # confusion, reliability, ROC, Grad-CAM, audit
        cell(page, go_on).locator('.jp-OutputArea').screenshot(path=str(ARTIFACTS / 'train_3_history_epoch2.png'))
        report.locator('table').first.screenshot(path=str(ARTIFACTS / 'train_4_evaluation_table.png'))
        for i, name in enumerate(('confusion', 'reliability', 'roc', 'gradcam', 'audit')):   # one at a time: the panel scrolls
            img = report.locator('img').nth(i); img.scroll_into_view_if_needed()
            img.screenshot(path=str(ARTIFACTS / f'train_4_evaluation_{name}.png'))
        cell(page, fit).scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / 'train_5_fit_output.png'))
        metrics = json.loads((runs[0] / 'metrics.json').read_text())
        assert 0 <= metrics['best']['test']['accuracy'] <= 1 and metrics['best']['test']['ci']['accuracy']
