import os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data' / 'figshare-jpg'

def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available(): return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for it in items:
        if 'gpu' in it.keywords: it.add_marker(skip)

@pytest.fixture(scope='session')
def repo_root() -> Path: return ROOT

@pytest.fixture(scope='session')
def shared_data() -> Path:
    "The shared figshare JPEG release, falling back to the bundled sample when it is absent."
    return SHARED_DATA if (SHARED_DATA / 'manifest.csv').exists() else ROOT / 'data' / 'sample'

def project_copy(dest: Path) -> Path:
    "Copy the files git tracks (and untracked, not ignored ones) into `dest`: a clean checkout."
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                         cwd=ROOT, capture_output=True, check=True).stdout.decode().split('\0')
    for f in filter(None, out):
        src = ROOT / f
        if not src.is_file(): continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / f)
    return dest

def bin_path(name: str) -> str:
    "A console script of this venv."
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name

def small_source(dest: Path, per_class: int) -> Path:
    "Class folders with the first `per_class` slices of each class of the bundled sample, with their manifest rows."
    import pandas as pd
    man = pd.read_csv(ROOT / 'data' / 'sample' / 'manifest.csv')
    keep = man.groupby('label').head(per_class)
    for f in keep.file: (dest / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy(ROOT / 'data' / 'sample' / f, dest / f)
    keep.to_csv(dest / 'manifest.csv', index=False)
    return dest
