"""Many objects in one program: `train_objects(objects)`.

The objects (`object_batch.ObjectRun`: single-run configs that differ only in
prompt, seed and what sets the prior's text embeddings
(`object_batch.PER_OBJECT`), one workdir each) are trained by one jitted step
(`train_step.make_object_train_step`): train states with a leading object
axis split over the mesh's devices, the objects of a device vmapped, one
batched prior call per step. Every object's folder gets what a single run
writes there (config.json, checkpoints, TensorBoard events, previews and,
at the end, its export), so export and evaluation read it as a single run.

Each object keeps its own keys (seed, step, view), so it follows the single
run of its prompt and seed on one device; vmap changes how XLA batches the
arithmetic, so the two agree to float rounding, not bit for bit (README).

Checkpoints are per object, saved one after another. A run killed between
two objects' saves resumes from the newest step that every object has (at
least two are kept for this); an object whose newer checkpoint exists is not
saved again at that step, and its checkpoint holds the same state.
"""

import os
import time
from typing import Sequence

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import tensorboardX

from dreamfusion_jax import checkpoint as checkpoint_lib
from dreamfusion_jax import errors
from dreamfusion_jax import export
from dreamfusion_jax import files
from dreamfusion_jax import object_batch
from dreamfusion_jax import priors
from dreamfusion_jax import runs
from dreamfusion_jax import train
from dreamfusion_jax import train_step
from dreamfusion_jax.nerf import field

AXIS = train_step.AXIS


def shard_objects(tree, mesh, axes=0):
  """Places a pytree on `mesh`: leaves with `axes` 0 split along their
  leading (object) axis over the devices, leaves with None replicated."""
  def place(axis, x):
    if x is None:
      return None
    spec = P() if axis is None else P(AXIS)
    return jax.device_put(x, NamedSharding(mesh, spec))
  if axes == 0:
    return jax.tree.map(lambda x: place(0, x), tree)
  return jax.tree.map(place, axes, tree, is_leaf=lambda a: a is None)


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _take(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree) if hasattr(x, 'dtype'))


def device_memory_bytes() -> int:
  """Memory of one device: its bytes_limit, or the host's for a CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def check_fits(num_objects: int, per_device: int, state_bytes: int,
               prior_bytes: int, limit: int, temp_bytes: int = 0) -> None:
  """Raises UserError when `per_device` objects cannot fit on a device.

  Args:
    num_objects: objects in the batch.
    per_device: objects per device.
    state_bytes: one object's train state (params + optimiser state).
    prior_bytes: the prior's arrays on one device.
    limit: the device's memory.
    temp_bytes: the compiled step's temporaries (0 before compiling).
  """
  need = per_device * state_bytes + prior_bytes + temp_bytes
  if need > limit:
    gib = 2.0**30
    fit = max(int((limit - prior_bytes) // max(
        state_bytes + temp_bytes / max(per_device, 1), 1)), 0)
    raise errors.UserError(
        f'{num_objects} objects need about {need / gib:.1f} GiB per device '
        f'({per_device} per device) but a device has {limit / gib:.1f} GiB; '
        f'train at most about {fit} objects per device: fewer prompts or '
        'seeds per run, or more devices.')


def _resume_step(checkpointers) -> int:
  """The newest step every object has a checkpoint of (0: start fresh)."""
  steps = [set(c.all_steps()) for c in checkpointers]
  common = set.intersection(*steps)
  if common:
    return max(common)
  if any(steps):
    logging.warning('The objects share no checkpoint step; starting all '
                    'from step 0 (existing checkpoints are kept).')
  return 0


def train_objects(objects: Sequence[object_batch.ObjectRun],
                  batch_config=None, root: str = None):
  """Trains the objects together and exports each one at the end.

  Args:
    objects: `object_batch.plan(config, root)` or any ObjectRuns that differ
      only in `object_batch.PER_OBJECT` fields.
    batch_config, root: when given, the batch's config is written to
      ROOT/batch.json (a record of the launch).

  Returns:
    The final train states, stacked on a leading object axis.
  """
  object_batch.check_batchable(objects)
  for obj in objects:
    train.validate_config(obj.config)
  if jax.process_count() > 1:
    raise errors.UserError(
        'A batch of objects runs in one process; use one host (its devices '
        'split the objects), or one run per prompt on a multi-host job.')
  config = objects[0].config
  mesh = train_step.make_mesh()
  num, devices = len(objects), mesh.devices.size
  if num % devices:
    raise errors.UserError(
        f'{num} objects do not split evenly over {devices} devices; train a '
        f'multiple of {devices} objects (prompts x seeds).')
  for obj in objects:
    runs.prepare_workdir(obj.config, obj.workdir)
  if root is not None and batch_config is not None:
    files.write_json(os.path.join(root, object_batch.BATCH_FILE),
                     batch_config.to_dict())

  model = field.make_model(config)
  tx = train_step.make_optimizer(config)
  grid = train_step.grid_resolution(config)
  abstract, _ = jax.eval_shape(
      lambda: train_step.initial_state(0, model, tx, mesh, grid))
  limit = device_memory_bytes()
  check_fits(num, num // devices, nbytes(abstract), 0, limit)

  logging.info('Loading the prior %s for %d objects.', config.guidance.model,
               num)
  prior, axes = priors.load_object_prior([o.config for o in objects])
  prior = shard_objects(prior, mesh, axes)

  keep = max(config.checkpoint.keep, 2)
  ckpts = [checkpoint_lib.Checkpointer(o.workdir, keep) for o in objects]
  start = _resume_step(ckpts)
  replicated = NamedSharding(mesh, P())
  states, keys = [], []
  fresh = train_step.initial_states([o.config.seed for o in objects], model,
                                    tx, mesh, grid)
  for ckpt, (state, key) in zip(ckpts, fresh):
    if start:
      state = ckpt.restore(checkpoint_lib.abstract_like(state, replicated),
                           start)
    states.append(state)
    keys.append(key)
  if start:
    logging.info('Resumed %d objects from step %d.', num, start)
  states = shard_objects(stack(states), mesh)
  keys = shard_objects(stack(keys), mesh)

  step_fn = train_step.make_object_train_step(config, model, tx, mesh, axes)
  t0 = time.time()
  compiled = step_fn.lower(states, prior, keys).compile()
  memory = compiled.memory_analysis()
  temp = int(getattr(memory, 'temp_size_in_bytes', 0) or 0)
  prior_bytes = sum(
      nbytes(x) // (1 if a is None else devices)
      for a, x in zip(jax.tree.leaves(axes, is_leaf=lambda a: a is None),
                      jax.tree.leaves(prior, is_leaf=lambda x: x is None))
      if x is not None)
  check_fits(num, num // devices, nbytes(abstract), prior_bytes, limit, temp)
  logging.info('Compiled the step of %d objects (%d per device) in %.1f s; '
               'temporaries %.2f GiB per device.', num, num // devices,
               time.time() - t0, temp / 2.0**30)

  writers = [tensorboardX.SummaryWriter(os.path.join(o.workdir, 'tensorboard'))
             for o in objects]
  for obj in objects:
    os.makedirs(os.path.join(obj.workdir, 'previews'), exist_ok=True)
  num_steps = config.num_steps
  step = start
  t_start = t_last = time.time()
  step_last = step
  try:
    while step < num_steps:
      states, metrics = compiled(states, prior, keys)
      step += 1
      last = step == num_steps
      if step % config.log.every_steps == 0 or last:
        metrics = jax.device_get(metrics)
        now = time.time()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        for i, writer in enumerate(writers):
          for name, values in metrics.items():
            writer.add_scalar(name, float(values[i]), step)
          writer.add_scalar('system/steps_per_sec', rate, step)
        bad = int(np.sum(metrics['train/finite'] < 1))
        logging.info(
            'step %d/%d  %d objects  loss %.4g (mean)  %.2f steps/s  '
            '%.2f object-steps/s  ETA %s%s', step, num_steps, num,
            float(np.mean(metrics['train/loss'])), rate, rate * num,
            train.format_eta((num_steps - step) / max(rate, 1e-9)),
            f'  {bad} skipped non-finite' if bad else '')
      due = (step % config.log.every_steps == 0 or last or
             step % config.checkpoint.every_steps == 0)
      if due:
        bad_steps = np.asarray(jax.device_get(states.bad_steps))
        worst = int(np.argmax(bad_steps))
        if bad_steps[worst] >= config.optim.max_bad_steps:
          raise errors.UserError(
              f'training stopped at step {step}: {objects[worst].name} had '
              f'{int(bad_steps[worst])} non-finite updates in a row; the '
              'last good checkpoints are kept; lower optim.learning_rate or '
              'guidance.scale.')
      if (config.log.preview_every_steps and
          (step % config.log.preview_every_steps == 0 or last)):
        for i, obj in enumerate(objects):
          params = field.active_params(_take(states.params, i), step, config)
          grid_image = train.preview_grid(model, params, obj.config)
          train.write_preview(grid_image, obj.workdir, step)
          writers[i].add_image('render/preview', grid_image, step,
                               dataformats='HWC')
      if step % config.checkpoint.every_steps == 0 or last:
        for i, ckpt in enumerate(ckpts):
          if step not in ckpt.all_steps():
            ckpt.save(step, _take(states, i))
    for ckpt in ckpts:
      ckpt.wait()
  finally:
    for ckpt in ckpts:
      ckpt.close()
    for writer in writers:
      writer.close()
  if step > start:
    seconds = time.time() - t_start
    logging.info('Trained %d objects, steps %d-%d, in %.1f s: %.2f '
                 'object-steps/s.', num, start + 1, step, seconds,
                 num * (step - start) / max(seconds, 1e-9))

  if config.export.at_end:
    for i, obj in enumerate(objects):
      params = field.active_params(_take(states.params, i), step, config)
      out = os.path.join(obj.workdir, 'export')
      paths = export.export_all(obj.config, model, params, out)
      logging.info('Exported %d files of %s to %s.', len(paths), obj.name,
                   out)
  return states


def train_batch(config, root: str, batch_objects: int = 0):
  """Trains the batch a config asks for (`object_batch.plan`) under root,
  in programs of `batch_objects` objects each (0: all in one)."""
  if batch_objects < 0:
    raise errors.UserError(
        f'{batch_objects} objects per program is negative; pass 0 (all in '
        'one) or a positive count.')
  objects = object_batch.plan(config, root)
  size = batch_objects or len(objects)
  logging.info('Batch of %d objects under %s, %d per program.',
               len(objects), root, size)
  for start in range(0, len(objects), size):
    train_objects(objects[start:start + size], batch_config=config,
                  root=root)

