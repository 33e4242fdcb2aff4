"The console commands end to end: brainmri_prepare, brainmri_train, brainmri_evaluate, brainmri_predict, brainmri_runs."
import json, os, shutil, subprocess
from pathlib import Path
import pytest
from conftest import ROOT, bin_path

def run(*cmd, cwd, ok=True):
    r = subprocess.run([bin_path(cmd[0]), *map(str, cmd[1:])], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, 'MPLBACKEND': 'Agg', 'COLUMNS': '200'}, timeout=600)
    if ok: assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cli')
    src = tmp / 'raw'
    for cls in ('glioma', 'meningioma', 'pituitary'):
        (src / cls).mkdir(parents=True)
        for f in sorted((ROOT / 'data' / 'sample' / cls).glob('*.jpg'))[:25]: shutil.copy(f, src / cls / f.name)
    run('brainmri_prepare', src, tmp / 'store', '--size', 64, cwd=tmp)
    run('brainmri_train', '--data-dir', tmp / 'store', '--run-dir', tmp / 'runs' / 'one', '--epochs', 1, '--img-size', 32,
        '--batch-size', 16, '--grad-accum', 1, '--workers', 0, '--n-boot', 10, '--device', 'cpu', cwd=tmp)
    return tmp

def test_train_wrote_the_run(trained):
    run_dir = trained / 'runs' / 'one'
    for name in ('params.json', 'history.json', 'best.pt', 'last.pt', 'metrics.json'): assert (run_dir / name).exists(), name
    assert json.loads((run_dir / 'params.json').read_text())['epochs'] == 1

def test_train_refuses_another_runs_folder(trained):
    r = run('brainmri_train', '--data-dir', trained / 'store', '--run-dir', trained / 'runs' / 'one', '--epochs', 1, cwd=trained, ok=False)
    assert r.returncode == 2 and 'already holds a run' in r.stdout + r.stderr

def test_train_bad_parameter_exits_2(trained):
    r = run('brainmri_train', '--data-dir', trained / 'missing', '--epochs', 1, cwd=trained, ok=False)
    assert r.returncode == 2 and 'data_dir=' in r.stdout + r.stderr

def test_evaluate_and_predict(trained):
    run_dir = trained / 'runs' / 'one'
    r = run('brainmri_evaluate', run_dir, '--n-boot', 10, '--device', 'cpu', cwd=trained)
    assert 'best: test accuracy' in r.stdout
    img = next((trained / 'raw' / 'pituitary').glob('*.jpg'))
    r = run('brainmri_predict', run_dir / 'best.pt', img, '--json', '--cam-dir', trained / 'cams', '--device', 'cpu', cwd=trained)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['label'] in ('glioma', 'meningioma', 'pituitary')
    assert abs(sum(out['probs'].values()) - 1) < 1e-4 and list((trained / 'cams').glob('*.png'))
    bad = trained / 'bad.jpg'; bad.write_bytes(b'not an image')
    r = run('brainmri_predict', run_dir, img, bad, '--json', cwd=trained, ok=False)   # a run folder: best.pt, calibrated
    lines = [json.loads(l) for l in r.stdout.strip().splitlines() if l.startswith('{')]
    assert r.returncode == 1 and [('error' in l, Path(l['file']).name) for l in lines] == [(False, img.name), (True, 'bad.jpg')]
    r = run('brainmri_predict', run_dir / 'best.pt', trained / 'missing.jpg', cwd=trained, ok=False)
    assert r.returncode == 2 and 'images=' in r.stdout + r.stderr
    r = run('brainmri_predict', img, img, cwd=trained, ok=False)         # an image where the checkpoint goes
    assert r.returncode == 2 and 'it is an image' in r.stdout and 'weights_only' not in r.stdout + r.stderr
    r = run('brainmri_predict', run_dir, img, '--cam-dir', img, cwd=trained, ok=False)
    assert r.returncode == 2 and 'is a file, not a folder' in r.stdout and 'Traceback' not in r.stderr

def test_runs_table(trained):
    r = run('brainmri_runs', trained / 'runs', '--plot', trained / 'runs.png', cwd=trained)
    assert 'one' in r.stdout and (trained / 'runs.png').exists()

def test_resuming_a_finished_run_rewrites_nothing(trained):
    run_dir = trained / 'runs' / 'one'
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != 'params.json'}
    r = run('brainmri_train', '--data-dir', trained / 'store', '--run-dir', run_dir, '--epochs', 1, '--img-size', 32,
            '--batch-size', 16, '--grad-accum', 1, '--workers', 0, '--n-boot', 10, '--device', 'cpu', '--resume', cwd=trained)
    assert 'the run is finished' in r.stdout
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != 'params.json'}
    assert after == before
