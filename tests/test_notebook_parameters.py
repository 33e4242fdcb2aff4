"Parameters given to the run notebooks through papermill are checked where they enter (issue 13, item 1)."
import json, os, shutil, subprocess
import pytest
from conftest import ROOT, bin_path
from jupyterlab_driver import small_sample

ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': str(ROOT)}

def papermill(nb, out, *params, cwd):
    args = [x for k, v in params for x in ('-p', k, str(v))]
    return subprocess.run([bin_path('papermill'), str(ROOT / 'nbs' / nb), str(out), '-k', 'python3', '--cwd', str(cwd), *args],
                          capture_output=True, text=True, env=ENV, timeout=600)

def test_misspelt_train_parameter_stops_before_anything_is_written(tmp_path):
    out = tmp_path / 'out.ipynb'
    r = papermill('train.ipynb', out, ('epochz', 1), ('run_dir', tmp_path / 'r'), ('data_dir', ROOT / 'data' / 'sample'), cwd=tmp_path)
    assert r.returncode != 0
    text = r.stderr + out.read_text()
    assert "'epochz' is not a parameter: did you mean 'epochs'?" in text
    assert not (tmp_path / 'r').exists() and not (tmp_path / 'prepared').exists()

def test_misspelt_evaluate_parameter_stops(tmp_path):
    out = tmp_path / 'out.ipynb'
    r = papermill('evaluate.ipynb', out, ('run_dir', tmp_path / 'r'), ('n_bot', 10), cwd=tmp_path)
    assert r.returncode != 0 and "'n_bot' is not a parameter: did you mean 'n_boot'?" in r.stderr + out.read_text()

@pytest.mark.slow
def test_preset_reaches_the_run_and_explicit_parameters_win(tmp_path):
    from brainmri.run import PRESETS
    data = tmp_path / 'raw'
    shutil.copytree(ROOT / 'data' / 'sample', data)
    small_sample(data, 12)
    run = tmp_path / 'runs' / 'p'
    r = papermill('train.ipynb', tmp_path / 'out.ipynb', ('preset', 'sample'), ('data_dir', data),
                  ('store_dir', tmp_path / 'store'), ('run_dir', run), ('epochs', 1), ('img_size', 32), ('workers', 0),
                  ('evaluate', False), ('device', 'cpu'), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    params = json.loads((run / 'params.json').read_text())
    assert params['epochs'] == 1 and params['img_size'] == 32                 # given with -p: they win
    for k in ('batch_size', 'grad_accum', 'prep_size'):                     # not given: the preset's
        if k in PRESETS['sample']: assert params[k] == PRESETS['sample'][k], k
