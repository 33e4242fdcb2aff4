#!/usr/bin/env python
"""Time the augmentation paths and record the result in docs/benchmarks.md under "## Augmentation".

  python bench/bench_augment.py --machine "CPU, 2 cores (dev box)"

Per-sample times are for one 256×256 uint8 slice → 1×224×224 float tensor on ONE core
(cv2.setNumThreads(1), torch.set_num_threads(1)), as in a DataLoader worker. Each measured call
includes the per-sample reseed from (seed, epoch, idx). Budget: under 1 ms per sample.
Images: the repo's data/sample JPEGs, else ../shared/data/figshare-jpg, else synthetic noise.
Rerunning with the same --machine replaces that machine's block; other blocks stay.
"""
from __future__ import annotations
import argparse, datetime, os, platform, time
from pathlib import Path

import cv2
import numpy as np
import torch

from brainmri.augment import AugmentConfig, GPUPhaseAugment, PhaseParams, PhaseTransform, build_phase_pipeline
from brainmri.core import atomic_write, repo_root

SECTION = '## Augmentation'


def load_images(n: int = 64, size: int = 256) -> tuple[list[np.ndarray], str]:
    "Up to n grayscale slices resized to size×size, and a word on where they came from."
    # The shared release is 256 px like the prepared store; the bundled sample (128 px) is upscaled.
    for folder in (repo_root().parent / 'shared' / 'data' / 'figshare-jpg', repo_root() / 'data' / 'sample'):
        files = sorted(folder.glob('*/*.jpg'))
        if files:
            step = max(1, len(files) // n)
            imgs = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files[::step][:n]]
            return [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in imgs], f'{len(imgs)} JPEGs from {folder.name}'
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)], f'{n} synthetic noise images'


def per_sample_ms(fn, n_calls: int, repeats: int = 7) -> tuple[float, float]:
    """(wall, CPU) ms per call of fn(i), each the best of `repeats` runs of n_calls calls.

    The dev box is shared: other processes stretch wall time, while this process's CPU time
    (one thread) stays close to the cost of the work itself. Best-of-runs drops the disturbed runs."""
    for i in range(20): fn(i)  # warm-up
    wall, cpu = [], []
    for r in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for i in range(n_calls): fn(r * n_calls + i)
        wall.append((time.perf_counter() - t) / n_calls * 1e3); cpu.append((time.process_time() - c) / n_calls * 1e3)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--machine', default=f'CPU, {os.cpu_count()} cores', help='label of this machine in the table')
    ap.add_argument('--calls', type=int, default=400, help='calls per timing run')
    ap.add_argument('--out', default=str(repo_root() / 'docs' / 'benchmarks.md'))
    ap.add_argument('--no-write', action='store_true', help='print only')
    args = ap.parse_args()
    cv2.setNumThreads(1); torch.set_num_threads(1)

    imgs, source = load_images()
    cfg = AugmentConfig()
    rows = []
    tf = PhaseTransform(cfg, seed=0)
    for epoch, label in ((0, 'phase 0 (strong), spec probabilities'), (12, 'phase 1 (mild)'), (45, 'phase 2 (hflip only)')):
        tf.set_epoch(epoch)
        rows.append((f'PhaseTransform, {label}', per_sample_ms(lambda i: tf(imgs[i % len(imgs)], i), args.calls)))
    # Worst case: every phase-0 transform fires on every sample.
    p0 = cfg.phases[0]
    all_on = cfg.with_phase(0, **{f'{n}_p': 1.0 for n in ('rotate', 'rot90', 'flip', 'affine', 'brightness_contrast', 'noise')})
    tf_all = PhaseTransform(all_on, seed=0)
    rows.append(('PhaseTransform, phase 0 with every p = 1 (worst case)', per_sample_ms(lambda i: tf_all(imgs[i % len(imgs)], i), args.calls)))
    # The fixed tail alone, for scale.
    tail = build_phase_pipeline(2, cfg.with_phase(2, hflip_p=0.0))
    rows.append(('Resize + Normalize + ToTensorV2 only', per_sample_ms(lambda i: tail(image=imgs[i % len(imgs)]), args.calls)))
    # Reseeding: ours (in place) against albumentations' Compose.set_random_seed.
    pipe0 = build_phase_pipeline(0, cfg)
    rows.append(('reseed: PhaseTransform (in place, per sample)', per_sample_ms(lambda i: tf._reseed(0, i), args.calls * 5)))
    rows.append(('reseed: albumentations Compose.set_random_seed', per_sample_ms(lambda i: pipe0.set_random_seed(i), args.calls)))
    # The batched torch path on this machine's CPU (one thread), batch 64.
    batch = torch.from_numpy(np.stack(imgs[:64]))[:, None]
    gpu_aug = GPUPhaseAugment(cfg, seed=0)
    rows.append(('GPUPhaseAugment on CPU, phase 0, batch 64 (per sample)', tuple(t / len(batch) for t in per_sample_ms(lambda i: gpu_aug(batch), 3, repeats=3))))
    if torch.cuda.is_available():
        dev_batch = batch.to('cuda')
        def run(i):
            gpu_aug(dev_batch); torch.cuda.synchronize()
        rows.append((f'GPUPhaseAugment on {torch.cuda.get_device_name()}, phase 0, batch 64 (per sample; CPU column meaningless)',
                     tuple(t / len(batch) for t in per_sample_ms(run, 20))))

    today = datetime.date.today().isoformat()
    load = f'load average {os.getloadavg()[0]:.1f} at the end' if hasattr(os, 'getloadavg') else ''
    block = [f'### {args.machine}', '',
             f'{today}; one thread (cv2 and torch); 256×256 uint8 → 1×224×224 float; {source}; '
             f'torch {torch.__version__}, albumentations {__import__("albumentations").__version__}, '
             f'Python {platform.python_version()}; {load}; best of 7 runs. Budget: under 1 ms per sample. '
             f'Reproduce: `python bench/bench_augment.py --machine "{args.machine}"`.', '',
             '| what | wall ms per sample | CPU ms per sample |', '| --- | ---: | ---: |']
    block += [f'| {what} | {wall:.3f} | {cpu:.3f} |' for what, (wall, cpu) in rows]
    text = '\n'.join(block) + '\n'
    print(text)
    if not args.no_write: write_block(Path(args.out), args.machine, text)


def write_block(path: Path, machine: str, block: str) -> None:
    "Put `block` under SECTION in `path`, replacing an earlier block of the same machine."
    lines = path.read_text(encoding='utf-8').splitlines() if path.exists() else ['# Benchmarks', '']
    if SECTION not in lines: lines += ['', SECTION, ''] if lines and lines[-1] else [SECTION, '']
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith('## ')), len(lines))
    section = lines[start:end]
    head = f'### {machine}'
    if head in section:  # drop the old block of this machine, up to the next ### or the section's end
        a = section.index(head)
        b = next((i for i in range(a + 1, len(section)) if section[i].startswith('### ')), len(section))
        section = section[:a] + section[b:]
    while section and not section[-1].strip(): section.pop()
    section = (section or ['']) + ([''] if section and section[-1].strip() else []) + block.rstrip('\n').split('\n') + ['']
    new = lines[:start] + section + lines[end:]
    with atomic_write(path, 'w') as f: f.write('\n'.join(new).rstrip('\n') + '\n')


if __name__ == '__main__':
    main()
