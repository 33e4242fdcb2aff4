"""Exact resume: a run killed part-way and resumed from last.pt ends with the weights of a run that
was never interrupted (torch.equal), on the CPU.

The notebook (nbs/05_learner.ipynb) checks a clean stop after an epoch. These cover the harder
cases: a kill *in the middle* of an epoch (KeyboardInterrupt; last.pt is the previous epoch's),
the real BasicCNNModel with a block opened mid-run (a new optimizer param group), class weights
changed by a callback, a class-balancing WeightedRandomSampler, DataLoader worker processes,
bf16 autocast, the composite LR schedule and gradient accumulation with a short last group.
Each epoch's batches depend only on (seed, epoch): the learner reseeds the samplers' and the
loader's generators before every epoch, and restores the RNG states from the checkpoint.
"""
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from brainmri.core import seed_everything
from brainmri.data import make_weighted_sampler
from brainmri.learner import Callback, Learner
from brainmri.model import create_model
from brainmri.schedule import CompositeLRSchedule

torch.set_num_threads(1)
N_EPOCHS = 4


def small_cnn(seed):
    torch.manual_seed(seed)
    return create_model(widths=((8, 8), (8, 8, 16), (8, 8, 8)), gn_groups=4, head_width=16, noise_std=0.05)


def loaders(workers=0):
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 18 + [1] * 6 + [2] * 12)            # imbalanced: the sampler evens it out
    X = torch.randn(len(y), 1, 16, 16, generator=g) * 0.5 + y.view(-1, 1, 1, 1).float()
    ds = TensorDataset(X, y)
    sampler = make_weighted_sampler(y.numpy(), seed=0)
    tr = DataLoader(ds, batch_size=4, sampler=sampler, drop_last=True, num_workers=workers,   # 9 batches: groups 2,2,2,2,1
                    generator=torch.Generator(), persistent_workers=False)
    return tr, DataLoader(ds, batch_size=8)


class OpenBlock2(Callback):
    "Open block 2 before epoch 1, as ProgressiveUnfreeze does."
    def before_epoch(self):
        if self.learn.epoch == 1: self.learn.add_param_group(self.learn.model.freeze_blocks_until(2))


class ReweightClasses(Callback):
    "Change the loss's class weights after every epoch, as ClassPenalty does; keeps a counter as state."
    def __init__(self): self.n = 0
    def after_epoch(self):
        self.n += 1
        self.learn.class_weights = torch.tensor([1.0, 1.0 + 0.1 * self.n, 1.0 - 0.05 * self.n])
    def state_dict(self): return {'n': self.n}
    def load_state_dict(self, d): self.n = d['n']


class KillAt(Callback):
    "Raise KeyboardInterrupt at batch `it` of epoch `epoch`, like Ctrl-C or a dying job."
    def __init__(self, epoch, it): self.epoch, self.it = epoch, it
    def before_batch(self):
        if self.learn.epoch == self.epoch and self.learn.iter == self.it: raise KeyboardInterrupt


def run(run_dir, init_seed=0, kill=None, resume=False, amp=None, workers=0):
    tr, va = loaders(workers)
    cbs = [OpenBlock2(), ReweightClasses()] + ([KillAt(*kill)] if kill else [])
    sched = partial(CompositeLRSchedule, warmup_epochs=1, onecycle_end=2, cosine_end=3, floors=((3, 1e-4),))
    learn = Learner(small_cnn(init_seed), tr, va, lr=3e-3, grad_accum=2, seed=11, run_dir=run_dir, amp=amp,
                    lr_schedule=sched, cbs=cbs, progress_bar=False)
    learn.fit(N_EPOCHS, resume=resume)
    return learn


def assert_same_end(a, b):
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()): assert torch.equal(p, q), n
    for (n, p), q in zip(a.model.named_buffers(), b.model.buffers()): assert torch.equal(p, q), n
    assert torch.equal(a.class_weights, b.class_weights)
    assert a.lr_now == b.lr_now and len(a.opt.param_groups) == len(b.opt.param_groups) == 2
    drop = lambda h: [{k: v for k, v in r.items() if k != 'time'} for r in h]
    assert drop(a.history) == drop(b.history)


@pytest.mark.parametrize('amp,workers,kill', [(None, 0, (2, 3)), ('bf16', 0, (1, 0)), (None, 2, (3, 8))])
def test_resume_after_kill_matches_uninterrupted(tmp_path, amp, workers, kill):
    seed_everything(0)
    full = run(tmp_path / 'full', amp=amp, workers=workers)
    seed_everything(0)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / 'killed', kill=kill, amp=amp, workers=workers)
    ck = torch.load(tmp_path / 'killed' / 'last.pt', weights_only=True)
    assert ck['epoch'] == kill[0] - 1                         # the last finished epoch
    seed_everything(99)                                       # a fresh process would have other RNG states and weights
    resumed = run(tmp_path / 'killed', init_seed=5, resume=True, amp=amp, workers=workers)
    assert_same_end(full, resumed)
    assert resumed.get_cb(ReweightClasses).n == N_EPOCHS


def test_resume_needs_the_epoch_seeding(tmp_path, monkeypatch):
    "Without reseeding the loaders per epoch the resumed run draws other batches: the check above can fail."
    import brainmri.learner as L
    monkeypatch.setattr(L, 'seed_loader_epoch', lambda *a, **k: None)
    seed_everything(0)
    full = run(tmp_path / 'full')
    seed_everything(0)
    with pytest.raises(KeyboardInterrupt): run(tmp_path / 'killed', kill=(2, 3))
    seed_everything(99)
    resumed = run(tmp_path / 'killed', init_seed=5, resume=True)
    assert not all(torch.equal(p, q) for p, q in zip(full.model.parameters(), resumed.model.parameters()))
