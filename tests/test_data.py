"`brainmri_prepare` as a user runs it: a separate process, interrupted or killed half-way, run twice."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import ROOT

PREPARE = [sys.executable, '-c', 'import sys; from brainmri.data import prepare_cli; sys.exit(prepare_cli())']

def _env():
    return {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", 'COLUMNS': '200'}

def _run(*args, **kw):
    return subprocess.run([*PREPARE, *map(str, args)], capture_output=True, text=True, env=_env(), timeout=300, **kw)

def _start_and_wait_for_tmp(src, dest, *args):
    "Start a prepare and return once it is writing its temporary store (so a signal lands mid-write)."
    # SIGINT back to its default in the child: a job started in the background of a non-interactive shell (a CI
    # runner's `cmd &`) inherits SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
    p = subprocess.Popen([*PREPARE, str(src), str(dest), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline:
        tmps = list(dest.parent.glob(f'.tmp-*-{dest.name}'))
        if tmps and (tmps[0] / 'images.npy').exists(): return p
        if p.poll() is not None: pytest.fail(f'prepare ended before it could be interrupted: {p.stdout.read()}')
        time.sleep(0.02)
    p.kill(); pytest.fail('prepare never started writing')

def test_cli_prepares_once_then_says_nothing_to_do(tmp_path, shared_data):
    dest = tmp_path / 'store'
    r = _run(shared_data, dest, '--size', 32, '--skip-bad', '--workers', 2)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((dest / 'meta.json').read_text())
    n = sum(1 for _ in open(shared_data / 'manifest.csv')) - 1
    assert meta['n'] == n and meta['args'] == {'size': 32, 'skip_bad': True}
    r2 = _run(shared_data, dest, '--size', 32, '--skip_bad')
    assert r2.returncode == 0 and 'nothing to do' in r2.stdout
    r3 = _run(shared_data, dest, '--size', 48)
    assert r3.returncode == 2 and '--overwrite' in r3.stdout and 'Traceback' not in r3.stdout + r3.stderr
    assert json.loads((dest / 'meta.json').read_text())['size'] == 32
    h = _run('--help')
    assert h.returncode == 0 and all(o in h.stdout for o in ('--size', '--skip_bad', '--overwrite', '--workers'))

@pytest.mark.slow
def test_ctrl_c_leaves_no_store(tmp_path, shared_data):
    dest = tmp_path / 'store'
    p = _start_and_wait_for_tmp(shared_data, dest, '--size', 512, '--workers', 1)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert 'interrupted' in out
    assert not dest.exists() and not list(tmp_path.glob('.tmp-*')), list(tmp_path.iterdir())

@pytest.mark.slow
def test_kill_never_leaves_a_store_that_looks_complete(tmp_path, shared_data):
    dest = tmp_path / 'store'
    p = _start_and_wait_for_tmp(shared_data, dest, '--size', 512, '--workers', 1)
    p.kill(); p.wait(timeout=30)
    assert not dest.exists()   # only a .tmp-* folder is left, which no reader takes for a store
    r = _run(shared_data, dest, '--size', 64)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (dest / 'meta.json').exists()
