"""Benchmarks for brainmri.data; results go to docs/benchmarks.md under "## Data".

    python bench/bench_data.py                 # prepare + __getitem__ timings, writes the section
    python bench/bench_data.py --sample-check  # also: does a small CNN learn the bundled sample on the CPU?
    python bench/bench_data.py --no-write      # print only

Targets (issue 3): preparing the 2402 shared images < 30 s on 2 cores; un-augmented
__getitem__ from the memory map < 50 µs.
"""
from __future__ import annotations
import argparse, os, platform, re, shutil, statistics, sys, tempfile, time, timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np
import torch
from brainmri.core import atomic_write, sample_data_dir
from brainmri.data import (CustomTumorDataset, load_store, make_loader, prepare, split_by_group)

SHARED = ROOT.parent / 'shared' / 'data' / 'figshare-jpg'
MACHINE = 'CPU, 2 cores (dev box)'

def bench_prepare(src: Path, work: Path, repeats: int = 3) -> dict:
    "Wall time of a full prepare at size 256 (best and median of `repeats`), and of the no-op re-run."
    times = []
    for i in range(repeats):
        dest = work / f'store{i}'
        t = time.perf_counter(); prepare(src, dest, size=256, quiet=True); times.append(time.perf_counter() - t)
    t = time.perf_counter(); prepare(src, work / 'store0', size=256, quiet=True); noop = time.perf_counter() - t
    n = len(load_store(work / 'store0'))
    return dict(n=n, best=min(times), median=statistics.median(times), noop=noop, store=work / 'store0')

def bench_getitem(store: Path, number: int = 20000) -> dict:
    "µs per __getitem__ (random indices; wall clock and CPU time) for the memory map, the RAM cache and 3 channels."
    torch.set_num_threads(1)   # what a DataLoader worker runs with
    out = {}
    rng = np.random.default_rng(0)
    for name, kw in (('memmap, 1 channel', {}), ('cache=True, 1 channel', dict(cache=True)), ('memmap, 3 channels', dict(channels=3))):
        ds = CustomTumorDataset(store, **kw)
        for i in range(len(ds)): ds[i]   # one pass first: the steady state of every epoch after the first
        idx = rng.integers(0, len(ds), 2 * number).tolist()
        res = []
        for timer in (time.perf_counter, time.process_time):
            it = iter(idx)
            runs = timeit.repeat(lambda: ds[next(it)], number=number // 10, repeat=9, timer=timer)
            res.append(min(runs) / (number // 10) * 1e6)
        out[name] = tuple(res)
    ds = CustomTumorDataset(store)
    dl = make_loader(ds, batch_size=64, train=True, workers=0)
    t = time.perf_counter(); n = sum(len(y) for _, y in dl); out['loader: 0 workers, batch 64'] = n / (time.perf_counter() - t)
    return out

def sample_check(work: Path, size: int = 64, epochs: int = 12, seed: int = 0) -> dict:
    "Train a small CNN on the bundled sample (group split) on 1 CPU thread; accuracy vs the majority rate."
    torch.manual_seed(seed); torch.set_num_threads(1)
    store = load_store(prepare(sample_data_dir(), work / 'sample-store', size=size, quiet=True))
    sp = split_by_group(store, seed=seed)
    tr, va = CustomTumorDataset(store, sp['train'], cache=True), CustomTumorDataset(store, np.concatenate([sp['val'], sp['test']]), cache=True)
    blk = lambda i, o: [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    model = torch.nn.Sequential(*blk(1, 16), *blk(16, 32), *blk(32, 64), *blk(64, 64), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(64, 3))
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * (len(tr) // 32))
    dl = make_loader(tr, 32, train=True, workers=0, seed=seed)
    t = time.perf_counter()
    for ep in range(epochs):
        model.train()
        for x, y in dl:
            if torch.rand(()) < 0.5: x = x.flip(-1)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
    secs = time.perf_counter() - t
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in make_loader(va, 128, train=False, workers=0)])
    y = torch.as_tensor(va.labels)
    return dict(size=size, epochs=epochs, n_train=len(tr), n_eval=len(va), secs=secs,
                acc=(pred == y).float().mean().item(), majority=np.bincount(va.labels).max() / len(va))

def write_section(lines: list[str], path: Path = ROOT / 'docs' / 'benchmarks.md') -> None:
    "Replace (or append) the '## Data' section of docs/benchmarks.md, keeping the other sections."
    text = path.read_text(encoding='utf-8') if path.exists() else '# Benchmarks\n'
    section = '## Data\n\n' + '\n'.join(lines).rstrip() + '\n'
    pat = re.compile(r'^## Data\n.*?(?=^## |\Z)', re.S | re.M)
    text = pat.sub(lambda m: section + '\n', text) if pat.search(text) else text.rstrip() + '\n\n' + section
    with atomic_write(path, 'w') as f: f.write(text.rstrip() + '\n')

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--src', type=Path, default=SHARED if (SHARED / 'manifest.csv').exists() else sample_data_dir())
    ap.add_argument('--sample-check', action='store_true')
    ap.add_argument('--no-write', action='store_true')
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix='bench-data-'))
    try:
        p = bench_prepare(a.src, work)
        g = bench_getitem(p['store'])
        s = sample_check(work) if a.sample_check else None
    finally: shutil.rmtree(work, ignore_errors=True)
    when = time.strftime('%Y-%m-%d')
    lines = [f'Machine: {MACHINE}; {platform.python_implementation()} {platform.python_version()}, torch {torch.__version__}, '
             f'{os.cpu_count()} CPUs seen, load average {os.getloadavg()[0]:.1f} at the end (the box is shared: '
             f'wall-clock µs grow under load, CPU time much less; each is the best of 9 runs of 2000 calls); {when}. Reproduce: `python bench/bench_data.py{" --sample-check" if s else ""}`.', '',
             '| what | result | target |', '| --- | --- | --- |',
             f"| `prepare` {p['n']} shared JPEGs → 256 px store (threads = CPU count) | best {p['best']:.2f} s, median {p['median']:.2f} s | < 30 s |",
             f"| `prepare` again, same source and arguments (no-op) | {p['noop'] * 1e3:.0f} ms | — |"]
    for k, v in g.items():
        lines.append(f'| `CustomTumorDataset.__getitem__`, {k}, 256 px, transform=None | {v[0]:.1f} µs wall, {v[1]:.1f} µs CPU | < 50 µs |' if 'loader' not in k
                     else f'| `make_loader` epoch, {k.split(": ")[1]}, 256 px | {v:,.0f} images/s | — |')
    if s:
        lines += ['', f"Bundled sample (`data/sample`): a 4-conv CNN at {s['size']} px, {s['epochs']} epochs on {s['n_train']} "
                  f"training images (group split, 1 CPU thread) took {s['secs']:.0f} s and reached {s['acc']:.1%} accuracy on "
                  f"the {s['n_eval']} held-out val+test images (majority rate {s['majority']:.1%})."]
    print('\n'.join(lines))
    if not a.no_write: write_section(lines); print(f'\nwrote the "## Data" section of {ROOT / "docs" / "benchmarks.md"}')

if __name__ == '__main__': main()
