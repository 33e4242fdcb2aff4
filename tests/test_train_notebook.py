"""nbs/train.ipynb under papermill: parameters reach the run, relative paths are read from the project folder, and the
output notebook holds the run's report (plain-text log lines, the plots, the evaluation with its intervals)."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT, bin_path, project_copy
from jupyterlab_driver import small_sample

TINY = ['-p', 'epochs', '2', '-p', 'stop_after', '1', '-p', 'img_size', '32', '-p', 'batch_size', '16', '-p', 'grad_accum', '1',
        '-p', 'workers', '0', '-p', 'n_boot', '20', '-p', 'device', 'cpu']

@pytest.mark.slow
def test_papermill_train_notebook(tmp_path):
    "The README's command, run from the project folder with relative paths, on a project copy with a small sample."
    project = project_copy(tmp_path / 'project')
    small_sample(project / 'data' / 'sample', 30)
    (project / 'runs' / 'nb').mkdir(parents=True)
    out = project / 'runs' / 'nb' / 'train.ipynb'
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': str(ROOT)}
    cmd = [bin_path('papermill'), 'nbs/train.ipynb', 'runs/nb/train.ipynb', '-k', 'python3', '-p', 'run_dir', 'runs/nb', *TINY,
           '-p', 'schedule', '{"warmup_epochs": 10, "plateau_patience": 1}', '-p', 'mechanisms', '{"class_penalty_up": 1.05}']
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    run = project / 'runs' / 'nb'
    params = json.loads((run / 'params.json').read_text())
    assert params['epochs'] == 2 and params['img_size'] == 32      # papermill's parameters were used, not the defaults
    assert params['run_dir'] == str(run)                           # the relative run_dir, in the project's runs/
    assert (project / 'prepared' / 'sample-256' / 'meta.json').exists() and not (project / 'nbs' / 'prepared').exists()
    assert len(json.loads((run / 'history.json').read_text())) == 2  # stopped after 1, then "Go on"
    # a group given as a JSON object is merged over its defaults
    assert params['schedule']['warmup_epochs'] == 10 and params['schedule']['plateau_patience'] == 1
    assert params['schedule']['cosine_end'] == 40 and params['mechanisms']['class_penalty_up'] == 1.05
    for name in ('best.pt', 'last.pt', 'metrics.json', 'train.ipynb'): assert (run / name).exists(), name
    nb = json.loads(out.read_text())
    outputs = [o for c in nb['cells'] for o in c.get('outputs', [])]
    text = json.dumps(nb)
    pngs = sum('image/png' in o.get('data', {}) for o in outputs)
    assert pngs >= 1 + 2 + 5, pngs                                  # examples, history twice, the five evaluation plots
    assert 'accuracy 95% CI' in text and 'resumed from' in text and 'grad_accum=1' in text
    rich_html = [''.join(o['data']['text/html']) for o in outputs if 'text/html' in o.get('data', {})
                 and 'white-space:pre;overflow-x:auto' in ''.join(o['data']['text/html'])]
    assert all(h.rstrip().endswith('monospace"></pre>') for h in rich_html), rich_html[:1]   # log lines are not rich's clipping HTML
                                                                    # (only the progress bars' empty final frames are)
    assert not any(o['output_type'] == 'execute_result' and 'epoch' in ''.join(o['data'].get('text/plain', ''))
                   for o in outputs)                                # no stray history repr

def test_bad_parameter_stops_the_notebook(tmp_path):
    out = tmp_path / 'out.ipynb'
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([bin_path('papermill'), str(ROOT / 'nbs' / 'train.ipynb'), str(out), '-k', 'python3', '--cwd', str(ROOT),
                        '-p', 'device', 'tpu', '-p', 'run_dir', str(tmp_path / 'r')], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    assert "device='tpu'" in r.stderr + out.read_text()
    assert not (tmp_path / 'r').exists()   # stopped before writing anything

def test_bad_augment_file_stops_the_notebook(tmp_path):
    "A broken augmentation file stops the notebook at the parameters, naming the file, before anything is written."
    (tmp_path / 'aug.json').write_text('{"phases": [{"rotate_p": 7}, {}, {}]}')
    out = tmp_path / 'out.ipynb'
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([bin_path('papermill'), str(ROOT / 'nbs' / 'train.ipynb'), str(out), '-k', 'python3', '--cwd', str(tmp_path),
                        '-p', 'augment', str(tmp_path / 'aug.json'), '-p', 'run_dir', str(tmp_path / 'r')],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    assert 'phases[0].rotate_p=7' in r.stderr + out.read_text()
    assert not (tmp_path / 'r').exists()
