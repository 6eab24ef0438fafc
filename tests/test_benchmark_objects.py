"""experiments/benchmark_objects.py: its figures hold together.

The script runs in a subprocess: its flags (--config, --out) share names with
other experiments/ scripts that tests import, and absl refuses a flag defined
twice in one process.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'experiments', 'benchmark_objects.py')


def _run(tmp_path, *args):
  """(rows of the JSON, printed table) of one run of the script."""
  out = tmp_path / 'results.json'
  proc = subprocess.run([sys.executable, SCRIPT, *args, f'--out={out}'],
                        cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_tiny_objects(tmp_path):
  """configs/tiny.py at 1 and 2 objects per device, in one process.

  Slow (about 80 s of the suite's CPU time): it checks the measuring
  script's arithmetic, not the library; test_sd_dry_on_cpu keeps the
  script's full-size path in the default run.
  """
  rows, table = _run(tmp_path, '--config=configs/tiny.py', '--objects=1,2',
                     '--steps=2', '--nosubprocess')
  one, two = rows
  assert [r['objects_per_device'] for r in rows] == [1, 2]
  for r in rows:
    assert r['objects'] == r['objects_per_device'] * r['devices']
    assert r['object_steps_per_s'] == pytest.approx(
        r['objects'] * r['steps_per_s'])
    assert r['flops_per_s'] == pytest.approx(r['flops'] * r['steps_per_s'])
    assert r['compile_s'] > 0 and r['peak_bytes'] > 0
    assert r['finite'] == 1.0
    # A CPU has no listed peak FLOP/s.
    assert r['peak_flops'] is None and r['peak_fraction'] is None
  assert one['speedup'] == 1.0
  assert two['speedup'] == pytest.approx(
      two['object_steps_per_s'] / one['object_steps_per_s'])
  # Every object does the same work: FLOPs, state and prior grow with P.
  assert two['flops'] == pytest.approx(2 * one['flops'], rel=0.1)
  assert two['state_bytes'] == one['state_bytes']
  # The toy prior's image set is shared; only the embeddings are per object.
  assert 0 < two['prior_bytes'] - one['prior_bytes'] < 0.05 * one['prior_bytes']
  assert 'obj-steps/s' in table and 'host RSS' in table


def test_sd_dry_on_cpu(tmp_path):
  """--sd on a CPU sizes the full Stable Diffusion step without running it."""
  rows, table = _run(tmp_path, '--sd', '--sd_objects=1')
  (row,) = rows
  assert row['dry'] and 'steps_per_s' not in row
  # Stable Diffusion v1.5's UNet; the VAE's encoder and quant_conv.
  assert row['params']['unet'] == 859_520_964
  assert row['params']['vae_encoder'] == 34_163_664
  # A UNet forward is ~0.4 TFLOP at 64x64 latents; the step runs two and
  # the VAE encoder's forward and backward at 512x512.
  assert 1e12 < row['flops'] < 1e13
  assert 'Stable Diffusion v1.5' in table
