#!/usr/bin/env python
"""Whole training runs, timed: the steps of `brainmri.run.run_training` (prepared store, run folder, data, model,
learner, fit, test evaluation) with a `FitClock` callback on the learner; wall time, fit time, epochs, accuracy.

    python bench/full_run.py --device cuda --configs default compile=True --json out.json
    python bench/full_run.py --device cpu --configs "epochs=2,img_size=32" --json out.json   # a smoke run
    python bench/render.py out.json
"""
from __future__ import annotations
import ast, json, re, shutil, sys, time

from brainmri.core import seed_everything
from brainmri.evaluate import evaluate_run
from brainmri.run import TrainConfig, build_data, build_learner, build_model, get_store, start_run

from common import Bench, FitClock, base_parser


def full_run(b: Bench, overrides: dict) -> dict:
    "One run of TrainConfig(**overrides) on the benchmark's store, as run_training does it, with the fit timed by a callback."
    run_dir = b.work / f"run-{re.sub(r'[^A-Za-z0-9]+', '-', json.dumps(overrides))}"
    cfg = TrainConfig(data_dir=str(b.store.path), run_dir=str(run_dir), device=str(b.device), **overrides)
    t = time.perf_counter()
    seed_everything(cfg.seed)
    store = get_store(cfg)
    start_run(cfg, extra={'store': str(store.path.resolve()), 'classes': list(store.classes)})
    learn = build_learner(cfg, build_model(cfg, len(store.classes)), build_data(cfg, store), run_dir)
    clock = learn.add_cb(FitClock())
    learn.fit(cfg.epochs)
    if cfg.evaluate: evaluate_run(run_dir, store.path, split='test', tta=cfg.tta, n_boot=cfg.n_boot, device=cfg.device, seed=cfg.seed)
    wall = time.perf_counter() - t
    hist = learn.history
    res = dict(settings=', '.join(f'{k}={v}' for k, v in overrides.items()) or 'default', how='the steps of brainmri.run.run_training',
               wall_s=round(wall, 1), fit_s=round(clock.seconds, 1), epochs=len(hist), epoch_times=[round(h.get('time') or 0, 2) for h in hist],
               img_s=float('nan'), images=0, seconds=wall, best_val_acc=max((h.get('val_acc') or 0) for h in hist) if hist else None,
               overrides=overrides, actions=[f"{a['epoch']}: {a['source']}: {a['what']}" for a in learn.actions])
    if (p := run_dir / 'metrics.json').exists():
        m = json.loads(p.read_text())
        res['test'] = {f'{ck} {k}': m[ck]['test'][k] for ck in ('best', 'swa') if isinstance(m.get(ck), dict)
                       for k in ('accuracy', 'macro_f1') if isinstance(m[ck].get('test', {}).get(k), (int, float))}
    if b.args.keep_runs: res['run_dir'] = str(run_dir)
    else: shutil.rmtree(run_dir, ignore_errors=True)
    return res


def main(argv=None) -> int:
    p = base_parser(__doc__.split('\n')[0])
    p.add_argument('--configs', nargs='*', default=['default', 'compile=True'],
                   help="TrainConfig overrides per run: 'default' or comma-separated key=value (Python literals)")
    p.add_argument('--keep-runs', action='store_true', help='keep the run folders (in the temporary work folder)')
    b = Bench(p.parse_args(argv), 'full_run.py')
    try:
        b.prepare_data()
        for spec in b.args.configs:
            ov = {} if spec in ('default', '') else {k: ast.literal_eval(v) for k, v in (kv.split('=', 1) for kv in spec.split(','))}
            b.guarded('full_run', None, lambda: full_run(b, ov), what=spec)
    finally: b.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
