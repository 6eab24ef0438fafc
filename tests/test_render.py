"""Volume rendering, shading and field properties."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dreamfusion_jax import cameras
from dreamfusion_jax import errors
from dreamfusion_jax import render
from dreamfusion_jax import shading
from dreamfusion_jax.nerf import field


# Jitted: eager op-by-op execution of a network is what makes tests slow.
render_views = jax.jit(
    render.render_views,
    static_argnames=('model', 'resolution', 'num_samples', 'scene_radius'))


class AnalyticTrunk(nn.Module):
  """A field with a known raw density; albedo varies with position."""

  raw_density: Callable

  def __call__(self, x):
    return jnp.concatenate([self.raw_density(x)[..., None], 3.0 * x], -1)


def analytic_model(raw_density, background='constant', color=(0.3, 0.6, 0.9)):
  bg = field.Background(kind=background, num_frequencies=2, width=8,
                        color=color)
  return field.NeRF(trunk=AnalyticTrunk(raw_density), background_model=bg,
                    blob_density=0.0, blob_radius=0.2)


def render_ray(model, params, origin, direction, light=(0.0, 0.0, 5.0),
               mode=None, num_samples=64, key=None):
  origin = jnp.asarray(origin, jnp.float32)[None]
  direction = jnp.asarray(direction, jnp.float32)[None]
  light = jnp.asarray(light, jnp.float32)[None]
  mode = mode or shading.albedo_only((1,))
  return render.render_rays(model, params, origin, direction, light, mode,
                            key=key, num_samples=num_samples,
                            scene_radius=1.4)


@pytest.mark.parametrize('sigma', [0.5, 3.0, 20.0])
def test_slab_opacity_is_beer_lambert(sigma):
  # A slab |x| < 0.35 of constant density on a ray along -x from x = 3: the
  # 64 bins between the sphere's entry (x = 1.4) and exit align with it.
  raw = lambda x: jnp.where(jnp.abs(x[..., 0]) < 0.35, jnp.log(sigma), -60.0)
  model = analytic_model(raw)
  out = render_ray(model, {}, (3.0, 0.0, 0.0), (-1.0, 0.0, 0.0))
  np.testing.assert_allclose(out['opacity'], 1 - np.exp(-sigma * 0.7),
                             rtol=1e-5)


def test_huge_density_at_one_sample_gives_one_hot_weights():
  density = jnp.array([0.0, 0.0, 1e6, 5.0, 5.0])
  weights = render.compositing_weights(density, jnp.full(5, 0.1))
  np.testing.assert_allclose(weights, [0, 0, 1, 0, 0], atol=1e-6)


def test_empty_space_shows_the_background_exactly():
  model = analytic_model(lambda x: jnp.full(x.shape[:-1], -80.0))
  out = render_ray(model, {}, (0.2, -2.0, 0.3), (0.0, 1.0, 0.0))
  np.testing.assert_array_equal(out['rgb'][0], jnp.array([0.3, 0.6, 0.9]))
  assert float(out['opacity'][0]) == 0.0
  # And a ray that misses the bounding sphere altogether.
  out = render_ray(model, {}, (0.0, 3.0, 0.0), (1.0, 0.0, 0.0))
  np.testing.assert_array_equal(out['rgb'][0], jnp.array([0.3, 0.6, 0.9]))


def test_background_mlp_is_composited_behind_empty_space():
  model = analytic_model(lambda x: jnp.full(x.shape[:-1], -80.0), 'mlp')
  params = model.init(jax.random.key(0), jnp.zeros((1, 3)), jnp.ones((1, 3)))
  d = jnp.array([[0.0, 1.0, 0.0]])
  out = render_ray(model, params, (0.2, -2.0, 0.3), d[0])
  bg = model.apply(params, d, method=field.NeRF.background)
  np.testing.assert_allclose(out['rgb'], bg, atol=1e-7)


def test_normals_of_a_smooth_ball_point_outward():
  model = analytic_model(lambda x: 8.0 - 40.0 * jnp.sum(x * x, -1))
  cams = cameras.sample_cameras(jax.random.key(0),
                                default.get_config().camera, 4)
  out = render_views(model, {}, cams, shading.albedo_only((4,)),
                            key=jax.random.key(1), resolution=16,
                            num_samples=64, scene_radius=1.4)
  origins, dirs = cameras.generate_rays(cams, 16)
  hit = out['opacity'] > 0.99
  assert int(hit.sum()) > 50
  # Compare each sample's normal with the radial direction at that sample,
  # where the weights put their mass (the surface region).
  t_mid = out['depth'] / jnp.maximum(out['opacity'], 1e-6)
  surface = origins + t_mid[..., None] * dirs
  radial = surface / jnp.linalg.norm(surface, axis=-1, keepdims=True)
  composite = out['normals'] / jnp.maximum(
      jnp.linalg.norm(out['normals'], axis=-1, keepdims=True), 1e-9)
  assert float(jnp.sum(composite * radial, -1)[hit].min()) > 0.99
  # Per sample, wherever the weights are non-negligible.
  points = origins[..., None, :] + out['t'][..., None] * dirs[..., None, :]
  radial = points / jnp.linalg.norm(points, axis=-1, keepdims=True)
  cos = jnp.sum(out['sample_normals'] * radial, -1)
  assert float(jnp.where(out['weights'] > 1e-3, cos, 1.0).min()) > 0.99


def test_albedo_render_without_normals_matches_the_full_render():
  # Albedo shading ignores normals, so skipping their backward pass must
  # change nothing else, value or gradient.
  config = default.get_config()
  config.nerf.mlp_width, config.nerf.mlp_blocks = 16, 1
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  cams = cameras.sample_cameras(jax.random.key(1), config.camera, 2)

  def loss(params, normals):
    out = render.render_views(model, params, cams, shading.albedo_only((2,)),
                              key=jax.random.key(2), resolution=8,
                              num_samples=16, scene_radius=1.4,
                              normals=normals)
    return jnp.sum(out['rgb'] ** 2) + jnp.sum(out['opacity']), out

  (value, with_n), grad = jax.value_and_grad(loss, has_aux=True)(params, True)
  (value_no, without_n), grad_no = jax.value_and_grad(
      loss, has_aux=True)(params, False)
  np.testing.assert_allclose(value_no, value, rtol=1e-6)
  for name in ('rgb', 'opacity', 'depth', 'weights'):
    np.testing.assert_allclose(without_n[name], with_n[name], rtol=1e-5,
                               atol=1e-7)
  assert float(jnp.abs(with_n['sample_normals']).max()) > 0.5
  assert float(jnp.abs(without_n['sample_normals']).max()) == 0.0
  for a, b in zip(jax.tree.leaves(grad_no), jax.tree.leaves(grad)):
    # float32 sums in another order: compare against each leaf's scale.
    np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(b).max()))


def test_textureless_renders_are_grey_and_albedo_ignores_light():
  config = default.get_config()
  config.nerf.mlp_width = 32
  config.nerf.mlp_blocks = 1
  config.nerf.background = 'constant'
  config.nerf.background_color = (0.5, 0.5, 0.5)
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  cams = cameras.sample_cameras(jax.random.key(1), config.camera, 2)
  kwargs = dict(key=None, resolution=12, num_samples=32, scene_radius=1.4)
  grey = render_views(model, params, cams,
                             shading.lambertian((2,), textureless=True),
                             **kwargs)['rgb']
  np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-6)
  np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)
  lit = render_views(model, params, cams, shading.lambertian((2,)),
                            **kwargs)['rgb']
  assert float(jnp.abs(lit[..., 0] - lit[..., 1]).max()) > 1e-3
  moved = cams.replace(light_position=-cams.light_position)
  a = render_views(model, params, cams, shading.albedo_only((2,)),
                          **kwargs)['rgb']
  b = render_views(model, params, moved, shading.albedo_only((2,)),
                          **kwargs)['rgb']
  np.testing.assert_array_equal(a, b)
  c = render_views(model, params, moved, shading.lambertian((2,)),
                          **kwargs)['rgb']
  assert float(jnp.abs(c - lit).max()) > 1e-3  # Lit renders do see it.


def test_lambertian_shading_formula():
  albedo = jnp.array([[0.5, 0.2, 1.0]])
  normals = jnp.array([[0.0, 0.0, 1.0]])
  point = jnp.zeros((1, 3))
  light = jnp.array([[0.0, 1.0, 1.0]])  # 45 degrees from the normal.
  c = shading.shade(albedo, normals, point, light, shading.lambertian((1,)))
  np.testing.assert_allclose(c, albedo * (0.9 * np.sqrt(0.5) + 0.1),
                             rtol=1e-6)
  behind = shading.shade(albedo, normals, point, -light,
                         shading.lambertian((1,)))
  np.testing.assert_allclose(behind, albedo * 0.1, rtol=1e-6)


def test_shading_mix_follows_the_schedule():
  c = default.get_config().shading
  early = shading.sample(jax.random.key(0), 10, c, 10000)
  np.testing.assert_array_equal(early.ambient, 1.0)
  np.testing.assert_array_equal(early.textureless, 0.0)
  late = shading.sample(jax.random.key(0), c.albedo_steps, c, 100000)
  lit = np.asarray(late.diffuse) > 0
  tex = np.asarray(late.textureless) > 0
  assert abs(lit.mean() - 0.75) < 0.01
  assert abs(tex.mean() - 0.375) < 0.01
  assert not np.any(tex & ~lit)


def test_random_backgrounds_replace_the_mlp_behind_empty_space():
  c = default.get_config().shading
  c.random_background_prob = 0.3
  use, colors = shading.random_backgrounds(jax.random.key(1), c, 100000)
  assert abs(np.mean(use) - 0.3) < 0.01
  assert colors.shape == (100000, 3)
  assert abs(np.mean(colors) - 0.5) < 0.01 and np.all(np.ptp(colors, 0) > 0.9)
  palette = ((0.0, 0.0, 0.0), (0.2, 0.4, 0.6))
  c.random_background_colors = palette
  _, colors = shading.random_backgrounds(jax.random.key(2), c, 1000)
  hits = [np.all(np.asarray(colors) == np.float32(p), -1) for p in palette]
  assert np.all(hits[0] | hits[1]) and 0.4 < np.mean(hits[1]) < 0.6
  # Composited: C = sum w c + (1 - o) bg. Opaque pixels keep their colour,
  # empty ones show the new colour, and a half-opaque one is halfway.
  key = jax.random.key(3)
  surface = jax.random.uniform(key, (2, 1, 3, 3))
  opacity = jnp.asarray([[[0.0, 0.5, 1.0]]] * 2)
  background = jnp.full((2, 1, 3, 3), 0.9)
  rgb = surface * opacity[..., None] + (1 - opacity[..., None]) * background
  use = jnp.asarray([True, False])
  colors = jnp.asarray([[0.1, 0.2, 0.3]] * 2)
  out = np.asarray(shading.replace_background(rgb, opacity, background, use,
                                              colors))
  np.testing.assert_allclose(out[1], rgb[1], atol=1e-7)
  np.testing.assert_allclose(out[0, 0, 0], [0.1, 0.2, 0.3], atol=1e-6)
  np.testing.assert_allclose(out[0, 0, 2], surface[0, 0, 2], atol=1e-6)
  np.testing.assert_allclose(
      out[0, 0, 1], 0.5 * surface[0, 0, 1] + 0.5 * np.asarray([.1, .2, .3]),
      atol=1e-6)


@pytest.mark.parametrize('field_kind', ['mlp', 'hashgrid'])
def test_outputs_and_gradients_are_finite_for_extreme_inputs(field_kind):
  config = default.get_config()
  config.nerf.field = field_kind
  config.nerf.mlp_width = 16
  config.nerf.mlp_blocks = 1
  config.nerf.hash_levels = 4
  config.nerf.hash_log2_table_size = 10
  config.nerf.blob_density = 60.0  # Saturated density at the centre.
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  origins = jnp.array([[0.0, 0.0, 0.0], [1e4, 0, 0], [0, 0, 1.4],
                       [0.0, 5.0, 0.0], [1e-8, 1e-8, 1e-8]])
  dirs = jnp.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 0, -1.0], [1.0, 0, 0],
                    [0, 1.0, 0]])
  light = jnp.zeros_like(origins)  # Light inside the object, at samples.

  def loss(params):
    out = render.render_rays(model, params, origins, dirs, light,
                             shading.lambertian((5,)), key=jax.random.key(1),
                             num_samples=16, scene_radius=1.4)
    return sum(jnp.sum(v) for v in out.values())

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert bool(jnp.isfinite(value))
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_render_is_traced_once_under_jit():
  model = analytic_model(lambda x: 2.0 - jnp.sum(x * x, -1))
  traces = []

  @jax.jit
  def f(key, cams, mode):
    traces.append(1)
    return render.render_views(model, {}, cams, mode, key=key, resolution=8,
                               num_samples=8, scene_radius=1.4)['rgb']

  config = default.get_config()
  for i in range(4):
    cams = cameras.sample_cameras(jax.random.key(i), config.camera, 2)
    f(jax.random.key(i), cams, shading.sample(jax.random.key(i), i * 1000,
                                              config.shading, 2))
  assert len(traces) == 1


def test_chunked_image_render_matches_unchunked():
  config = default.get_config()
  config.nerf.mlp_width = 16
  config.nerf.mlp_blocks = 1
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  cam = jax.tree.map(lambda a: a[0], cameras.orbit_cameras(1, 20.0, 1.3, 1.0))
  config.render.num_samples = 16
  config.render.chunk = 100  # 20x20 = 4 chunks exactly; 7 leaves padding.
  full = render.render_image(model, params, cam, 20, config.render)
  config.render.chunk = 7
  chunked = render.render_image(model, params, cam, 20, config.render)
  batch = jax.tree.map(lambda a: a[None], cam)
  direct = render_views(model, params, batch, shading.albedo_only((1,)),
                        key=None, resolution=20, num_samples=16,
                        scene_radius=1.4)
  for name in ('rgb', 'opacity', 'depth'):
    np.testing.assert_allclose(chunked[name], full[name], atol=1e-5)
    np.testing.assert_allclose(full[name], direct[name][0], atol=1e-5)


def test_hash_encoding_interpolates_its_grid_vertices():
  enc = field.encoding.HashEncoding(num_levels=3, features=2,
                                    log2_table_size=8, min_resolution=2,
                                    max_resolution=16, bound=1.0)
  params = enc.init(jax.random.key(0), jnp.zeros((1, 3)))
  # Linear along a cell edge: the midpoint is the mean of its endpoints.
  a = jnp.array([[-1.0, -1.0, -1.0]])
  res = field.encoding.level_resolutions(3, 2, 16)
  h = 2.0 / res[-1]
  b = a + jnp.array([[h, 0.0, 0.0]])
  fa, fb, fm = (enc.apply(params, p) for p in (a, b, (a + b) / 2))
  np.testing.assert_allclose(fm[:, -2:], (fa[:, -2:] + fb[:, -2:]) / 2,
                             atol=1e-7)
  # Finest level (17^3 > 256 entries) uses the hash; coarse ones are dense.
  assert (res[0] + 1) ** 3 <= 256 < (res[-1] + 1) ** 3


def test_unknown_field_and_bad_resolution_are_refused():
  config = default.get_config()
  config.nerf.field = 'voxels'
  with pytest.raises(errors.UserError, match='nerf.field'):
    field.make_model(config)
  config = default.get_config()
  config.render.resolution = 0
  with pytest.raises(errors.UserError, match='render.resolution'):
    render.validate(config.render)
  for name, value in (('random_background_prob', 1.5),
                      ('random_background_colors', ((0.0, 0.0),)),
                      ('random_background_colors', ((0.0, 0.0, 2.0),))):
    config = default.get_config()
    config.shading[name] = value
    with pytest.raises(errors.UserError, match=f'shading.{name}'):
      shading.validate(config.shading)
