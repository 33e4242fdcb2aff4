"""The Kaggle four-class release end to end, on small generated fixtures in both of its spellings: prepare, train a
four-class model, evaluate, predict; and a three-class figshare model scored on the Kaggle store's shared classes."""
import hashlib, json, os, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
import torch
from conftest import ROOT, bin_path

from brainmri.core import BrainMRIError, load_json
from brainmri.data import CLASSES, load_store, prepare, write_synthetic_folders
from brainmri.evaluate import load_model_from_checkpoint, predict_images
from brainmri.run import TrainConfig, build_data, get_store, run_training

K4 = ('glioma', 'meningioma', 'notumor', 'pituitary')
OLD_NAMES = ('glioma_tumor', 'meningioma_tumor', 'no_tumor', 'pituitary_tumor')
PER_CLASS = 15   # 10 in Training, 5 in Testing

def cli(*cmd, cwd, ok=True):
    r = subprocess.run([bin_path(cmd[0]), *map(str, cmd[1:])], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, 'MPLBACKEND': 'Agg', 'COLUMNS': '200'}, timeout=600)
    if ok: assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r

def tiny_config(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, img_size=32, prep_size=48, batch_size=8, grad_accum=1, workers=0, n_boot=20,
                                 device='cpu', swa=False), **kw})

def sha(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()

@pytest.fixture(scope='module')
def kaggle(tmp_path_factory):
    "Both spellings of the release, raw, and the new one prepared."
    tmp = tmp_path_factory.mktemp('kaggle')
    new = write_synthetic_folders(tmp / 'kaggle-new', K4, per_class=PER_CLASS, size=48)
    old = write_synthetic_folders(tmp / 'kaggle-old', OLD_NAMES, per_class=PER_CLASS, size=48)
    return tmp, new, old

@pytest.fixture(scope='module')
def run4(kaggle):
    "A four-class run trained (2 epochs) from the raw Kaggle folders, evaluated on its Testing half."
    tmp, new, _ = kaggle
    return run_training(tiny_config(data_dir=str(new), store_dir=str(tmp / 'store-new'), run_dir=str(tmp / 'run4')))

@pytest.fixture(scope='module')
def run3(kaggle):
    "A three-class run trained on a few real figshare slices (the bundled sample), evaluated on its own test split."
    tmp = kaggle[0]
    src = tmp / 'figshare'
    for c in CLASSES:
        (src / c).mkdir(parents=True)
        for f in sorted((ROOT / 'data' / 'sample' / c).glob('*.jpg'))[:20]: shutil.copy(f, src / c / f.name)
    return run_training(tiny_config(data_dir=str(src), store_dir=str(tmp / 'store-fs'), run_dir=str(tmp / 'run3'), epochs=1))

def test_both_spellings_prepare_the_same_four_classes(kaggle):
    tmp, new, old = kaggle
    for src, dest in ((new, 'p-new'), (old, 'p-old')):
        st = load_store(prepare(src, tmp / dest, size=32, quiet=True))
        assert st.classes == K4 and st.meta['counts'] == {c: PER_CLASS for c in K4}
        assert st.labels.tolist() == [K4.index(l) for l in st.index.label]
        assert st.index.split_hint.value_counts().to_dict() == {'train': 40, 'test': 20}

def test_four_class_run_follows_the_store(run4, kaggle):
    tmp = kaggle[0]
    assert load_json(run4 / 'params.json')['classes'] == list(K4)
    model, ckpt = load_model_from_checkpoint(run4 / 'best.pt')
    assert ckpt['classes'] == list(K4) and ckpt['model_config']['n_classes'] == 4
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    data = build_data(tiny_config(data_dir=str(tmp / 'store-new')), load_store(tmp / 'store-new'))
    assert data.class_weights.shape == (4,) and len(data.class_counts) == 4 and (data.class_counts > 0).all()
    m = load_json(run4 / 'metrics.json')
    assert list(m['best']['test']['per_class']) == list(K4)
    assert np.array(m['best']['test']['confusion_matrix']).shape == (4, 4)
    assert m['n']['test'] == 20   # the Testing half, whole
    audit = m['best']['audit']   # no boxes in the Kaggle release, and the no-tumour images are counted apart
    assert audit['available'] is False and audit['n_no_tumour'] == 5 and audit['n_without_box'] == 15
    for f in m['best']['plots'].values(): assert (run4 / f).read_bytes()[:4] == b'\x89PNG'

def test_four_class_predict(run4, kaggle):
    new = kaggle[1]
    imgs = sorted((new / 'Testing' / 'notumor').glob('*.jpg'))[:2]
    for r in predict_images(imgs, run4 / 'best.pt', device='cpu'):
        assert list(r['probs']) == list(K4) and abs(sum(r['probs'].values()) - 1) < 1e-4
        assert r['label'] == max(r['probs'], key=r['probs'].get)
    r = cli('brainmri_predict', run4 / 'best.pt', imgs[0], '--json', '--device', 'cpu', cwd=kaggle[0])
    assert list(json.loads(r.stdout.strip().splitlines()[-1])['probs']) == list(K4)

def test_explicit_classes_refuse_other_data(run4, kaggle):
    tmp, new, old = kaggle
    r = cli('brainmri_prepare', old, tmp / 'p3', '--size', 32, '--classes', 'glioma,meningioma,pituitary', cwd=tmp, ok=False)
    assert r.returncode == 2 and "unknown label 'no_tumor': class folders must be glioma, meningioma, pituitary" in r.stdout + r.stderr
    with pytest.raises(BrainMRIError, match='not classes=glioma,meningioma,pituitary'):
        get_store(tiny_config(data_dir=str(tmp / 'store-new'), classes='glioma,meningioma,pituitary'))
    assert get_store(tiny_config(data_dir=str(tmp / 'store-new'), classes='glioma,meningioma,no_tumour,pituitary')).classes == K4

def test_figshare_model_on_the_kaggle_store(run3, run4, kaggle):
    tmp, _, old = kaggle
    before = {p.name: sha(p) for p in run3.iterdir() if p.is_file()}   # checkpoints, metrics.json, plots
    store_old = prepare(old, tmp / 'store-old', size=48, quiet=True)
    r = cli('brainmri_evaluate', run3, '--data-dir', tmp / 'store-new', '--split', 'all', '--n-boot', 10, '--device', 'cpu', cwd=tmp)
    assert 'best: all accuracy' in r.stdout and 'left out 15 notumor' in ' '.join(r.stdout.split())
    assert {p.name: sha(p) for p in run3.iterdir() if p.is_file()} == before
    m = load_json(run3 / 'external' / 'store-new' / 'metrics.json')
    assert m['classes'] == m['shared_classes'] == list(CLASSES) and m['left_out'] == {'notumor': 15} and m['n_left_out'] == 15
    assert m['best']['all']['n'] == 45 and list(m['best']['all']['per_class']) == list(CLASSES)
    assert [v['support'] for v in m['best']['all']['per_class'].values()] == [15, 15, 15]
    assert m['best']['temperature'] == load_json(run3 / 'metrics.json')['best']['temperature']
    # the older spelling is another store, reported in its own folder
    from brainmri.evaluate import evaluate_run
    m_old = evaluate_run(run3, store_old, split='all', n_boot=0, device='cpu', n_cam=4)
    assert m_old['left_out'] == {'notumor': 15} and (run3 / 'external' / 'store-old' / 'metrics.json').exists()
    assert m_old['best']['all']['confusion_matrix'] == m['best']['all']['confusion_matrix']   # same pixels, same names
    assert {p.name: sha(p) for p in run3.iterdir() if p.is_file()} == before
