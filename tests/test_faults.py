"""Faults leave nothing that looks complete (issue 13, item 8).

A prepare, a checkpoint write and an evaluation are killed with SIGKILL (no handler runs, as when a
job is killed or the machine dies) at random points, and then:
- the store is either the old complete one, the new complete one, or clearly incomplete (no
  `meta.json`, which `prepare` writes last), and preparing again succeeds;
- every checkpoint in the run folder loads completely (`weights_only=True`), never a half-written
  one under its real name, and `--resume` finishes the run;
- `metrics.json` is either absent or whole JSON, and evaluating again succeeds.
The kill points are random but seeded, and printed, so a failure can be replayed.
"""
import io, json, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, bin_path

pytestmark = pytest.mark.slow
ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'COLUMNS': '200', 'OMP_NUM_THREADS': '1'}
RNG = random.Random(int(os.environ.get('BRAINMRI_FAULT_SEED', '13')))

# Run a console command with torch.save patched: the first `SAVES_OK` saves are real, the next one
# writes half of its bytes to the open file, says so on stdout and hangs, so the test kills the process
# in the middle of a checkpoint write (the worst moment, which a random kill rarely hits).
HANG_IN_SAVE = r'''
import io, os, sys, time, torch
saves_ok, real_save, calls = int(os.environ['SAVES_OK']), torch.save, [0]
def half_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] <= saves_ok or not hasattr(f, 'write'): return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO(); real_save(obj, buf, *args, **kwargs); data = buf.getvalue()
    f.write(data[:len(data) // 2]); f.flush(); os.fsync(f.fileno())
    print('HALF-WRITTEN', getattr(f, 'name', '?'), flush=True); time.sleep(600)
torch.save = half_save
from brainmri import cli
sys.exit(getattr(cli, sys.argv[1])(sys.argv[2:]))
'''


def cmd(*args, cwd, ok=True, timeout=600):
    r = subprocess.run([bin_path(args[0]), *map(str, args[1:])], capture_output=True, text=True, cwd=cwd, env=ENV,
                       timeout=timeout)
    if ok: assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def kill_after(args, delay, cwd, env=ENV):
    "Start `args`, SIGKILL it after `delay` seconds (if still running); returns its exit code."
    p = subprocess.Popen([bin_path(args[0]), *map(str, args[1:])], cwd=cwd, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try: return p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL); return p.wait()


def kill_in_save(entry, argv, saves_ok, cwd):
    "Run `brainmri.cli.<entry>(argv)` until its save number `saves_ok + 1` is half written, then SIGKILL it."
    p = subprocess.Popen([sys.executable, '-c', HANG_IN_SAVE, entry, *map(str, argv)], cwd=cwd,
                         env={**ENV, 'SAVES_OK': str(saves_ok)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, t0 = [], time.time()
    for line in p.stdout:
        seen.append(line)
        if line.startswith('HALF-WRITTEN'): break
        assert time.time() - t0 < 600, 'the run never reached the save to interrupt'
    p.send_signal(signal.SIGKILL); p.wait()
    return ''.join(seen)


def store_state(dest: Path):
    "'complete' (with its image size) when `dest` is a whole store, 'absent' or 'incomplete' otherwise."
    if not dest.exists(): return 'absent', None
    if not (dest / 'meta.json').exists(): return 'incomplete', None
    from brainmri.data import load_store
    s = load_store(dest)                 # a complete store opens, its images and index agree
    assert len(s.index) == s.images.shape[0] > 0
    return 'complete', s.images.shape[1]


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
    "Class folders with 25 real slices each (from the bundled sample)."
    src = tmp_path_factory.mktemp('faults') / 'raw'
    for cls in ('glioma', 'meningioma', 'pituitary'):
        (src / cls).mkdir(parents=True)
        for f in sorted((ROOT / 'data' / 'sample' / cls).glob('*.jpg'))[:25]: shutil.copy(f, src / cls / f.name)
    return src


def test_prepare_killed_leaves_old_store_or_an_incomplete_one(raw):
    work = raw.parent
    src = ROOT / 'data' / 'sample'         # big enough (593 slices) that a kill lands inside the work
    dest = work / 'store'
    t0 = time.time(); cmd('brainmri_prepare', src, dest, '--size', 64, cwd=work); full = time.time() - t0
    assert store_state(dest) == ('complete', 64)
    old = 64
    for size in (48, 56, 40):
        delay = RNG.uniform(0.3 * full, 1.2 * full)
        code = kill_after(['brainmri_prepare', src, dest, '--size', size, '--overwrite'], delay, work)
        state = store_state(dest)
        print(f'prepare --size {size} killed after {delay:.2f}s (exit {code}): {state}')
        assert state in (('complete', old), ('complete', size), ('absent', None), ('incomplete', None)), state
        assert not any(store_state(p)[0] == 'complete' for p in work.glob('.tmp-*')), 'a temporary folder looks complete'
        cmd('brainmri_prepare', src, dest, '--size', size, '--overwrite', cwd=work)   # preparing again succeeds
        assert store_state(dest) == ('complete', size)
        old = size   # the store the next kill may leave in place


TRAIN = ['--epochs', 3, '--img-size', 32, '--batch-size', 16, '--grad-accum', 1, '--workers', 0, '--n-boot', 10,
         '--device', 'cpu', '--seed', 0]


def checkpoints_whole(run_dir: Path):
    for p in run_dir.glob('*.pt'):
        ck = torch.load(p, map_location='cpu', weights_only=True)    # a half-written file fails here
        assert 'model' in ck or 'state_dict' in ck or len(ck) > 0, p


def test_checkpoint_write_killed_then_resume_finishes(raw):
    work = raw.parent
    cmd('brainmri_prepare', raw, work / 'small', '--size', 48, cwd=work)
    ref = work / 'runs' / 'uninterrupted'
    cmd('brainmri_train', '--data-dir', work / 'small', '--run-dir', ref, *TRAIN, cwd=work)
    ref_hist = json.loads((ref / 'history.json').read_text())
    for trial in range(2):
        run_dir = work / 'runs' / f'kill-save-{trial}'
        saves_ok = RNG.randint(1, 4)                 # a later epoch's last.pt or best.pt
        out = kill_in_save('train_cli', ['--data-dir', work / 'small', '--run-dir', run_dir, *TRAIN], saves_ok, work)
        print(f'trial {trial}: killed in save {saves_ok + 1}: {out.strip().splitlines()[-1]}')
        checkpoints_whole(run_dir)
        assert not (run_dir / 'metrics.json').exists(), 'a killed run must not look evaluated'
        cmd('brainmri_train', '--data-dir', work / 'small', '--run-dir', run_dir, *TRAIN, '--resume', cwd=work)
        checkpoints_whole(run_dir)
        hist = json.loads((run_dir / 'history.json').read_text())
        assert (run_dir / 'metrics.json').exists()
        # the resumed run ends where the uninterrupted one did (early stopping may end both before epoch 3)
        assert [h['epoch'] for h in hist] == [h['epoch'] for h in ref_hist]
        assert [h['val_acc'] for h in hist] == pytest.approx([h['val_acc'] for h in ref_hist])


def test_evaluation_killed_leaves_whole_metrics_and_checkpoints(raw):
    work = raw.parent
    store = work / 'small'
    if not (store / 'meta.json').exists(): cmd('brainmri_prepare', raw, store, '--size', 48, cwd=work)
    run_dir = work / 'runs' / 'eval'
    cmd('brainmri_train', '--data-dir', store, '--run-dir', run_dir, *TRAIN, cwd=work)
    first = json.loads((run_dir / 'metrics.json').read_text())
    t0 = time.time(); cmd('brainmri_evaluate', run_dir, '--n-boot', 10, '--device', 'cpu', cwd=work); full = time.time() - t0
    for trial in range(3):
        delay = RNG.uniform(0.3 * full, 1.1 * full)
        code = kill_after(['brainmri_evaluate', run_dir, '--n-boot', 10, '--device', 'cpu'], delay, work)
        print(f'evaluate killed after {delay:.2f}s (exit {code})')
        m = json.loads((run_dir / 'metrics.json').read_text())       # whole JSON, never a half-written file
        assert m['best']['test']['accuracy'] == pytest.approx(first['best']['test']['accuracy'])
        checkpoints_whole(run_dir)
    cmd('brainmri_evaluate', run_dir, '--n-boot', 10, '--device', 'cpu', cwd=work)
