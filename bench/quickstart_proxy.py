"""The quick start's proxy for unseen patients (docs/results.md, "How unseen patients is measured").

Trains `--preset sample` (plus `--set` overrides) with `run_training` on the sample rows of four of five group
folds of the bundled sample (15% of their groups validate), and after every epoch scores every slice of
`../shared/data/figshare-jpg` whose patient is in the fifth fold. At the end it scores best.pt, last.pt and, if
SWA ran, swa.pt (best.pt also with flip TTA). Nothing here reads the sample's test split.

    python bench/quickstart_proxy.py --folds 0 1 2 3 --set '{"epochs": 45}'
    python bench/quickstart_proxy.py --rules            # what each way of choosing the checkpoint scored

Each run appends one JSON line to `--results` (default bench/results/quickstart_proxy.jsonl). The seed of a
fold's run is the fold number unless `--seeds` are given. Two runs at once with `--threads 1` each fill 2 cores.

A grid: `--set` once per setting, `--seeds`, and `--jobs N` runs N at once (each in its own process, one thread;
the grid is ordered seed, then fold, then setting, so a grid cut short by `--deadline` compares its settings on the
same folds). `--device cuda` trains the same recipe on a GPU (augmentation on the CPU as in the quick start, fp32
unless a setting gives `amp`):

    python bench/quickstart_proxy.py --device cuda --jobs 14 --seeds 11 12 --folds 0 1 2 3 4 --deadline 400 \
        --set '{}' --set '{"epochs": 60, "aug_boundaries": [40, 53]}' --results /tmp/out/sweep.jsonl
    python bench/quickstart_proxy.py --summary --results /tmp/out/sweep.jsonl   # each setting against the preset ('{}')
    python bench/quickstart_proxy.py --summary --at plateau --results bench/results/quickstart_bf16.jsonl \
        --ref bench/results/quickstart_e90.jsonl       # paired with another file's runs of the same (seed, fold)
    python bench/quickstart_proxy.py --summary --results bench/results/quickstart_size.jsonl \
        --ref bench/results/quickstart_confirm.jsonl bench/results/quickstart_e90.jsonl \
        --ref-set '{}' --ref-set '{"epochs": 90, "aug_boundaries": [65, 81], "schedule": {"floors": [[40, 0.001], [65, 0.0001]]}}'
"""
import argparse, json, math, os, shutil, subprocess, sys, tempfile, time
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
from brainmri.metrics import best_epoch_flags

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

def proxy_run(fold: int, seed: int, overrides: dict, work: Path, shared: Path, results: Path, device: str = 'cpu') -> dict:
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
                                              'seed': seed, 'evaluate': False, 'workers': 0,
                                              # the quick start's pipeline on any device: CPU augmentation, fp32
                                              # on every machine unless the setting names its autocast (the quick
                                              # start itself trains in bf16 on a CPU that does it natively: {"amp": "bf16"})
                                              'device': device, 'gpu_data': 'off', 'amp': overrides.get('amp', 'none')})
    unseen_ds = CustomTumorDataset(full, unseen, eval_transform(cfg.img_size, resize=cfg.resize), cfg.channels)
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
               torch=torch.__version__, threads=torch.get_num_threads(), device=device,
               card=torch.cuda.get_device_name() if device.startswith('cuda') else None, curve=probe.curve)
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, 'a') as f: f.write(json.dumps(res) + '\n')
    print('RESULT', json.dumps({k: v for k, v in res.items() if k != 'curve'}), flush=True)
    return res

# -- choosing the checkpoint: what each rule would have kept, scored on the unseen patients -------------------------
def chosen_epoch(curve: list[dict], rule: str, upto: int | None = None) -> int:
    """The epoch `rule` keeps among the first `upto`: 'max' (best.pt: highest validation accuracy, the first of ties), 'last',
    'minloss', 'seK' (the latest epoch within K SE of the highest so far) or 'seK@F' (the same, chosen afresh from epoch F)."""
    c = curve[:upto] if upto else curve
    va = [e['val_acc'] for e in c]
    if rule == 'max': return va.index(max(va))
    if rule == 'last': return len(c) - 1
    if rule == 'minloss': vl = [e['val_loss'] for e in c]; return vl.index(min(vl))
    if rule.startswith('se'):   # the learner's rule for best.pt with best_se_margin=K (and best_from=F), replayed
        k, _, f = rule[2:].partition('@')
        flags = best_epoch_flags(va, [e['val_n'] for e in c], float(k), int(f or 0))
        return max((i for i, b in enumerate(flags) if b), default=0)
    raise ValueError(rule)

def print_rules(results: Path, rules=('max', 'minloss', 'se1', 'se1@20', 'last'), at=(30, 45)) -> None:
    rows = [json.loads(l) for l in open(results)]
    by = {}
    for r in rows:   # one group per setting and seeding (seed = fold, or one seed for every fold)
        seeding = 'seed = fold' if r['seed'] == r['fold'] else f"seed {r['seed']}"
        by.setdefault(f"{json.dumps(r['overrides'], sort_keys=True)}, {seeding}", {})[r['fold']] = r
    for name, runs in by.items():
        print(name, 'folds', sorted(runs))
        longest = max(len(r['curve']) for r in runs.values())   # runs that early stopping ended are scored as they ended
        for upto in sorted({min(u, longest) for u in (*at, longest)}):   # and the whole run
            cells = []
            for rule in rules:
                v = [r['curve'][chosen_epoch(r['curve'], rule, upto)]['u_acc'] for _, r in sorted(runs.items())]
                cells.append(f"{rule} {np.mean(v):.3f} ({'/'.join(f'{x:.2f}' for x in v)})")
            print(f'  first {upto} epochs: ' + '  '.join(cells))

# -- a grid of runs, several at once ----------------------------------------------------------------------------------
def run_grid(settings: list[dict], seeds: list[int | None], folds: list[int], jobs: int, deadline: float | None,
             work: Path, shared: Path, results: Path, device: str) -> None:
    "Every (seed, fold, setting) in that order, `jobs` at a time, each in its own process; none starts after `deadline` s."
    for prep in sorted({o.get('prep_size', run.PRESETS['sample'].get('prep_size', 128)) for o in settings}):
        store(ROOT / 'data' / 'sample', work / f'stores/sample-{prep}', prep)   # before the runs, which would race
        store(shared, work / f'stores/figshare-{prep}', prep)
    grid = [(o, fold if seed is None else seed, fold) for seed in seeds for fold in folds for o in settings]
    tmp, t0, running = Path(tempfile.mkdtemp(prefix='proxy-grid-')), time.time(), []
    def collect(block: bool) -> None:
        for job in [j for j in running if block or j[0].poll() is not None]:
            job[0].wait(); running.remove(job)
            if job[1].is_file():
                with open(results, 'a') as f: f.write(job[1].read_text())   # one writer: lines never interleave
            else: print(f'FAILED (exit {job[0].returncode}): {job[2]}', flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    for i, (o, seed, fold) in enumerate(grid):
        while len(running) >= jobs: collect(False); time.sleep(0.5)
        if deadline is not None and time.time() - t0 > deadline:
            print(f'deadline: {len(grid) - i} of {len(grid)} runs not started', flush=True); break
        res = tmp / f'{i}.jsonl'
        cmd = [sys.executable, __file__, '--folds', str(fold), '--seeds', str(seed), '--set', json.dumps(o), '--work', str(work),
               '--shared', str(shared), '--results', str(res), '--threads', '1', '--device', device]
        running.append((subprocess.Popen(cmd, env={**os.environ, 'OMP_NUM_THREADS': '1'}), res, f'{o} fold {fold} seed {seed}'))
    collect(True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f'grid done in {time.time() - t0:.0f}s', flush=True)

def plateau(r: dict, last: int = 20) -> float:
    "Mean unseen accuracy over a run's last `last` epochs: the plateau its swa.pt averages."
    return float(np.mean([c['u_acc'] for c in r['curve'][-last:]]))

def print_summary(results: Path, at: str = 'best', ref_results: list[Path] = (), ref_sets: list[str] = ()) -> None:
    """Per setting: mean unseen accuracy of best.pt (and last, swa, best with TTA, the plateau), and its paired
    difference to the preset itself ('{}') or else the first setting; of `ref_results` instead where given: in each
    file the runs of `ref_sets` (JSON overrides), or else of '{}', or else of its first setting."""
    def load(path):
        by = {}
        for l in open(path):
            r = json.loads(l); by.setdefault(json.dumps(r['overrides'], sort_keys=True), {})[(r['seed'], r['fold'])] = r
        return by
    by = load(results)
    wanted = [json.dumps(json.loads(t), sort_keys=True) for t in ref_sets]
    ref, ref_names = {}, []
    for path, ref_by in [(f, load(f)) for f in ref_results] or [(results, by)]:
        names = [n for n in wanted if n in ref_by] if wanted else ['{}' if '{}' in ref_by else next(iter(ref_by))]
        ref_names += [f'{n} of {path}' if ref_results else n for n in names]
        for n in names:
            for k, r in ref_by[n].items(): ref.setdefault(k, r)   # a (seed, fold) twice: the first run found
    if not ref: raise SystemExit(f'--ref-set {ref_sets}: no such setting in {", ".join(map(str, ref_results))}')
    ref_name = '; '.join(ref_names)
    own = {'reference'} if ref_results else set(ref_names)   # rows not paired with themselves
    score = lambda r, k: plateau(r) if k == 'plateau' else r['scores'].get(k)
    print(f"{sum(map(len, by.values()))} runs; differences in {at} are paired on (seed, fold) with {ref_name}")
    for name, runs in ([('reference', ref)] if ref_results else []) + list(by.items()):
        cells = []
        for k in ('best', 'last', 'swa', 'best_tta', 'plateau'):
            v = [x for x in (score(r, k) for r in runs.values()) if x is not None]
            if v: cells.append(f'{k} {np.mean(v):.3f}')
        pairs = [(score(runs[k], at), score(ref[k], at)) for k in runs if k in ref]
        d = [a - b for a, b in pairs if a is not None and b is not None]   # e.g. no swa where SWA did not run
        diff = (f'  d({at}) {np.mean(d):+.3f} (SE {np.std(d, ddof=1) / math.sqrt(len(d)):.3f}, n {len(d)}, better in {sum(x > 0 for x in d)})'
                if len(d) > 1 and name not in own else '')
        print(f'{name:60s} n {len(runs):2d}  ' + '  '.join(cells) + diff)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--folds', type=int, nargs='+', default=[0, 1, 2, 3])
    p.add_argument('--seeds', type=int, nargs='+', default=None, help='seeds: each fold runs once per seed (default: seed = fold)')
    p.add_argument('--set', action='append', help="JSON overrides of PRESETS['sample'], e.g. '{\"epochs\": 45}'; once per setting")
    p.add_argument('--shared', default=str(ROOT.parent / 'shared' / 'data' / 'figshare-jpg'))
    p.add_argument('--work', default=str(ROOT / 'runs' / 'proxy'), help='stores and run folders')
    p.add_argument('--results', default=str(ROOT / 'bench' / 'results' / 'quickstart_proxy.jsonl'))
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default='cpu', help='cpu (the quick start), cuda or cuda:N: the same recipe, faster')
    p.add_argument('--jobs', type=int, default=1, help='runs at once, each in its own process with one thread')
    p.add_argument('--deadline', type=float, default=None, help='seconds after which no run of the grid (--jobs > 1) starts')
    p.add_argument('--rules', action='store_true', help='only print the checkpoint rules over the results so far')
    p.add_argument('--summary', action='store_true', help="only print each setting against the preset ('{}') over the results so far")
    p.add_argument('--at', default='best', help='--summary: the paired difference in best, last, swa, best_tta or plateau')
    p.add_argument('--ref', nargs='+', default=[], help='--summary: pair with the runs of these results files (e.g. from other sessions)')
    p.add_argument('--ref-set', action='append', default=[], help="--ref: the setting (JSON overrides) of the reference runs; once per setting (default: '{}', else each file's first)")
    a = p.parse_args()
    a.work = str(Path(a.work).resolve())   # run_training resolves a relative run_dir against the project, not the cwd
    if a.rules or a.summary:
        if not Path(a.results).is_file(): p.error(f'--results {a.results}: no such file (run some folds first)')
        for text in a.ref_set:
            try: json.loads(text)
            except json.JSONDecodeError as e: p.error(f'--ref-set {text!r} is not JSON: {e}')
        print_rules(Path(a.results)) if a.rules else print_summary(Path(a.results), a.at, [Path(f) for f in a.ref], a.ref_set); sys.exit()
    if not (Path(a.shared) / 'manifest.csv').is_file(): p.error(f'--shared {a.shared}: not the figshare-jpg release (no manifest.csv)')
    settings = []
    for text in a.set or ['{}']:
        try: o = json.loads(text)
        except json.JSONDecodeError as e: p.error(f'--set {text!r} is not JSON: {e}')
        if not isinstance(o, dict): p.error(f'--set {text!r} must be a JSON object of TrainConfig parameters')
        settings.append(o)
    if not set(a.folds) <= set(range(5)): p.error(f'--folds {a.folds}: folds are 0-4')
    if a.jobs < 1: p.error(f'--jobs {a.jobs}: at least 1')
    try: run.get_device(a.device)
    except Exception as e: p.error(f'--device {a.device!r}: {e}')
    seeds = a.seeds or [None]
    if a.jobs > 1:
        run_grid(settings, seeds, a.folds, a.jobs, a.deadline, Path(a.work), Path(a.shared), Path(a.results), a.device); sys.exit()
    torch.set_num_threads(a.threads)
    for seed in seeds:
        for fold in a.folds:
            for o in settings: proxy_run(fold, fold if seed is None else seed, o, Path(a.work), Path(a.shared), Path(a.results), a.device)
