#!/usr/bin/env python
"""Training throughput (issue 10): the model's own ceiling, the kit's loop and an original-style loop, side by side.

    python bench/train_throughput.py                          # auto device; CPU defaults: 96 px, batch 16, a few steps
    python bench/train_throughput.py --device cuda            # 224 px, batch 64, depths 1 and 2, ablations
    python bench/train_throughput.py --ablations none --depths 2
    python bench/train_throughput.py --full-run               # time full default 60-epoch runs (brainmri.run.run_training)
    python bench/train_throughput.py --render a.json b.json   # (re)write this device's docs block from saved JSON files
    bash bench/gpu_session.sh                                 # on a lent GPU machine (see that file)

The CPU figures in docs/benchmarks.md came from
    python bench/train_throughput.py --device cpu --depths 1 2 --img-size 96 --batch-size 16 --steps 4 \
        --repeats 2 --loop-check 3 --profile --ablations all --json bench/results/train_throughput_cpu.json

Measured, in one process, at each depth (blocks 1..d open):
  (a) ceiling   model-only forward+backward+AdamW step on synthetic tensors already on the device,
                with the best settings (CUDA: bf16 autocast, channels_last, torch.compile with eager
                fallback, cudnn.benchmark, fused AdamW).
  (b) kit       a real brainmri Learner with the full recipe (default_callbacks), the composite LR
                schedule, the class-weighted loss, gradient accumulation 4, checkpoints every epoch,
                over the real data path (CUDA: DeviceLoader; CPU: DataLoader + PhaseTransform workers).
                Train img/s is timed over whole epochs after a warm-up epoch; validation and the
                per-epoch work (metrics, checkpoints, history) are reported separately.
  (c) original  per-sample albumentations in DataLoader workers (PhaseTransform, strong phase), fp16
                + GradScaler on CUDA (fp32 on the CPU), no channels_last, eager, a plain loop.
  loop check    (CPU goal) the kit's loop against a plain hand-written loop over the kit's own data
                path, same model, batch, precision and accumulation, interleaved repeats on 1 thread;
                also with a width-8 twin of the model, whose negligible arithmetic leaves the loop's cost.
  sync audit    (CUDA, --sync-audit) host-device synchronisations per batch, by source line.
Ablations change one setting of (b) at a time, in rounds that each re-measure the default (--repeats);
the table, too, gives medians of --repeats interleaved runs (3 on the CPU: a shared box is noisy). Every measurement runs in try/except, so one failure
only leaves a gap, and is bounded by --max-seconds. Results: JSON (--json) and the section
"## Training throughput" of docs/benchmarks.md (--out; --no-write to skip).
"""
from __future__ import annotations
import argparse, ast, contextlib, dataclasses, datetime, gc, json, math, os, platform, re, shutil, statistics, subprocess, sys, tempfile, time, traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np
import torch
import torch.nn.functional as F

from brainmri.augment import AugmentConfig, PhaseTransform
from brainmri.callbacks import default_callbacks
from brainmri.core import atomic_write, get_device
from brainmri.data import (CustomTumorDataset, class_counts, get_class_balanced_weights, load_store, make_loader,
                           make_weighted_sampler, prepare, sample_data_dir, split_by_group)
from brainmri.device_loader import DeviceLoader
from brainmri.augment import eval_transform
from brainmri.learner import Callback, CancelFitException, Learner
from brainmri.losses import make_loss
from brainmri.model import BasicCNNModel, count_flops
from brainmri.schedule import CompositeLRSchedule

# brainmri.learner picks the compiled model with `self._compiled or self.model`; torch's OptimizedModule
# raises TypeError from __len__ in that truth test (BasicCNNModel is no container), so Learner(compile=True)
# fails at construction. Until the learner tests `is not None` (reported), give OptimizedModule a __bool__.
with contextlib.suppress(Exception):
    from torch._dynamo.eval_frame import OptimizedModule
    if '__bool__' not in vars(OptimizedModule): OptimizedModule.__bool__ = lambda self: True

SHARED = ROOT.parent / 'shared' / 'data' / 'figshare-jpg'
SECTION = '## Training throughput'
T0 = time.time()

# What each switch was expected to do before it was measured (written into the docs beside the result).
PREDICTIONS = {
    'compile': dict(cuda='+60–130 %: fuses the memory-bound GroupNorm→SiLU→noise→dropout→residual chains that dominate a step at 224 px (the issue saw 1000 → 2300 img/s); costs tens of seconds of compile per depth and per train/eval graph.',
                    cpu='+0–30 % (some fusion of the same chains); ~20 s of compile at depth 1 on 2 cores (a first try).'),
    'cudnn_benchmark': dict(cuda='+0–15 %: shapes are fixed, so autotuning picks faster conv algorithms once; compiled convs still call cuDNN.'),
    'loader': dict(cuda='worker DataLoader: albumentations costs ~1.3 ms per image per core in the strong phase; 2300 img/s needs ~3 busy cores plus collation and a 200 KB/image host→device copy: slower wherever 8 workers fall behind the compiled model (likely at depth 1).',
                   cpu='DeviceLoader on the CPU: the batched grid_sample path costs ~7 ms per 224 px image on one core against ~1.3 ms for albumentations, and runs in the training process instead of the workers: slower.'),
    'eval_every': dict(cuda='+2–5 % epoch throughput: validation is ~15 % of an epoch\'s images, forward only; but early stopping, rollback, LR nudging and the plateau schedule would be blind in between.',
                       cpu='+5–10 % epoch throughput (32 val images against 64 train images here), with the same blindness.'),
    'fused': dict(cuda='under 1 %: one kernel instead of a few per parameter group, for 1.6 M parameters every 4th batch.'),
    'recipe': dict(cuda='under 2 %: the adaptive callbacks act once per epoch; per batch only mixup (one lerp) and the recorder (a bincount) run.',
                   cpu='under 2 %, as on CUDA.'),
    'dynreg': dict(cuda='a recompile (tens of seconds) for every new dropout p / noise std: the scale moves by 0.1 per epoch while val acc < 0.6, so early epochs recompile one after another; after 8 recompiles dynamo gives up and runs eager.'),
    'tensor_reg': dict(cuda='p and std held in 0-d tensors are graph inputs: no recompile, same arithmetic: the steady-state speed with dynamic regularisation live.'),
    'channels_last': dict(cuda='+10–30 % at depth 2 (NHWC tensor-core convs without layout transposes), less at depth 1 (1-channel input).',
                          cpu='±10 % (oneDNN likes NHWC convs, GroupNorm on NHWC is slower).'),
    'amp': dict(cuda='fp16 ≈ bf16 (same tensor-core kernels) minus a few % for GradScaler; fp32 (TF32 convs) 1.5–2× slower.',
                cpu='slower than fp32: no AMX here, and autocast adds casts around every GroupNorm.'),
}


def predicted(key: str | None, device: str) -> str:
    p = PREDICTIONS.get(key or '', {})
    return p.get('cpu' if device.startswith('CPU') else 'cuda', '')


# ---------------------------------------------------------------------------------------------------
# settings and context

@dataclass
class Setting:
    "One configuration of the kit's loop."
    amp: str | None = None            # 'bf16', 'fp16' or None (fp32)
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    loader: str = 'workers'           # 'device' (DeviceLoader) or 'workers' (DataLoader + PhaseTransform)
    eval_every: int = 1               # validate every N epochs (bench-only switch)
    recipe: str = 'full'              # 'full' (default_callbacks) or 'bare' (the learner's own callbacks only)
    fused: bool = False               # fused AdamW
    dynreg_live: bool = False         # with compile: let dynamic regularisation act in the timed epochs (each new dropout p recompiles)
    tensor_reg: bool = False          # bench-only model patch: dropout p and noise std held in tensors (changing them recompiles nothing)

    def label(self) -> str:
        parts = [self.amp or 'fp32', 'channels_last' if self.channels_last else 'NCHW', 'compiled' if self.compile else 'eager',
                 f'{self.loader} loader']
        if self.cudnn_benchmark: parts.append('cudnn.benchmark')
        if self.fused: parts.append('fused AdamW')
        if self.eval_every != 1: parts.append(f'eval every {self.eval_every}')
        if self.recipe != 'full': parts.append(f'{self.recipe} recipe')
        if self.compile and self.recipe == 'full' and not self.dynreg_live: parts.append('dyn. reg. from the last epoch')
        if self.dynreg_live: parts.append('dyn. reg. live')
        if self.tensor_reg: parts.append('tensor dropout p/noise std')
        return ', '.join(parts)


def kit_default(device: torch.device, compile_flag: str) -> Setting:
    "The kit's defaults on `device` (what brainmri.run builds), with compile from --compile."
    cuda = device.type == 'cuda'
    comp = cuda if compile_flag == 'auto' else compile_flag == 'on'
    amp = ('bf16' if torch.cuda.is_bf16_supported() else 'fp16') if cuda else None
    return Setting(amp=amp, channels_last=cuda, compile=comp, cudnn_benchmark=cuda, loader='device' if cuda else 'workers')


def ablations_for(device: torch.device, base: Setting) -> list[tuple[str, str, Setting]]:
    "(key, what changed, setting) for each one-switch change of the kit's default; the cheap ones first."
    cuda, out = device.type == 'cuda', []
    r = lambda **kw: dataclasses.replace(base, **kw)
    out.append(('compile', f"compile {'off' if base.compile else 'on'}", r(compile=not base.compile)))
    if cuda: out.append(('cudnn_benchmark', f"cudnn.benchmark {'off' if base.cudnn_benchmark else 'on'}", r(cudnn_benchmark=not base.cudnn_benchmark)))
    out.append(('loader', 'worker DataLoader' if base.loader == 'device' else 'DeviceLoader', r(loader='workers' if base.loader == 'device' else 'device')))
    out.append(('eval_every', 'validate every 5th epoch', r(eval_every=5)))
    if cuda: out.append(('fused', 'fused AdamW', r(fused=True)))
    out.append(('recipe', 'bare learner (no adaptive callbacks)', r(recipe='bare')))
    if base.compile:
        out.append(('dynreg', 'dynamic regularisation acting in the timed epochs (as in a real run)', r(dynreg_live=True)))
        out.append(('tensor_reg', 'same, with dropout p / noise std as tensors (proposed model change)', r(dynreg_live=True, tensor_reg=True)))
    out.append(('channels_last', f"channels_last {'off' if base.channels_last else 'on'}", r(channels_last=not base.channels_last)))
    if cuda:
        other = 'fp16' if base.amp == 'bf16' else 'bf16'
        out.append(('amp', f'{other} autocast', r(amp=other)))
        out.append(('amp', 'fp32 (no autocast)', r(amp=None)))
    else:
        out.append(('amp', 'bf16 autocast', r(amp='bf16')))
    return out


@dataclass
class Ctx:
    "What every measurement shares."
    args: argparse.Namespace
    device: torch.device
    store: object = None
    train_rows: np.ndarray = None
    val_rows: np.ndarray = None
    class_weights: torch.Tensor = None
    results: list = field(default_factory=list)
    work: Path = None

    @property
    def bs(self) -> int: return self.args.batch_size
    @property
    def img(self) -> int: return self.args.img_size
    @property
    def cuda(self) -> bool: return self.device.type == 'cuda'


def sync(device: torch.device) -> None:
    if device.type == 'cuda': torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == 'cuda': return torch.cuda.get_device_name(device)
    model = platform.processor() or 'unknown CPU'
    with contextlib.suppress(Exception):
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r'Model name:\s*(.+)', out)
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


def time_left() -> float:
    return ARGS.deadline - (time.time() - T0) if ARGS.deadline else float('inf')


def record(ctx: Ctx, res: dict) -> dict:
    "Keep a result, print it, and save the JSON so far (a killed run keeps what it measured)."
    ctx.results.append(res)
    if res.get('error'): print(f"  ✗ {res['kind']} depth {res.get('depth')}: {res['error']}", flush=True)
    elif res['kind'] == 'sync_audit':
        print(f"  sync audit: DeviceLoader {res['loader_syncs_per_batch']:.2f}/batch {res['loader_where']}; "
              f"kit epoch {res['fit_syncs_per_batch']:.2f}/batch {res['fit_where']}", flush=True)
    elif res['kind'] == 'full_run':
        print(f"  full run {res.get('what')}: wall {res['wall_s']}s, fit {res['fit_s']}s, {res['epochs']} epochs, best val acc {res.get('best_val_acc')}", flush=True)
    else:
        extra = f", train {res['train_s']:.1f}s" if 'train_s' in res else ''
        if res.get('cpu_ms_per_img') is not None: extra += f", {res['cpu_ms_per_img']:.0f} CPU ms/img"
        if res.get('recompiled_epochs'): extra += f", recompiled in epochs {res['recompiled_epochs']}"
        print(f"  {res['kind']:<9} depth {res.get('depth')} {res.get('what', '')}: {res['img_s']:.1f} img/s "
              f"({res['images']} images, {res['seconds']:.2f}s{extra}) [{res.get('settings', '')}]", flush=True)
    if ARGS.json: save_results(ctx, Path(ARGS.json))
    return res


def guarded(ctx: Ctx, kind: str, depth: int, fn, what: str = '', **meta) -> dict:
    "Run one measurement; a failure (or too little time left) becomes an entry with `error`."
    base = dict(kind=kind, depth=depth, what=what, **meta)
    if time_left() < ARGS.min_left:
        return record(ctx, {**base, 'error': f'skipped: {time_left():.0f}s left of the --deadline'})
    t = time.time()
    try: res = {**base, **fn()}
    except Exception as e:
        traceback.print_exc()
        res = {**base, 'error': f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]}
    res['wall_s'] = round(time.time() - t, 1)
    gc.collect()
    if ctx.cuda: torch.cuda.empty_cache()
    return record(ctx, res)


# ---------------------------------------------------------------------------------------------------
# data

def prepare_data(ctx: Ctx) -> None:
    a = ctx.args
    src = Path(a.data) if a.data else (SHARED if SHARED.exists() else sample_data_dir())
    if (src / 'meta.json').exists(): store_path = src
    else:
        store_path = Path(a.store) if a.store else ctx.work / 'store'
        t = time.perf_counter()
        prepare(src, store_path, size=a.prep_size, quiet=True)
        print(f'prepared {src} → {store_path} in {time.perf_counter() - t:.1f}s', flush=True)
    ctx.store = load_store(store_path)
    sp = split_by_group(ctx.store, 0.15, 0.15, seed=0)
    rng = np.random.default_rng(0)
    tr, va = sp['train'], sp['val']
    if a.steps:   # a fixed number of batches per epoch: a seeded subset (the split's rows are ordered by class)
        n = a.steps * ctx.bs
        tr = np.sort(rng.choice(tr, n, replace=n > len(tr)))
    if a.val_images: va = np.sort(rng.choice(va, min(a.val_images, len(va)), replace=False))
    ctx.train_rows, ctx.val_rows = tr, va
    ctx.class_weights = get_class_balanced_weights(class_counts(ctx.store.labels[sp['train']], len(ctx.store.classes)))
    print(f'data: {ctx.store.path} ({len(ctx.store)} images, {ctx.store.size} px); per epoch {len(tr)} train '
          f'({len(tr) // ctx.bs} batches of {ctx.bs}), {len(va)} val', flush=True)


def aug_cfg(ctx: Ctx) -> AugmentConfig: return AugmentConfig(img_size=ctx.img)


def worker_loaders(ctx: Ctx, phase_epoch: int = 0):
    "The CPU data path: CustomTumorDataset + PhaseTransform in DataLoader workers, balanced sampler; eval through eval_transform."
    a, ch = ctx.args, a_channels(ctx)
    tr_ds = CustomTumorDataset(ctx.store, ctx.train_rows, PhaseTransform(aug_cfg(ctx), seed=0, epoch=phase_epoch), ch, cache=True)
    sampler = make_weighted_sampler(ctx.store.labels[ctx.train_rows], seed=0)
    tr = make_loader(tr_ds, ctx.bs, train=True, workers=a.workers, sampler=sampler, seed=0)
    va_ds = CustomTumorDataset(ctx.store, ctx.val_rows, eval_transform(ctx.img), ch, cache=True)
    va = make_loader(va_ds, ctx.bs * 2, train=False, workers=min(a.workers, 2), seed=0)
    return tr, va


def device_loaders(ctx: Ctx):
    ch = a_channels(ctx)
    tr = DeviceLoader(ctx.store, ctx.train_rows, ctx.bs, train=True, device=ctx.device, augment=aug_cfg(ctx), seed=0, balanced=True, channels=ch)
    va = DeviceLoader(ctx.store, ctx.val_rows, ctx.bs * 2, train=False, device=ctx.device, augment=aug_cfg(ctx), channels=ch)
    return tr, va


def a_channels(ctx: Ctx) -> int: return ctx.args.channels


def close_loader(dl) -> None:
    "Stop a DataLoader's persistent workers now rather than at garbage collection."
    it = getattr(dl, '_iterator', None)
    if it is not None and hasattr(it, '_shutdown_workers'): it._shutdown_workers()


def make_model(ctx: Ctx, depth: int) -> BasicCNNModel:
    torch.manual_seed(0)
    return BasicCNNModel(in_chans=a_channels(ctx), n_open=depth)


def flops_per_image(ctx: Ctx, depth: int) -> int:
    return count_flops(BasicCNNModel(in_chans=a_channels(ctx), n_open=depth), ctx.img, train_step=True)


def autocast(device: torch.device, amp: str | None):
    if amp is None: return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}[amp])


# ---------------------------------------------------------------------------------------------------
# (a) the ceiling

def ceiling(ctx: Ctx, depth: int, s: Setting) -> dict:
    dev, a = ctx.device, ctx.args
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    model = make_model(ctx, depth).to(dev)
    if s.channels_last: model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=5e-4, **({'fused': True} if s.fused else {}))
    scaler = torch.amp.GradScaler(dev.type, enabled=s.amp == 'fp16')
    g = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(ctx.bs, a_channels(ctx), ctx.img, ctx.img, generator=g).to(dev)
    if s.channels_last: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (ctx.bs,), generator=g).to(dev)
    fwd, note = model, ''
    if s.compile:
        try: fwd = torch.compile(model)
        except Exception as e: fwd, note = model, f'compile unavailable ({type(e).__name__}); eager'

    def step(f):
        with autocast(dev, s.amp):
            loss = F.cross_entropy(f(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    try: step(fwd)
    except Exception as e:
        if fwd is model: raise
        note = f'compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ""}); eager'
        fwd = model; step(fwd)
    sync(dev); first = time.perf_counter() - t
    for _ in range(a.warmup - 1): step(fwd)
    sync(dev)
    n, t = 0, time.perf_counter()
    while n < a.timed_steps and (n == 0 or time.perf_counter() - t < a.max_seconds):
        step(fwd); n += 1
        if not ctx.cuda or n % 10 == 0: sync(dev)
    sync(dev); secs = time.perf_counter() - t
    return dict(settings=s.label(), img_s=n * ctx.bs / secs, images=n * ctx.bs, seconds=secs, steps=n, first_step_s=round(first, 2), note=note)


# ---------------------------------------------------------------------------------------------------
# (b) the kit's loop

class Stamps:
    """Time marks: CUDA events (the GPU's timeline: a late batch shows as idle time) or, on the CPU, wall
    time and this process's CPU time (which other users of a shared machine disturb far less)."""
    def __init__(self, device: torch.device): self.cuda, self.marks = device.type == 'cuda', []
    def mark(self, key) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True); e.record(); self.marks.append((key, e, time.process_time()))
        else: self.marks.append((key, time.perf_counter(), time.process_time()))
    def seconds(self) -> tuple[dict, dict]:
        "(key -> wall seconds since the first mark, key -> CPU seconds of this process since the first mark)."
        if not self.marks: return {}, {}
        c0 = self.marks[0][2]
        cpu = {k: c - c0 for k, _, c in self.marks}
        if self.cuda:
            torch.cuda.synchronize(); e0 = self.marks[0][1]
            return {k: e0.elapsed_time(e) / 1000 for k, e, _ in self.marks}, cpu
        t0 = self.marks[0][1]
        return {k: t - t0 for k, t, _ in self.marks}, cpu


class ClockFirst(Callback):
    order = -10_000
    def __init__(self, st: Stamps): self.st = st
    def before_epoch(self): self.st.mark(('epoch_start', self.learn.epoch))
    def before_validate(self): self.st.mark(('train_end', self.learn.epoch))
    def after_validate(self): self.st.mark(('val_end', self.learn.epoch))


class ClockLast(Callback):
    order = 10_000
    def __init__(self, st: Stamps, max_seconds: float, warm_epochs: int):
        self.st, self.max_seconds, self.warm, self.t_timed, self.graphs = st, max_seconds, warm_epochs, None, {}
    def before_fit(self): self.graphs[-1] = dynamo_graphs()
    def before_validate(self): self.st.mark(('val_start', self.learn.epoch))
    def after_epoch(self):
        l = self.learn
        self.st.mark(('epoch_end', l.epoch))
        self.graphs[l.epoch] = dynamo_graphs()
        if l.epoch == self.warm - 1: self.t_timed = time.perf_counter()
        elif self.t_timed is not None and time.perf_counter() - self.t_timed > self.max_seconds and l.epoch < l.n_epochs - 1:
            raise CancelFitException(f'bench: --max-seconds {self.max_seconds:g} reached after epoch {l.epoch + 1}')


class EvalEvery(Callback):
    "Bench-only: validate in epoch 0 (eval-mode warm-up) and then every `n`-th epoch."
    order = -10_001
    def __init__(self, n: int): self.n, self.dl = n, None
    def before_epoch(self):
        l = self.learn
        if self.dl is None: self.dl = l.valid_dl
        l.valid_dl = self.dl if (l.epoch == 0 or (l.epoch + 1) % self.n == 0) else None


def patch_tensor_regularisation(model: torch.nn.Module) -> torch.nn.Module:
    """Bench-only: hold every Dropout2d p and TrainOnlyNoise std in a 0-d buffer (the proposed change to
    brainmri.model), so `set_regularisation` changes tensors, not graph constants."""
    from torch import nn
    from brainmri.model import TrainOnlyNoise

    class TensorDropout2d(nn.Dropout2d):
        def __init__(self, p: float):
            nn.Module.__init__(self)
            self.register_buffer('p_t', torch.tensor(float(p)), persistent=False)
            self.inplace = False
        p = property(lambda self: float(self.p_t), lambda self, v: self.p_t.fill_(float(v)))
        def forward(self, x):
            if not self.training: return x
            keep = (torch.rand(x.shape[0], x.shape[1], 1, 1, device=x.device) >= self.p_t).to(x.dtype)
            return x * keep / (1 - self.p_t).clamp(min=1e-6).to(x.dtype)

    class TensorNoise(TrainOnlyNoise):
        def __init__(self, std: float):
            nn.Module.__init__(self)
            self.register_buffer('std_t', torch.tensor(float(std)), persistent=False)
        std = property(lambda self: float(self.std_t), lambda self, v: self.std_t.fill_(float(v)))
        def forward(self, x):
            return x + torch.randn_like(x) * self.std_t.to(x.dtype) if self.training else x

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout2d: setattr(parent, name, TensorDropout2d(child.p))
            elif type(child) is TrainOnlyNoise: setattr(parent, name, TensorNoise(child.std))
    return model


def dynamo_graphs() -> int:
    with contextlib.suppress(Exception):
        from torch._dynamo.utils import counters
        return int(counters['stats']['unique_graphs'])
    return 0


def kit(ctx: Ctx, depth: int, s: Setting, model_fn=None, epochs: int | None = None) -> dict:
    dev, a = ctx.device, ctx.args
    epochs = a.epochs if epochs is None else epochs
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    tr, va = device_loaders(ctx) if s.loader == 'device' else worker_loaders(ctx)
    model = (model_fn or make_model)(ctx, depth)
    if s.tensor_reg: patch_tensor_regularisation(model)
    st = Stamps(dev)
    warm = 1
    clock = ClockLast(st, a.max_seconds, warm)
    cbs = [ClockFirst(st), clock]
    if s.eval_every != 1: cbs.append(EvalEvery(s.eval_every))
    if s.recipe == 'full':
        # with compile, each new dropout p is a recompile (see the 'dynreg' ablation): unless asked, the callback
        # acts only after the last timed epoch, so the timed epochs show the loop, not the compiler
        delay = s.compile and not s.dynreg_live
        cbs += default_callbacks(progressive_unfreeze=dict(start_blocks=depth),
                                 dynamic_regularisation=dict(start_epoch=warm + epochs if delay else 0))
    run_dir = Path(tempfile.mkdtemp(dir=ctx.work))
    opt = partial(torch.optim.AdamW, fused=True) if s.fused else torch.optim.AdamW
    learn = Learner(model, tr, va, loss_func=make_loss('ce', weight=ctx.class_weights), lr=1e-2, wd=5e-4, opt_func=opt, cbs=cbs,
                    device=dev, amp=s.amp, grad_accum=a.grad_accum, run_dir=run_dir, lr_schedule=CompositeLRSchedule,
                    channels_last=s.channels_last, compile=s.compile, seed=0, progress_bar=False)
    try:
        with contextlib.redirect_stdout(sys.stderr) if a.quiet_fit else contextlib.nullcontext():
            learn.fit(warm + epochs)
    finally:
        close_loader(tr); close_loader(va)
        shutil.rmtree(run_dir, ignore_errors=True)
    t, cpu = st.seconds()
    done = sorted({k[1] for k in t if k[0] == 'epoch_end' and k[1] >= warm})
    if not done: raise RuntimeError('no timed epoch finished (is --max-seconds too small?)')
    # an epoch that compiled a new graph (e.g. dynamic regularisation changed a dropout p) is not steady state
    g = clock.graphs
    recompiled = [e for e in done if g.get(e, 0) > g.get(e - 1, 0)]
    steady = done if s.dynreg_live else ([e for e in done if e not in recompiled] or done)
    per = len(tr) * ctx.bs
    span = lambda d, e, a_, b_: d[(b_, e)] - d[(a_, e)]
    train = sum(span(t, e, 'epoch_start', 'train_end') for e in steady)
    train_all = sum(span(t, e, 'epoch_start', 'train_end') for e in done)
    val = [span(t, e, 'val_start', 'val_end') for e in steady if learn.history[e].get('val_loss') is not None]
    other = sum(span(t, e, 'train_end', 'val_start') + span(t, e, 'val_end', 'epoch_end') for e in steady)
    wall = sum(span(t, e, 'epoch_start', 'epoch_end') for e in steady)
    cpu_train = sum(span(cpu, e, 'epoch_start', 'train_end') for e in steady)
    n_val = len(ctx.val_rows)
    return dict(settings=s.label(), img_s=per * len(steady) / train, images=per * len(steady), seconds=train, train_s=train,
                cpu_ms_per_img=1000 * cpu_train / (per * len(steady)),
                epochs=len(steady), recompiled_epochs=recompiled, img_s_all_epochs=per * len(done) / train_all,
                val_runs=len(val), val_s_per_run=(sum(val) / len(val)) if val else None,
                val_img_s=(n_val / (sum(val) / len(val))) if val else None, other_s_per_epoch=other / len(steady),
                epoch_img_s=per * len(steady) / wall, warmup_epoch_s=round(span(t, 0, 'epoch_start', 'epoch_end'), 2),
                compiled=bool(learn.compile), new_graphs=g.get(max(done), 0) - g.get(-1, 0), actions=len(learn.actions),
                n_train_per_epoch=per, n_val=n_val)


# ---------------------------------------------------------------------------------------------------
# (c) the original-style loop, and the plain hand-written loop over the kit's data

def plain_loop(ctx: Ctx, depth: int, amp: str | None, channels_last: bool, loader: str = 'workers', cudnn_benchmark: bool = False,
               model_fn=None, warmup: int | None = None, timed: int | None = None) -> dict:
    dev, a = ctx.device, ctx.args
    warmup = a.warmup if warmup is None else warmup
    timed = a.timed_steps if timed is None else timed
    torch.backends.cudnn.benchmark = cudnn_benchmark
    dl, va = device_loaders(ctx) if loader == 'device' else worker_loaders(ctx)
    model = (model_fn or make_model)(ctx, depth).to(dev)
    if channels_last: model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss(weight=ctx.class_weights.to(dev))
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == 'fp16')
    total, i, t, c, n_timed = warmup + timed, 0, None, None, 0
    try:
        while i < total:
            for x, y in dl:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                if channels_last: x = x.contiguous(memory_format=torch.channels_last)
                with autocast(dev, amp):
                    loss = crit(model(x), y) / a.grad_accum
                scaler.scale(loss).backward()
                if (i + 1) % a.grad_accum == 0:
                    scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)
                i += 1
                if i == warmup: sync(dev); t, c = time.perf_counter(), time.process_time()
                elif t is not None: n_timed += 1
                if i >= total or (t is not None and time.perf_counter() - t > a.max_seconds): break
            if t is not None and time.perf_counter() - t > a.max_seconds: break
        sync(dev)
        secs, cpu_s = time.perf_counter() - t, time.process_time() - c
    finally: close_loader(dl); close_loader(va)
    s = Setting(amp=amp, channels_last=channels_last, loader=loader, cudnn_benchmark=cudnn_benchmark)
    return dict(settings=s.label() + ', plain loop', img_s=n_timed * ctx.bs / secs, images=n_timed * ctx.bs, seconds=secs, steps=n_timed,
                cpu_ms_per_img=1000 * cpu_s / max(1, n_timed * ctx.bs))


def original(ctx: Ctx, depth: int) -> dict:
    "Per-sample albumentations workers (strong phase), fp16 + GradScaler on CUDA (fp32 on the CPU), NCHW, eager."
    return plain_loop(ctx, depth, amp='fp16' if ctx.cuda else None, channels_last=False, loader='workers')


# ---------------------------------------------------------------------------------------------------
# where the loop waits for the GPU

def sync_audit(ctx: Ctx, depth: int = 1) -> dict:
    """CUDA only: count the host-device synchronisations of one training epoch of the kit (eager, full
    recipe, DeviceLoader) and of the DeviceLoader alone, by source line (torch.cuda.set_sync_debug_mode)."""
    import collections, warnings
    if not ctx.cuda: raise RuntimeError('sync audit needs CUDA')
    base = dataclasses.replace(kit_default(ctx.device, 'off'), loader='device')
    tr, va = device_loaders(ctx)
    learn = Learner(make_model(ctx, depth), tr, va, loss_func=make_loss('ce', weight=ctx.class_weights), cbs=default_callbacks(),
                    device=ctx.device, amp=base.amp, grad_accum=ctx.args.grad_accum, lr_schedule=CompositeLRSchedule,
                    channels_last=base.channels_last, seed=0, progress_bar=False)
    with contextlib.redirect_stdout(sys.stderr): learn.fit(1)           # warm-up: allocator, cuDNN, lazy init
    def audited(fn):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try: fn()
            finally: torch.cuda.set_sync_debug_mode(0)
        where = collections.Counter(f'{Path(x.filename).name}:{x.lineno}' for x in w if 'synchroniz' in str(x.message))
        return dict(where.most_common(12)), sum(where.values())
    loader_where, loader_n = audited(lambda: [b for b in tr])
    with contextlib.redirect_stdout(sys.stderr): fit_where, fit_n = audited(lambda: learn.fit(1))
    n = len(tr)
    return dict(settings=base.label(), img_s=float('nan'), images=0, seconds=0, batches=n, loader_syncs=loader_n,
                loader_syncs_per_batch=loader_n / n, loader_where=loader_where, fit_syncs=fit_n, fit_syncs_per_batch=fit_n / n,
                fit_where=fit_where)


# ---------------------------------------------------------------------------------------------------
# full runs

def full_run(ctx: Ctx, overrides: dict, label: str) -> dict:
    "Time brainmri.run.run_training(TrainConfig(...)) on the store: wall time, fit time, epochs, accuracy."
    import brainmri.learner as L
    fit_time = {}
    orig_fit = L.Learner.fit
    def timed_fit(self, *a, **k):
        t = time.perf_counter()
        try: return orig_fit(self, *a, **k)
        finally: sync(ctx.device); fit_time['s'] = time.perf_counter() - t
    run_dir = ctx.work / f'run-{re.sub(r"[^A-Za-z0-9]+", "-", label)}'
    L.Learner.fit = timed_fit
    try:
        try:
            from brainmri.run import TrainConfig, run_training
        except ImportError:
            TrainConfig = None
        t = time.perf_counter()
        if TrainConfig is not None:
            cfg = TrainConfig(data_dir=str(ctx.store.path), run_dir=str(run_dir), device=str(ctx.device), **overrides)
            run_training(cfg)
            how = 'brainmri.run.run_training(TrainConfig(...))'
        else:
            fallback_full_run(ctx, run_dir, overrides); how = 'learner + callbacks (no brainmri.run)'
        wall = time.perf_counter() - t
    finally: L.Learner.fit = orig_fit
    hist = json.loads((run_dir / 'history.json').read_text()) if (run_dir / 'history.json').exists() else []
    res = dict(settings=label, how=how, wall_s=round(wall, 1), fit_s=round(fit_time.get('s', float('nan')), 1), epochs=len(hist),
               epoch_times=[round(h.get('time') or 0, 2) for h in hist], img_s=float('nan'), images=0, seconds=wall,
               best_val_acc=max((h.get('val_acc') or 0) for h in hist) if hist else None, overrides=overrides)
    p = run_dir / 'metrics.json'
    if p.exists():
        with contextlib.suppress(Exception):
            m = json.loads(p.read_text())
            res['test'] = {f'{ck} {k}': m[ck]['test'][k] for ck in ('best', 'swa') if isinstance(m.get(ck), dict)
                           for k in ('accuracy', 'macro_f1') if isinstance(m[ck].get('test', {}).get(k), (int, float))}
    acts = run_dir / 'actions.json'
    if acts.exists():
        with contextlib.suppress(Exception): res['actions'] = [f"{a['epoch']}: {a['source']}: {a['what']}" for a in json.loads(acts.read_text())]
    if ctx.args.keep_runs: res['run_dir'] = str(run_dir)
    else: shutil.rmtree(run_dir, ignore_errors=True)
    return res


def fallback_full_run(ctx: Ctx, run_dir: Path, overrides: dict) -> None:
    "The default recipe from the learner and the callbacks, for a checkout without brainmri.run."
    sp = split_by_group(ctx.store, 0.15, 0.15, seed=0)
    bs, img = overrides.get('batch_size', 32), overrides.get('img_size', 224)
    acfg = AugmentConfig(img_size=img)
    tr = DeviceLoader(ctx.store, sp['train'], bs, train=True, device=ctx.device, augment=acfg, balanced=True)
    va = DeviceLoader(ctx.store, sp['val'], bs * 2, train=False, device=ctx.device, augment=acfg)
    cw = get_class_balanced_weights(class_counts(ctx.store.labels[sp['train']], len(ctx.store.classes)))
    learn = Learner(BasicCNNModel(), tr, va, loss_func=make_loss('ce', weight=cw), cbs=default_callbacks(), device=ctx.device,
                    run_dir=run_dir, lr_schedule=CompositeLRSchedule, compile=overrides.get('compile', False), seed=0, progress_bar=False)
    learn.fit(overrides.get('epochs', 60))


# ---------------------------------------------------------------------------------------------------
# reports

def by(ctx: Ctx, kind: str, depth: int, what: str = '') -> dict | None:
    return next((r for r in ctx.results if r['kind'] == kind and r.get('depth') == depth and r.get('what', '') == what and not r.get('error')), None)


def fmt(x, d=1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)): return '—'
    return f'{x:,.{d}f}'


def markdown(data: dict) -> str:
    "The markdown block of one run of this script (one device)."
    env, args, res = data['env'], data['args'], data['results']
    lines = [f"### {data['title']}", '',
             f"{env['device']}; torch {env['torch']}, Python {env['python']}, {env['cpus']} CPUs seen, {env['threads']} torch threads"
             + (f", load average {'/'.join(str(x) for x in env['load_average'])} at the start" if env.get('load_average') else '')
             + f"; {env['date'][:10]}. {args['img_size']} px, batch {args['batch_size']}, gradient accumulation {args['grad_accum']}, "
             f"{args['channels']} channel(s); {data.get('data_desc', '')}. Reproduce: `{data['command']}`.", '']
    R = lambda kind, d, what='': next((r for r in res if r['kind'] == kind and r.get('depth') == d and r.get('what', '') == what and not r.get('error')), None)
    depths = sorted({r['depth'] for r in res if r['kind'] in ('ceiling', 'kit', 'original') and r.get('depth')})
    if depths:
        lines += ['| depth | loop | settings | img/s | ÷ ceiling | TFLOP/s | notes |', '| --- | --- | --- | --- | --- | --- | --- |']
        for d in depths:
            a = R('ceiling', d); ga = data['flops'].get(str(d))
            for kind, name in (('ceiling', '(a) model-only ceiling'), ('kit', '(b) kit loop'), ('original', '(c) original-style'), ('plain', 'plain hand-written loop')):
                r = R(kind, d)
                err = next((x for x in res if x['kind'] == kind and x.get('depth') == d and x.get('what', '') == '' and x.get('error')), None)
                if r is None and err is None: continue
                if r is None: lines.append(f"| {d} | {name} | — | — | — | — | {err['error']} |"); continue
                ratio = fmt(r['img_s'] / a['img_s'], 2) if a else '—'
                tf = fmt(r['img_s'] * ga / 1e12, 2) if ga else '—'
                notes = []
                if kind == 'kit':
                    if r.get('val_img_s'): notes.append(f"val {fmt(r['val_s_per_run'], 2)} s/epoch ({fmt(r['val_img_s'], 0)} img/s)")
                    notes.append(f"other per-epoch work {fmt(r['other_s_per_epoch'], 2)} s")
                    notes.append(f"epoch incl. val {fmt(r['epoch_img_s'])} img/s ({fmt(r['epoch_img_s'] / a['img_s'], 2) if a else '—'} of ceiling)")
                    if r.get('new_graphs'): notes.append(f"{r['new_graphs']} graphs compiled")
                    if r.get('recompiled_epochs'):
                        notes.append(f"epochs {r['recompiled_epochs']} recompiled and are left out (with them: {fmt(r['img_s_all_epochs'])} img/s)")
                    if r.get('warmup_epoch_s') is not None: notes.append(f"warm-up epoch {fmt(r['warmup_epoch_s'])} s")
                if len(r.get('runs') or []) > 1: notes.append(f"median of {', '.join(fmt(x) for x in r['runs'])}")
                if r.get('first_step_s') is not None: notes.append(f"first step {r['first_step_s']} s")
                if r.get('note'): notes.append(r['note'])
                lines.append(f"| {d} | {name} | {r['settings']} | {fmt(r['img_s'])} | {ratio} | {tf} | {'; '.join(notes)} |")
        lines.append('')
        summary = []
        for d in depths:
            a, b, c = R('ceiling', d), R('kit', d), R('original', d)
            bits = []
            if a and b: bits.append(f"b/a = {b['img_s'] / a['img_s']:.2f}")
            if a and c: bits.append(f"c/a = {c['img_s'] / a['img_s']:.2f}")
            if b and c: bits.append(f"b/c = {b['img_s'] / c['img_s']:.2f}")
            if bits: summary.append(f"depth {d}: " + ', '.join(bits))
        if summary: lines += ['Ratios (train img/s): ' + '; '.join(summary) + '.', '']
    loop = [r for r in res if r['kind'] == 'loop_check']
    if loop:
        lines += ['CPU goal: the kit\'s loop against a plain hand-written loop over the same data path, precision, batch and '
                  f"gradient accumulation, {loop[0].get('threads', '?')} torch thread(s), interleaved repeats (medians; single runs in brackets). *CPU ms* is the main "
                  'process\'s CPU time per training batch (the loop, the model\'s arithmetic, receiving batches; the '
                  'workers\' augmentation is not in it): other users of a shared machine disturb it less than wall time. '
                  'The width-8 twin has the same layers and callbacks with almost no arithmetic, so its CPU ms are the loop\'s own cost.', '',
                  '| model | loop | img/s (wall) | ÷ plain | CPU ms per batch | ÷ plain | extra CPU ms per batch |',
                  '| --- | --- | --- | --- | --- | --- | --- |']
        for r in loop:
            if r.get('error'): lines.append(f"| {r.get('model', '')} | {r['what']} | — | — | — | — | {r['error']} |"); continue
            cpu_b = r.get('cpu_ms_per_batch')
            runs_c = ', '.join(fmt(x * args['batch_size'], 0) for x in r.get('cpu_runs') or [])
            lines.append(f"| {r.get('model', '')} | {r['what']} | {fmt(r['img_s'], 2)} ({', '.join(fmt(x, 1) for x in r['runs'])}) | {fmt(r.get('vs_plain'), 2)} | "
                         f"{fmt(cpu_b, 0)} ({runs_c}) | {fmt(r.get('cpu_vs_plain'), 2)} | {fmt(r.get('cpu_extra_ms_per_batch'), 1)} |")
        lines.append('')
    prof = next((r for r in res if r['kind'] == 'profile' and not r.get('error')), None)
    if prof:
        lines += [f"cProfile of the kit's full recipe with the width-8 twin ({prof['batches']} training batches; cumulative ms per "
                  "training batch, profiler overhead included; nested entries overlap):", '',
                  '| where | calls | ms per batch |', '| --- | --- | --- |']
        lines += [f"| `{t['where']}` | {t['calls']} | {t['ms_per_batch']} |" for t in prof['top']]
        lines.append('')
    abl = [r for r in res if r['kind'] == 'ablation']
    if abl:
        d = abl[0]['depth']
        b = next((r for r in res if r['kind'] == 'ablation_ref' and not r.get('error')), None) or R('kit', d)
        n_rep = len(b.get('runs') or [1]) if b else 1
        lines += [f"Ablations at depth {d}: one change from the kit's default at a time, in {n_rep} round(s); each change is "
                  "compared with the default measured in its own round (median of the paired ratios)"
                  + (f". Default: {b['settings']}, {fmt(b['img_s'])} img/s train, {fmt(b.get('epoch_img_s'))} img/s with validation" if b else '') + '.', '',
                  '| change | train img/s | vs default | epoch img/s incl. val | vs default | val s/epoch | predicted | notes |', '| --- | --- | --- | --- | --- | --- | --- | --- |']
        for r in abl:
            if r.get('error'):
                lines.append(f"| {r['what']} | — | — | — | — | — | {predicted(r.get('key'), env['device'])} | {r['error']} |"); continue
            ratio = r.get('vs_ref') if r.get('vs_ref') is not None else (r['img_s'] / b['img_s'] if b else None)
            vs = f"{(ratio - 1) * 100:+.0f} %" if ratio is not None else '—'
            if len(r.get('ratios') or []) > 1: vs += f" ({', '.join(f'{(x - 1) * 100:+.0f}' for x in r['ratios'])})"
            ev = f"{(r['epoch_vs_ref'] - 1) * 100:+.0f} %" if r.get('epoch_vs_ref') is not None else '—'
            if len(r.get('epoch_ratios') or []) > 1: ev += f" ({', '.join(f'{(x - 1) * 100:+.0f}' for x in r['epoch_ratios'])})"
            notes = [f"{r['new_graphs']} graphs compiled" if r.get('new_graphs') else '',
                     f"epochs {r['recompiled_epochs']} recompiled" + ('' if r.get('key') == 'dynreg' else f", left out (with them {fmt(r['img_s_all_epochs'])} img/s)") if r.get('recompiled_epochs') else '',
                     f"val ran {r.get('val_runs')}× in {r.get('epochs')} timed epochs" if r.get('key') == 'eval_every' else '', r.get('note') or '']
            lines.append(f"| {r['what']} | {fmt(r['img_s'])} | {vs} | {fmt(r.get('epoch_img_s'))} | {ev} | {fmt(r.get('val_s_per_run'), 2)} | "
                         f"{predicted(r.get('key'), env['device'])} | {'; '.join(n for n in notes if n)} |")
        lines.append('')
    sa = next((r for r in res if r['kind'] == 'sync_audit' and not r.get('error')), None)
    if sa:
        w = lambda d: ', '.join(f'`{k}` ×{v}' for k, v in d.items()) or 'none'
        lines += [f"Host–device synchronisations ({sa['batches']} training batches, eager, `torch.cuda.set_sync_debug_mode`): "
                  f"the DeviceLoader alone {sa['loader_syncs_per_batch']:.2f} per batch ({w(sa['loader_where'])}); "
                  f"a whole kit epoch with validation {sa['fit_syncs_per_batch']:.2f} per training batch ({w(sa['fit_where'])}).", '']
    full = [r for r in res if r['kind'] == 'full_run']
    if full:
        lines += ['Full runs (60 epochs unless early stopping ends sooner; wall time includes data loading, compile, fit and the test evaluation):', '',
                  '| run | wall s | fit s | epochs | best val acc | test | how |', '| --- | --- | --- | --- | --- | --- | --- |']
        for r in full:
            if r.get('error'): lines.append(f"| {r['what']} | — | — | — | — | — | {r['error']} |"); continue
            test = ', '.join(f'{k} {v:.3f}' for k, v in (r.get('test') or {}).items())
            lines.append(f"| {r['what']} | {fmt(r['wall_s'])} | {fmt(r['fit_s'])} | {r['epochs']} | {fmt(r.get('best_val_acc'), 3)} | {test or '—'} | {r.get('how', '')} |")
        lines.append('')
    errs = [r for r in res if r.get('error') and not r['kind'].endswith('_run') and r['kind'] not in ('ablation', 'full_run', 'loop_check')]
    if errs: lines += ['Failed or skipped: ' + '; '.join(f"{r['kind']} depth {r.get('depth')}: {r['error']}" for r in errs), '']
    return '\n'.join(lines).rstrip() + '\n'


def block_key(env: dict) -> str:
    return 'cpu' if env['device'].startswith('CPU') else re.sub(r'[^a-z0-9]+', '-', env['device'].lower()).strip('-')


def write_section(md_path: Path, key: str, block: str) -> None:
    "Replace (or add) this device's block inside '## Training throughput' of `md_path`; text outside the markers stays."
    begin, end = f'<!-- train_throughput:{key} begin -->', f'<!-- train_throughput:{key} end -->'
    text = md_path.read_text() if md_path.exists() else '# Benchmarks\n'
    body = f'{begin}\n{block.rstrip()}\n{end}'
    if begin in text and end in text:
        i, j = text.index(begin), text.index(end) + len(end)
        text = text[:i] + body + text[j:]
    else:
        lines = text.splitlines(keepends=True)
        starts = [i for i, l in enumerate(lines) if l.rstrip() == SECTION]
        if not starts:
            text = text.rstrip() + f'\n\n{SECTION}\n\n{body}\n'
        else:
            k = starts[0] + 1
            while k < len(lines) and not lines[k].startswith('## '): k += 1
            head, tail = ''.join(lines[:k]).rstrip(), ''.join(lines[k:])
            text = head + f'\n\n{body}\n' + ('\n' + tail if tail else '')
    with atomic_write(md_path, 'w') as f: f.write(text)


def save_results(ctx: Ctx, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, 'w') as f: json.dump(results_dict(ctx), f, indent=1, default=str)


def results_dict(ctx: Ctx) -> dict:
    a = ctx.args
    cmd = 'python bench/train_throughput.py ' + ' '.join(sys.argv[1:])
    n_tr = len(ctx.train_rows) if ctx.train_rows is not None else 0
    n_va = len(ctx.val_rows) if ctx.val_rows is not None else 0
    desc = (f"data {ctx.store.path.name if ctx.store is not None else '?'} ({len(ctx.store) if ctx.store is not None else 0} images, "
            f"{n_tr} train per epoch, {n_va} val)") if ctx.store is not None else ''
    title = ('CPU, 2 cores (dev box, shared)' if not ctx.cuda and (os.cpu_count() or 0) <= 2 else
             f"CPU, {os.cpu_count()} cores" if not ctx.cuda else device_name(ctx.device))
    return dict(title=a.title or title, env=ENV, args=vars(a), command=cmd.strip(), data_desc=desc,
                flops={str(d): v for d, v in FLOPS.items()}, results=ctx.results)


# ---------------------------------------------------------------------------------------------------

def tiny_model(ctx: Ctx, depth: int) -> BasicCNNModel:
    "The real architecture at width 8: the same code paths as the model, almost no arithmetic, so what is left is the loop."
    torch.manual_seed(0)
    return BasicCNNModel(in_chans=a_channels(ctx), widths=((8, 8), (8, 8, 8), (8, 8, 8)), gn_groups=4, head_width=16, n_open=depth)


def summarise(ctx: Ctx, kind: str, depth: int, runs: list[dict], **extra) -> dict | None:
    "One entry for repeated runs: the median img/s, the other figures from the median run, every run's img/s."
    ok = [r for r in runs if not r.get('error')]
    if not ok:
        return record(ctx, {'kind': kind, 'depth': depth, 'what': '', **extra, 'error': runs[0]['error'] if runs else 'no run'})
    rep = sorted(ok, key=lambda r: r['img_s'])[(len(ok) - 1) // 2]
    out = {**rep, 'kind': kind, 'img_s': statistics.median(r['img_s'] for r in ok), 'runs': [r['img_s'] for r in ok], **extra}
    if all(r.get('cpu_ms_per_img') is not None for r in ok):
        out['cpu_ms_per_img'] = statistics.median(r['cpu_ms_per_img'] for r in ok); out['cpu_runs'] = [r['cpu_ms_per_img'] for r in ok]
    return record(ctx, out)


def loop_check(ctx: Ctx, depth: int, repeats: int) -> None:
    """CPU goal: the kit's loop (full recipe; bare learner) against a plain hand-written loop over the same data
    path, precision, batch and accumulation, interleaved `repeats` times; with the real model, and with a
    width-8 twin of it whose arithmetic is negligible, so the CPU time left is the loop's own."""
    a, base = ctx.args, kit_default(ctx.device, ctx.args.compile)
    n_b = len(ctx.train_rows) // ctx.bs
    threads = torch.get_num_threads()
    if a.loop_threads: torch.set_num_threads(a.loop_threads)   # 1 thread: no OpenMP spin-waiting inflates the CPU time
    try: _loop_check(ctx, depth, repeats, a, base, n_b)
    finally: torch.set_num_threads(threads)


def _loop_check(ctx, depth, repeats, a, base, n_b) -> None:
    for model_name, model_fn, epochs in (('model', None, a.epochs), ('width-8 twin', tiny_model, a.overhead_epochs)):
        variants = [('plain hand-written loop', lambda: plain_loop(ctx, depth, base.amp, base.channels_last, base.loader, base.cudnn_benchmark,
                                                                   model_fn=model_fn, warmup=n_b, timed=n_b * epochs)),
                    ('kit, bare learner', lambda: kit(ctx, depth, dataclasses.replace(base, recipe='bare'), model_fn=model_fn, epochs=epochs)),
                    ('kit, full recipe', lambda: kit(ctx, depth, base, model_fn=model_fn, epochs=epochs))]
        runs = {name: [] for name, _ in variants}
        for rep in range(repeats):
            for name, fn in variants:
                runs[name].append(guarded(ctx, 'loop_run', depth, fn, what=f'{name} ({model_name}) #{rep + 1}'))
        ref = None
        for name, _ in variants:
            r = summarise(ctx, 'loop_check', depth, runs[name], what=name, model=model_name, threads=torch.get_num_threads())
            if r is None or r.get('error'): continue
            r['cpu_ms_per_batch'] = r['cpu_ms_per_img'] * ctx.bs if r.get('cpu_ms_per_img') is not None else None
            if ref is None: ref = r
            r['vs_plain'] = r['img_s'] / ref['img_s']
            if r.get('cpu_ms_per_batch') is not None and ref.get('cpu_ms_per_batch'):
                r['cpu_vs_plain'] = r['cpu_ms_per_batch'] / ref['cpu_ms_per_batch']
                r['cpu_extra_ms_per_batch'] = r['cpu_ms_per_batch'] - ref['cpu_ms_per_batch']
        if a.profile and model_fn is not None:
            guarded(ctx, 'profile', depth, lambda: profile_kit(ctx, depth, base, model_fn, epochs), what='kit, full recipe (width-8 twin)')


def profile_kit(ctx: Ctx, depth: int, s: Setting, model_fn, epochs: int) -> dict:
    "cProfile of one kit fit; the brainmri functions with the most cumulative time, in ms per training batch."
    import cProfile, pstats
    pr = cProfile.Profile()
    pr.enable()
    try: kit(ctx, depth, s, model_fn=model_fn, epochs=epochs)
    finally: pr.disable()
    st = pstats.Stats(pr)
    batches = (len(ctx.train_rows) // ctx.bs) * (1 + epochs)
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        if '/brainmri/' in fn or fn.endswith('train_throughput.py'):
            rows.append((ct, f'{Path(fn).name}:{line} {name}', nc))
    rows.sort(reverse=True)
    top = [dict(where=w, calls=n, ms_per_batch=round(1000 * ct / batches, 2)) for ct, w, n in rows[:15]]
    return dict(settings=s.label(), img_s=float('nan'), images=0, seconds=0, batches=batches, top=top)


def main(argv=None) -> int:
    global ARGS, ENV, FLOPS
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--device', default='auto')
    p.add_argument('--depths', type=int, nargs='+', default=[1, 2])
    p.add_argument('--img-size', type=int, default=None, help='default 224 on CUDA, 96 on the CPU')
    p.add_argument('--batch-size', type=int, default=None, help='default 64 on CUDA, 16 on the CPU')
    p.add_argument('--channels', type=int, default=1, choices=(1, 3))
    p.add_argument('--steps', type=int, default=None, help='training batches per epoch (a seeded subset of the train split); 0: the whole split. Default 0 on CUDA, 4 on the CPU')
    p.add_argument('--epochs', type=int, default=None, help='timed epochs of the kit loop after one warm-up epoch (default 2 on CUDA, 1 on the CPU)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps of (a), (c) and the plain loop (default 10 on CUDA, 2 on the CPU)')
    p.add_argument('--timed-steps', type=int, default=None, help='timed steps of (a), (c) and plain (default: as many images as the kit times)')
    p.add_argument('--val-images', type=int, default=None, help='validation images per epoch (default: the whole val split on CUDA, 32 on the CPU)')
    p.add_argument('--grad-accum', type=int, default=4)
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers (default min(8, CPUs) on CUDA, 2 on the CPU)')
    p.add_argument('--compile', choices=('auto', 'on', 'off'), default='auto', help='torch.compile in the ceiling and the kit default (auto: on for CUDA)')
    p.add_argument('--ablations', nargs='*', default=None, help="keys to run (compile cudnn_benchmark loader eval_every fused recipe channels_last amp), 'all' or 'none'")
    p.add_argument('--ablation-depth', type=int, default=None, help='default 2 on CUDA, 1 on the CPU')
    p.add_argument('--loop-check', type=int, default=None, metavar='REPEATS', help='CPU goal: interleaved kit-vs-plain repeats (default 3 on the CPU, 0 on CUDA)')
    p.add_argument('--full-run', action='store_true', help='time full runs (brainmri.run.run_training) instead of the table')
    p.add_argument('--full-run-configs', nargs='*', default=['default', 'compile=True'],
                   help="TrainConfig overrides per run: 'default' or comma-separated key=value (python literals)")
    p.add_argument('--keep-runs', action='store_true')
    p.add_argument('--data', default=None, help='a prepared store or an image folder (default: ../shared/data/figshare-jpg, else data/sample)')
    p.add_argument('--store', default=None, help='where to prepare --data (default: a temp folder)')
    p.add_argument('--prep-size', type=int, default=256)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default 2 on the CPU)')
    p.add_argument('--max-seconds', type=float, default=60.0, help='cap on the timed part of one measurement')
    p.add_argument('--deadline', type=float, default=None, help='seconds from the start after which no new measurement starts')
    p.add_argument('--min-left', type=float, default=20.0, help='with --deadline: skip a measurement when fewer seconds are left')
    p.add_argument('--json', default=None, help='write results here (updated after every measurement)')
    p.add_argument('--out', default=str(ROOT / 'docs' / 'benchmarks.md'), help='markdown file whose "## Training throughput" section gets this device\'s block')
    p.add_argument('--md', default=None, help='also write the block alone to this file')
    p.add_argument('--no-write', action='store_true', help='do not touch --out')
    p.add_argument('--title', default=None, help='heading of this device\'s block')
    p.add_argument('--render', nargs='+', default=None, metavar='JSON', help='only (re)write the docs block from saved results JSON files (one device; results are concatenated)')
    p.add_argument('--repeats', type=int, default=None, help='interleaved repeats of the table and of the ablation rounds (medians; default 1 on CUDA, 3 on the CPU)')
    p.add_argument('--overhead-epochs', type=int, default=6, help='timed epochs of the width-8 twin in the loop check')
    p.add_argument('--loop-threads', type=int, default=1, help='torch threads during the loop check (0: leave as is)')
    p.add_argument('--profile', action='store_true', help='loop check: also cProfile the kit with the width-8 twin')
    p.add_argument('--sync-audit', action='store_true', help='CUDA: count host-device synchronisations per batch, by source line')
    p.add_argument('--no-main', action='store_true', help='skip the (a)/(b)/(c) table (ablations and the loop check still run, with their own reference)')
    p.add_argument('--quiet-fit', action='store_true', help="send the learner's per-epoch lines to stderr")
    a = p.parse_args(argv)
    ARGS = a

    if a.render:
        parts = [json.loads(Path(f).read_text()) for f in a.render]
        data = dict(parts[0])
        data['results'] = [r for d in parts for r in d['results']]
        data['flops'] = {k: v for d in parts for k, v in d.get('flops', {}).items()}
        data['command'] = ' ; '.join(dict.fromkeys(d['command'] for d in parts))
        block = markdown(data)
        print(block)
        if a.md: Path(a.md).write_text(block)
        if not a.no_write: write_section(Path(a.out), block_key(data['env']), block)
        return 0

    device = get_device(a.device)
    cuda = device.type == 'cuda'
    if a.threads or not cuda: torch.set_num_threads(a.threads or 2)
    d = lambda v, gpu, cpu: v if v is not None else (gpu if cuda else cpu)
    a.img_size, a.batch_size = d(a.img_size, 224, 96), d(a.batch_size, 64, 16)
    a.steps, a.epochs, a.warmup = d(a.steps, 0, 4), d(a.epochs, 2, 1), d(a.warmup, 10, 2)
    a.val_images = d(a.val_images, 0, 32)
    a.workers = d(a.workers, min(8, os.cpu_count() or 1), 2)
    a.ablation_depth = d(a.ablation_depth, 2, 1)
    a.loop_check = d(a.loop_check, 0, 3)
    a.repeats = d(a.repeats, 1, 3)
    if cuda: torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    ENV = environment(device)
    work = Path(tempfile.mkdtemp(prefix='brainmri-bench-'))
    ctx = Ctx(args=a, device=device, work=work)
    print(f"{ENV['device']} | torch {ENV['torch']} | {a.img_size} px, batch {a.batch_size}", flush=True)
    try:
        prepare_data(ctx)
        FLOPS = {}
        for dep in sorted(set(a.depths) | {a.ablation_depth}):
            with contextlib.suppress(Exception): FLOPS[dep] = flops_per_image(ctx, dep)
        if a.timed_steps is None: a.timed_steps = max(1, (len(ctx.train_rows) // a.batch_size) * a.epochs)
        if a.full_run:
            for spec in a.full_run_configs:
                ov = {} if spec in ('default', '') else {k: ast.literal_eval(v) for k, v in (kv.split('=', 1) for kv in spec.split(','))}
                guarded(ctx, 'full_run', None, lambda: full_run(ctx, ov, spec), what=spec)
        else:
            base = kit_default(device, a.compile)
            best = Setting(amp=base.amp, channels_last=cuda or base.channels_last, compile=base.compile, cudnn_benchmark=cuda, fused=cuda)
            R = a.repeats
            for dep in ([] if a.no_main else a.depths):
                print(f'depth {dep} ({FLOPS.get(dep, 0) / 1e9:.1f} GFLOP per image per training step)', flush=True)
                fns = (('ceiling', lambda: ceiling(ctx, dep, best)), ('kit', lambda: kit(ctx, dep, base)), ('original', lambda: original(ctx, dep)))
                runs = {k: [] for k, _ in fns}
                for rep in range(R):
                    for kind, fn in fns: runs[kind].append(guarded(ctx, kind if R == 1 else kind + '_run', dep, fn))
                if R > 1:
                    for kind, _ in fns: summarise(ctx, kind, dep, runs[kind])
            if a.sync_audit and cuda: guarded(ctx, 'sync_audit', 1, lambda: sync_audit(ctx))
            if a.loop_check: loop_check(ctx, a.ablation_depth, a.loop_check)
            keys = a.ablations
            todo = ablations_for(device, base)
            if keys is None or keys == ['all']: pass
            elif keys == ['none'] or keys == []: todo = []
            else: todo = [t for t in todo if t[0] in keys]
            dep = a.ablation_depth
            if todo:   # rounds: the default, then each change; each change is compared with its own round's default
                refs, var_runs, ratios, eratios = [], [[] for _ in todo], [[] for _ in todo], [[] for _ in todo]
                for rep in range(R):
                    ref = guarded(ctx, 'ablation_ref_run', dep, lambda: kit(ctx, dep, base), what=f'default #{rep + 1}')
                    refs.append(ref)
                    for i, (key, what, st) in enumerate(todo):
                        r = guarded(ctx, 'ablation_run', dep, lambda: kit(ctx, dep, st), what=f'{what} #{rep + 1}', key=key)
                        var_runs[i].append(r)
                        if not r.get('error') and not ref.get('error'):
                            ratios[i].append(r['img_s'] / ref['img_s'])
                            if r.get('epoch_img_s') and ref.get('epoch_img_s'): eratios[i].append(r['epoch_img_s'] / ref['epoch_img_s'])
                summarise(ctx, 'ablation_ref', dep, refs, what='default')
                for i, (key, what, st) in enumerate(todo):
                    summarise(ctx, 'ablation', dep, var_runs[i], what=what, key=key,
                              vs_ref=statistics.median(ratios[i]) if ratios[i] else None, ratios=ratios[i],
                              epoch_vs_ref=statistics.median(eratios[i]) if eratios[i] else None, epoch_ratios=eratios[i])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = results_dict(ctx)
    if a.json: save_results(ctx, Path(a.json))
    block = markdown(data)
    print('\n' + block)
    if a.md: Path(a.md).write_text(block)
    if not a.no_write: write_section(Path(a.out), block_key(ENV), block)
    return 0


ARGS = ENV = None
FLOPS: dict = {}

if __name__ == '__main__':
    sys.exit(main())
