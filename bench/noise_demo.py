#!/usr/bin/env python
"""Short runs and validation noise (issue item 4), shown on the bundled sample: the original recipe (every mechanism
on, milestones stretched; the `cpu-study` preset at 20 epochs) trained twice on the same split and seed, once with the
original's thresholds (`se_margin` 0 for early stopping, rollback, class penalty and dynamic regularisation, no floors
on patience and cooldown) and once with the defaults (thresholds sized to the validation set). Prints per run the epoch
early stopping ended at, the rollbacks, class-weight moves and regularisation changes, the epoch best.pt holds (and
early stopping's kept epoch) with its validation accuracy, and best.pt's test accuracy.

    python bench/noise_demo.py --seeds 0 1           # data/sample, 20 epochs, 32 px, 1 thread
    python bench/noise_demo.py --epochs 10 --json out.json
"""
from __future__ import annotations
import argparse, json, platform, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch

from brainmri.core import load_json
from brainmri.run import config_with_preset, run_training

ORIGINAL = dict(mechanisms={'early_stopping_se_margin': 0, 'rollback_se_margin': 0, 'class_penalty_se_margin': 0,
                            'dynamic_regularisation_se_margin': 0},
                min_patience=1, min_rollback_cooldown=0)


def summary(run_dir: Path, epochs: int) -> dict:
    "What the mechanisms did in one run, from its history.json, actions.json and metrics.json."
    hist, acts = load_json(run_dir / 'history.json'), load_json(run_dir / 'actions.json')
    by = lambda src, start='': [a for a in acts if a['source'] == src and a['what'].startswith(start)]
    stop = by('early_stopping', 'stopped training')
    restored = by('early_stopping', 'restored the weights of epoch')
    best = max(hist, key=lambda h: h['val_acc'] if h.get('val_acc') is not None else -1)   # first highest: best.pt
    metrics = load_json(run_dir / 'metrics.json') if (run_dir / 'metrics.json').exists() else {}
    test = (metrics.get('best') or {}).get('test', {}).get('accuracy')
    return dict(epochs_trained=len(hist), stopped_early=bool(stop), stop_why=stop[0]['why'] if stop else None,
                rollbacks=len(by('rollback', 'rolled back')),
                class_weight_moves=len([a for a in by('class_penalty', 'class weights') if 'renormalised' not in a['what']]),
                regularisation_changes=len(by('dynamic_regularisation')), lr_nudges=len(by('lr_nudge')),
                best_pt_epoch=best['epoch'] + 1, best_val_acc=best['val_acc'],
                es_kept_epoch=int(restored[0]['what'].split()[5]) if restored else hist[-1]['epoch'] + 1,
                val_n=hist[-1].get('val_n'), test_acc=test,
                examples={src: [f"epoch {a['epoch'] + 1}: {a['what']} — {a['why']}" for a in by(src)][:3]
                          for src in ('rollback', 'class_penalty', 'early_stopping')})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data-dir', default=str(ROOT / 'data' / 'sample'))
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='one pair of runs per seed (seed of split, weights, batches)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--work', default=None, help='folder for the prepared store and the runs (default: a temporary one)')
    p.add_argument('--json', default=None, help='write the results here')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work or tempfile.mkdtemp(prefix='noise-demo-'))
    rows = {}
    for seed in a.seeds:
        for name, extra in (('original thresholds (se_margin 0)', ORIGINAL), ('sized to the validation set (defaults)', {})):
            cfg = config_with_preset('cpu-study', data_dir=a.data_dir, store_dir=str(work / 'store'), run_dir=str(work / f'{name.split()[0]}-{seed}'),
                                     epochs=a.epochs, img_size=a.img_size, seed=seed, workers=0, device='cpu', overwrite=True, **extra)
            t = time.perf_counter()
            run_dir = run_training(cfg)
            rows[f'seed {seed}, {name}'] = {**summary(Path(run_dir), a.epochs), 'wall_s': round(time.perf_counter() - t)}
    machine = f'{platform.machine()}, {torch.__version__}, {torch.get_num_threads()} thread(s)'
    cols = ('val_n', 'epochs_trained', 'rollbacks', 'class_weight_moves', 'regularisation_changes', 'lr_nudges', 'best_pt_epoch',
            'best_val_acc', 'es_kept_epoch', 'test_acc', 'wall_s')
    print(f'\n{a.epochs} epochs, {a.img_size} px; {machine}')
    print('| run | ' + ' | '.join(cols) + ' |\n|' + ' --- |' * (len(cols) + 1))
    fmt = lambda v: f'{v:.3f}' if isinstance(v, float) else str(v)
    for name, r in rows.items(): print(f'| {name} | ' + ' | '.join(fmt(r[c]) for c in cols) + ' |')
    for name, r in rows.items():
        print(f'\n{name}: ' + ('stopped: ' + r['stop_why'] if r['stopped_early'] else 'ran every epoch'))
        for src, ex in r['examples'].items():
            for e in ex: print(f'  {src}: {e}')
    if a.json: Path(a.json).write_text(json.dumps(dict(machine=machine, args=vars(a), runs=rows), indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
