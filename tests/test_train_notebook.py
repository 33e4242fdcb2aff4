"nbs/train.ipynb under papermill: parameters reach the run, and the run folder holds what the README promises."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT, bin_path

def _small_source(dest: Path, per_class: int = 30) -> Path:
    import pandas as pd
    src = ROOT / 'data' / 'sample'
    man = pd.read_csv(src / 'manifest.csv')
    keep = man.groupby('label').head(per_class)
    for f in keep.file:
        (dest / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy(src / f, dest / f)
    keep.to_csv(dest / 'manifest.csv', index=False)
    return dest

@pytest.mark.slow
def test_papermill_train_notebook(tmp_path):
    data = _small_source(tmp_path / 'raw')
    run = tmp_path / 'runs' / 'nb'
    run.mkdir(parents=True)
    out = run / 'train.ipynb'
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': str(ROOT)}
    cmd = [bin_path('papermill'), str(ROOT / 'nbs' / 'train.ipynb'), str(out), '-k', 'python3', '--cwd', str(tmp_path),
           '-p', 'data_dir', str(data), '-p', 'store_dir', str(tmp_path / 'store'), '-p', 'run_dir', str(run),
           '-p', 'epochs', '2', '-p', 'img_size', '32', '-p', 'batch_size', '16', '-p', 'grad_accum', '1',
           '-p', 'workers', '0', '-p', 'n_boot', '20', '-p', 'device', 'cpu',
           '-p', 'schedule', '{"warmup_epochs": 10, "plateau_patience": 1}', '-p', 'mechanisms', '{"class_penalty_up": 1.05}']
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    params = json.loads((run / 'params.json').read_text())
    assert params['epochs'] == 2 and params['img_size'] == 32      # papermill's parameters were used, not the defaults
    # a group given as a JSON object is merged over its defaults
    assert params['schedule']['warmup_epochs'] == 10 and params['schedule']['plateau_patience'] == 1
    assert params['schedule']['cosine_end'] == 40 and params['mechanisms']['class_penalty_up'] == 1.05
    assert len(json.loads((run / 'history.json').read_text())) == 2
    for name in ('best.pt', 'last.pt', 'metrics.json', 'train.ipynb'): assert (run / name).exists(), name
    assert list(run.glob('*.png'))
    assert 'test accuracy' in out.read_text()

def test_bad_parameter_stops_the_notebook(tmp_path):
    out = tmp_path / 'out.ipynb'
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([bin_path('papermill'), str(ROOT / 'nbs' / 'train.ipynb'), str(out), '-k', 'python3', '--cwd', str(ROOT),
                        '-p', 'device', 'tpu', '-p', 'run_dir', str(tmp_path / 'r')], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    assert "device='tpu'" in r.stderr + out.read_text()
    assert not (tmp_path / 'r').exists()   # stopped before writing anything
