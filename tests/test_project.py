"The nbdev project keeps its promises: brainmri/ is what nbs/ exports, and nbdev_clean keeps papermill's tag."
import configparser, filecmp, json, subprocess
from pathlib import Path
import nbformat
from conftest import ROOT, project_copy, bin_path

def test_settings_keep_parameters_tag():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    assert 'tags' in cfg['DEFAULT']['allowed_cell_metadata_keys'].split()
    assert {'slow', 'gpu', 'browser'} <= set(cfg['DEFAULT']['tst_flags'].split())

def test_exported_package_matches_notebooks(tmp_path):
    clean = project_copy(tmp_path / 'clone')
    subprocess.run([bin_path('nbdev_export')], cwd=clean, check=True, capture_output=True)
    ours = sorted(p.relative_to(ROOT / 'brainmri') for p in (ROOT / 'brainmri').glob('*.py'))
    theirs = sorted(p.relative_to(clean / 'brainmri') for p in (clean / 'brainmri').glob('*.py'))
    assert ours == theirs, f'modules differ: {set(ours) ^ set(theirs)}'
    stale = [str(p) for p in ours if not filecmp.cmp(ROOT / 'brainmri' / p, clean / 'brainmri' / p, shallow=False)]
    assert not stale, f'brainmri/ is out of step with nbs/ for {stale}: run nbdev_export and commit both'

def test_notebooks_are_clean(tmp_path):
    clean = project_copy(tmp_path / 'clone')
    subprocess.run([bin_path('nbdev_clean')], cwd=clean, check=True, capture_output=True)
    dirty = [p.name for p in (ROOT / 'nbs').glob('*.ipynb')
             if (clean / 'nbs' / p.name).read_text() != p.read_text()]
    assert not dirty, f'run nbdev_clean before committing: {dirty}'

def test_nbdev_clean_keeps_parameters_tag(tmp_path):
    clean = project_copy(tmp_path / 'clone')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('epochs = 60', metadata={'tags': ['parameters'], 'scrolled': True}),
                                         nbformat.v4.new_code_cell('print(epochs)', execution_count=3)])
    path = clean / 'nbs' / 'zz_tagged.ipynb'; nbformat.write(nb, path)
    subprocess.run([bin_path('nbdev_clean'), '--fname', str(path)], cwd=clean, check=True, capture_output=True)
    cells = json.loads(path.read_text())['cells']
    assert cells[0]['metadata'] == {'tags': ['parameters']}   # the tag stays, other metadata goes
    assert cells[1]['execution_count'] is None                # and nbdev_clean really ran

def test_train_notebook_has_parameters_cell():
    nb = nbformat.read(ROOT / 'nbs' / 'train.ipynb', as_version=4)
    tagged = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(tagged) == 1
    for name in 'data_dir run_dir epochs img_size batch_size lr seed device amp grad_accum workers'.split():
        assert f'{name} =' in tagged[0].source, name
