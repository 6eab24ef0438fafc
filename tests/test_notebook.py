"""The Colab notebook runs end to end on the toy world (QUICK) and is clean.

Cells marked '# colab-setup' (clone, pip installs, downloads) and IPython
'!'/'%' lines are left out; the rest runs as one Python script in a
subprocess from the repository root, with DREAMFUSION_QUICK=1 (configs/tiny.py)
and DREAMFUSION_WORKDIR in a temporary folder.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / 'experiments' / 'dreamfusion_jax_colab.ipynb'
SETUP_MARK = '# colab-setup'


def _notebook():
  with open(NOTEBOOK) as f:
    return json.load(f)


def _source(cell):
  source = cell['source']
  return ''.join(source) if isinstance(source, list) else source


def notebook_script(notebook) -> str:
  """The code cells as one script, without setup cells and shell lines."""
  parts = []
  for cell in notebook['cells']:
    if cell['cell_type'] != 'code':
      continue
    source = _source(cell)
    if source.lstrip().startswith(SETUP_MARK):
      continue
    lines = [line for line in source.splitlines()
             if not line.lstrip().startswith(('!', '%'))]
    parts.append('\n'.join(lines))
  return '\n\n'.join(parts) + '\n'


def test_notebook_format_and_no_outputs():
  notebook = _notebook()
  assert notebook['nbformat'] == 4
  code_cells = [c for c in notebook['cells'] if c['cell_type'] == 'code']
  assert code_cells
  for cell in code_cells:
    assert cell['outputs'] == [], _source(cell)[:80]
    assert cell['execution_count'] is None, _source(cell)[:80]
  for cell in notebook['cells']:
    assert not cell.get('attachments'), 'stored attachments'


def test_notebook_structure():
  notebook = _notebook()
  code = [_source(c) for c in notebook['cells'] if c['cell_type'] == 'code']
  setup = [s for s in code if s.lstrip().startswith(SETUP_MARK)]
  assert any('REPO_URL' in s and 'pip install -q -e .' in s for s in setup)
  # Every shell line sits in a setup cell, so the script below is complete.
  for source in code:
    if not source.lstrip().startswith(SETUP_MARK):
      assert not any(line.lstrip().startswith(('!', '%'))
                     for line in source.splitlines()), source[:80]
  script = notebook_script(notebook)
  assert 'train.train_and_export(config, WORKDIR)' in script
  assert 'RUN_STABLE_DIFFUSION = False' in script
  assert 'dreamfusion_sd' in script
  compile(script, str(NOTEBOOK), 'exec')


def test_notebook_runs_quick(tmp_path):
  script = tmp_path / 'notebook.py'
  script.write_text(notebook_script(_notebook()))
  workdir = tmp_path / 'run'
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env.update(PYTHONPATH=str(ROOT), DREAMFUSION_QUICK='1',
             DREAMFUSION_WORKDIR=str(workdir), MPLBACKEND='Agg')
  proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        timeout=600, check=False)
  out = proc.stdout.decode(errors='replace')
  assert proc.returncode == 0, out[-4000:]
  for name in ('rgb.mp4', 'rgb.gif', 'mesh.glb'):
    path = workdir / 'export' / name
    assert path.exists() and path.stat().st_size > 0, name
  assert 'vertices' in out and 'faces' in out


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
