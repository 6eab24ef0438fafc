"""Training: the parallel SDS train step and `train_and_evaluate`.

One step (DESIGN.md section 2), as a single jitted pure function:
  1. key = fold_in(fold_in(base_key, step), global view index) for every view,
     so each view's camera, light, shading mode, samples, t and noise depend
     only on (seed, step, view): a resumed run continues exactly, and one
     device with 4 views equals 4 devices with 1 view each.
  2. Each device renders its `batch_per_device` views, computes the SDS
     surrogate through the frozen prior and the regularisers.
  3. Gradients are averaged over every device (`lax.pmean` inside
     `jax.shard_map` over the 1-D mesh 'data'); the optax update follows.
     A non-finite loss or gradient leaves params and optimiser state as they
     were and counts a bad step.
"""

import functools
import json
import os
import time
from typing import Any

from absl import logging
import flax
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorboardX

from dreamfusion_jax import cameras
from dreamfusion_jax import checkpoint as checkpoint_lib
from dreamfusion_jax import errors
from dreamfusion_jax import export
from dreamfusion_jax import guidance
from dreamfusion_jax import losses
from dreamfusion_jax import render
from dreamfusion_jax import schedules
from dreamfusion_jax import shading
from dreamfusion_jax.guidance import sds
from dreamfusion_jax.nerf import field
from dreamfusion_jax.toy import prior as toy_prior

AXIS = 'data'


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; this is what is checkpointed.

  Attributes:
    step: scalar int32, completed updates.
    params: NeRF parameters.
    opt_state: optax state.
    bad_steps: scalar int32, consecutive non-finite updates skipped.
    skipped: scalar int32, all non-finite updates skipped so far.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  bad_steps: jax.Array
  skipped: jax.Array


def make_mesh() -> jax.sharding.Mesh:
  """1-D mesh over every device of every process, axis 'data'."""
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Host arrays (equal on every process) -> arrays replicated on `mesh`.

  Works across processes, where `jax.device_put` cannot target devices that
  another process owns.
  """
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)), tree)


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """Adam with warm-up + cosine decay and global-norm clipping.

  Hash tables get `hashgrid_lr_multiplier` times the MLP rate: their entries
  receive sparse, small gradients (Instant-NGP trains them with a high rate).
  """
  c = config.optim
  lr = schedules.learning_rate(c, config.num_steps)

  def adam(scale):
    return optax.adam(lambda step: scale * lr(step), b1=c.b1, b2=c.b2,
                      eps=c.eps)

  def label(path, _):
    return 'hash' if any(getattr(k, 'key', None) == 'tables'
                         for k in path) else 'mlp'

  tx = optax.multi_transform(
      {'mlp': adam(1.0), 'hash': adam(c.hashgrid_lr_multiplier)},
      lambda params: jax.tree_util.tree_map_with_path(label, params))
  if c.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip), tx)
  return tx


def init_state(key, model, tx) -> TrainState:
  params = field.init_params(key, model)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params),
                    bad_steps=jnp.zeros((), jnp.int32),
                    skipped=jnp.zeros((), jnp.int32))


def initial_state(seed: int, model, tx, mesh):
  """A fresh TrainState and the base key, both replicated on `mesh`."""
  def make():
    init_key, base_key = jax.random.split(jax.random.key(seed))
    return init_state(init_key, model, tx), base_key
  return jax.jit(make, out_shardings=NamedSharding(mesh, P()))()


def _squeeze(tree):
  return jax.tree.map(lambda x: x[:, 0], tree)


def needs_normals(config: ml_collections.ConfigDict) -> bool:
  """Whether training ever uses normals: lit views or the orientation loss.

  A run that is albedo-only throughout with no orientation loss renders
  without them, about 2.5x faster.
  """
  lit = (config.shading.albedo_steps < config.num_steps and
         config.shading.lit_prob > 0)
  # schedules.orientation_weight is 0 throughout when its end weight is.
  return bool(lit or config.loss.orientation_weight_end > 0)


def _batch_loss(params, prior, keys, step, *, model, config):
  """SDS + regularisers for a batch of views, each with its own key.

  Args:
    params: NeRF parameters.
    prior: the frozen Prior.
    keys: [B] PRNG keys, one per view: a view's camera, shading mode,
      samples, t and noise depend on its key only.
    step: scalar int.

  Returns:
    Scalar loss (mean over views) and a dict of scalar metrics.
  """
  split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
  k_cam, k_shade, k_render, k_sds = (split[:, i] for i in range(4))
  cams = _squeeze(jax.vmap(
      lambda k: cameras.sample_cameras(k, config.camera, 1))(k_cam))
  mode = _squeeze(jax.vmap(
      lambda k: shading.sample(k, step, config.shading, 1))(k_shade))
  out = render.render_views(
      model, params, cams, mode, key=k_render,
      resolution=config.render.resolution,
      num_samples=config.render.num_samples,
      scene_radius=config.render.scene_radius,
      normals=needs_normals(config))
  g = config.guidance
  t_max = schedules.t_max(step, g, config.num_steps)

  def one_view(image, azimuth, elevation, key):
    loss, aux = sds.sds_loss(prior, image[None], azimuth[None],
                             elevation[None], key, scale=g.scale,
                             t_min=g.t_min, t_max=t_max,
                             weighting=g.weighting)
    return loss[0], jax.tree.map(lambda a: a[0], aux)

  sds_loss, aux = jax.vmap(one_view)(out['rgb'], cams.azimuth,
                                     cams.elevation, k_sds)
  orient = losses.orientation(out['weights'], out['sample_normals'],
                              out['directions'])
  opacity = losses.opacity(out['opacity'])
  entropy = losses.entropy(out['opacity'])
  distortion = losses.distortion(out['weights'], out['t'], out['delta'],
                                 2.0 * config.render.scene_radius)
  w_orient = schedules.orientation_weight(step, config.loss, config.num_steps)
  w_distortion = schedules.distortion_weight(step, config.loss,
                                             config.num_steps)
  total = (jnp.mean(sds_loss) + w_orient * orient +
           config.loss.opacity_weight * opacity +
           config.loss.entropy_weight * entropy +
           w_distortion * distortion)
  metrics = {
      'train/loss': total,
      'train/sds': jnp.mean(sds_loss),
      'train/orientation': orient,
      'train/opacity': opacity,
      'train/entropy': entropy,
      'train/distortion': distortion,
      'train/mean_opacity': jnp.mean(out['opacity']),
      'train/residual_norm': jnp.mean(aux['residual_norm']),
      'train/t': jnp.mean(aux['t_frac']),
      'train/textureless': jnp.mean(mode.textureless),
      'train/lit': jnp.mean((mode.diffuse > 0).astype(jnp.float32)),
      'schedule/orientation_weight': w_orient,
      'schedule/t_max': t_max,
      'schedule/distortion_weight': w_distortion,
  }
  return total, metrics


def make_train_step(config: ml_collections.ConfigDict, model, tx, mesh):
  """Builds `train_step(state, prior, base_key) -> (state, metrics)`, jitted.

  `state` is donated. Every input and output is replicated over the mesh;
  inside, each device works on its own views and gradients are pmean-ed.
  """
  batch = config.batch_per_device
  lr = schedules.learning_rate(config.optim, config.num_steps)

  def per_device(state: TrainState, prior, base_key):
    step_key = jax.random.fold_in(base_key, state.step)
    first = jax.lax.axis_index(AXIS) * batch
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, first + i))(
        jnp.arange(batch))

    loss_fn = functools.partial(_batch_loss, prior=prior, keys=keys,
                                step=state.step, model=model, config=config)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    metrics = jax.lax.pmean(metrics, AXIS)

    finite = jnp.isfinite(metrics['train/loss']) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    # Zero non-finite gradients before the update so optimiser moments never
    # see NaN; the update is then discarded anyway.
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jnp.where(finite, new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        bad_steps=jnp.where(finite, 0, state.bad_steps + 1),
        skipped=state.skipped + jnp.where(finite, 0, 1))
    metrics['train/grad_norm'] = optax.global_norm(grads)
    metrics['train/finite'] = finite.astype(jnp.float32)
    metrics['schedule/learning_rate'] = lr(state.step)
    return new_state, metrics

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P()),
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


# ---------------------------------------------------------------------------
# Configuration checks: every one runs before anything is compiled or written.

def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for the first invalid value."""
  if not str(config.prompt).strip():
    raise errors.UserError(
        'prompt is empty; pass --config.prompt="a DSLR photo of ...".')
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
  g = config.guidance
  if not 0.0 <= g.t_min < g.t_max <= 1.0:
    raise errors.UserError(
        f'guidance.t_min = {g.t_min} and guidance.t_max = {g.t_max} must '
        'satisfy 0 <= t_min < t_max <= 1; the paper uses 0.02 and 0.98.')
  if g.t_max_end is not None and not g.t_min < g.t_max_end <= g.t_max:
    raise errors.UserError(
        f'guidance.t_max_end = {g.t_max_end} must lie in (t_min, t_max] = '
        f'({g.t_min}, {g.t_max}]; leave it unset for a constant t_max.')
  if config.loss.distortion_weight < 0:
    raise errors.UserError(
        f'loss.distortion_weight = {config.loss.distortion_weight} is '
        'negative; use 0 (off) or a positive weight.')
  ramp = tuple(config.loss.distortion_ramp)
  if len(ramp) != 2 or not 0.0 <= ramp[0] <= ramp[1] <= 1.0:
    raise errors.UserError(
        f'loss.distortion_ramp = {ramp} must be two fractions of training '
        '(a, b) with 0 <= a <= b <= 1, e.g. (0.5, 0.8).')
  if g.scale < 0:
    raise errors.UserError(
        f'guidance.scale = {g.scale} is negative; use 0 (no guidance) or '
        'more (the paper uses 100).')
  if g.weighting not in ('sigma2', 'uniform', 'snr_sqrt'):
    raise errors.UserError(
        f"guidance.weighting = '{g.weighting}' is unknown; use 'sigma2', "
        "'uniform' or 'snr_sqrt'.")
  if g.dtype not in ('auto', 'float32', 'bfloat16'):
    raise errors.UserError(
        f"guidance.dtype = '{g.dtype}' is unknown; use 'auto', 'float32' or "
        "'bfloat16'.")
  if config.optim.learning_rate <= 0:
    raise errors.UserError(
        f'optim.learning_rate = {config.optim.learning_rate} must be '
        'positive.')
  cameras.validate(config.camera)
  render.validate(config.render)
  shading.validate(config.shading)
  field.make_model(config)  # Refuses unknown field or background kinds.
  if g.model == 'toy':
    toy_prior.validate(config)  # Unknown toy prompts, empty view bins.


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
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
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
      os.makedirs(workdir, exist_ok=True)
      tmp = path + '.tmp'
      with open(tmp, 'w') as f:
        json.dump(new, f, indent=2)
      os.replace(tmp, path)
    except OSError as e:
      raise errors.UserError(
          f'workdir {workdir} cannot be written ({e.strerror}); pass a '
          '--workdir you can write to.') from None


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to `<workdir>/config.json`."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise errors.UserError(
        f'{path} does not exist; pass the --workdir of a training run.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# ---------------------------------------------------------------------------
# The loop.

def _format_eta(seconds: float) -> str:
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
  rows = [[], [], [], []]
  for i in range(num_views):
    cam = jax.tree.map(lambda a: a[i], cams)
    out = render.render_image(model, params, cam, res, config.render)
    tex = render.render_image(model, params, cam, res, config.render,
                              shading.lambertian(textureless=True))
    rows[0].append(np.asarray(out['rgb']))
    rows[1].append(export.normals_to_rgb(np.asarray(out['normals']),
                                         np.asarray(out['opacity']),
                                         np.asarray(cam.rotation)))
    rows[2].append(np.asarray(tex['rgb']))
    rows[3].append(np.repeat(np.asarray(out['opacity'])[..., None], 3, -1))
  return np.clip(np.concatenate([np.concatenate(r, 1) for r in rows], 0),
                 0, 1)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainState:
  """Trains a NeRF for `config.prompt`, resuming from `workdir` if it can.

  Writes `config.json`, checkpoints, TensorBoard events, preview PNGs and, at
  the end (`export.at_end`), turntables and meshes under `workdir/export`.

  Returns:
    The final train state.
  """
  validate_config(config)
  prepare_workdir(config, workdir)
  is_host0 = jax.process_index() == 0

  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  model = field.make_model(config)
  tx = make_optimizer(config)
  logging.info('Loading the prior %s.', config.guidance.model)
  prior = replicate(guidance.load_prior(config), mesh)

  state, base_key = initial_state(config.seed, model, tx, mesh)
  ckpt = checkpoint_lib.Checkpointer(workdir, config.checkpoint.keep)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(checkpoint_lib.abstract_like(state, replicated))
    logging.info('Resumed from step %d in %s.', int(state.step),
                 ckpt.directory)
  train_step = make_train_step(config, model, tx, mesh)

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
      state, metrics = train_step(state, prior, base_key)
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
            _format_eta((num_steps - step) / max(rate, 1e-9)))
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
        grid = preview_grid(model, state.params, config)
        _write_preview(grid, workdir, step)
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
    paths = export.export_all(config, model, state.params,
                              os.path.join(workdir, 'export'))
    logging.info('Exported %d files to %s.', len(paths),
                 os.path.join(workdir, 'export'))
  return state


def _write_preview(grid: np.ndarray, workdir: str, step: int) -> None:
  export.write_png(grid, os.path.join(workdir, 'previews',
                                      f'step_{step:07d}.png'))


def load_trained(workdir: str, step=None):
  """The config, model and parameters of a run's checkpoint.

  Args:
    workdir: the run's --workdir.
    step: checkpoint step; the newest when None.

  Returns:
    (config, model, params, step).
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
    tx = make_optimizer(config)
    mesh = make_mesh()
    abstract, _ = jax.eval_shape(
        lambda: initial_state(config.seed, model, tx, mesh))
    state = ckpt.restore(
        checkpoint_lib.abstract_like(abstract, NamedSharding(mesh, P())),
        step)
  finally:
    ckpt.close()
  return config, model, state.params, int(state.step)
