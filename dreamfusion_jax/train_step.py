"""The train step: one jitted, pure, data-parallel SDS update.

One step (DESIGN.md section 2):
  1. key = fold_in(fold_in(base_key, step), global view index) for every view,
     so each view's camera, light, shading mode, samples, t and noise depend
     only on (seed, step, view): a resumed run continues exactly, and one
     device with 4 views equals 4 devices with 1 view each.
  2. Every occupancy_update_every steps the occupancy grid is updated from
     the field (`occupancy.py`; the same on every device), and the views'
     samples fall in its occupied cells (render.sampler = 'occupancy').
     Each device renders its `batch_per_device` views, computes the SDS
     surrogate through the frozen prior and the regularisers (`batch_loss`).
  3. Gradients are averaged over every device (`lax.pmean` inside
     `jax.shard_map` over the 1-D mesh 'data'); the optax update follows.
     A non-finite loss or gradient leaves params and optimiser state as they
     were and counts a bad step.

Also here: the train state (what a checkpoint holds), the mesh and
replication, and the optimiser.
"""

import functools
from typing import Any

import flax
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dreamfusion_jax import cameras
from dreamfusion_jax import errors
from dreamfusion_jax import guidance
from dreamfusion_jax import losses
from dreamfusion_jax import numerics
from dreamfusion_jax import occupancy
from dreamfusion_jax import render
from dreamfusion_jax import schedules
from dreamfusion_jax import shading
from dreamfusion_jax.guidance import sds
from dreamfusion_jax.nerf import field

AXIS = 'data'
# fold_in data of the occupancy grid's key; view keys use 0, 1, 2, ...
_OCCUPANCY_STREAM = 2**31 - 1


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; this is what is checkpointed.

  Attributes:
    step: scalar int32, completed updates.
    params: NeRF parameters.
    opt_state: optax state.
    bad_steps: scalar int32, consecutive non-finite updates skipped.
    skipped: scalar int32, all non-finite updates skipped so far.
    occupancy: [R, R, R] float32, the occupancy grid's decayed maximum
      densities (`occupancy.py`); [1, 1, 1] and unused with stratified
      samples.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  bad_steps: jax.Array
  skipped: jax.Array
  occupancy: jax.Array


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

  Hash tables get `hashgrid_lr_multiplier` times the field MLP's rate: their
  entries receive sparse, small gradients (Instant-NGP trains them with a
  high rate). The background MLP gets `background_lr_multiplier` times it:
  a background that learns as fast as the object can paint the prompt
  (threestudio trains it at a tenth of the field's rate).
  """
  c = config.optim
  lr = schedules.learning_rate(c, config.num_steps)

  def adam(scale):
    return optax.adam(lambda step: scale * lr(step), b1=c.b1, b2=c.b2,
                      eps=c.eps)

  def label(path, _):
    keys = [getattr(k, 'key', None) for k in path]
    if 'tables' in keys:
      return 'hash'
    return 'background' if 'background_model' in keys else 'mlp'

  tx = optax.multi_transform(
      {'mlp': adam(1.0), 'hash': adam(c.hashgrid_lr_multiplier),
       'background': adam(c.background_lr_multiplier)},
      lambda params: jax.tree_util.tree_map_with_path(label, params))
  if c.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip), tx)
  return tx


def grid_resolution(config: ml_collections.ConfigDict) -> int:
  """Cells per axis of the train state's occupancy grid (1 when unused)."""
  r = config.render
  return r.occupancy_resolution if r.sampler == 'occupancy' else 1


def initial_state(seed: int, model, tx, mesh, grid_resolution: int = 1):
  """A fresh TrainState and the base key, both replicated on `mesh`.

  The seed is split into the parameters' init key and the base key of
  every step's randomness. The occupancy grid starts all occupied.
  """
  return initial_states([seed], model, tx, mesh, grid_resolution)[0]


def initial_states(seeds, model, tx, mesh, grid_resolution: int = 1):
  """`initial_state` of each seed, compiled once for all of them."""
  def make(seed):
    init_key, base_key = jax.random.split(jax.random.key(seed))
    params = field.init_params(init_key, model)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=tx.init(params),
                       bad_steps=jnp.zeros((), jnp.int32),
                       skipped=jnp.zeros((), jnp.int32),
                       occupancy=occupancy.initial_grid(grid_resolution))
    return state, base_key
  make = jax.jit(make, out_shardings=NamedSharding(mesh, P()))
  return [make(jnp.asarray(seed, jnp.uint32)) for seed in seeds]


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


def batch_loss(params, prior, keys, step, *, model, config, occupied=None):
  """SDS + regularisers for a batch of views, each with its own key.

  Args:
    params: NeRF parameters.
    prior: the frozen Prior.
    keys: [B] PRNG keys, one per view: a view's camera, shading mode,
      samples, t and noise depend on its key only.
    step: scalar int.
    occupied: [R, R, R] bool occupancy mask, or None for stratified
      samples (config.render.sampler).

  Returns:
    Scalar loss (mean over views) and a dict of scalar metrics.
  """
  split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
  k_cam, k_shade, k_render, k_sds = (split[:, i] for i in range(4))
  cams = _squeeze(jax.vmap(
      lambda k: cameras.sample_cameras(k, config.camera, 1))(k_cam))
  mode = _squeeze(jax.vmap(
      lambda k: shading.sample(k, step, config.shading, 1))(k_shade))
  r = config.render
  out = render.render_views(
      model, params, cams, mode, key=k_render, resolution=r.resolution,
      num_samples=r.num_samples if occupied is None else r.occupancy_samples,
      scene_radius=r.scene_radius, normals=needs_normals(config),
      normal_mode=r.normals, normal_eps=r.normal_eps,
      field_chunk=r.field_chunk, occupancy=occupied,
      num_candidates=r.occupancy_candidates)
  rgb = out['rgb']
  use_bg = jnp.zeros(keys.shape[:1], bool)
  if config.shading.random_background_prob > 0:
    use_bg, bg_colors = _squeeze(jax.vmap(
        lambda k: shading.random_backgrounds(jax.random.fold_in(k, 1),
                                             config.shading, 1))(k_shade))
    rgb = shading.replace_background(rgb, out['opacity'], out['background'],
                                     use_bg, bg_colors)
  g = config.guidance
  t_max = schedules.t_max(step, g, config.num_steps)

  def one_view(image, azimuth, elevation, key):
    loss, aux = sds.sds_loss(prior, image[None], azimuth[None],
                             elevation[None], key, scale=g.scale,
                             t_min=g.t_min, t_max=t_max,
                             weighting=g.weighting,
                             negative_view_prompts=g.negative_view_prompts,
                             view_interpolation=g.view_interpolation,
                             perp_neg=guidance.perp_neg_weights(g))
    return loss[0], jax.tree.map(lambda a: a[0], aux)

  sds_loss, aux = jax.vmap(one_view)(rgb, cams.azimuth,
                                     cams.elevation, k_sds)
  orient = losses.orientation(out['weights'], out['sample_normals'],
                              out['directions'],
                              config.loss.orientation_normalize)
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
      'train/random_background': jnp.mean(use_bg.astype(jnp.float32)),
      'schedule/orientation_weight': w_orient,
      'schedule/t_max': t_max,
      'schedule/distortion_weight': w_distortion,
  }
  return total, metrics


def _object_update(state: TrainState, prior, base_key, step, *, model, tx,
                   config, first_view, device_mean):
  """One object's SDS update on this device: (new state, metrics).

  Args:
    state: the object's TrainState.
    prior: the frozen Prior (this object's embeddings).
    base_key: the object's base key.
    step: scalar int, the step all objects are at (unbatched, so that the
      occupancy update's `cond` stays a branch under vmap).
    first_view: global index of this device's first view.
    device_mean: averages a pytree over the devices that share the object
      (`lax.pmean`), or None when one device holds all its views.
  """
  batch = config.batch_per_device
  r = config.render
  step_key = jax.random.fold_in(base_key, step)
  keys = jax.vmap(lambda i: jax.random.fold_in(step_key, first_view + i))(
      jnp.arange(batch))

  grid, occupied = state.occupancy, None
  if r.sampler == 'occupancy':
    def density_fn(points):
      return model.apply(state.params, points,
                         method=model.density_and_albedo)[0]

    def update(grid):
      # The same key on every device, so every device holds the same grid.
      key = jax.random.fold_in(step_key, _OCCUPANCY_STREAM)
      return occupancy.update(grid, density_fn, key, r.scene_radius,
                              r.occupancy_decay,
                              r.field_chunk or numerics.DEFAULT_CHUNK)

    due = step % r.occupancy_update_every == 0
    grid = jax.lax.cond(due, update, lambda grid: grid, state.occupancy)
    occupied = occupancy.occupied(grid, r.occupancy_threshold)
  loss_fn = functools.partial(batch_loss, prior=prior, keys=keys, step=step,
                              model=model, config=config, occupied=occupied)
  # A progressive hash grid's later levels give nothing and learn nothing.
  active = functools.partial(field.active_params, step=step, config=config)
  params = state.params
  if device_mean is not None:
    # The params are replicated (the same on every device); the gradient of
    # a replicated input of shard_map is already summed over the devices.
    # Marked as varying, they get this device's own gradient instead, which
    # pmean then averages.
    params = jax.lax.pcast(params, AXIS, to='varying')
  grads, metrics = jax.grad(lambda p: loss_fn(active(p)), has_aux=True)(
      params)
  if device_mean is not None:
    grads, metrics = device_mean(grads), device_mean(metrics)

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
      skipped=state.skipped + jnp.where(finite, 0, 1),
      occupancy=grid)
  if occupied is not None:
    metrics['render/occupied_fraction'] = jnp.mean(
        occupied.astype(jnp.float32))
  metrics['train/grad_norm'] = optax.global_norm(grads)
  metrics['train/finite'] = finite.astype(jnp.float32)
  metrics['schedule/learning_rate'] = schedules.learning_rate(
      config.optim, config.num_steps)(step)
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, model, tx, mesh):
  """Builds `train_step(state, prior, base_key) -> (state, metrics)`, jitted.

  `state` is donated. Every input and output is replicated over the mesh;
  inside, each device works on its own views and gradients are pmean-ed.
  """
  def per_device(state: TrainState, prior, base_key):
    first = jax.lax.axis_index(AXIS) * config.batch_per_device
    return _object_update(state, prior, base_key, state.step, model=model,
                          tx=tx, config=config, first_view=first,
                          device_mean=lambda x: jax.lax.pmean(x, AXIS))

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P()),
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


def object_specs(prior_axes):
  """shard_map specs of a batched prior: object-axis leaves split over the
  mesh, shared leaves (None in `prior_axes`) replicated."""
  return jax.tree.map(lambda a: P() if a is None else P(AXIS), prior_axes,
                      is_leaf=lambda a: a is None)


def make_object_train_step(config: ml_collections.ConfigDict, model, tx,
                           mesh, prior_axes):
  """Builds the step of O objects trained together, jitted:

    step(states, prior, base_keys) -> (states, metrics)

  `states` and `base_keys` have a leading object axis of length O, split
  over the mesh's devices (O a multiple of the device count); `prior` is a
  batched prior whose leaves marked 0 in `prior_axes` (embeddings, the toy
  prior's images) have that axis too and whose others (network weights) are
  shared. On a device, its objects are vmapped: every object renders its own
  `batch_per_device` views and one batched prior call per step serves them
  all. An object's views live on one device and use view indices
  0..batch_per_device-1, so each object follows the single run of its
  prompt and seed on one device. `states` is donated; `metrics` are [O].
  """
  def one_object(state, prior, base_key, step):
    return _object_update(state, prior, base_key, step, model=model, tx=tx,
                          config=config, first_view=0, device_mean=None)

  def per_device(states, prior, base_keys):
    # Every object is at the same step; an unbatched step keeps the
    # occupancy update a branch instead of a select of both sides.
    step = states.step[0]
    return jax.vmap(one_object, in_axes=(0, prior_axes, 0, None))(
        states, prior, base_keys, step)

  sharded = jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(AXIS), object_specs(prior_axes), P(AXIS)),
      out_specs=(P(AXIS), P(AXIS)))
  return jax.jit(sharded, donate_argnums=(0,))


def validate_optim(optim_config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for an invalid `optim` group."""
  if optim_config.learning_rate <= 0:
    raise errors.UserError(
        f'optim.learning_rate = {optim_config.learning_rate} must be '
        'positive.')
  for name in ('hashgrid_lr_multiplier', 'background_lr_multiplier',
               'grad_clip'):
    if optim_config[name] < 0:
      raise errors.UserError(
          f'optim.{name} = {optim_config[name]} is negative; use 0 or more.')
