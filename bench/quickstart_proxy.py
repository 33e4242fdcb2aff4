"""The quick start's proxy for unseen patients (docs/results.md, "How unseen patients is measured").

Trains `--preset sample` (plus `--set` overrides) with `run_training` on the sample rows of four of five group
folds of the bundled sample (15% of their groups validate), and after every epoch scores every slice of
`../shared/data/figshare-jpg` whose patient is in the fifth fold. At the end it scores best.pt, last.pt and, if
SWA ran, swa.pt (best.pt also with flip TTA). Nothing here reads the sample's test split.

    python bench/quickstart_proxy.py --folds 0 1 2 3 --set '{"epochs": 45}'
    python bench/quickstart_proxy.py --rules            # what each way of choosing the checkpoint scored

Each run appends one JSON line to `--results` (default bench/results/quickstart_proxy.jsonl). The seed of a
fold's run is the fold number unless `--seed` is given. Two runs at once with `--threads 1` each fill 2 cores.
"""
import argparse, json, math, os, sys, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import brainmri.run as run
from brainmri.augment import eval_transform
from brainmri.data import CustomTumorDataset, group_kfold, load_store, make_loader, prepare, split_by_group
from brainmri.evaluate import load_model_from_checkpoint, predict_logits
from brainmri.learner import Callback
from brainmri.metrics import is_new_best

def store(src: Path, dest: Path, size: int):
    "The prepared store of `src` at `size` px under `dest` (`prepare` does nothing when it is already there)."
    return load_store(prepare(src, dest, size=size, quiet=True))

class UnseenAccuracy(Callback):
    "After each epoch, accuracy and loss on the held-out patients (kept here, not in the run's history)."
    order = 96   # after the checkpoint: the weights scored are those best.pt / last.pt hold
    def __init__(self, dl): self.dl, self.curve = dl, []
    def after_epoch(self):
        l, m = self.learn, self.learn.metrics
        u = l.validate(dl=self.dl, prefix='u_')
        self.curve.append(dict(epoch=int(l.epoch), val_acc=m.get('val_acc'), val_loss=m.get('val_loss'), val_n=m.get('val_n'),
                               train_acc=m.get('train_acc'), u_acc=u['u_acc'], u_loss=u['u_loss']))

def proxy_run(fold: int, seed: int, overrides: dict, work: Path, shared: Path, results: Path) -> dict:
    prep = overrides.get('prep_size', run.PRESETS['sample'].get('prep_size', 128))
    sample = store(ROOT / 'data' / 'sample', work / f'stores/sample-{prep}', prep)
    full = store(shared, work / f'stores/figshare-{prep}', prep)
    train_rows, held_rows = group_kfold(sample, 5, seed=0)[fold]
    held = set(sample.groups[held_rows].astype(str))
    unseen = np.flatnonzero(np.isin(full.groups.astype(str), list(held)))

    # the harness's one change to run_training: its split is the four training folds (15% of their groups validate)
    def fold_split(st, val_frac=0.15, test_frac=0.15, seed=0, **kw):
        s = split_by_group(st.index.iloc[train_rows].reset_index(drop=True), val_frac, 0.0, seed=seed)
        return dict(train=train_rows[s['train']], val=train_rows[s['val']], test=held_rows)
    out = work / 'runs' / f"{json.dumps(overrides, sort_keys=True)}_f{fold}_s{seed}".translate(str.maketrans('{}": ,/', '_______'))
    cfg = run.config_with_preset('sample', **{**overrides, 'data_dir': str(sample.path), 'run_dir': str(out), 'overwrite': True,
                                              'seed': seed, 'evaluate': False, 'workers': 0})
    unseen_ds = CustomTumorDataset(full, unseen, eval_transform(cfg.img_size), cfg.channels)
    probe = UnseenAccuracy(make_loader(unseen_ds, 128, train=False, workers=0))
    recipe, split = run.recipe_callbacks, run.split_by_group
    run.recipe_callbacks, run.split_by_group = (lambda c: [*recipe(c), probe]), fold_split
    try:
        t0 = time.time(); run.run_training(cfg); secs = time.time() - t0
    finally: run.recipe_callbacks, run.split_by_group = recipe, split
    scores = {}
    for name in ('best', 'last', 'swa'):
        if not (out / f'{name}.pt').exists(): continue
        model, _ = load_model_from_checkpoint(out / f'{name}.pt')
        logits, y = predict_logits(model, unseen_ds, 'cpu', tta=name == 'best')
        scores[name] = round(float((logits[0].argmax(1).numpy() == y).mean()), 4)
        if name == 'best': scores['best_tta'] = round(float((logits.softmax(-1).mean(0).argmax(1).numpy() == y).mean()), 4)
    res = dict(overrides=overrides, fold=fold, seed=seed, n_unseen=len(unseen), scores=scores, secs=round(secs),
               torch=torch.__version__, threads=torch.get_num_threads(), curve=probe.curve)
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, 'a') as f: f.write(json.dumps(res) + '\n')
    print('RESULT', json.dumps({k: v for k, v in res.items() if k != 'curve'}), flush=True)
    return res

# -- choosing the checkpoint: what each rule would have kept, scored on the unseen patients -------------------------
def chosen_epoch(curve: list[dict], rule: str, upto: int | None = None) -> int:
    "The epoch `rule` keeps among the first `upto`: 'max' (best.pt: highest validation accuracy, the first of ties), 'last', 'minloss', or 'seK' (the latest epoch within K SE of the highest so far)."
    c = curve[:upto] if upto else curve
    va = [e['val_acc'] for e in c]
    if rule == 'max': return va.index(max(va))
    if rule == 'last': return len(c) - 1
    if rule == 'minloss': vl = [e['val_loss'] for e in c]; return vl.index(min(vl))
    if rule.startswith('se'):   # the learner's rule for best.pt with best_se_margin=K, replayed
        k, kept, top = float(rule[2:]), 0, -math.inf
        for i, v in enumerate(va):
            if is_new_best(v, top, c[i]['val_n'], k): kept = i
            top = max(top, v)
        return kept
    raise ValueError(rule)

def print_rules(results: Path, rules=('max', 'minloss', 'se1', 'last'), at=(30, 45)) -> None:
    rows = [json.loads(l) for l in open(results)]
    by = {}
    for r in rows:   # one group per setting and seeding (seed = fold, or one seed for every fold)
        seeding = 'seed = fold' if r['seed'] == r['fold'] else f"seed {r['seed']}"
        by.setdefault(f"{json.dumps(r['overrides'], sort_keys=True)}, {seeding}", {})[r['fold']] = r
    for name, runs in by.items():
        print(name, 'folds', sorted(runs))
        longest = max(len(r['curve']) for r in runs.values())   # runs that early stopping ended are scored as they ended
        for upto in sorted({min(u, longest) for u in at}):
            cells = []
            for rule in rules:
                v = [r['curve'][chosen_epoch(r['curve'], rule, upto)]['u_acc'] for _, r in sorted(runs.items())]
                cells.append(f"{rule} {np.mean(v):.3f} ({'/'.join(f'{x:.2f}' for x in v)})")
            print(f'  first {upto} epochs: ' + '  '.join(cells))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--folds', type=int, nargs='+', default=[0, 1, 2, 3])
    p.add_argument('--seed', type=int, default=None, help='seed of every run (default: the fold number)')
    p.add_argument('--set', default='{}', help="JSON overrides of PRESETS['sample'], e.g. '{\"epochs\": 45}'")
    p.add_argument('--shared', default=str(ROOT.parent / 'shared' / 'data' / 'figshare-jpg'))
    p.add_argument('--work', default=str(ROOT / 'runs' / 'proxy'), help='stores and run folders')
    p.add_argument('--results', default=str(ROOT / 'bench' / 'results' / 'quickstart_proxy.jsonl'))
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--rules', action='store_true', help='only print the checkpoint rules over the results so far')
    a = p.parse_args()
    if a.rules:
        if not Path(a.results).is_file(): p.error(f'--results {a.results}: no such file (run some folds first)')
        print_rules(Path(a.results)); sys.exit()
    if not (Path(a.shared) / 'manifest.csv').is_file(): p.error(f'--shared {a.shared}: not the figshare-jpg release (no manifest.csv)')
    try: overrides = json.loads(a.set)
    except json.JSONDecodeError as e: p.error(f'--set {a.set!r} is not JSON: {e}')
    if not isinstance(overrides, dict): p.error(f'--set {a.set!r} must be a JSON object of TrainConfig parameters')
    if not set(a.folds) <= set(range(5)): p.error(f'--folds {a.folds}: folds are 0-4')
    torch.set_num_threads(a.threads)
    for fold in a.folds:
        proxy_run(fold, fold if a.seed is None else a.seed, overrides, Path(a.work), Path(a.shared), Path(a.results))
