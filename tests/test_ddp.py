"""DDP on the CPU: two processes under torchrun with the Gloo backend train a tiny synthetic task.

Checks: the run finishes; only rank 0 wrote files (and printed); both ranks end with identical
weights (buffers too) although they started from different ones; the metrics the learner reports
are those of the whole validation set (no sample lost or counted twice), and `validate(return_preds=True)`
gives the logits in dataset order.
"""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import contextlib, json, os, sys
    from pathlib import Path
    import torch, torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import brainmri.core as core, brainmri.learner as L, brainmri.checkpoint as C
    torch.set_num_threads(1)
    out = Path(sys.argv[1]); rank = int(os.environ['RANK'])

    # record every atomic write and every console print of this rank
    written, printed = [], []
    real_write = core.atomic_write
    @contextlib.contextmanager
    def spy(path, mode='wb'):
        written.append(str(path))
        with real_write(path, mode) as f: yield f
    core.atomic_write = L.atomic_write = C.atomic_write = spy
    real_print = core.console.print
    core.console.print = lambda *a, **k: (printed.append(str(a[0]) if a else ''), real_print(*a, **k))

    g = torch.Generator().manual_seed(0)            # the same data on every rank
    X = torch.randn(140, 6, generator=g); y = (X @ torch.randn(6, 3, generator=g)).argmax(1)
    tr = DataLoader(TensorDataset(X[:100], y[:100]), batch_size=8, shuffle=True, drop_last=True, generator=torch.Generator())
    va = DataLoader(TensorDataset(X[100:137], y[100:137]), batch_size=8)   # 37 images: not divisible by 2
    torch.manual_seed(rank + 1)                     # different initial weights: DDP must start from rank 0's
    model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    # full precision: the gathered metrics are compared below with fp32 arithmetic on the whole set
    learn = L.Learner(model, tr, va, lr=1e-2, grad_accum=2, run_dir=out / 'run', progress_bar=False, seed=0, amp=None)
    assert learn.distributed and dist.get_world_size() == 2
    learn.fit(3)
    v = learn.validate(return_preds=True)

    model.eval()                                    # the same numbers from the whole set in one piece
    with torch.no_grad(): logits = model(X[100:137])
    full = {'acc': (logits.argmax(1) == y[100:137]).sum().item() / 37, 'majority': torch.bincount(y[100:137]).max().item() / 37,
            'loss': nn.functional.cross_entropy(logits, y[100:137]).item()}
    torch.save(model.state_dict(), out / f'weights{rank}.pt')
    json.dump({'written': written, 'printed': len(printed), 'history': learn.history,
               'val': {k: v[k] for k in ('val_acc', 'val_loss')}, 'full': full,
               'logits_match': bool(torch.allclose(v['logits'], logits, atol=1e-5)),
               'labels_match': bool(torch.equal(v['labels'], y[100:137])),
               'train_batches': len(learn.train_dl), 'val_batches': len(learn.valid_dl)},
              open(out / f'rank{rank}.json', 'w'))

    # 2: the real CNN, a class-balancing WeightedRandomSampler, and block 2 opened after epoch 0
    # (a new param group: DDP is rebuilt so that the new parameters' gradients are all-reduced)
    from brainmri.data import make_weighted_sampler
    from brainmri.model import create_model
    yc = torch.arange(30) % 3
    Xc = torch.randn(30, 1, 16, 16, generator=g) * 0.5 + yc.view(-1, 1, 1, 1).float()
    dsc = TensorDataset(Xc, yc)
    trc = DataLoader(dsc, batch_size=4, sampler=make_weighted_sampler(yc.numpy(), seed=0), drop_last=True)
    torch.manual_seed(rank + 1)
    cnn = create_model(widths=((8, 8), (8, 8, 16), (8, 8, 8)), gn_groups=4, head_width=16)
    class OpenBlock2(L.Callback):
        def before_epoch(self):
            if self.learn.epoch == 1: self.learn.add_param_group(self.learn.model.freeze_blocks_until(2))
    lc = L.Learner(cnn, trc, DataLoader(dsc, batch_size=4), grad_accum=2, run_dir=out / 'run_cnn', cbs=[OpenBlock2()],
                   progress_bar=False, seed=0)
    before = next(cnn.blocks[1].parameters()).detach().clone()
    lc.fit(3)
    cnn.eval()
    with torch.no_grad(): acc_c = (cnn(Xc).argmax(1) == yc).sum().item() / 30
    torch.save(cnn.state_dict(), out / f'cnn{rank}.pt')
    json.dump({'val_acc': lc.history[-1]['val_acc'], 'full_acc': acc_c, 'n_open': cnn.n_open,
               'block2_moved': not torch.equal(before, next(cnn.blocks[1].parameters()))}, open(out / f'cnn{rank}.json', 'w'))
    dist.destroy_process_group()
''')


def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / 'ddp_run.py'
    script.write_text(SCRIPT)
    env = {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", 'OMP_NUM_THREADS': '1'}
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'): env.pop(k, None)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone',
                        str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f'rank{i}.json').read_text()) for i in range(2))

    # only rank 0 writes and prints
    assert r1['written'] == [] and r1['printed'] == 0
    assert r0['printed'] > 0
    assert {Path(p).name for p in r0['written']} >= {'history.json', 'history.csv', 'last.pt', 'best.pt'}
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == ['best.pt', 'history.csv', 'history.json', 'last.pt']
    assert torch.load(tmp_path / 'run' / 'last.pt', weights_only=True)['epoch'] == 2

    # identical weights and buffers on both ranks
    w0, w1 = (torch.load(tmp_path / f'weights{i}.pt', weights_only=True) for i in range(2))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)

    # each rank saw half the data; the reported metrics are the whole validation set's
    assert r0['train_batches'] == 100 // 2 // 8 and r0['val_batches'] + r1['val_batches'] == 3 + 3
    for r in (r0, r1):
        assert r['history'][-1]['val_acc'] == pytest.approx(r['full']['acc'], abs=1e-9)
        assert r['val']['val_acc'] == pytest.approx(r['full']['acc'], abs=1e-9)
        assert r['val']['val_loss'] == pytest.approx(r['full']['loss'], rel=1e-5)
        assert r['logits_match'] and r['labels_match']
    untimed = lambda h: [{k: v for k, v in row.items() if k != 'time'} for row in h]
    assert untimed(r0['history']) == untimed(r1['history'])
    assert r0['history'][-1]['val_acc'] > r0['full']['majority'] + 0.1   # it learned

    # the CNN with a block opened mid-run: still in step, and block 2 trained on both ranks
    c0, c1 = (json.loads((tmp_path / f'cnn{i}.json').read_text()) for i in range(2))
    w0, w1 = (torch.load(tmp_path / f'cnn{i}.pt', weights_only=True) for i in range(2))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    for c in (c0, c1):
        assert c['n_open'] == 2 and c['block2_moved']
        assert c['val_acc'] == pytest.approx(c['full_acc'], abs=1e-9)


def test_torchrun_brainmri_train_end_to_end(tmp_path):
    """`torchrun --nproc-per-node 2 brainmri_train` on the CPU (Gloo): one prepare, one run folder written by rank 0 alone,
    and the test accuracy of a single-process run with the same global batch, within that run's own 95% group-bootstrap
    interval. Random draws that differ per rank (dropout, noise, mixup) are off; what remains is the head's BatchNorm
    seeing 8 images per rank instead of 16, so the runs are close, not identical. On 16 test images one image is 0.06:
    measured here 0.63 / 0.44 and 0.50 / 0.75 (DDP / single) with intervals about ±0.25 wide."""
    from conftest import bin_path, small_source
    src = small_source(tmp_path / 'raw', 40)
    (tmp_path / 'settings.ini').write_text('[DEFAULT]\nlib_name = brainmri\n')   # a project folder: runs/ lands here
    env = {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", 'OMP_NUM_THREADS': '1',
           'MPLBACKEND': 'Agg', 'COLUMNS': '200'}
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'): env.pop(k, None)
    common = ['--data-dir', src, '--store-dir', tmp_path / 'store', '--epochs', 3, '--img-size', 32, '--prep-size', 64,
              '--grad-accum', 1, '--workers', 0, '--n-boot', 20, '--device', 'cpu', '--no-early-stopping', '--no-rollback',
              '--no-mixup', '--no-dynamic-regularisation', '--dropouts', 0, 0, 0, '--noise-std', 0,
              '--amp', 'none']   # fp32 on every CPU, as measured in the docstring: this compares DDP, not precision
    ddp = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone', bin_path('brainmri_train'),
           *map(str, common), '--batch-size', '8']
    r = subprocess.run(ddp, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[:4000]
    # one store, one run folder (under the working folder's runs/, named by rank 0), and no leftovers of a second prepare
    assert (tmp_path / 'store' / 'meta.json').exists() and not list(tmp_path.glob('.tmp-*'))
    runs = list((tmp_path / 'runs').iterdir())
    assert len(runs) == 1, runs                      # without --run-dir: one folder, named by rank 0
    ddp_run = runs[0]
    assert r.stdout.count('already holds a run') == 0 and json.loads((ddp_run / 'params.json').read_text())['epochs'] == 3
    m_ddp = json.loads((ddp_run / 'metrics.json').read_text())
    # the same recipe in one process, with the same global batch (2 ranks x 8)
    single = [bin_path('brainmri_train'), *map(str, common), '--batch-size', '16', '--run-dir', tmp_path / 'single']
    r = subprocess.run(single, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m_one = json.loads((tmp_path / 'single' / 'metrics.json').read_text())
    assert m_ddp['n'] == m_one['n']                  # the same split
    lo, hi = m_one['best']['test']['ci']['accuracy']
    assert lo <= m_ddp['best']['test']['accuracy'] <= hi, (m_ddp['best']['test']['accuracy'], m_one['best']['test'])
