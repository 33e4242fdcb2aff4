"""How fast this machine does the quick start's arithmetic (docs/benchmarks.md, "The quick start's time").

The quick start's wall time differs about 3x between two 2-core machines of this workplace. This measures why on
the machine it runs on: one training step of the `sample` preset's model as it trains (blocks 1-2 open, at the
preset's size or `--img-size`, batch 16, fp32, AdamW), its FLOPs (`brainmri.model.count_flops`, torch's flop_counter), and the same cores on a
1024x1024 fp32 matmul, with the CPU's family, model and vector extensions; where the CPU does bf16 natively, the
step under bf16 autocast too (`--amp bf16`). The result goes to a JSON file.

    python bench/quickstart_step.py --json bench/results/quickstart_step_zen3.json
    python bench/quickstart_step.py --img-size 32      # the preset's size until the tenth session
"""
import argparse, json, os, platform, re, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import brainmri.run as run
from brainmri.core import atomic_write
from brainmri.model import count_flops


def cpu_info() -> dict:
    "The CPU as /proc/cpuinfo names it: vendor string, family/model, and which wide vector units it has."
    text = Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else ''
    field = lambda k: (m.group(1).strip() if (m := re.search(rf'^{k}\s*:\s*(.+)$', text, re.M)) else None)
    flags = set((field('flags') or '').split())
    return dict(model_name=field('model name') or platform.processor(), family=field('cpu family'), model=field('model'),
                mhz=field('cpu MHz'), avx2='avx2' in flags, avx512f='avx512f' in flags, amx='amx_tile' in flags,
                torch_capability=torch.backends.cpu.get_cpu_capability())


def seconds_per_call(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup): fn()
    t = time.perf_counter()
    for _ in range(reps): fn()
    return (time.perf_counter() - t) / reps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--threads', type=int, nargs='+', default=[2, 1])
    p.add_argument('--steps', type=int, default=20, help='timed training steps per thread count')
    p.add_argument('--img-size', type=int, default=None, help="side of the input (default: the preset's)")
    p.add_argument('--json', default=None)
    a = p.parse_args(argv)

    cfg = run.config_with_preset('sample', data_dir='unused', run_dir='unused', **({'img_size': a.img_size} if a.img_size else {}))
    model = run.build_model(cfg)
    model.freeze_blocks_until(2)          # the preset opens block 2 at epoch 0 (open_block2_at=0)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr)
    x = torch.randn(cfg.batch_size, cfg.channels, cfg.img_size, cfg.img_size)
    y = torch.randint(0, 3, (cfg.batch_size,))
    def step(bf16: bool = False):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):   # the learner's amp='bf16' does the same
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    # bf16 autocast pays only where the CPU does bf16 natively (AVX512-BF16 or AMX); elsewhere it is emulated
    native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    step_flop = count_flops(model, cfg.img_size, train_step=True) * cfg.batch_size   # count_flops: FLOPs per image
    a_ = torch.randn(1024, 1024); b_ = torch.randn(1024, 1024)

    out = dict(cpu=cpu_info(), native_bf16=native_bf16, torch=torch.__version__, python=platform.python_version(), cpus=os.cpu_count(),
               load_average=[round(v, 2) for v in os.getloadavg()], date=time.strftime('%Y-%m-%dT%H:%M:%S'),
               img_size=cfg.img_size, batch_size=cfg.batch_size, train_step_gflop=round(step_flop / 1e9, 2), threads={})
    for n in a.threads:
        torch.set_num_threads(n)
        s = seconds_per_call(step, 3, a.steps)
        mm = seconds_per_call(lambda: a_ @ b_, 3, 20)
        out['threads'][n] = dict(train_step_ms=round(s * 1e3, 1), train_step_gflops=round(step_flop / s / 1e9, 1),
                                 matmul_gflops=round(2 * 1024**3 / mm / 1e9, 1))
        print(f"{n} thread(s): training step {s * 1e3:.0f} ms = {step_flop / s / 1e9:.0f} GFLOP/s "
              f"(matmul {2 * 1024**3 / mm / 1e9:.0f} GFLOP/s); step {step_flop / 1e9:.1f} GFLOP")
        if native_bf16:
            sb = seconds_per_call(lambda: step(bf16=True), 3, a.steps)
            out['threads'][n]['train_step_bf16_ms'] = round(sb * 1e3, 1)
            print(f"{n} thread(s): the same step under bf16 autocast {sb * 1e3:.0f} ms ({s / sb:.2f}x)")
    print(json.dumps(out['cpu']))
    if a.json:
        with atomic_write(Path(a.json), 'w') as fh: json.dump(out, fh, indent=1)
    return out


if __name__ == '__main__': main()
