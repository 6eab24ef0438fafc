r"""Prints a SHA-256 of a short run's checkpoint: does a change alter results?

  python experiments/fingerprint.py [--config=configs/toy.py] [--steps=50]

Trains `--steps` steps with experiments/train.py (export off) in a fresh
temporary workdir, reads the final checkpoint with orbax alone (no project
code, so the same script reads the checkpoints of any version) and hashes
every array's path, dtype, shape and bytes. Run it before and after a change
that should not alter the maths: equal digests mean bitwise-identical
parameters, optimiser state and counters. Digests depend on the machine's
XLA build and CPU, so compare them on one machine.
"""

import hashlib
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np
import orbax.checkpoint as ocp

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = flags.DEFINE_string('config', 'configs/toy.py', 'Config file.')
_STEPS = flags.DEFINE_integer('steps', 50, 'Training steps.')


def digest(checkpoint_dir: str) -> str:
  """SHA-256 over (path, dtype, shape, bytes) of every array, path-sorted."""
  tree = ocp.StandardCheckpointer().restore(checkpoint_dir)
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  h = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda kv: str(kv[0])):
    a = np.asarray(leaf)
    h.update(f'{path}|{a.dtype}|{a.shape}|'.encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as workdir:
    subprocess.run(
        [sys.executable, os.path.join(_REPO, 'experiments', 'train.py'),
         f'--config={_CONFIG.value}', f'--workdir={workdir}',
         f'--config.num_steps={_STEPS.value}',
         '--config.export.at_end=False',
         '--config.log.preview_every_steps=0'],
        check=True, cwd=_REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    path = os.path.join(workdir, 'checkpoints', str(_STEPS.value),
                        'default')
    print(f'{_CONFIG.value}, {_STEPS.value} steps: {digest(path)}')


if __name__ == '__main__':
  app.run(main)
