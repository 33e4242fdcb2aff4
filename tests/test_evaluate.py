"""Evaluation end to end: checkpoints written by the real Learner (best.pt) and SWACallback (swa.pt) after a
one-epoch fit of a tiny model on real slices, then evaluate_run, the papermill run notebook, predict_images,
calibration on a real model, the occlusion audit's pixels, and bad input."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, bin_path
from brainmri.core import BrainMRIError, load_json, save_json
from brainmri.data import CLASSES, CustomTumorDataset, load_store, make_loader, prepare, split_by_group
from brainmri.model import create_model
from brainmri.learner import Learner
from brainmri.callbacks import SWACallback
from brainmri.augment import eval_transform
from brainmri.evaluate import (OccludedTransform, box_pixels, calibrated_probs, evaluate_run, load_temperature,
                               load_model_from_checkpoint, predict_images, predict_logits, read_checkpoint,
                               summary_table, temperature_nll, fit_temperature)

IMG, VAL_FRAC, TEST_FRAC, SEED = 32, 0.25, 0.25, 0


@pytest.fixture(scope='module')
def real_store(tmp_path_factory, shared_data):
    "~60 real slices: whole groups (cut to 5 slices) of each class, prepared at 64 px."
    tmp = tmp_path_factory.mktemp('evaldata')
    m = pd.read_csv(shared_data / 'manifest.csv')
    keep = [g for c in CLASSES for g in sorted(m[m.label == c].group.unique())[:5]]
    sub = m[m.group.isin(keep)].groupby('group').head(5)
    for f in sub.file: (tmp / 'src' / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(shared_data / f, tmp / 'src' / f)
    sub.to_csv(tmp / 'src' / 'manifest.csv', index=False)
    return prepare(tmp / 'src', tmp / 'store', size=64, quiet=True)


def tiny_model():
    torch.manual_seed(0)
    return create_model(widths=((8, 8), (8, 8, 8), (8, 8, 8)), gn_groups=4, head_width=16, n_open=2)


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, real_store):
    "A run folder as training leaves it: best.pt from the Learner, swa.pt from SWACallback, params.json."
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp('run')
    store = load_store(real_store)
    sp = split_by_group(store, VAL_FRAC, TEST_FRAC, SEED)
    tf = eval_transform(IMG)
    train_dl = make_loader(CustomTumorDataset(store, sp['train'], tf), 8, train=True, workers=0)
    valid_dl = make_loader(CustomTumorDataset(store, sp['val'], tf), 16, train=False, workers=0)
    learn = Learner(tiny_model(), train_dl, valid_dl, lr=3e-3, grad_accum=1, device='cpu', run_dir=run, seed=0,
                    cbs=[SWACallback(swa_start=0, anneal_epochs=0)], progress_bar=False)
    learn.fit(2)
    save_json({'data': {'store': str(real_store), 'img_size': IMG, 'resize': 'area', 'val_frac': VAL_FRAC, 'test_frac': TEST_FRAC},
               'seed': SEED}, run / 'params.json')
    assert (run / 'best.pt').exists() and (run / 'swa.pt').exists()
    return run


def test_evaluate_run_writes_metrics_and_plots(trained_run, real_store):
    ckpts = {p.name: p.read_bytes() for p in trained_run.glob('*.pt')}
    m = evaluate_run(trained_run, n_boot=100, device='cpu', n_cam=6, batch_size=16)
    assert {p.name: p.read_bytes() for p in trained_run.glob('*.pt')} == ckpts   # evaluation leaves the checkpoints byte-identical
    saved = load_json(trained_run / 'metrics.json')
    assert saved == json.loads(json.dumps(m, default=str))   # what is returned is what is written
    store = load_store(real_store)
    sp = split_by_group(store, VAL_FRAC, TEST_FRAC, SEED)
    assert saved['n'] == {k: len(v) for k, v in sp.items()}     # the training split, from params.json
    assert saved['settings_fallbacks'] == ['channels', 'mean', 'std']
    for name in ('best', 'swa'):
        r = saved[name]
        for k in ('accuracy', 'macro_f1', 'ece', 'ece_uncalibrated', 'nll', 'nll_uncalibrated', 'per_class',
                  'confusion_matrix', 'roc_auc', 'ci', 'n_groups'):
            assert k in r['test'], (name, k)
        assert r['test']['n'] == len(sp['test']) and np.sum(r['test']['confusion_matrix']) == len(sp['test'])
        lo, hi = r['test']['ci']['accuracy']
        assert lo <= r['test']['accuracy'] <= hi
        # the temperature lowers the validation NLL it was fitted on, and sits in calibration.json beside the checkpoint
        assert r['val']['nll'] <= r['val']['nll_uncalibrated'] + 1e-9
        assert load_temperature(trained_run / f'{name}.pt') == pytest.approx(r['temperature'])
        a = r['audit']
        assert a['available'] and a['n'] == len(sp['test'])
        for k in ('accuracy', 'acc_tumour_hidden', 'acc_tumour_only', 'acc_control_hidden', 'pointing_game', 'box_area_frac'):
            assert 0 <= a[k] <= 1, k
        for f in r['plots'].values(): assert (trained_run / f).read_bytes()[:4] == b'\x89PNG'
    assert list(summary_table(saved).index) == ['best', 'swa']
    # best.pt still loads in the learner after evaluation
    assert 'opt' in read_checkpoint(trained_run / 'best.pt') and 'cbs' in read_checkpoint(trained_run / 'best.pt')


def test_calibration_on_a_real_model(trained_run, real_store):
    "The fitted temperature gives a lower validation NLL than T = 1 on a really trained model's logits."
    model, _ = load_model_from_checkpoint(trained_run / 'best.pt', classes=CLASSES)
    store = load_store(real_store)
    sp = split_by_group(store, VAL_FRAC, TEST_FRAC, SEED)
    logits, y = predict_logits(model, CustomTumorDataset(store, sp['val'], eval_transform(IMG)), 'cpu')
    t = fit_temperature(logits, y)
    assert temperature_nll(logits, y, t) <= temperature_nll(logits, y, 1.0)
    if abs(t - 1) > 0.05: assert temperature_nll(logits, y, t) < temperature_nll(logits, y, 1.0) - 1e-6
    # TTA logits have one slice per view, and hflip really is a different view
    lt, _ = predict_logits(model, CustomTumorDataset(store, sp['val'], eval_transform(IMG)), 'cpu', tta='hv')
    assert lt.shape[0] == 3 and torch.allclose(lt[0], logits[0], atol=1e-5) and not torch.allclose(lt[1], lt[0])


def test_occluded_dataset_pixels(real_store):
    "Through the dataset, the box really holds the median and the rest is untouched (and the inverse)."
    store = load_store(real_store)
    raw = lambda img, idx: torch.from_numpy(img.astype(np.float32))
    row = int(np.flatnonzero(~np.isnan(store.boxes).any(1))[3])
    r0, r1, c0, c1 = box_pixels(store.boxes[row], (store.size, store.size))
    inside = np.zeros((store.size, store.size), bool); inside[r0:r1, c0:c1] = True
    img, med = store.images[row].astype(np.float32), float(np.median(store.images[row]))
    hidden = CustomTumorDataset(store, [row], OccludedTransform(raw, store.boxes, 'box'))[0][0][0].numpy()
    only = CustomTumorDataset(store, [row], OccludedTransform(raw, store.boxes, 'outside'))[0][0][0].numpy()
    assert inside.sum() > 0 and (hidden[inside] == med).all() and (hidden[~inside] == img[~inside]).all()
    assert (only[~inside] == med).all() and (only[inside] == img[inside]).all()


def test_predict_images(trained_run, real_store, tmp_path):
    files = sorted((Path(real_store).parent / 'src').rglob('*.jpg'))[:4]
    out = predict_images(files, trained_run, device='cpu', cam_dir=tmp_path / 'cams')   # the run folder: calibrated
    assert [r['file'] for r in out] == [str(f) for f in files]
    T = load_temperature(trained_run / 'best.pt')
    model, _ = load_model_from_checkpoint(trained_run / 'best.pt')
    store = load_store(real_store)
    rel = [str(f.relative_to(Path(real_store).parent / 'src')) for f in files]
    rows = [int(np.flatnonzero(store.index.orig_file == r)[0]) for r in rel]
    logits, _ = predict_logits(model, CustomTumorDataset(store, rows, eval_transform(IMG)), 'cpu')
    expect = calibrated_probs(logits, T)
    for r, p in zip(out, expect):
        assert list(r['probs']) == list(CLASSES) and r['label'] == CLASSES[int(p.argmax())]
        np.testing.assert_allclose(list(r['probs'].values()), p, atol=1e-4)
        assert Path(r['cam']).read_bytes()[:4] == b'\x89PNG'
    bad = tmp_path / 'scan.png'; bad.write_bytes(b'\x89PNG broken')
    mixed = predict_images([files[0], bad], trained_run / 'best.pt', device='cpu')   # reported on its own, the other classified
    assert 'label' in mixed[0] and 'scan.png: cannot decode' in mixed[1]['error']


def test_bad_inputs(trained_run, real_store, tmp_path):
    # a checkpoint of another architecture beside best.pt
    run = tmp_path / 'run'; shutil.copytree(trained_run, run)
    torch.manual_seed(0)
    other = create_model(widths=((8, 8), (8, 8, 8), (8, 8, 8)), gn_groups=4, head_width=16, head='concat', n_open=2)
    ck = read_checkpoint(run / 'swa.pt'); ck['model'], ck['model_config'] = other.state_dict(), dict(other.config)
    torch.save(ck, run / 'swa.pt')
    with pytest.raises(BrainMRIError, match=r"swa.pt' is another architecture: head='concat' there"):
        evaluate_run(run, n_boot=0, device='cpu')
    # weights that do not fit their config
    ck['model_config'] = dict(tiny_model().config); torch.save(ck, run / 'swa.pt')
    with pytest.raises(BrainMRIError, match='weights do not fit its model_config'): evaluate_run(run, n_boot=0, device='cpu')
    # a class list other than the data's
    shutil.rmtree(run); shutil.copytree(trained_run, run)
    ck = read_checkpoint(run / 'best.pt'); ck['classes'] = ['pituitary', 'glioma', 'meningioma']; torch.save(ck, run / 'best.pt')
    with pytest.raises(BrainMRIError, match='data_dir=.* holds classes'): evaluate_run(run, n_boot=0, device='cpu')
    with pytest.raises(BrainMRIError, match='trained on classes'): load_model_from_checkpoint(run / 'best.pt', classes=CLASSES)
    # a data dir that is not a prepared store; no data dir at all
    with pytest.raises(BrainMRIError, match='is not a prepared store'):
        evaluate_run(trained_run, data_dir=Path(real_store).parent / 'src', n_boot=0, device='cpu')
    shutil.rmtree(run); shutil.copytree(trained_run, run); (run / 'params.json').unlink()
    with pytest.raises(BrainMRIError, match='data_dir is not set'): evaluate_run(run, n_boot=0, device='cpu')


@pytest.mark.slow
def test_run_notebook_with_papermill(trained_run, tmp_path):
    "nbs/evaluate.ipynb runs under papermill with its parameters and shows the summary."
    out = tmp_path / 'evaluate-out.ipynb'
    # the kernel imports this checkout's brainmri even where it is not pip-installed
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
    subprocess.run([sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / 'evaluate.ipynb'), str(out), '-k', 'python3',
                    '-p', 'run_dir', str(trained_run), '-p', 'n_boot', '20', '-p', 'device', 'cpu', '-p', 'tta', 'True'],
                   check=True, capture_output=True, cwd=ROOT / 'nbs', env=env)
    m = load_json(trained_run / 'metrics.json')
    assert m['tta'] is True and m['n_boot'] == 20
    text = out.read_text()
    assert 'accuracy 95% CI' in text and '**best.pt:**' in text and '**swa.pt:**' in text and 'image/png' in text
