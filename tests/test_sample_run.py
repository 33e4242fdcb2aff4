"The quick start's job on the bundled sample reaches clearly above chance on the sample's held-out groups."
import json, os, subprocess, sys
import numpy as np
import pytest
from conftest import ROOT, bin_path
from brainmri.evaluate import read_checkpoint
from brainmri.metrics import best_epoch_flags

@pytest.mark.slow
def test_sample_run_beats_chance(tmp_path):
    run = tmp_path / 'sample'
    env = {**os.environ, 'MPLBACKEND': 'Agg'}
    r = subprocess.run([bin_path('brainmri_train'), '--preset', 'sample', '--data-dir', str(ROOT / 'data' / 'sample'),
                        '--store-dir', str(tmp_path / 'store'), '--run-dir', str(run)],
                       capture_output=True, text=True, env=env, timeout=1800, cwd=tmp_path)   # 4–15 min on an idle 2-core machine, by CPU
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    params = json.loads((run / 'params.json').read_text())
    assert params['model'] == 'basic'                # the quick start trains the original's model
    # best.pt follows the preset's 1-SE rule, chosen afresh from epoch best_from: the learner's flags are that rule
    # replayed on the run's history
    hist = json.loads((run / 'history.json').read_text())
    accs, ns = [h['val_acc'] for h in hist], [h['val_n'] for h in hist]
    flags = best_epoch_flags(accs, ns, params['best_se_margin'], params['best_from'])
    assert (params['best_se_margin'], params['best_from']) == (1.0, 20) and [h['is_best'] for h in hist] == flags
    assert flags != best_epoch_flags(accs, ns, 0.0, params['best_from'])   # the SE margin moved best.pt at least once
    m = json.loads((run / 'metrics.json').read_text())
    test = m['best']['test']
    cm = np.array(test['confusion_matrix'])
    majority = cm.sum(1).max() / cm.sum()            # the majority-class rate of the held-out split
    assert test["accuracy"] >= majority + 0.12, (test["accuracy"], majority)
    assert test["macro_f1"] > 0.45 and test["roc_auc"]["macro"] > 0.6
    # swa.pt averages every epoch from swa_start on and is evaluated beside best.pt, as well above chance
    swa = read_checkpoint(run / 'swa.pt')['swa']
    assert params['swa'] and (swa['first_epoch'], swa['n_averaged']) == (params['swa_start'], params['epochs'] - params['swa_start'])
    assert m['swa']['test']['accuracy'] >= majority + 0.12, (m['swa']['test']['accuracy'], majority)
