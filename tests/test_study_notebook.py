"nbs/study.ipynb under papermill on a tiny grid: runs, table, report; a second run trains nothing; the command agrees."
import json, os, subprocess
from pathlib import Path
import pandas as pd
import pytest
from conftest import ROOT, bin_path, small_source

@pytest.mark.slow
def test_papermill_study_notebook(tmp_path):
    data = small_source(tmp_path / 'raw', per_class=24)
    out, nb = tmp_path / 'study', tmp_path / 'study.ipynb'
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': str(ROOT)}
    params = json.dumps(dict(store_dir=str(tmp_path / 'store'), epochs=1, img_size=32, prep_size=32, batch_size=16,
                             workers=0, device='cpu', val_frac=0.2, test_frac=0.3))
    cmd = [bin_path('papermill'), str(ROOT / 'nbs' / 'study.ipynb'), str(nb), '-k', 'python3', '--cwd', str(tmp_path),
           '-p', 'data_dir', str(data), '-p', 'out', str(out), '-p', 'preset', 'sample', '-y',
           f"{{variants: [full, plain], models: [basic, small_cnn], seeds: [0], jobs: 2, n_boot: 30, params: {params}}}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_csv(out / 'study_table.csv')
    assert sorted(zip(table.variant, table.model)) == [('full', 'basic'), ('full', 'small_cnn'), ('plain', 'basic'), ('plain', 'small_cnn')]
    assert table.accuracy.between(0, 1).all() and table[table.variant == 'plain'].diff_acc_vs_full.notna().all()
    assert 'study_plot.png' in nb.read_text() or (out / 'study_plot.png').exists()
    done = {p: p.stat().st_mtime_ns for p in out.glob('runs/*/study_result.json')}
    assert len(done) == 4
    r = subprocess.run([bin_path('brainmri_study'), '--data-dir', str(data), '--out', str(out), '--preset', 'sample',
                        '--variants', 'full', 'plain', '--models', 'basic', 'small_cnn', '--seeds', '0', '--n-boot', '30']
                       + [a for k, v in json.loads(params).items() for a in ('--param', f'{k}={json.dumps(v)}')],
                       capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob('runs/*/study_result.json')} == done   # nothing trained again
    assert 'full' in r.stdout and 'plain' in r.stdout
