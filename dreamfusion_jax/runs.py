"""The run folder: its config.json, its checkpoints, and runs under a root.

    <workdir>/config.json          the resolved config (`prepare_workdir`)
    <workdir>/checkpoints/<step>/  orbax train states (`checkpoint.py`)

Everything that reads a finished run (export, evaluation, the notebook)
comes through `load_trained`, which needs the train state's structure but
not the trainer.
"""

import json
import os
import pathlib
from typing import List, Optional

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections

from dreamfusion_jax import checkpoint as checkpoint_lib
from dreamfusion_jax import errors
from dreamfusion_jax import files
from dreamfusion_jax import train_step
from dreamfusion_jax.nerf import field

CONFIG_FILE = 'config.json'

# Fields that may differ when a run resumes. num_steps may grow to extend a
# run (the learning-rate schedule then stretches from the resumed step on).
_RESUMABLE_CHANGES = ('log.', 'checkpoint.', 'export.', 'multihost',
                      'num_steps')


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Checks the workdir is writable and holds no run of another config.

  Writes `config.json` (atomically) only when both checks pass.
  """
  workdir = os.path.abspath(workdir)
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise errors.UserError(
        f'workdir {workdir} cannot be written ({parent} is not a writable '
        'folder); pass a --workdir you can write to.')
  new = json.loads(config.to_json_best_effort())
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = _with_added_keys(json.load(f))
    a, b = _flatten(old), _flatten(new)
    for key in sorted(set(a) | set(b)):
      if key.startswith(_RESUMABLE_CHANGES):
        continue
      if a.get(key) != b.get(key):
        raise errors.UserError(
            f'workdir {workdir} holds a run with {key} = {a.get(key)!r}, '
            f'not {b.get(key)!r}; use a new --workdir or the same config.')
  if jax.process_index() == 0:
    try:
      files.write_json(path, new)
    except OSError as e:
      raise errors.UserError(
          f'workdir {workdir} cannot be written ({e.strerror}); pass a '
          '--workdir you can write to.') from None


# Keys added after runs were first written, with the values that reproduce
# how those runs were trained; a config.json without them gets these.
_ADDED_KEYS = {
    'nerf': {'density_activation': 'exp', 'blob': 'paper',
             'hash_start_levels': 0, 'hash_level_start_step': 0,
             'hash_level_every_steps': 1},
    'loss': {'orientation_normalize': 'rays',
             'orientation_ramp_shape': 'geometric'},
    'optim': {'background_lr_multiplier': 1.0},
    'shading': {'random_background_prob': 0.0,
                'random_background_colors': []},
    # A run of one object.
    'prompts': [], 'prompts_file': '', 'seeds': [],
}


def _with_added_keys(values: dict) -> dict:
  """A config.json's values with `_ADDED_KEYS` filled in where missing."""
  values = dict(values)
  toy = values.get('toy')
  if toy is not None and 'background_color' in toy:
    # toy.background_color became toy.background_colors, a list of backdrops.
    toy = dict(toy)
    toy.setdefault('background_colors', [toy.pop('background_color')])
    values['toy'] = toy
  for key, added in _ADDED_KEYS.items():
    if isinstance(added, dict):
      if key in values:
        values[key] = {**added, **values[key]}
    else:
      values.setdefault(key, added)
  return values


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to `<workdir>/config.json`."""
  path = os.path.join(os.fspath(workdir), CONFIG_FILE)
  if not os.path.exists(path):
    raise errors.UserError(
        f'{workdir} has no config.json; pass the --workdir of a training '
        'run.')
  with open(path) as f:
    values = json.load(f)
  return ml_collections.ConfigDict(_with_added_keys(values))


def workdirs_under(root: str) -> List[str]:
  """The sorted folders below `root` that hold a config.json (trained runs):
  ROOT/<run>/ or a batch run's ROOT/<prompt>/seed_<seed>/."""
  found = sorted(str(p.parent) for pattern in ('*', '*/*')
                 for p in pathlib.Path(root).glob(f'{pattern}/{CONFIG_FILE}'))
  if not found:
    raise errors.UserError(
        f'No workdirs (folders with a config.json) under {str(root)!r}; pass '
        'the folder that holds one workdir per prompt and seed.')
  return found


def latest_step(workdir: str) -> Optional[int]:
  """The newest checkpoint step of a workdir; None when it has none."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return None
  ckpt = checkpoint_lib.Checkpointer(workdir, 1)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def load_trained(workdir: str, step=None):
  """The config, model and parameters of a run's checkpoint.

  Args:
    workdir: the run's --workdir.
    step: checkpoint step; the newest when None.

  Returns:
    (config, model, params, step); the params as the run's step uses them
    (`field.active_params`: a progressive hash grid's later levels zeroed).
  """
  config = load_config(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, config.checkpoint.keep)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise errors.UserError(
          f'{ckpt.directory} holds no checkpoint; train first with '
          f'experiments/train.py --workdir={workdir}.')
    if step is not None and step not in steps:
      raise errors.UserError(
          f'{ckpt.directory} has no checkpoint for step {step}; it has '
          f'{sorted(steps)}.')
    model = field.make_model(config)
    tx = train_step.make_optimizer(config)
    mesh = train_step.make_mesh()
    abstract, _ = jax.eval_shape(
        lambda: train_step.initial_state(config.seed, model, tx, mesh,
                                         train_step.grid_resolution(config)))
    state = ckpt.restore(
        checkpoint_lib.abstract_like(abstract, NamedSharding(mesh, P())),
        step)
  finally:
    ckpt.close()
  step = int(state.step)
  return config, model, field.active_params(state.params, step, config), step
