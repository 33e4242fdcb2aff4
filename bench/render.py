#!/usr/bin/env python
"""Render the results files of bench/throughput.py, bench/loop_check.py and bench/full_run.py as one machine's block
in the "## Training throughput" section of docs/benchmarks.md (between its markers; the text around them stays).

    python bench/render.py results/*.json                 # print the block and write it into docs/benchmarks.md
    python bench/render.py a.json b.json --no-write       # print only
"""
from __future__ import annotations
import argparse, json, math, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from brainmri.core import atomic_write

SECTION = '## Training throughput'

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
    'channels_last': dict(cuda='+10–30 % at depth 2 (NHWC tensor-core convs without layout transposes), less at depth 1 (1-channel input).',
                          cpu='±10 % (oneDNN likes NHWC convs, GroupNorm on NHWC is slower).'),
    'amp': dict(cuda='fp16 ≈ bf16 (same tensor-core kernels) minus a few % for GradScaler; fp32 (TF32 convs) 1.5–2× slower.',
                cpu='slower than fp32: no AMX here, and autocast adds casts around every GroupNorm.'),
}


def predicted(key: str | None, device: str) -> str:
    p = PREDICTIONS.get(key or '', {})
    return p.get('cpu' if device.startswith('CPU') else 'cuda', '')


def fmt(x, d=1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)): return '—'
    return f'{x:,.{d}f}'


def markdown(data: dict) -> str:
    "The markdown block of one machine's results (the table, loop check, profile, ablations, sync audit, full runs)."
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


def merge(parts: list[dict]) -> dict:
    "One machine's results from several files: the first file's header, every file's results, FLOP counts and commands."
    data = dict(parts[0])
    data['results'] = [r for d in parts for r in d['results']]
    data['flops'] = {k: v for d in parts for k, v in d.get('flops', {}).items()}
    data['command'] = ' ; '.join(dict.fromkeys(d['command'] for d in parts))
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('results', nargs='+', help='results JSON files of one machine')
    p.add_argument('--out', default=str(ROOT / 'docs' / 'benchmarks.md'), help='the markdown file whose section gets the block')
    p.add_argument('--md', default=None, help='also write the block alone to this file')
    p.add_argument('--title', default=None, help="the block's heading (default: the first file's)")
    p.add_argument('--no-write', action='store_true', help='print only')
    a = p.parse_args(argv)
    data = merge([json.loads(Path(f).read_text()) for f in a.results])
    if a.title: data['title'] = a.title
    block = markdown(data)
    print(block)
    if a.md: Path(a.md).write_text(block)
    if not a.no_write: write_section(Path(a.out), block_key(data['env']), block)
    return 0


if __name__ == '__main__':
    sys.exit(main())
