#!/usr/bin/env python
"""The CPU goal (issue 10): the kit's loop against a plain hand-written loop over the same data path, precision, batch
and accumulation, in interleaved repeats on 1 torch thread; with the real model and with its width-8 twin (the same
layers and callbacks with almost no arithmetic, so the CPU time left is the loop's own). `--profile` adds a cProfile
of the kit with the twin: the brainmri functions with the most cumulative time per training batch.

    python bench/loop_check.py --device cpu --repeats 3 --profile --json out.json
    python bench/render.py out.json
"""
from __future__ import annotations
import cProfile, dataclasses, pstats, sys
from pathlib import Path

import torch

from common import Bench, base_parser, kit, kit_default, plain_loop


def profile_kit(b: Bench, depth: int, epochs: int) -> dict:
    "cProfile of one kit fit with the width-8 twin; the brainmri functions with the most cumulative time, in ms per training batch."
    s, pr = kit_default(b.device, b.args.compile), cProfile.Profile()
    pr.enable()
    try: kit(b, depth, s, width8=True, epochs=epochs)
    finally: pr.disable()
    batches = (len(b.train_rows) // b.bs) * (1 + epochs)
    rows = sorted(((ct, f'{Path(fn).name}:{line} {name}', nc) for (fn, line, name), (cc, nc, tt, ct, callers) in pstats.Stats(pr).stats.items()
                   if '/brainmri/' in fn), reverse=True)
    return dict(settings=s.label(), img_s=float('nan'), images=0, seconds=0, batches=batches,
                top=[dict(where=w, calls=n, ms_per_batch=round(1000 * ct / batches, 2)) for ct, w, n in rows[:15]])


def loop_check(b: Bench, depth: int) -> None:
    a, base, n_b = b.args, kit_default(b.device, b.args.compile), len(b.train_rows) // b.bs
    for model_name, width8, epochs in (('model', False, a.epochs), ('width-8 twin', True, a.overhead_epochs)):
        variants = [('plain hand-written loop', lambda: plain_loop(b, depth, base.amp, base.channels_last, base.loader, base.cudnn_benchmark,
                                                                   width8=width8, warmup=n_b, timed=n_b * epochs)),
                    ('kit, bare learner', lambda: kit(b, depth, dataclasses.replace(base, recipe='bare'), width8=width8, epochs=epochs)),
                    ('kit, full recipe', lambda: kit(b, depth, base, width8=width8, epochs=epochs))]
        runs = {name: [] for name, _ in variants}
        for rep in range(a.repeats):
            for name, fn in variants: runs[name].append(b.guarded('loop_run', depth, fn, what=f'{name} ({model_name}) #{rep + 1}'))
        ref = None
        for name, _ in variants:
            r = b.summarise('loop_check', depth, runs[name], what=name, model=model_name, threads=torch.get_num_threads())
            if r.get('error'): continue
            r['cpu_ms_per_batch'] = r['cpu_ms_per_img'] * b.bs if r.get('cpu_ms_per_img') is not None else None
            if ref is None: ref = r
            r['vs_plain'] = r['img_s'] / ref['img_s']
            if r.get('cpu_ms_per_batch') is not None and ref.get('cpu_ms_per_batch'):
                r['cpu_vs_plain'] = r['cpu_ms_per_batch'] / ref['cpu_ms_per_batch']
                r['cpu_extra_ms_per_batch'] = r['cpu_ms_per_batch'] - ref['cpu_ms_per_batch']
        if a.profile and width8: b.guarded('profile', depth, lambda: profile_kit(b, depth, epochs), what='kit, full recipe (width-8 twin)')


def main(argv=None) -> int:
    p = base_parser(__doc__.split('\n')[0])
    p.add_argument('--depth', type=int, default=1)
    p.add_argument('--overhead-epochs', type=int, default=6, help='timed epochs of the width-8 twin')
    p.add_argument('--loop-threads', type=int, default=1, help='torch threads during the check (0: leave as is; 1: no OpenMP spin-waiting in the CPU time)')
    p.add_argument('--profile', action='store_true', help='also cProfile the kit with the width-8 twin')
    b = Bench(p.parse_args(argv), 'loop_check.py')
    try:
        b.prepare_data()
        if b.args.loop_threads: torch.set_num_threads(b.args.loop_threads)
        loop_check(b, b.args.depth)
    finally: b.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
