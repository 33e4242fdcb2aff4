"""What the training benchmarks share: options, the machine, the data subset, loaders and models, the kit's
settings and their one-switch ablations, the timing callbacks, the plain loop, and a results file.

The kit is measured only through its public pieces: `brainmri.run.build_learner` builds the learner a run
gets, and callbacks (`EpochClock`, `ValidateEvery`, `FitClock`) take the times; nothing is patched.
"""
from __future__ import annotations
import argparse, contextlib, dataclasses, datetime, gc, json, os, platform, re, statistics, subprocess, sys, tempfile, time, traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np
import torch

from brainmri.augment import AugmentConfig, PhaseTransform, eval_transform
from brainmri.callbacks import DynamicRegularisation, ProgressiveUnfreeze
from brainmri.core import atomic_write, get_device, sample_data_dir
from brainmri.data import (CustomTumorDataset, class_counts, get_class_balanced_weights, load_store, make_loader,
                           make_weighted_sampler, prepare, split_by_group)
from brainmri.device_loader import DeviceLoader
from brainmri.learner import Callback, CancelFitException, ProgressCallback
from brainmri.model import BasicCNNModel, count_flops
from brainmri.run import TrainConfig, build_learner

SHARED = ROOT.parent / 'shared' / 'data' / 'figshare-jpg'


# --------------------------------------------------------------------------------------------------- options

def base_parser(description: str) -> argparse.ArgumentParser:
    "The options every training benchmark takes (device, sizes, data, time bounds, results file)."
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, ...')
    p.add_argument('--img-size', type=int, default=None, help='pixels (None: 224 on CUDA, 96 on the CPU)')
    p.add_argument('--batch-size', type=int, default=None, help='images per batch (None: 64 on CUDA, 16 on the CPU)')
    p.add_argument('--channels', type=int, default=1, choices=(1, 3))
    p.add_argument('--steps', type=int, default=None, help='training batches per epoch, a seeded subset of the train split; 0: all (None: 0 on CUDA, 4 on the CPU)')
    p.add_argument('--epochs', type=int, default=None, help='timed epochs of the kit after one warm-up epoch (None: 2 on CUDA, 1 on the CPU)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps of the ceiling and the plain loops (None: 10 on CUDA, 2 on the CPU)')
    p.add_argument('--timed-steps', type=int, default=None, help='timed steps of the ceiling and the plain loops (None: as many images as the kit times)')
    p.add_argument('--val-images', type=int, default=None, help='validation images per epoch; 0: all (None: 0 on CUDA, 32 on the CPU)')
    p.add_argument('--grad-accum', type=int, default=4)
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers (None: min(8, CPUs) on CUDA, 2 on the CPU)')
    p.add_argument('--compile', choices=('auto', 'on', 'off'), default='auto', help="torch.compile in the kit's default (auto: on for CUDA)")
    p.add_argument('--data', default=None, help='a prepared store or an image folder (None: ../shared/data/figshare-jpg, else data/sample)')
    p.add_argument('--store', default=None, help='where to prepare --data (None: a temporary folder)')
    p.add_argument('--prep-size', type=int, default=256)
    p.add_argument('--threads', type=int, default=None, help='torch threads (None: 2 on the CPU)')
    p.add_argument('--max-seconds', type=float, default=60.0, help='cap on the timed part of one measurement')
    p.add_argument('--deadline', type=float, default=None, help='seconds from the start after which no new measurement starts')
    p.add_argument('--min-left', type=float, default=20.0, help='with --deadline: skip a measurement when fewer seconds are left')
    p.add_argument('--repeats', type=int, default=None, help='interleaved repeats; medians are reported (None: 1 on CUDA, 3 on the CPU)')
    p.add_argument('--json', default=None, help='results file, rewritten after every measurement (render it with bench/render.py)')
    p.add_argument('--title', default=None, help="heading of this machine's block in docs/benchmarks.md")
    p.add_argument('--quiet-fit', action='store_true', help="send the learner's per-epoch lines to stderr")
    return p


def resolve(a: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    "Fill the device-dependent defaults of `a` in place."
    cuda = device.type == 'cuda'
    if a.threads or not cuda: torch.set_num_threads(a.threads or 2)
    d = lambda v, gpu, cpu: v if v is not None else (gpu if cuda else cpu)
    a.img_size, a.batch_size, a.steps, a.epochs = d(a.img_size, 224, 96), d(a.batch_size, 64, 16), d(a.steps, 0, 4), d(a.epochs, 2, 1)
    a.warmup, a.val_images, a.repeats = d(a.warmup, 10, 2), d(a.val_images, 0, 32), d(a.repeats, 1, 3)
    a.workers = d(a.workers, min(8, os.cpu_count() or 1), 2)
    if cuda: torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    return a


# --------------------------------------------------------------------------------------------------- the machine

def sync(device: torch.device) -> None:
    if device.type == 'cuda': torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == 'cuda': return torch.cuda.get_device_name(device)
    model = platform.processor() or 'unknown CPU'
    with contextlib.suppress(Exception):
        m = re.search(r'Model name:\s*(.+)', subprocess.run(['lscpu'], capture_output=True, text=True, timeout=5).stdout)
        if m: model = m.group(1).strip()
    return f'CPU: {model}, {torch.get_num_threads()} threads'


def environment(device: torch.device) -> dict:
    env = dict(device=device_name(device), torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
               cpus=os.cpu_count(), threads=torch.get_num_threads(), date=datetime.datetime.now().isoformat(timespec='seconds'))
    with contextlib.suppress(Exception): env['load_average'] = [round(x, 2) for x in os.getloadavg()]
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_gb=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    with contextlib.suppress(Exception):
        import albumentations; env['albumentations'] = albumentations.__version__
    return env


# --------------------------------------------------------------------------------------------------- results

class Bench:
    "One benchmark run: its options, device, data and the results so far (saved after each measurement)."
    def __init__(self, args: argparse.Namespace, script: str):
        self.args, self.script, self.t0 = args, script, time.time()
        self.device = get_device(args.device)
        resolve(args, self.device)
        self.cuda = self.device.type == 'cuda'
        self.env, self.results, self.flops = environment(self.device), [], {}
        self.work = Path(tempfile.mkdtemp(prefix='brainmri-bench-'))
        self.store = self.train_rows = self.val_rows = self.class_weights = None
        print(f"{self.env['device']} | torch {self.env['torch']} | {args.img_size} px, batch {args.batch_size}", flush=True)

    @property
    def bs(self) -> int: return self.args.batch_size
    @property
    def img(self) -> int: return self.args.img_size

    def time_left(self) -> float:
        return self.args.deadline - (time.time() - self.t0) if self.args.deadline else float('inf')

    def record(self, res: dict) -> dict:
        "Keep a result, print it, and rewrite the JSON (a killed run keeps what it measured)."
        self.results.append(res)
        if res.get('error'): print(f"  ✗ {res['kind']} depth {res.get('depth')}: {res['error']}", flush=True)
        elif 'img_s' in res and res['img_s'] == res['img_s']:
            print(f"  {res['kind']:<9} depth {res.get('depth')} {res.get('what', '')}: {res['img_s']:.1f} img/s "
                  f"({res.get('images')} images, {res.get('seconds', 0):.2f}s) [{res.get('settings', '')}]", flush=True)
        elif res['kind'] == 'full_run':
            print(f"  full run {res.get('what')}: wall {res['wall_s']}s, fit {res['fit_s']}s, {res['epochs']} epochs, best val acc {res.get('best_val_acc')}", flush=True)
        elif res['kind'] == 'sync_audit':
            print(f"  sync audit: DeviceLoader {res['loader_syncs_per_batch']:.2f}/batch {res['loader_where']}; "
                  f"kit epoch {res['fit_syncs_per_batch']:.2f}/batch {res['fit_where']}", flush=True)
        else: print(f"  {res['kind']} {res.get('what', '')} done", flush=True)
        if self.args.json: self.save(Path(self.args.json))
        return res

    def guarded(self, kind: str, depth: int | None, fn, what: str = '', **meta) -> dict:
        "Run one measurement; a failure (or too little time left) becomes an entry with `error`."
        base = dict(kind=kind, depth=depth, what=what, **meta)
        if self.time_left() < self.args.min_left:
            return self.record({**base, 'error': f'skipped: {self.time_left():.0f}s left of the --deadline'})
        t = time.time()
        try: res = {**base, **fn()}
        except Exception as e:
            traceback.print_exc()
            res = {**base, 'error': f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]}
        res['wall_s'] = round(time.time() - t, 1)
        gc.collect()
        if self.cuda: torch.cuda.empty_cache()
        return self.record(res)

    def summarise(self, kind: str, depth: int, runs: list[dict], **extra) -> dict:
        "One entry for repeated runs: the median img/s, the other figures from the median run, every run's img/s."
        ok = [r for r in runs if not r.get('error')]
        if not ok: return self.record({'kind': kind, 'depth': depth, 'what': '', **extra, 'error': runs[0]['error'] if runs else 'no run'})
        rep = sorted(ok, key=lambda r: r['img_s'])[(len(ok) - 1) // 2]
        out = {**rep, 'kind': kind, 'img_s': statistics.median(r['img_s'] for r in ok), 'runs': [r['img_s'] for r in ok], **extra}
        if all(r.get('cpu_ms_per_img') is not None for r in ok):
            out['cpu_ms_per_img'] = statistics.median(r['cpu_ms_per_img'] for r in ok); out['cpu_runs'] = [r['cpu_ms_per_img'] for r in ok]
        return self.record(out)

    def as_dict(self) -> dict:
        a = self.args
        n_tr, n_va = (len(self.train_rows), len(self.val_rows)) if self.train_rows is not None else (0, 0)
        desc = (f"data {self.store.path.name} ({len(self.store)} images, {n_tr} train per epoch, {n_va} val)") if self.store is not None else ''
        title = ('CPU, 2 cores (dev box, shared)' if not self.cuda and (os.cpu_count() or 0) <= 2 else
                 f"CPU, {os.cpu_count()} cores" if not self.cuda else device_name(self.device))
        return dict(title=a.title or title, env=self.env, args=vars(a), command=f'python bench/{self.script} ' + ' '.join(sys.argv[1:]),
                    data_desc=desc, flops={str(d): v for d, v in self.flops.items()}, results=self.results)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, 'w') as f: json.dump(self.as_dict(), f, indent=1, default=str)

    # ---- data and models ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        "The store, a seeded subset of its training split (`--steps` batches per epoch), `--val-images` of its validation split."
        a = self.args
        src = Path(a.data) if a.data else (SHARED if SHARED.exists() else sample_data_dir())
        if (src / 'meta.json').exists(): store_path = src
        else:
            store_path = Path(a.store) if a.store else self.work / 'store'
            t = time.perf_counter(); prepare(src, store_path, size=a.prep_size, quiet=True)
            print(f'prepared {src} → {store_path} in {time.perf_counter() - t:.1f}s', flush=True)
        self.store = load_store(store_path)
        sp = split_by_group(self.store, 0.15, 0.15, seed=0)
        rng, tr, va = np.random.default_rng(0), sp['train'], sp['val']
        if a.steps: n = a.steps * self.bs; tr = np.sort(rng.choice(tr, n, replace=n > len(tr)))   # the split's rows are ordered by class
        if a.val_images: va = np.sort(rng.choice(va, min(a.val_images, len(va)), replace=False))
        self.train_rows, self.val_rows = tr, va
        self.class_weights = get_class_balanced_weights(class_counts(self.store.labels[sp['train']], len(self.store.classes)))
        if a.timed_steps is None: a.timed_steps = max(1, (len(tr) // self.bs) * a.epochs)
        print(f'data: {self.store.path} ({len(self.store)} images, {self.store.size} px); per epoch {len(tr)} train '
              f'({len(tr) // self.bs} batches of {self.bs}), {len(va)} val', flush=True)

    def loaders(self, kind: str):
        "'workers': the CPU path (CustomTumorDataset + PhaseTransform in DataLoader workers); 'device': DeviceLoader."
        cfg, ch = AugmentConfig(img_size=self.img), self.args.channels
        if kind == 'device':
            return (DeviceLoader(self.store, self.train_rows, self.bs, train=True, device=self.device, augment=cfg, seed=0, balanced=True, channels=ch),
                    DeviceLoader(self.store, self.val_rows, self.bs * 2, train=False, device=self.device, augment=cfg, channels=ch))
        tr_ds = CustomTumorDataset(self.store, self.train_rows, PhaseTransform(cfg, seed=0), ch, cache=True)
        tr = make_loader(tr_ds, self.bs, train=True, workers=self.args.workers, sampler=make_weighted_sampler(self.store.labels[self.train_rows], seed=0), seed=0)
        va_ds = CustomTumorDataset(self.store, self.val_rows, eval_transform(self.img), ch, cache=True)
        return tr, make_loader(va_ds, self.bs * 2, train=False, workers=min(self.args.workers, 2), seed=0)

    def model(self, depth: int, width8: bool = False) -> BasicCNNModel:
        "BasicCNNModel with blocks 1..`depth` open; `width8`: the same layers at width 8 (almost no arithmetic: what is left is the loop)."
        torch.manual_seed(0)
        kw = dict(widths=((8, 8), (8, 8, 8), (8, 8, 8)), gn_groups=4, head_width=16) if width8 else {}
        return BasicCNNModel(in_chans=self.args.channels, n_open=depth, **kw)

    def count_flops(self, depths) -> None:
        for d in depths:
            with contextlib.suppress(Exception): self.flops[d] = count_flops(BasicCNNModel(in_chans=self.args.channels, n_open=d), self.img, train_step=True)

    def close(self) -> None:
        import shutil; shutil.rmtree(self.work, ignore_errors=True)


def close_loader(dl) -> None:
    "Stop a DataLoader's persistent workers now rather than at garbage collection."
    it = getattr(dl, '_iterator', None)
    if it is not None and hasattr(it, '_shutdown_workers'): it._shutdown_workers()


def autocast(device: torch.device, amp: str | None):
    if amp is None: return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}[amp])


# --------------------------------------------------------------------------------------------------- settings

@dataclass
class Setting:
    "One configuration of the kit's loop."
    amp: str | None = None            # 'bf16', 'fp16' or None (fp32)
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    loader: str = 'workers'           # 'device' (DeviceLoader) or 'workers' (DataLoader + PhaseTransform)
    eval_every: int = 1               # validate every N epochs (a benchmark callback)
    recipe: str = 'full'              # 'full' (every mechanism on) or 'bare' (every mechanism switched off)
    fused: bool = False               # fused AdamW
    dynreg_live: bool = False         # with compile: let dynamic regularisation act in the timed epochs (each new dropout p recompiles)

    def label(self) -> str:
        parts = [self.amp or 'fp32', 'channels_last' if self.channels_last else 'NCHW', 'compiled' if self.compile else 'eager',
                 f'{self.loader} loader']
        if self.cudnn_benchmark: parts.append('cudnn.benchmark')
        if self.fused: parts.append('fused AdamW')
        if self.eval_every != 1: parts.append(f'eval every {self.eval_every}')
        if self.recipe != 'full': parts.append(f'{self.recipe} recipe')
        if self.compile and self.recipe == 'full' and not self.dynreg_live: parts.append('dyn. reg. from the last epoch')
        if self.dynreg_live: parts.append('dyn. reg. live')
        return ', '.join(parts)


def kit_default(device: torch.device, compile_flag: str) -> Setting:
    "The kit's defaults on `device` (what brainmri.run builds), with compile from --compile."
    cuda = device.type == 'cuda'
    amp = ('bf16' if torch.cuda.is_bf16_supported() else 'fp16') if cuda else None
    return Setting(amp=amp, channels_last=cuda, compile=cuda if compile_flag == 'auto' else compile_flag == 'on',
                   cudnn_benchmark=cuda, loader='device' if cuda else 'workers')


def ablations_for(device: torch.device, base: Setting) -> list[tuple[str, str, Setting]]:
    "(key, what changed, setting) for each one-switch change of the kit's default; the cheap ones first."
    cuda, out, r = device.type == 'cuda', [], lambda **kw: dataclasses.replace(base, **kw)
    out.append(('compile', f"compile {'off' if base.compile else 'on'}", r(compile=not base.compile)))
    if cuda: out.append(('cudnn_benchmark', f"cudnn.benchmark {'off' if base.cudnn_benchmark else 'on'}", r(cudnn_benchmark=not base.cudnn_benchmark)))
    out.append(('loader', 'worker DataLoader' if base.loader == 'device' else 'DeviceLoader', r(loader='workers' if base.loader == 'device' else 'device')))
    out.append(('eval_every', 'validate every 5th epoch', r(eval_every=5)))
    if cuda: out.append(('fused', 'fused AdamW', r(fused=True)))
    out.append(('recipe', 'bare learner (no adaptive callbacks)', r(recipe='bare')))
    if base.compile: out.append(('dynreg', 'dynamic regularisation acting in the timed epochs (as in a real run)', r(dynreg_live=True)))
    out.append(('channels_last', f"channels_last {'off' if base.channels_last else 'on'}", r(channels_last=not base.channels_last)))
    if cuda:
        other = 'fp16' if base.amp == 'bf16' else 'bf16'
        out += [('amp', f'{other} autocast', r(amp=other)), ('amp', 'fp32 (no autocast)', r(amp=None))]
    else: out.append(('amp', 'bf16 autocast', r(amp='bf16')))
    return out


# --------------------------------------------------------------------------------------------------- timing callbacks

class Stamps:
    """Time marks: CUDA events (the GPU's timeline: a late batch shows as idle time) or, on the CPU, wall
    time and this process's CPU time (which other users of a shared machine disturb far less)."""
    def __init__(self, device: torch.device): self.cuda, self.marks = device.type == 'cuda', []
    def mark(self, key) -> None:
        if self.cuda: e = torch.cuda.Event(enable_timing=True); e.record(); self.marks.append((key, e, time.process_time()))
        else: self.marks.append((key, time.perf_counter(), time.process_time()))
    def seconds(self) -> tuple[dict, dict]:
        "(key -> wall seconds since the first mark, key -> CPU seconds of this process since the first mark)."
        if not self.marks: return {}, {}
        c0 = self.marks[0][2]
        cpu = {k: c - c0 for k, _, c in self.marks}
        if self.cuda:
            torch.cuda.synchronize(); e0 = self.marks[0][1]
            return {k: e0.elapsed_time(e) / 1000 for k, e, _ in self.marks}, cpu
        return {k: t - self.marks[0][1] for k, t, _ in self.marks}, cpu


def dynamo_graphs() -> int:
    with contextlib.suppress(Exception):
        from torch._dynamo.utils import counters
        return int(counters['stats']['unique_graphs'])
    return 0


class EpochClock(Callback):
    "Marks the start and end of each epoch's training, validation and other work; counts compiled graphs; stops after `max_seconds` of timed epochs."
    order = -10_000      # first in before_* events; its twin `EpochClockEnd` is last
    def __init__(self, stamps: Stamps, max_seconds: float, warm_epochs: int):
        self.st, self.max_seconds, self.warm, self.t_timed, self.graphs = stamps, max_seconds, warm_epochs, None, {}
    def before_fit(self): self.graphs[-1] = dynamo_graphs()
    def before_epoch(self): self.st.mark(('epoch_start', self.learn.epoch))
    def before_validate(self): self.st.mark(('train_end', self.learn.epoch))
    def after_validate(self): self.st.mark(('val_end', self.learn.epoch))


class EpochClockEnd(Callback):
    "The closing marks of `EpochClock` (after every other callback: their per-epoch work counts as 'other')."
    order = 10_000
    def __init__(self, clock: EpochClock): self.c = clock
    def before_validate(self): self.c.st.mark(('val_start', self.learn.epoch))
    def after_epoch(self):
        l, c = self.learn, self.c
        c.st.mark(('epoch_end', l.epoch)); c.graphs[l.epoch] = dynamo_graphs()
        if l.epoch == c.warm - 1: c.t_timed = time.perf_counter()
        elif c.t_timed is not None and time.perf_counter() - c.t_timed > c.max_seconds and l.epoch < l.n_epochs - 1:
            raise CancelFitException(f'bench: --max-seconds {c.max_seconds:g} reached after epoch {l.epoch + 1}')


class ValidateEvery(Callback):
    "Validate in epoch 0 (the eval-mode warm-up) and then every `n`-th epoch."
    order = -10_001
    def __init__(self, n: int): self.n, self.dl = n, None
    def before_epoch(self):
        l = self.learn
        if self.dl is None: self.dl = l.valid_dl
        l.valid_dl = self.dl if (l.epoch == 0 or (l.epoch + 1) % self.n == 0) else None


class FitClock(Callback):
    "Wall seconds of `fit` (device synchronised at the end), in `seconds`."
    def before_fit(self): self.t0, self.seconds = time.perf_counter(), None
    def after_fit(self): sync(self.learn.device); self.seconds = time.perf_counter() - self.t0


# --------------------------------------------------------------------------------------------------- the kit and the plain loop

def kit_learner(b: Bench, depth: int, s: Setting, run_dir: Path, width8: bool = False, cbs=(), epochs: int | None = None):
    "The learner `brainmri.run.build_learner` makes for these settings (milestones unscaled, as in a 60-epoch run), over the benchmark's data."
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    tr, va = b.loaders(s.loader)
    off = {k: False for k in ('progressive_unfreeze', 'mixup', 'early_stopping', 'rollback', 'class_penalty', 'dynamic_regularisation',
                              'dynamic_augmentation', 'lr_nudge')} if s.recipe == 'bare' else {}
    cfg = TrainConfig(data_dir=str(b.store.path), device=str(b.device), amp=s.amp or 'none', channels_last=s.channels_last, compile=s.compile,
                      grad_accum=b.args.grad_accum, scale_milestones=False, seed=0, **off)
    data = SimpleNamespace(train_dl=tr, valid_dl=va, class_weights=b.class_weights, store=b.store)
    learn = build_learner(cfg, b.model(depth, width8), data, run_dir)
    learn.get_cb(ProgressCallback).bar = False
    if (pu := learn.get_cb(ProgressiveUnfreeze)) is not None: pu.start_blocks = depth
    if s.compile and not s.dynreg_live and (dr := learn.get_cb(DynamicRegularisation)) is not None:
        dr.start_epoch = 1 + (b.args.epochs if epochs is None else epochs)   # each new dropout p recompiles: act after the timed epochs
    if s.fused:
        learn.opt_func = lambda params, **kw: torch.optim.AdamW(params, fused=True, **kw)
        learn.rebuild_optimizer([g['params'] for g in learn.opt.param_groups])
    for cb in cbs: learn.add_cb(cb)
    return learn


def plain_loop(b: Bench, depth: int, amp: str | None, channels_last: bool, loader: str = 'workers', cudnn_benchmark: bool = False,
               width8: bool = False, warmup: int | None = None, timed: int | None = None) -> dict:
    "A hand-written loop over the kit's data path: forward, class-weighted loss, backward, AdamW step every `grad_accum` batches."
    dev, a = b.device, b.args
    warmup = a.warmup if warmup is None else warmup
    timed = a.timed_steps if timed is None else timed
    torch.backends.cudnn.benchmark = cudnn_benchmark
    dl, va = b.loaders(loader)
    model = b.model(depth, width8).to(dev)
    if channels_last: model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss(weight=b.class_weights.to(dev))
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == 'fp16')
    total, i, t, c, n_timed = warmup + timed, 0, None, None, 0
    try:
        while i < total:
            for x, y in dl:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                if channels_last: x = x.contiguous(memory_format=torch.channels_last)
                with autocast(dev, amp): loss = crit(model(x), y) / a.grad_accum
                scaler.scale(loss).backward()
                if (i + 1) % a.grad_accum == 0: scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)
                i += 1
                if i == warmup: sync(dev); t, c = time.perf_counter(), time.process_time()
                elif t is not None: n_timed += 1
                if i >= total or (t is not None and time.perf_counter() - t > a.max_seconds): break
            if t is not None and time.perf_counter() - t > a.max_seconds: break
        sync(dev)
        secs, cpu_s = time.perf_counter() - t, time.process_time() - c
    finally: close_loader(dl); close_loader(va)
    s = Setting(amp=amp, channels_last=channels_last, loader=loader, cudnn_benchmark=cudnn_benchmark)
    return dict(settings=s.label() + ', plain loop', img_s=n_timed * b.bs / secs, images=n_timed * b.bs, seconds=secs, steps=n_timed,
                cpu_ms_per_img=1000 * cpu_s / max(1, n_timed * b.bs))


def kit(b: Bench, depth: int, s: Setting, width8: bool = False, epochs: int | None = None) -> dict:
    "(b) the kit's loop: whole epochs after one warm-up epoch; train, validation and other per-epoch work timed apart."
    epochs = b.args.epochs if epochs is None else epochs
    st, warm = Stamps(b.device), 1
    clock = EpochClock(st, b.args.max_seconds, warm)
    cbs = [clock, EpochClockEnd(clock)] + ([ValidateEvery(s.eval_every)] if s.eval_every != 1 else [])
    run_dir = Path(tempfile.mkdtemp(dir=b.work))
    learn = kit_learner(b, depth, s, run_dir, width8, cbs, epochs)
    try:
        with contextlib.redirect_stdout(sys.stderr) if b.args.quiet_fit else contextlib.nullcontext():
            learn.fit(warm + epochs)
    finally:
        close_loader(learn.train_dl); close_loader(learn.valid_dl)
        import shutil; shutil.rmtree(run_dir, ignore_errors=True)
    t, cpu = st.seconds()
    done = sorted({k[1] for k in t if k[0] == 'epoch_end' and k[1] >= warm})
    if not done: raise RuntimeError('no timed epoch finished (is --max-seconds too small?)')
    g = clock.graphs   # an epoch that compiled a new graph (a new dropout p) is not steady state
    recompiled = [e for e in done if g.get(e, 0) > g.get(e - 1, 0)]
    steady = done if s.dynreg_live else ([e for e in done if e not in recompiled] or done)
    per = len(learn.train_dl) * b.bs
    span = lambda d, e, a_, b_: d[(b_, e)] - d[(a_, e)]
    train = sum(span(t, e, 'epoch_start', 'train_end') for e in steady)
    train_all = sum(span(t, e, 'epoch_start', 'train_end') for e in done)
    val = [span(t, e, 'val_start', 'val_end') for e in steady if learn.history[e].get('val_loss') is not None]
    other = sum(span(t, e, 'train_end', 'val_start') + span(t, e, 'val_end', 'epoch_end') for e in steady)
    wall = sum(span(t, e, 'epoch_start', 'epoch_end') for e in steady)
    cpu_train = sum(span(cpu, e, 'epoch_start', 'train_end') for e in steady)
    n_val = len(b.val_rows)
    return dict(settings=s.label(), img_s=per * len(steady) / train, images=per * len(steady), seconds=train, train_s=train,
                cpu_ms_per_img=1000 * cpu_train / (per * len(steady)), epochs=len(steady), recompiled_epochs=recompiled,
                img_s_all_epochs=per * len(done) / train_all, val_runs=len(val), val_s_per_run=(sum(val) / len(val)) if val else None,
                val_img_s=(n_val / (sum(val) / len(val))) if val else None, other_s_per_epoch=other / len(steady),
                epoch_img_s=per * len(steady) / wall, warmup_epoch_s=round(span(t, 0, 'epoch_start', 'epoch_end'), 2),
                compiled=bool(learn.compile), new_graphs=g.get(max(done), 0) - g.get(-1, 0), actions=len(learn.actions),
                n_train_per_epoch=per, n_val=n_val)
