"""The occupancy grid, samples placed only where it is occupied, and normals."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from dreamfusion_jax import cameras
from dreamfusion_jax import checkpoint
from dreamfusion_jax import errors
from dreamfusion_jax import occupancy
from dreamfusion_jax import priors
from dreamfusion_jax import render
from dreamfusion_jax import shading
from dreamfusion_jax import train_step
from dreamfusion_jax.nerf import field
from dreamfusion_jax.toy import metrics

RADIUS = 0.5
BOUND = 1.0


class BallTrunk(nn.Module):
  """raw density sharpness * (RADIUS - |x|): a ball, dense inside."""

  sharpness: float = 30.0

  @nn.compact
  def __call__(self, x):
    raw = self.sharpness * (RADIUS - jnp.linalg.norm(x, axis=-1))
    albedo_logits = jnp.zeros(x.shape[:-1] + (3,))
    return jnp.concatenate([raw[..., None], albedo_logits], axis=-1)


def _ball_model(sharpness=30.0):
  background = field.Background(kind='constant', num_frequencies=0, width=1,
                                color=(1.0, 1.0, 1.0))
  model = field.NeRF(trunk=BallTrunk(sharpness), background_model=background,
                     blob_density=0.0, blob_radius=0.2)
  return model, field.init_params(jax.random.key(0), model)


def _ball_grid(resolution=32, sharpness=30.0):
  model, params = _ball_model(sharpness)
  density_fn, _ = field.point_functions(model, params)
  grid = occupancy.update(occupancy.initial_grid(resolution), density_fn,
                          jax.random.key(1), BOUND, decay=0.95, chunk=4096)
  return model, params, density_fn, grid


def test_initial_grid_is_all_occupied():
  assert bool(jnp.all(occupancy.occupied(occupancy.initial_grid(8), 1e6)))


def test_update_marks_the_ball_and_its_neighbours():
  _, _, _, grid = _ball_grid()
  mask = np.asarray(occupancy.occupied(grid, 0.1))
  r = np.linalg.norm(np.asarray(occupancy.cell_centers(32, BOUND)), axis=-1)
  cell = 2.0 * BOUND / 32
  # Every cell whose centre is inside the ball is occupied. Density 0.1
  # ends at r = RADIUS + ln(10) / 30; a neighbour's jittered point lies
  # within 1.5 sqrt(3) cells of a centre.
  assert mask[r < RADIUS].all()
  reach = RADIUS + np.log(10.0) / 30.0 + 1.5 * np.sqrt(3.0) * cell
  assert not mask[r > reach].any()
  assert 0.05 < mask.mean() < 0.2


def test_update_decays_cells_that_empty():
  grid = jnp.full((4, 4, 4), 8.0)
  empty = lambda p: jnp.zeros(p.shape[:-1])
  once = occupancy.update(grid, empty, jax.random.key(0), BOUND, 0.5, 64)
  np.testing.assert_allclose(once, 4.0)
  full = lambda p: jnp.full(p.shape[:-1], 100.0)
  np.testing.assert_allclose(
      occupancy.update(grid, full, jax.random.key(0), BOUND, 0.5, 64), 100.0)


def _rays(num=64, key=0):
  k1, k2 = jax.random.split(jax.random.key(key))
  origins = 2.5 * jax.random.normal(k1, (num, 3))
  origins = origins / jnp.linalg.norm(origins, axis=-1, keepdims=True) * 2.5
  target = 0.4 * jax.random.normal(k2, (num, 3))
  directions = target - origins
  directions /= jnp.linalg.norm(directions, axis=-1, keepdims=True)
  return origins, directions


def test_samples_lie_in_occupied_cells_in_order():
  _, _, _, grid = _ball_grid()
  mask = occupancy.occupied(grid, 0.1)
  origins, directions = _rays()
  near, far = render.intersect_sphere(origins, directions, BOUND)
  t, delta = occupancy.sample_along_rays(
      jax.random.key(2), mask, origins, directions, near, far, 16, 128,
      BOUND)
  hit = np.asarray(delta[:, 0] > 0)
  assert hit.sum() > 10  # Most rays aim at the ball.
  assert (np.diff(np.asarray(t), axis=-1) >= 0).all()
  # The candidate bins whose centres lie in occupied cells.
  width = np.asarray((far - near) / 128)
  centers = np.asarray(near)[:, None] + (np.arange(128) + 0.5) * width[:, None]
  occupied_bins = np.asarray(occupancy._lookup(  # pylint: disable=protected-access
      mask, origins[:, None] + centers[..., None] * directions[:, None],
      BOUND))
  # Every sample of a ray that meets the grid falls in an occupied bin.
  t, near, width = np.asarray(t)[hit], np.asarray(near)[hit], width[hit]
  index = np.clip(((t - near[:, None]) / width[:, None]).astype(int), 0, 127)
  in_occupied = np.take_along_axis(occupied_bins[hit], index, axis=-1)
  assert in_occupied.all()
  # delta sums to the ray's occupied length.
  np.testing.assert_allclose(np.asarray(delta.sum(-1))[hit],
                             occupied_bins[hit].sum(-1) * width, rtol=1e-5)


def test_full_grid_gives_the_stratified_samples():
  mask = jnp.ones((8, 8, 8), bool)
  origins, directions = _rays(8)
  origins = origins * 0.3  # Inside the cube, so every bin is occupied.
  near, far = render.intersect_sphere(origins, directions, 0.5)
  key = jax.random.key(3)
  t, delta = occupancy.sample_along_rays(key, mask, origins, directions,
                                         near, far, 12, 64, 0.6)
  t_ref, delta_ref = render.stratified_samples(key, near, far, 12)
  np.testing.assert_allclose(t, t_ref, atol=1e-5)
  np.testing.assert_allclose(delta, delta_ref, atol=1e-6)


def test_occupancy_render_matches_a_dense_render():
  # A sharp ball, which 24 samples across the whole bound alias.
  model, params, _, grid = _ball_grid(sharpness=300.0)
  mask = occupancy.occupied(grid, 0.1)
  cam = cameras.fixed_cameras(jnp.array([30.0]), jnp.array([20.0]),
                              jnp.array([2.5]), jnp.array([1.0]))
  mode = shading.lambertian((1,))
  common = dict(key=None, resolution=24, scene_radius=BOUND, normals=True)
  dense = render.render_views(model, params, cam, mode, num_samples=512,
                              **common)
  coarse = render.render_views(model, params, cam, mode, num_samples=24,
                               **common)
  occ = render.render_views(model, params, cam, mode, num_samples=24,
                            occupancy=mask, num_candidates=128, **common)
  occ_error = np.abs(np.asarray(occ['rgb'] - dense['rgb'])).mean()
  coarse_error = np.abs(np.asarray(coarse['rgb'] - dense['rgb'])).mean()
  # 24 samples on the object beat 24 across the whole bound.
  assert occ_error < 0.01
  assert occ_error < 0.5 * coarse_error


@pytest.mark.parametrize('mode, tolerance_deg', [
    ('autodiff', 0.1), ('central', 0.5), ('forward', 20.0)])
def test_normals_of_a_ball_point_outward(mode, tolerance_deg):
  model, params = _ball_model()
  points = jax.random.normal(jax.random.key(4), (256, 3))
  points = 0.45 * points / jnp.linalg.norm(points, axis=-1, keepdims=True)
  _, _, grad = render.field_outputs(model, params, points, normals=True,
                                    normal_mode=mode, normal_eps=0.01)
  normals = -grad / jnp.linalg.norm(grad, axis=-1, keepdims=True)
  true = points / jnp.linalg.norm(points, axis=-1, keepdims=True)
  angle = np.degrees(np.arccos(np.clip(np.sum(normals * true, -1), -1, 1)))
  assert angle.max() < tolerance_deg


def test_chunked_field_equals_unchunked():
  config = tiny.get_config()
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  points = jax.random.uniform(jax.random.key(1), (5, 7, 3), minval=-1)

  def loss(params, chunk):
    raw, albedo, grad = render.field_outputs(model, params, points,
                                             normals=True, chunk=chunk)
    return jnp.sum(raw) + jnp.sum(albedo) + jnp.sum(grad ** 2)

  whole = jax.value_and_grad(loss)(params, 0)
  chunked = jax.value_and_grad(loss)(params, 8)  # 35 points: 5 chunks.
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked)):
    # Summation order differs between chunks: float32 rounding only.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_normal_angle_metric():
  model, params = _ball_model()
  # The true toy sphere has radius 0.5: the ball's normals are exact.
  density_fn, _ = field.point_functions(model, params)
  assert metrics.normal_angle('a blue sphere', density_fn) < 0.5
  flat = lambda p: jnp.ones(p.shape[:-1])  # No gradient: 90 degrees.
  assert metrics.normal_angle('a blue sphere', flat) == pytest.approx(90.0)
  # Normals of the wrong object: the cube's faces are not the sphere's.
  assert metrics.normal_angle('a red cube', density_fn) > 10.0


def test_train_step_with_occupancy_updates_the_grid():
  config = tiny.get_config()
  config.render.sampler = 'occupancy'
  config.render.occupancy_resolution = 16
  config.render.occupancy_update_every = 2
  # Only the density blob's core (softplus of 10 (1 - r / 0.5), above 5
  # inside r = 0.25) is occupied at the start.
  config.render.occupancy_threshold = 5.0
  mesh = train_step.make_mesh()
  model = field.make_model(config)
  tx = train_step.make_optimizer(config)
  prior = train_step.replicate(priors.load_prior(config), mesh)
  state, key = train_step.initial_state(0, model, tx, mesh,
                                        train_step.grid_resolution(config))
  assert state.occupancy.shape == (16, 16, 16)
  assert bool(jnp.all(jnp.isinf(state.occupancy)))
  step_fn = train_step.make_train_step(config, model, tx, mesh)
  for _ in range(3):
    state, metrics_ = step_fn(state, prior, key)
  assert step_fn._cache_size() == 1  # pylint: disable=protected-access
  assert bool(jnp.all(jnp.isfinite(state.occupancy)))
  assert 0.0 < float(metrics_['render/occupied_fraction']) < 0.5
  assert float(metrics_['train/finite']) == 1.0


def test_a_checkpoint_of_another_train_state_is_one_sentence(tmp_path):
  # E.g. a run written before the train state held the occupancy grid.
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(4, {'params': np.zeros(3, np.float32)})
  ckpt.wait()
  target = {'params': jax.ShapeDtypeStruct((3,), jnp.float32),
            'occupancy': jax.ShapeDtypeStruct((1, 1, 1), jnp.float32)}
  with pytest.raises(errors.UserError, match='another shape.*new --workdir'):
    ckpt.restore(target)
  ckpt.close()
  assert (tmp_path / 'checkpoints' / '4').is_dir()  # Left as it was.
