"Notebooks stay clean when used: JupyterLab's save runs nbdev's pre-save hook, which leaves a notebook as nbdev_clean wants it."
import configparser, json, subprocess
from pathlib import Path
import nbformat
from conftest import ROOT, project_copy, bin_path

def test_jupyter_hooks_on():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    assert cfg['DEFAULT']['jupyter_hooks'] == 'True'
    assert 'nbdev_install_hooks' in (ROOT / 'scripts' / 'setup.sh').read_text()
    assert '*.ipynb merge=nbdev-merge' in (ROOT / '.gitattributes').read_text()

def test_jupyterlab_save_leaves_notebook_clean(tmp_path):
    "What JupyterLab saves after a session (execution counts, cell metadata, widget state) comes out clean."
    from nbdev.clean import clean_jupyter
    clean = project_copy(tmp_path / 'clone')
    path = clean / 'nbs' / 'train.ipynb'
    model = {'type': 'notebook', 'content': json.loads(path.read_text())}
    nb = model['content']
    for i, c in enumerate(nb['cells']):                      # what a session adds
        if c['cell_type'] == 'code':
            c['execution_count'] = i
            c['metadata'].update({'execution': {'iopub.status.busy': '2026-11-30T10:00:00'}, 'scrolled': True})
            c['outputs'] = [{'output_type': 'stream', 'name': 'stdout', 'text': ['grad_accum 4\n']}]
    nb['metadata']['language_info'] = {'name': 'python', 'version': '3.11'}
    clean_jupyter(path=str(path), model=model)               # the pre-save hook JupyterLab calls
    nbformat.write(nbformat.from_dict(model['content']), path)
    subprocess.run([bin_path('nbdev_clean'), '--fname', str(path)], cwd=clean, check=True, capture_output=True)
    after = json.loads(path.read_text())
    saved = nbformat.from_dict(model['content'])
    assert after == json.loads(nbformat.writes(saved))       # nbdev_clean finds nothing more to do
    tagged = [c for c in after['cells'] if c['metadata'].get('tags') == ['parameters']]
    assert len(tagged) == 1                                  # papermill's tag survives the save
    assert all(c.get('execution_count') is None for c in after['cells'] if c['cell_type'] == 'code')
    assert 'language_info' not in after['metadata']
