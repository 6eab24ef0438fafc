"""The training loop: `train_and_export(config, workdir)`.

Validates the config, prepares the run folder (`runs`), loads the frozen
prior (`priors`), resumes from the newest checkpoint, runs the jitted step
(`train_step`) with logging (steps/s, ETA, TensorBoard), previews and
checkpoints, and exports turntables and meshes at the end (`export`).
"""

import os
import time

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import tensorboardX

from dreamfusion_jax import cameras
from dreamfusion_jax import checkpoint as checkpoint_lib
from dreamfusion_jax import errors
from dreamfusion_jax import export
from dreamfusion_jax import guidance
from dreamfusion_jax import images
from dreamfusion_jax import losses
from dreamfusion_jax import priors
from dreamfusion_jax import render
from dreamfusion_jax import runs
from dreamfusion_jax import shading
from dreamfusion_jax import train_step
from dreamfusion_jax.nerf import field


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for the first invalid value.

  The run's own fields are checked here; each group by the module that owns
  its values. Runs once, before anything is compiled or written.
  """
  if not str(config.prompt).strip():
    raise errors.UserError(
        'prompt is empty; pass --config.prompt="a DSLR photo of ...".')
  if not isinstance(config.seed, int) or not 0 <= config.seed < 2**32:
    raise errors.UserError(
        f'seed = {config.seed!r} must be an integer from 0 to 2**32 - 1.')
  for name in ('num_steps', 'batch_per_device'):
    if not isinstance(config[name], int) or config[name] <= 0:
      raise errors.UserError(
          f'{name} = {config[name]!r} must be a positive integer.')
  for name in ('every_steps', 'keep'):
    if config.checkpoint[name] <= 0:
      raise errors.UserError(
          f'checkpoint.{name} = {config.checkpoint[name]} must be positive.')
  if config.log.every_steps <= 0 or config.log.preview_every_steps < 0:
    raise errors.UserError(
        'log.every_steps must be positive and log.preview_every_steps >= 0.')
  guidance.validate(config.guidance)
  losses.validate(config.loss)
  train_step.validate_optim(config.optim)
  cameras.validate(config.camera)
  render.validate(config.render)
  shading.validate(config.shading)
  field.validate(config)
  export.validate(config.export)
  field.make_model(config)  # Refuses unknown field or background kinds.
  priors.validate(config)


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def preview_grid(model, params, config, num_views: int = 4) -> np.ndarray:
  """Rows: rgb, normals, textureless, opacity; columns: orbit views."""
  c = config.camera
  cams = cameras.orbit_cameras(num_views, c.eval_elevation, c.eval_distance,
                               c.eval_focal, azimuth_start=0.0)
  res = config.log.preview_resolution
  # One pass: the textureless row follows from its Lambert term.
  out = render.render_cameras(model, params, cams, res, config.render)
  default_light = shading.lambertian(textureless=True)
  rows = [out['rgb'],
          images.normals_to_rgb(out['normals'], out['opacity'],
                                np.asarray(cams.rotation)),
          render.textureless_rgb(out, float(default_light.ambient),
                                 float(default_light.diffuse)),
          np.repeat(out['opacity'][..., None], 3, -1)]
  return np.clip(np.concatenate([np.concatenate(list(r), 1) for r in rows],
                                0), 0, 1)


def train_and_export(config: ml_collections.ConfigDict,
                     workdir: str) -> train_step.TrainState:
  """Trains a NeRF for `config.prompt`, resuming from `workdir` if it can.

  Writes `config.json`, checkpoints, TensorBoard events, preview PNGs and, at
  the end (`export.at_end`), turntables and meshes under `workdir/export`.

  Returns:
    The final train state.
  """
  validate_config(config)
  runs.prepare_workdir(config, workdir)
  is_host0 = jax.process_index() == 0

  mesh = train_step.make_mesh()
  replicated = NamedSharding(mesh, P())
  model = field.make_model(config)
  tx = train_step.make_optimizer(config)
  logging.info('Loading the prior %s.', config.guidance.model)
  prior = train_step.replicate(priors.load_prior(config), mesh)

  state, base_key = train_step.initial_state(config.seed, model, tx, mesh,
                                             train_step.grid_resolution(config))
  ckpt = checkpoint_lib.Checkpointer(workdir, config.checkpoint.keep)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(checkpoint_lib.abstract_like(state, replicated))
    logging.info('Resumed from step %d in %s.', int(state.step),
                 ckpt.directory)
  step_fn = train_step.make_train_step(config, model, tx, mesh)

  writer = None
  if is_host0:
    writer = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    os.makedirs(os.path.join(workdir, 'previews'), exist_ok=True)

  start = int(state.step)
  num_steps = config.num_steps
  t_last, step_last = time.time(), start
  t_start = None
  compile_s = None
  step = start
  try:
    while step < num_steps:
      t0 = time.time()
      state, metrics = step_fn(state, prior, base_key)
      step += 1
      if compile_s is None:
        jax.block_until_ready(state.step)
        compile_s = time.time() - t0
        t_start, t_last, step_last = time.time(), time.time(), step
        logging.info('First step (compile + run) took %.1f s.', compile_s)
      last = step == num_steps
      if step % config.log.every_steps == 0 or last:
        metrics = jax.device_get(metrics)
        if metrics['train/finite'] < 1:
          logging.warning('Step %d: non-finite loss or gradient; update '
                          'skipped (%d in a row).', step,
                          int(state.bad_steps))
        now = time.time()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        metrics['system/steps_per_sec'] = rate
        metrics['system/skipped_steps'] = int(state.skipped)
        logging.info(
            'step %d/%d  loss %.4g  sds %.4g  %.2f steps/s  ETA %s', step,
            num_steps, metrics['train/loss'], metrics['train/sds'], rate,
            format_eta((num_steps - step) / max(rate, 1e-9)))
        if writer is not None:
          for name, value in metrics.items():
            writer.add_scalar(name, float(value), step)
      # Reading a device value syncs the host, so the divergence check runs
      # only where the loop syncs anyway: at log and checkpoint steps.
      due = (step % config.log.every_steps == 0 or last or
             step % config.checkpoint.every_steps == 0)
      if due and int(state.bad_steps) >= config.optim.max_bad_steps:
        raise errors.UserError(
            f'training stopped at step {step}: {int(state.bad_steps)} '
            'non-finite updates in a row; the last good checkpoint '
            f'(step {ckpt.latest_step()}) is kept; lower '
            'optim.learning_rate or guidance.scale.')
      if (writer is not None and config.log.preview_every_steps and
          (step % config.log.preview_every_steps == 0 or last)):
        grid = preview_grid(
            model, field.active_params(state.params, step, config), config)
        write_preview(grid, workdir, step)
        writer.add_image('render/preview', grid, step, dataformats='HWC')
      if step % config.checkpoint.every_steps == 0 or last:
        ckpt.save(step, state)
    ckpt.wait()
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()
  if t_start is not None and step > start + 1:
    logging.info('Trained steps %d-%d at %.2f steps/s (compile %.1f s).',
                 start + 1, step, (step - start - 1) /
                 max(time.time() - t_start, 1e-9), compile_s)

  if config.export.at_end and is_host0:
    params = field.active_params(state.params, int(state.step), config)
    paths = export.export_all(config, model, params,
                              os.path.join(workdir, 'export'))
    logging.info('Exported %d files to %s.', len(paths),
                 os.path.join(workdir, 'export'))
  return state


def write_preview(grid: np.ndarray, workdir: str, step: int) -> None:
  images.write_png(grid, os.path.join(workdir, 'previews',
                                      f'step_{step:07d}.png'))
