"""What the train step's loss hands the prior, and its optimiser."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from configs import tiny
from dreamfusion_jax import cameras
from dreamfusion_jax import schedules
from dreamfusion_jax import train_step
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.nerf import field


def _view_reporting_prior():
  """A prior whose SDS loss for a view is 1 + the index of its view prompt.

  `encode` maps every render to x = (1, 2, 3, 4) (one pixel, four
  channels); `predict_noise` recovers the true noise from z_t and adds the
  embedding, which is one-hot in VIEWS order. With guidance scale 1 and
  uniform w(t), eps_hat - eps is the one-hot row of the view prompt the loss
  chose, and the surrogate sum((eps_hat - eps) x) is x[view] = view + 1.
  """
  schedule = jnp.asarray(prior_lib.noise_schedule(1000, 0.00085, 0.012))

  def encode(params, images):
    return jnp.broadcast_to(params['x'], (images.shape[0], 1, 1, 4))

  def predict_noise(params, z_t, t, embedding):
    abar = params['alphas_cumprod'][t][:, None, None, None]
    eps = (z_t - jnp.sqrt(abar) * params['x']) / jnp.sqrt(1.0 - abar)
    return eps + embedding[:, None, None, :]

  return prior_lib.Prior(
      params={'x': jnp.arange(1.0, 5.0), 'alphas_cumprod': schedule},
      view_embeddings=jnp.eye(4), uncond_embedding=jnp.zeros(4),
      alphas_cumprod=schedule, encode=encode, predict_noise=predict_noise)


def test_each_view_is_guided_by_the_prompt_of_its_own_camera():
  config = tiny.get_config()
  config.guidance.scale = 1.0
  config.guidance.weighting = 'uniform'
  # Albedo-only renders without normals: only the cameras matter here.
  config.shading.lit_prob = 0.0
  config.loss.orientation_weight_start = 0.0
  config.loss.orientation_weight_end = 0.0
  config.camera.elevation_range = (-10.0, 90.0)  # Overhead views too.
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  keys = jax.random.split(jax.random.key(1), 16)

  @jax.jit
  def sds_per_view(params, prior, keys):
    def one_view(key):
      _, metrics = train_step.batch_loss(params, prior, key[None],
                                         jnp.int32(0), model=model,
                                         config=config)
      return metrics['train/sds']
    return jax.vmap(one_view)(keys)

  seen = np.asarray(sds_per_view(params, _view_reporting_prior(), keys)) - 1
  # The cameras batch_loss draws: each view's key splits into (camera,
  # shading, render, sds) keys.
  camera_keys = jax.vmap(lambda k: jax.random.split(k, 4)[0])(keys)
  cams = jax.vmap(lambda k: cameras.sample_cameras(k, config.camera, 1))(
      camera_keys)
  want = np.asarray(prior_lib.view_index(cams.azimuth[:, 0],
                                         cams.elevation[:, 0]))
  assert len(set(want.tolist())) == 4, want  # Every view prompt is used.
  np.testing.assert_allclose(seen, want, atol=1e-2)


def test_hash_tables_learn_faster_by_the_multiplier():
  config = default.get_config()
  config.nerf.field = 'hashgrid'
  config.nerf.hash_levels = 2
  config.nerf.hash_log2_table_size = 6
  config.nerf.hash_max_resolution = 32
  config.nerf.hash_mlp_width = 8
  config.nerf.background_width = 8
  config.optim.hashgrid_lr_multiplier = 10.0
  params = field.init_params(jax.random.key(0), field.make_model(config))
  tx = train_step.make_optimizer(config)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  grads = jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape) for k, (_, x) in zip(keys, leaves)])
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # From zero moments Adam's bias-corrected first update is
  # -lr g / (|g| + eps) = -lr sign(g), whatever clipping did to |g|.
  lr = float(schedules.learning_rate(config.optim, config.num_steps)(0))
  rates = {}
  for (path, _), g, u in zip(leaves, jax.tree.leaves(grads),
                             jax.tree.leaves(updates)):
    is_table = any(getattr(k, 'key', None) == 'tables' for k in path)
    rate = config.optim.hashgrid_lr_multiplier if is_table else 1.0
    np.testing.assert_allclose(u, -rate * lr * np.sign(g), rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))
    rates[is_table] = rate
  assert set(rates) == {True, False}  # Both kinds of parameters exist.
