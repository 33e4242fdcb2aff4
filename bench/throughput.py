#!/usr/bin/env python
"""Training throughput (issue 10): the model's ceiling, the kit's loop and an original-style loop side by side, and
one-switch ablations of the kit's settings.

    python bench/throughput.py --json out.json                   # auto device (CPU: 96 px, batch 16, 4 steps per epoch)
    python bench/throughput.py --device cuda --sync-audit --json out.json
    python bench/render.py out.json                              # the block of this machine in docs/benchmarks.md

At each depth (blocks 1..d open):
  (a) ceiling   forward+backward+AdamW step of the model alone on synthetic tensors already on the device, with the
                best settings (CUDA: bf16 autocast, channels_last, torch.compile with eager fallback, cudnn.benchmark,
                fused AdamW).
  (b) kit       the learner `brainmri.run.build_learner` builds (full recipe, composite LR schedule, class-weighted
                loss, accumulation 4, checkpoints each epoch) over the real data path (CUDA: DeviceLoader; CPU:
                DataLoader + PhaseTransform workers), timed by callbacks over whole epochs after a warm-up epoch.
  (c) original  per-sample albumentations in DataLoader workers (strong phase), fp16 + GradScaler on CUDA (fp32 on the
                CPU), NCHW, eager, a plain loop.
Ablations change one setting of (b) at a time, in rounds that each re-measure the default (--repeats). The sync
audit (CUDA) counts host-device synchronisations per training batch, by source line.
"""
from __future__ import annotations
import collections, contextlib, dataclasses, statistics, sys, tempfile, time, warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from common import (Bench, Setting, ablations_for, autocast, base_parser, kit, kit_default, kit_learner, plain_loop, sync)


def ceiling(b: Bench, depth: int, s: Setting) -> dict:
    "(a) the model alone: synthetic batch on the device, one optimizer step per batch."
    dev, a = b.device, b.args
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    model = b.model(depth).to(dev)
    if s.channels_last: model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=5e-4, **({'fused': True} if s.fused else {}))
    scaler = torch.amp.GradScaler(dev.type, enabled=s.amp == 'fp16')
    g = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(b.bs, a.channels, b.img, b.img, generator=g).to(dev)
    if s.channels_last: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (b.bs,), generator=g).to(dev)
    fwd, note = (torch.compile(model) if s.compile else model), ''

    def step(f):
        with autocast(dev, s.amp): loss = F.cross_entropy(f(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    try: step(fwd)
    except Exception as e:   # the kit falls back to eager the same way
        if fwd is model: raise
        note = f'compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ""}); eager'
        fwd = model; step(fwd)
    sync(dev); first = time.perf_counter() - t
    for _ in range(a.warmup - 1): step(fwd)
    sync(dev)
    n, t = 0, time.perf_counter()
    while n < a.timed_steps and (n == 0 or time.perf_counter() - t < a.max_seconds):
        step(fwd); n += 1
        if not b.cuda or n % 10 == 0: sync(dev)
    sync(dev); secs = time.perf_counter() - t
    return dict(settings=s.label(), img_s=n * b.bs / secs, images=n * b.bs, seconds=secs, steps=n, first_step_s=round(first, 2), note=note)


def original(b: Bench, depth: int) -> dict:
    "(c) per-sample albumentations workers (strong phase), fp16 + GradScaler on CUDA (fp32 on the CPU), NCHW, eager."
    return plain_loop(b, depth, amp='fp16' if b.cuda else None, channels_last=False, loader='workers')


def sync_audit(b: Bench, depth: int = 1) -> dict:
    "CUDA: host-device synchronisations of the DeviceLoader alone and of one kit epoch (eager, full recipe), by source line."
    if not b.cuda: raise RuntimeError('the sync audit needs CUDA')
    s = dataclasses.replace(kit_default(b.device, 'off'), loader='device')
    learn = kit_learner(b, depth, s, Path(tempfile.mkdtemp(dir=b.work)))
    with contextlib.redirect_stdout(sys.stderr): learn.fit(1)           # warm-up: allocator, cuDNN, lazy init
    def audited(fn):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try: fn()
            finally: torch.cuda.set_sync_debug_mode(0)
        where = collections.Counter(f'{Path(x.filename).name}:{x.lineno}' for x in w if 'synchroniz' in str(x.message))
        return dict(where.most_common(12)), sum(where.values())
    loader_where, loader_n = audited(lambda: [batch for batch in learn.train_dl])
    with contextlib.redirect_stdout(sys.stderr): fit_where, fit_n = audited(lambda: learn.fit(1))
    n = len(learn.train_dl)
    return dict(settings=s.label(), img_s=float('nan'), images=0, seconds=0, batches=n, loader_syncs=loader_n,
                loader_syncs_per_batch=loader_n / n, loader_where=loader_where, fit_syncs=fit_n, fit_syncs_per_batch=fit_n / n,
                fit_where=fit_where)


def main(argv=None) -> int:
    p = base_parser(__doc__.split('\n')[0])
    p.add_argument('--depths', type=int, nargs='+', default=[1, 2], help='depths of the (a)/(b)/(c) table')
    p.add_argument('--no-main', action='store_true', help='skip the (a)/(b)/(c) table')
    p.add_argument('--ablations', nargs='*', default=None,
                   help="keys to run (compile cudnn_benchmark loader eval_every fused recipe dynreg channels_last amp), 'all' (None) or 'none'")
    p.add_argument('--ablation-depth', type=int, default=None, help='depth of the ablations (None: 2 on CUDA, 1 on the CPU)')
    p.add_argument('--sync-audit', action='store_true', help='CUDA: count host-device synchronisations per batch, by source line')
    b = Bench(p.parse_args(argv), 'throughput.py')
    a = b.args
    if a.ablation_depth is None: a.ablation_depth = 2 if b.cuda else 1
    try:
        b.prepare_data()
        b.count_flops(sorted(set(a.depths) | {a.ablation_depth}))
        base = kit_default(b.device, a.compile)
        best = Setting(amp=base.amp, channels_last=b.cuda or base.channels_last, compile=base.compile, cudnn_benchmark=b.cuda, fused=b.cuda)
        R = a.repeats
        for dep in ([] if a.no_main else a.depths):
            print(f'depth {dep} ({b.flops.get(dep, 0) / 1e9:.1f} GFLOP per image per training step)', flush=True)
            fns = (('ceiling', lambda: ceiling(b, dep, best)), ('kit', lambda: kit(b, dep, base)), ('original', lambda: original(b, dep)))
            runs = {k: [] for k, _ in fns}
            for _ in range(R):
                for kind, fn in fns: runs[kind].append(b.guarded(kind if R == 1 else kind + '_run', dep, fn))
            if R > 1:
                for kind, _ in fns: b.summarise(kind, dep, runs[kind])
        if a.sync_audit and b.cuda: b.guarded('sync_audit', 1, lambda: sync_audit(b))
        todo = ablations_for(b.device, base)
        if a.ablations in (['none'], []): todo = []
        elif a.ablations not in (None, ['all']): todo = [t for t in todo if t[0] in a.ablations]
        dep = a.ablation_depth
        if todo:   # rounds: the default, then each change; each change is compared with its own round's default
            refs, var_runs, ratios, eratios = [], [[] for _ in todo], [[] for _ in todo], [[] for _ in todo]
            for rep in range(R):
                ref = b.guarded('ablation_ref_run', dep, lambda: kit(b, dep, base), what=f'default #{rep + 1}')
                refs.append(ref)
                for i, (key, what, st) in enumerate(todo):
                    r = b.guarded('ablation_run', dep, lambda: kit(b, dep, st), what=f'{what} #{rep + 1}', key=key)
                    var_runs[i].append(r)
                    if not r.get('error') and not ref.get('error'):
                        ratios[i].append(r['img_s'] / ref['img_s'])
                        if r.get('epoch_img_s') and ref.get('epoch_img_s'): eratios[i].append(r['epoch_img_s'] / ref['epoch_img_s'])
            b.summarise('ablation_ref', dep, refs, what='default')
            for i, (key, what, st) in enumerate(todo):
                b.summarise('ablation', dep, var_runs[i], what=what, key=key, vs_ref=statistics.median(ratios[i]) if ratios[i] else None,
                            ratios=ratios[i], epoch_vs_ref=statistics.median(eratios[i]) if eratios[i] else None, epoch_ratios=eratios[i])
    finally: b.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
