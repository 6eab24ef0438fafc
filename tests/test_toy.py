"""The toy world: object SDFs, the analytic renderer, the exact prior, metrics.

Run: python -m pytest -q tests/test_toy.py
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dreamfusion_jax import cameras
from dreamfusion_jax import errors
from dreamfusion_jax import shading
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.toy import metrics
from dreamfusion_jax.toy import objects
from dreamfusion_jax.toy import exact_prior
from dreamfusion_jax.toy import raytrace

# Points (inside, outside) of each object, chosen near its boundary.
_INSIDE_OUTSIDE = {
    'a red cube': (
        [[0.0, 0.0, 0.0], [0.39, 0.39, 0.39], [-0.39, 0.0, 0.2]],
        [[0.41, 0.0, 0.0], [0.3, 0.3, 0.41], [0.0, -0.41, -0.39]]),
    'a blue sphere': (
        [[0.49, 0.0, 0.0], [0.0, 0.0, -0.49], [0.28, 0.28, 0.28]],
        [[0.51, 0.0, 0.0], [0.0, 0.0, 0.51], [0.3, 0.3, 0.3]]),
    'a green cone': (
        # Radius at height z is 0.45 (0.45 - z) / 0.9.
        [[0.0, 0.0, 0.44], [0.44, 0.0, -0.44], [0.0, 0.2, 0.0]],
        [[0.0, 0.0, 0.46], [0.0, 0.0, -0.46], [0.24, 0.0, 0.0],
         [0.3, 0.0, 0.2]]),
    'a yellow torus': (
        [[0.45, 0.0, 0.0], [0.0, -0.59, 0.0], [0.31, 0.0, 0.0],
         [0.45, 0.0, 0.14]],
        [[0.0, 0.0, 0.0], [0.29, 0.0, 0.0], [0.61, 0.0, 0.0],
         [0.45, 0.0, 0.16]]),
    'a snowman': (
        # Body, head, and the nose up to near its apex (0.5, 0, 0.3); its
        # radius at x is 0.1 (0.5 - x) / 0.35.
        [[0.0, 0.0, -0.2], [0.0, 0.0, -0.54], [0.0, 0.0, 0.51],
         [0.3, 0.0, 0.3], [0.48, 0.0, 0.3], [0.23, 0.07, 0.3],
         [0.3, 0.0, 0.355]],
        # Past the apex, beside the nose, and the apex's mirror image at -x.
        [[0.52, 0.0, 0.3], [0.35, 0.05, 0.3], [0.3, 0.0, 0.36],
         [-0.48, 0.0, 0.3], [-0.3, 0.0, 0.3], [0.0, 0.0, 0.53]]),
}


def _toy_config(resolution=32, images_per_view=8, supersample=1):
  config = default.get_config()
  config.guidance.model = 'toy'
  config.prompt = 'a snowman'
  config.render.resolution = resolution
  config.toy.images_per_view = images_per_view
  config.toy.supersample = supersample
  return config


@pytest.fixture(scope='module')
def toy():
  """A small toy prior (160 images of 32 x 32) and its config."""
  config = _toy_config()
  return config, exact_prior.make_toy_prior(config)


# Objects.


@pytest.mark.parametrize('name', objects.PROMPTS)
def test_sdf_sign_inside_and_outside(name):
  inside, outside = _INSIDE_OUTSIDE[name]
  assert np.all(np.asarray(objects.sdf(name, jnp.array(inside))) < 0)
  assert np.all(np.asarray(objects.sdf(name, jnp.array(outside))) > 0)


def test_sdf_exact_distances():
  cases = [('a red cube', [0.6, 0.0, 0.0], 0.2),
           ('a red cube', [0.5, 0.5, 0.5], 0.1 * np.sqrt(3.0)),
           ('a red cube', [0.0, 0.0, 0.0], -0.4),
           ('a blue sphere', [0.0, 0.8, 0.0], 0.3),
           ('a green cone', [0.0, 0.0, -0.6], 0.15),
           ('a green cone', [0.0, 0.0, 0.6], 0.15),
           # Nearest point on the slanted side: distance (r + z/2 - 0.225)
           # / sqrt(1.25) from the line r = 0.225 - z / 2.
           ('a green cone', [0.4, 0.0, 0.0], 0.175 / np.sqrt(1.25)),
           ('a yellow torus', [0.0, 0.0, 0.0], 0.3),
           ('a yellow torus', [0.45, 0.0, 0.5], 0.35),
           # On the nose's axis beyond its apex (0.5, 0, 0.3).
           ('a snowman', [0.6, 0.0, 0.3], 0.1),
           ('a snowman', [0.0, 0.0, 0.7], 0.18)]
  for name, point, want in cases:
    got = float(objects.sdf(name, jnp.array(point)))
    assert got == pytest.approx(want, abs=1e-5), (name, point)


@pytest.mark.parametrize('name', objects.PROMPTS)
def test_sdf_is_one_lipschitz_and_eikonal(name):
  # Sphere tracing is only safe for a 1-Lipschitz f; an exact SDF also has
  # |grad f| = 1 away from its medial axis.
  key_p, key_q = jax.random.split(jax.random.key(0))
  p = jax.random.uniform(key_p, (4000, 3), minval=-0.9, maxval=0.9)
  q = p + 0.05 * jax.random.normal(key_q, p.shape)

  @jax.jit
  def check(p, q):
    f = lambda x: objects.sdf(name, x)
    grad = jax.vmap(jax.grad(f))(p)
    return (jnp.abs(f(p) - f(q)), jnp.linalg.norm(p - q, axis=-1), f(p),
            jnp.linalg.norm(grad, axis=-1))

  lhs, rhs, f_p, norm = (np.asarray(a) for a in check(p, q))
  assert np.all(lhs <= rhs + 1e-5)
  assert np.allclose(norm[f_p > 0.01], 1.0, atol=1e-3)


def test_traced_object_index_matches_prompt():
  p = jax.random.uniform(jax.random.key(1), (500, 3), minval=-0.8, maxval=0.8)
  for i, name in enumerate(objects.PROMPTS):
    by_index = jax.jit(objects.sdf)(jnp.int32(i), p)
    np.testing.assert_allclose(by_index, objects.sdf(name, p), atol=1e-6)
    np.testing.assert_array_equal(jax.jit(objects.albedo)(jnp.int32(i), p),
                                  objects.albedo(name, p))


def test_snowman_albedo_nose_orange_body_white():
  got = np.asarray(objects.albedo('a snowman', jnp.array(
      [[0.35, 0.0, 0.3], [0.0, 0.0, 0.52], [-0.22, 0.0, 0.3],
       [0.0, 0.35, -0.2]])))
  np.testing.assert_allclose(got[0], objects.ORANGE)
  np.testing.assert_allclose(got[1:], [objects.WHITE] * 3)


def test_unknown_prompt_is_a_user_error_listing_prompts():
  with pytest.raises(errors.UserError, match='a snowman'):
    objects.sdf('a purple teapot', jnp.zeros((1, 3)))


# The analytic renderer.


# Every render below uses 4 cameras at 32 x 32 (and supersample 1 unless
# testing it): one compilation serves them all.
_RES = 32


def _four_cameras(azimuth, elevation, distance, focal):
  return cameras.fixed_cameras(*(np.broadcast_to(np.asarray(v, np.float32),
                                                 (4,))
                                 for v in (azimuth, elevation, distance,
                                           focal)))


def test_sphere_silhouette_is_the_projected_disc():
  # A sphere of radius r seen from distance d subtends a cone of half-angle
  # asin(r / d): its image is a disc of radius f W tan(asin(r / d)) pixels
  # around the image centre.
  d, f, r = 1.3, 0.9, 0.5
  cams = _four_cameras([30.0, 200.0, 90.0, 300.0], [20.0, -5.0, 0.0, 60.0],
                       d, f)
  _, mask = raytrace.render('a blue sphere', cams, _RES,
                            shading.albedo_only((4,)))
  radius = f * _RES * np.tan(np.arcsin(r / d))
  pix = np.arange(_RES) + 0.5 - _RES / 2.0
  rho = np.hypot(pix[None, :], pix[:, None])
  want = rho < radius
  ring = np.abs(rho - radius) < 1.0
  for m in np.asarray(mask):
    assert set(np.unique(m)) <= {0.0, 1.0}
    np.testing.assert_array_equal(m[~ring] > 0.5, want[~ring])


def test_render_range_background_and_supersampling():
  cams = _four_cameras([0.0, 45.0, 120.0, 250.0], [10.0, 30.0, -10.0, 80.0],
                       1.3, 1.0)
  args = ('a red cube', cams)
  kwargs = dict(shading_params=shading.albedo_only((4,)),
                background_color=(0.2, 0.4, 0.6))
  rgb, mask = (np.asarray(a) for a in raytrace.render(*args, _RES, **kwargs))
  assert rgb.shape == (4, _RES, _RES, 3) and mask.shape == (4, _RES, _RES)
  assert rgb.dtype == np.float32 and 0.0 <= rgb.min() and rgb.max() <= 1.0
  np.testing.assert_allclose(rgb[mask == 0], [[0.2, 0.4, 0.6]] * np.sum(
      mask == 0), atol=1e-6)
  np.testing.assert_allclose(rgb[mask == 1], [objects.RED] * np.sum(
      mask == 1), atol=1e-6)
  # Supersampling s = 2 is the 2 x 2 box filter of the render at twice the
  # resolution.
  small, small_mask = raytrace.render(*args, _RES // 2, supersample=2,
                                      **kwargs)
  box = rgb.reshape(4, _RES // 2, 2, _RES // 2, 2, 3).mean((2, 4))
  np.testing.assert_allclose(small, box, atol=1e-5)
  np.testing.assert_allclose(
      small_mask, mask.reshape(4, _RES // 2, 2, _RES // 2, 2).mean((2, 4)))


def test_a_photograph_over_black_plus_the_missed_share_is_any_backdrop():
  """The image set composites each photograph over toy.background_colors
  from one render over black and the share of sub-pixel rays that missed."""
  cams = _four_cameras([0.0, 45.0, 120.0, 250.0], [10.0, 30.0, -10.0, 80.0],
                       1.3, 1.0)
  shade = shading.lambertian((4,))
  black, mask = raytrace.render('a snowman', cams, _RES, shade,
                                (0.0, 0.0, 0.0), supersample=2)
  color = np.asarray([0.2, 0.4, 0.6], np.float32)
  want, _ = raytrace.render('a snowman', cams, _RES, shade, color,
                            supersample=2)
  assert 0.0 < np.mean((mask > 0) & (mask < 1))  # Antialiased edges.
  np.testing.assert_allclose(
      np.asarray(black) + (1.0 - np.asarray(mask))[..., None] * color, want,
      atol=1e-6)


def test_the_image_set_shows_every_photograph_on_every_backdrop():
  config = _toy_config()
  config.toy.images_per_view = 1
  config.toy.background_colors = ((0.5, 0.5, 0.5),)
  grey, grey_groups = exact_prior.render_image_set(config)
  config.toy.background_colors = ((0.5, 0.5, 0.5), (0.0, 0.0, 0.0))
  both, groups = exact_prior.render_image_set(config)
  assert len(both) == 2 * len(grey)
  np.testing.assert_array_equal(np.sort(groups),
                                np.sort(np.tile(grey_groups, 2)))
  on_grey = both[np.arange(len(both)) % 8 < 4]
  on_black = both[np.arange(len(both)) % 8 >= 4]
  np.testing.assert_allclose(on_grey, grey, atol=1e-6)
  # Same photographs: they differ by 0.5 x the missed share, the same in
  # every channel, and by exactly 0.5 where nothing was hit.
  diff = on_grey - on_black
  np.testing.assert_allclose(diff[..., 0], diff[..., 2], atol=1e-6)
  assert diff.min() > -1e-6 and diff.max() < 0.5 + 1e-6
  assert np.mean(np.abs(diff - 0.5) < 1e-6) > 0.3
  config.toy.background_colors = ((0.5, 0.5),)
  with pytest.raises(errors.UserError, match='toy.background_colors'):
    exact_prior.validate(config)


def test_lit_sphere_follows_lambert():
  # Headlight on the camera, camera on the +x axis: the centre pixel sees the
  # surface head-on, so n . l = 1 and the colour is albedo (ambient + diffuse);
  # textureless replaces the albedo by white.
  cams = _four_cameras(0.0, 0.0, 1.5, 1.0)
  params = shading.lambertian((4,))
  params = params.replace(textureless=jnp.array([0.0, 0.0, 1.0, 1.0]))
  rgb, _ = raytrace.render('a blue sphere', cams, _RES, params)
  centre = np.asarray(rgb)[:, 15:17, 15:17].mean((1, 2))
  np.testing.assert_allclose(centre[:2], [objects.BLUE] * 2, atol=0.01)
  np.testing.assert_allclose(centre[2:], 1.0, atol=0.01)


def _orange_mask(rgb):
  """[..., H, W, 3] -> [..., H, W]: pixels coloured like the nose, not grey."""
  rgb = np.asarray(rgb)
  return (rgb[..., 0] - rgb[..., 2] > 0.2) & (rgb[..., 1] < 0.8 * rgb[..., 0])


def _orange_pixels(rgb):
  """[..., H, W, 3] -> [...] count of nose-coloured pixels."""
  return np.sum(_orange_mask(rgb), axis=(-2, -1))


def test_snowman_nose_faces_plus_x():
  # Azimuth 0 is +x (the front): the nose is seen, above the centre;
  # azimuth 180 hides it. From +y (azimuth 90) the camera's right is -x, so
  # the nose is on the left.
  cams = _four_cameras([0.0, 180.0, 90.0, 270.0], 10.0, 1.3, 1.0)
  rgb, _ = raytrace.render('a snowman', cams, _RES, shading.albedo_only((4,)))
  counts = _orange_pixels(rgb)
  assert counts[0] >= 4 and counts[1] == 0
  # The nose (z = 0.3) sits above the image centre: in the top rows.
  rows = np.nonzero(_orange_mask(rgb[0]).any(1))[0]
  assert rows.max() < 16
  columns = [np.nonzero(_orange_mask(rgb[i]).any(0))[0] for i in (2, 3)]
  assert columns[0].size and columns[0].max() < 16  # Left half.
  assert columns[1].size and columns[1].min() >= 16  # Right half.


# The toy prior.


def test_schedule_is_scaled_linear():
  abar = prior_lib.noise_schedule(1000, 0.00085, 0.012)
  betas = 1.0 - abar[1:] / abar[:-1]
  assert abar[0] == pytest.approx(1.0 - 0.00085, rel=1e-6)
  assert betas[-1] == pytest.approx(0.012, rel=1e-3)
  np.testing.assert_allclose(np.sqrt(betas), np.linspace(
      np.sqrt(0.00085), np.sqrt(0.012), 1000)[1:], rtol=1e-3)


def test_view_cameras_fall_in_their_bins():
  config = default.get_config()
  cams, views = exact_prior.sample_view_cameras(jax.random.key(3),
                                              config.camera, 8)
  np.testing.assert_array_equal(
      prior_lib.view_index(cams.azimuth, cams.elevation), views)
  np.testing.assert_array_equal(np.bincount(views), [8] * 4)


def test_camera_ranges_without_a_view_are_a_user_error():
  config = default.get_config()
  config.camera.azimuth_range = (-30.0, 30.0)  # Never side or back.
  with pytest.raises(errors.UserError, match='side or back'):
    exact_prior.sample_view_cameras(jax.random.key(0), config.camera, 2)


def test_overhead_photographs_come_from_above_a_low_camera_range():
  """Training never looks from above 45 degrees; the prior still has
  overhead photographs (for its unconditional set), taken from above 60."""
  config = default.get_config()
  config.camera.elevation_range = (-10.0, 45.0)
  cams, views = exact_prior.sample_view_cameras(jax.random.key(0),
                                                config.camera, 8)
  elevation = np.asarray(cams.elevation)
  overhead = views == prior_lib.VIEWS.index('overhead')
  assert overhead.sum() == 8
  assert np.all(elevation[overhead] > 60.0)
  assert np.all(elevation[~overhead] <= 45.0 + 1e-4)


def test_image_set_layout_and_determinism(toy):
  config, prior = toy
  images = np.asarray(prior.params['images'])
  groups = np.asarray(prior.params['groups'])
  n = len(objects.PROMPTS) * 4 * config.toy.images_per_view
  assert images.shape == (n, 32, 32, 3) and images.dtype == np.float32
  assert -1.0 <= images.min() and images.max() <= 1.0
  np.testing.assert_array_equal(
      np.bincount(groups), [config.toy.images_per_view] * 20)
  again = exact_prior.make_toy_prior(config)
  np.testing.assert_array_equal(again.params['images'], images)


def test_prior_front_group_shows_the_nose_back_group_rarely(toy):
  _, prior = toy
  images = (np.asarray(prior.params['images']) + 1.0) / 2.0
  groups = np.asarray(prior.params['groups'])
  snowman = objects.prompt_index('a snowman')
  front = _orange_pixels(images[groups == exact_prior.group_index(snowman, 0)])
  back = _orange_pixels(images[groups == exact_prior.group_index(snowman, 2)])
  # Textureless and unlit renders hide the colour, and the nose tip can peek
  # past the head at |azimuth - 180| near 45 degrees.
  assert front.sum() > 4 * max(back.sum(), 1)


@jax.jit
def _noisy(prior, x, t, key):
  abar = prior.alphas_cumprod[t]
  eps = jax.random.normal(key, x.shape)
  a = jnp.sqrt(abar)[:, None, None, None]
  s = jnp.sqrt(1.0 - abar)[:, None, None, None]
  return a * x + s * eps, eps, a, s


def test_small_noise_recovers_the_nearest_image(toy):
  _, prior = toy
  index = jnp.array([0, 37, 101, 159])
  x = prior.params['images'][index]
  t = jnp.zeros((4,), jnp.int32)
  z, eps, a, s = _noisy(prior, x, t, jax.random.key(0))
  emb = jnp.broadcast_to(prior.uncond_embedding, (4, 20))
  eps_hat = jax.jit(prior.predict_noise)(prior.params, z, t, emb)
  np.testing.assert_allclose((z - s * eps_hat) / a, x, atol=1e-4)
  np.testing.assert_allclose(eps_hat, eps, atol=5e-3)


def _reference_weights(prior, z, t, members):
  """float64 softmax of -|z - a x_i|^2 / (2 s^2) over images `members`."""
  x = np.asarray(prior.params['images'], np.float64).reshape(
      prior.params['images'].shape[0], -1)
  abar = float(prior.alphas_cumprod[t])
  d2 = np.sum((np.asarray(z, np.float64).reshape(1, -1)
               - np.sqrt(abar) * x)**2, axis=-1)
  logits = np.where(members, -d2 / (2.0 * (1.0 - abar)), -np.inf)
  w = np.exp(logits - logits.max())
  return w / w.sum()


@pytest.mark.parametrize('t', [50, 400, 999])
def test_posterior_matches_reference_for_union_and_group(toy, t):
  _, prior = toy
  groups = np.asarray(prior.params['groups'])
  x = prior.params['images'][jnp.array([5, 120])]
  z, _, _, _ = _noisy(prior, x, jnp.full((2,), t), jax.random.key(t))
  group = 4 * 3 + 1  # (a yellow torus, side)
  one_hot = jax.nn.one_hot(group, 20)
  emb = jnp.stack([prior.uncond_embedding, one_hot])
  logits = jax.jit(exact_prior.posterior_logits)(
      prior.params, z, jnp.full((2,), t, jnp.int32), emb)
  p = np.asarray(jax.nn.softmax(logits, axis=-1))
  np.testing.assert_allclose(
      p[0], _reference_weights(prior, z[0], t, np.ones_like(groups, bool)),
      atol=1e-4)
  np.testing.assert_allclose(
      p[1], _reference_weights(prior, z[1], t, groups == group), atol=1e-4)
  assert np.all(p[1][groups != group] == 0.0)


def test_posterior_mean_at_middle_t_matches_float64(toy):
  """E[x_0 | z_t] where the posterior mixes images, against float64 numpy.

  z_t = a_t (0.6 x_i + 0.4 x_j) for the closest pair of images of different
  groups: at t = 500 the posterior weighs x_i most, x_j by a fair share and
  others a little, so the temperature 1 / (2 s_t^2), the scaling by a_t and
  the group weights all show in the mean (near t = 0 or for z_t drawn from
  one image it is one image, whatever the temperature).
  """
  _, prior = toy
  images = np.asarray(prior.params['images'], np.float64)
  groups = np.asarray(prior.params['groups'])
  x = images.reshape(len(images), -1)
  sq = np.sum(x * x, axis=-1)
  d2 = sq[:, None] + sq[None] - 2.0 * x @ x.T
  d2[groups[:, None] == groups[None]] = np.inf
  i, j = np.unravel_index(np.argmin(d2), d2.shape)

  def posterior(t):
    abar = float(prior.alphas_cumprod[t])
    # The reference starts from the float32 z_t the prior gets.
    z = np.float32(np.sqrt(abar) * (0.6 * x[i] + 0.4 * x[j])).astype(
        np.float64)
    want, weights = [], []
    for members in (np.ones_like(groups, bool), groups == groups[i]):
      logits = np.where(members, -np.sum((z - np.sqrt(abar) * x)**2, axis=-1)
                        / (2.0 * (1.0 - abar)), -np.inf)
      p = np.exp(logits - logits.max())
      p /= p.sum()
      want.append((p @ x).reshape(images.shape[1:]))
      weights.append(p)
    return z, want, weights

  # The first t from the middle up where the union's posterior mixes the two.
  for t in (500, 600, 700, 800, 900):
    z, want, weights = posterior(t)
    if weights[0][j] > 0.05:
      break
  abar = float(prior.alphas_cumprod[t])
  # The union's posterior is a real mixture; the group's excludes x_j.
  assert 0.05 < weights[0][j] < weights[0][i] < 0.95, weights[0][[i, j]]
  assert weights[1][j] == 0.0
  emb = jnp.stack([prior.uncond_embedding,
                   jax.nn.one_hot(groups[i], exact_prior.NUM_GROUPS)])
  z_t = jnp.asarray(np.broadcast_to(z.reshape(images.shape[1:]),
                                    (2,) + images.shape[1:]), jnp.float32)
  t_b = jnp.full((2,), t, jnp.int32)
  got = np.asarray(jax.jit(exact_prior.posterior_mean)(prior.params, z_t,
                                                       t_b, emb))
  # Logits near 1e3 in float32 carry errors near 1e-3, which move the
  # mean by about 1e-4 here; a wrong temperature moves it by 0.1.
  np.testing.assert_allclose(got, np.stack(want), atol=1e-3)
  # And the noise prediction it implies, (z_t - a_t E[x_0 | z_t]) / s_t.
  eps = np.asarray(jax.jit(exact_prior.predict_noise)(prior.params, z_t, t_b,
                                                      emb))
  np.testing.assert_allclose(
      eps, (np.asarray(z_t) - np.sqrt(abar) * np.stack(want))
      / np.sqrt(1.0 - abar), atol=2e-3)


def test_one_hot_embedding_only_weighs_its_group(toy):
  # z_t is a lightly noised image of the red cube; conditioned on the snowman
  # (front) the posterior mean is a snowman image, unconditionally the cube.
  _, prior = toy
  groups = np.asarray(prior.params['groups'])
  x = prior.params['images'][jnp.array([3, 3])]
  t = jnp.full((2,), 20, jnp.int32)
  z, _, _, _ = _noisy(prior, x, t, jax.random.key(1))
  group = exact_prior.group_index(objects.prompt_index('a snowman'), 0)
  emb = jnp.stack([prior.uncond_embedding, jax.nn.one_hot(group, 20)])
  x0 = np.asarray(jax.jit(exact_prior.posterior_mean)(prior.params, z, t, emb))
  images = np.asarray(prior.params['images'])
  nearest = np.argmin(np.abs(images[None] - x0[:, None]).sum((2, 3, 4)), 1)
  assert nearest[0] == 3 and groups[nearest[1]] == group
  np.testing.assert_allclose(x0[1], images[nearest[1]], atol=1e-3)


def test_biased_embeddings():
  """Stable Diffusion's bias as group weights: mostly fronts, views ignored.

  '<prompt>, <view> view' gives the view with probability a and otherwise
  a view drawn from the frequencies f: a onehot(view) + (1 - a) f.
  """
  config = _toy_config()
  f = np.array([0.7, 0.2, 0.05, 0.05])
  config.toy.view_frequencies = tuple(f)
  config.toy.view_adherence = 0.3
  exact_prior.validate(config)
  view_emb, uncond, negative = exact_prior.embeddings(config)
  snowman = slice(16, 20)
  np.testing.assert_allclose(view_emb[2, snowman], [0.49, 0.14, 0.335, 0.035],
                             atol=1e-6)
  np.testing.assert_allclose(view_emb[:, snowman], 0.3 * np.eye(4) + 0.7 * f,
                             atol=1e-6)
  np.testing.assert_array_equal(np.delete(view_emb, np.s_[16:20], 1), 0.0)
  # The unconditional set: every prompt, each with the frequencies.
  np.testing.assert_allclose(uncond.reshape(5, 4), np.tile(f, (5, 1)) / 5,
                             atol=1e-7)
  # A back camera's negative is the (biased) front prompt.
  np.testing.assert_allclose(negative[2], view_emb[0])
  config.guidance.view_prompts = False
  view_emb, _, _ = exact_prior.embeddings(config)
  np.testing.assert_allclose(view_emb[:, snowman], np.tile(f, (4, 1)),
                             atol=1e-7)


@pytest.mark.parametrize('field,value', [
    ('view_frequencies', (0.3, 0.3, 0.3, 0.3)),
    ('view_frequencies', (0.6, 0.6, -0.1, -0.1)),
    ('view_frequencies', (0.5, 0.5)),
    ('view_adherence', 1.5),
    ('view_adherence', -0.1)])
def test_bad_bias_is_one_sentence(field, value):
  config = _toy_config()
  config.toy[field] = value
  with pytest.raises(errors.UserError, match=f'toy.{field}'):
    exact_prior.validate(config)


def test_predict_noise_finite_over_all_timesteps(toy):
  _, prior = toy
  t = jnp.array([0, 1, 500, 998, 999], jnp.int32)
  z = jax.random.normal(jax.random.key(2), (5, 32, 32, 3)) * 3.0
  emb = jnp.broadcast_to(prior.view_embeddings[2], (5, 20))
  eps = jax.jit(prior.predict_noise)(prior.params, z, t, emb)
  assert eps.dtype == jnp.float32 and eps.shape == z.shape
  assert np.all(np.isfinite(np.asarray(eps)))


def test_embeddings_views_negative_prompt_and_errors():
  config = _toy_config()
  view_emb, uncond, negative = exact_prior.embeddings(config)
  snowman = objects.prompt_index('a snowman')
  group = functools.partial(exact_prior.group_index, snowman)
  # The exact prior: one-hot view prompts, a uniform unconditional set.
  np.testing.assert_array_equal(view_emb, np.eye(20)[[group(v)
                                                      for v in range(4)]])
  np.testing.assert_allclose(uncond, 1.0 / 20)
  # Negative views: the back for the front, front and back for the side,
  # the front for the back; the unconditional set for overhead.
  np.testing.assert_allclose(negative[0], view_emb[2])
  np.testing.assert_allclose(negative[1], 0.5 * (view_emb[0] + view_emb[2]))
  np.testing.assert_allclose(negative[2], view_emb[0])
  np.testing.assert_allclose(negative[3], uncond)

  config.guidance.view_prompts = False
  config.negative_prompt = 'a red cube'
  view_emb, uncond, _ = exact_prior.embeddings(config)
  want = np.zeros(20)
  want[16:20] = 0.25
  np.testing.assert_array_equal(view_emb, [want] * 4)
  np.testing.assert_array_equal(np.nonzero(uncond)[0], [0, 1, 2, 3])

  config.negative_prompt = 'blurry'
  with pytest.raises(errors.UserError, match='negative_prompt'):
    exact_prior.validate(config)
  config.negative_prompt = ''
  config.prompt = 'a DSLR photo of a hamburger'
  with pytest.raises(errors.UserError, match='a blue sphere'):
    exact_prior.validate(config)


def test_encode_rescales_and_resizes(toy):
  _, prior = toy
  x = jnp.stack([jnp.zeros((64, 64, 3)), jnp.ones((64, 64, 3))])
  y = prior.encode(prior.params, x)
  assert y.shape == (2, 32, 32, 3)
  np.testing.assert_allclose(y[0], -1.0, atol=1e-6)
  np.testing.assert_allclose(y[1], 1.0, atol=1e-6)


# Metrics.


def _true_density(name, scale=1.0, mirror=False):
  @jax.jit
  def density(points):
    if mirror:
      points = points * jnp.array([-1.0, 1.0, 1.0])
    return jnp.where(objects.sdf(name, points / scale) < 0.0, 100.0, 0.0)
  return density


def _true_albedo(name, mirror=False):
  @jax.jit
  def albedo(points):
    if mirror:
      points = points * jnp.array([-1.0, 1.0, 1.0])
    return objects.albedo(name, points)
  return albedo


def test_iou():
  assert metrics.iou('a yellow torus', _true_density('a yellow torus'),
                     5.0, resolution=32) == 1.0
  # A concentric sphere of radius 0.4 inside the true 0.5: (0.4 / 0.5)^3.
  small = metrics.iou('a blue sphere', _true_density('a blue sphere', 0.8),
                      5.0, resolution=48)
  assert small == pytest.approx(0.512, abs=0.02)


def test_albedo_error():
  points = metrics.surface_points('a snowman', 256)
  assert points.shape == (256, 3)
  assert np.abs(np.asarray(objects.sdf('a snowman', points))).max() < 1e-4
  assert metrics.albedo_error('a snowman', _true_albedo('a snowman'),
                              256) == pytest.approx(0.0, abs=1e-7)
  red = lambda p: jnp.broadcast_to(jnp.array(objects.RED), p.shape)
  assert metrics.albedo_error('a blue sphere', red, 256) == pytest.approx(
      0.5, abs=1e-6)


def test_surface_points_are_uniform_in_area():
  # Archimedes: a cap of height r / 2 holds a quarter of a sphere's area.
  p = metrics.surface_points('a blue sphere', 4096)
  assert np.mean(p[:, 2] / np.linalg.norm(p, axis=-1) > 0.5) == pytest.approx(
      0.25, abs=0.03)
  # Cube of half-size 0.4: the band within 0.03 of an edge is 1 - (0.74 /
  # 0.8)^2 = 14.4% of each face. Projecting points from the whole bounding
  # cube would put half of them there.
  p = np.sort(np.abs(metrics.surface_points('a red cube', 4096)), axis=-1)
  assert np.mean(p[:, 2] - p[:, 1] < 0.03) == pytest.approx(0.144, abs=0.03)


def test_seen_albedo_error_scores_the_surface_the_rays_find():
  name = 'a blue sphere'
  # A sharp sphere of radius 0.47 (inside the true 0.5), blue inside radius
  # 0.48 and red outside: its own albedo at the true surface is red, but
  # every ray along the inward normal sees blue.
  density = lambda p: jnp.where(jnp.linalg.norm(p, axis=-1) < 0.47, 1e4, 0.0)
  def albedo(p):
    inside = jnp.linalg.norm(p, axis=-1, keepdims=True) < 0.48
    return jnp.where(inside, jnp.array(objects.BLUE), jnp.array(objects.RED))
  assert metrics.albedo_error(name, albedo, 256) > 0.4
  assert metrics.albedo_error(name, albedo, 256,
                              density_fn=density) == pytest.approx(0.0,
                                                                   abs=1e-4)
  # No surface within reach: the rays see the grey background.
  empty = lambda p: jnp.zeros(p.shape[:-1])
  grey = np.mean(np.abs(np.array(objects.BLUE) - 0.5))
  assert metrics.albedo_error(name, albedo, 256, density_fn=empty) == (
      pytest.approx(grey, abs=1e-5))


def test_janus_check():
  name = 'a snowman'
  right = metrics.janus_check(_true_density(name), _true_albedo(name), 5.0)
  assert right['front'] and not right['back'] and not right['side']
  assert right['front_occupancy'] == pytest.approx(right['gt_occupancy'])
  flipped = metrics.janus_check(_true_density(name, mirror=True),
                                _true_albedo(name, mirror=True), 5.0)
  assert flipped['back'] and not flipped['front'] and not flipped['side']

  # The snowman turned by +90 degrees about the vertical axis: its nose
  # points along +y, the left. (x, y) -> (y, -x) turns a point back.
  def turned(fn):
    return jax.jit(lambda p: fn(jnp.stack([p[:, 1], -p[:, 0], p[:, 2]], -1)))

  left = metrics.janus_check(turned(_true_density(name)),
                             turned(_true_albedo(name)), 5.0)
  assert left['left'] and left['side']
  assert not (left['front'] or left['back'] or left['right'])
  assert left['left_occupancy'] == pytest.approx(left['gt_occupancy'],
                                                 abs=1e-6)

  @jax.jit
  def two_noses(points):
    mirrored = points * jnp.array([-1.0, 1.0, 1.0])
    return jnp.maximum(_true_density(name)(points),
                       _true_density(name)(mirrored))

  @jax.jit
  def two_noses_albedo(points):
    return jnp.where((points[:, :1] < 0.0), _true_albedo(name, True)(points),
                     _true_albedo(name)(points))

  janus = metrics.janus_check(two_noses, two_noses_albedo, 5.0)
  assert janus['front'] and janus['back']

  @jax.jit
  def no_nose(points):
    body, head, _ = objects.snowman_parts(points)
    return jnp.where(jnp.minimum(body, head) < 0.0, 100.0, 0.0)

  white = lambda p: jnp.broadcast_to(jnp.array(objects.WHITE), p.shape)
  bald = metrics.janus_check(no_nose, white, 5.0)
  assert not (bald['front'] or bald['back'] or bald['side'])
  # A nose painted onto the back of the head, without geometry, counts.
  painted = metrics.janus_check(
      no_nose, lambda p: jnp.where(p[:, :1] < 0.0, jnp.array(objects.ORANGE),
                                   jnp.array(objects.WHITE)), 5.0)
  assert painted['back'] and not painted['front']
  # A head grown 0.05 past its surface all round, without a nose, has none.
  @jax.jit
  def swollen(points):
    body, head, _ = objects.snowman_parts(points)
    return jnp.where(jnp.minimum(body, head - 0.05) < 0.0, 100.0, 0.0)

  fat = metrics.janus_check(swollen, white, 5.0)
  assert not (fat['front'] or fat['back'] or fat['side'])
  # Brightness is not hue: a head learned as mid-grey (white under random
  # lights) has no nose, and a nose painted at half brightness still counts.
  grey = metrics.janus_check(
      no_nose, lambda p: jnp.full(p.shape, 0.45), 5.0)
  assert not (grey['front'] or grey['back'] or grey['side'])
  dim = metrics.janus_check(
      no_nose, lambda p: jnp.where(p[:, :1] < 0.0,
                                   0.5 * jnp.array(objects.ORANGE),
                                   0.45 * jnp.ones(3)), 5.0)
  assert dim['back'] and not dim['front']


def test_normal_angle_leaves_out_creases():
  """Cube points within 0.05 of an edge are not scored; smooth ones all are."""
  points = metrics.surface_points('a red cube', 4096)
  kept = metrics.away_from_creases('a red cube', points)
  # Each face keeps its middle 0.7 x 0.7 of 0.8 x 0.8.
  assert kept.mean() == pytest.approx((0.7 / 0.8)**2, abs=0.03)
  second = np.sort(np.abs(points), axis=1)[:, 1]  # 2nd largest |coordinate|.
  assert second[kept].max() <= 0.35 + 2e-3
  assert second[~kept].min() >= 0.35 - 2e-3
  sphere = metrics.surface_points('a blue sphere', 1024)
  assert metrics.away_from_creases('a blue sphere', sphere).all()
  # The cube's own shape scores 0 degrees once its edges are left out
  # (the L-infinity ball: exact face normals, none at the edges).
  def cube_density(p):
    return jnp.exp(-20.0 * (jnp.max(jnp.abs(p), axis=-1) - 0.4))
  assert metrics.normal_angle('a red cube', cube_density) < 0.5


def test_untextured_photographs():
  """toy.textureless_prob = 1: every lit photograph is white-albedo (grey
  shades on the object, r = g = b), and 0 leaves the image set as it was."""
  config = _toy_config()
  config.toy.images_per_view = 1
  config.toy.background_colors = ((0.5, 0.5, 0.5),)
  plain, groups = exact_prior.render_image_set(config)
  config.toy.textureless_prob = 0.0
  np.testing.assert_array_equal(exact_prior.render_image_set(config)[0], plain)
  config.toy.textureless_prob = 1.0
  clay, _ = exact_prior.render_image_set(config)
  cube = groups // exact_prior.NUM_VIEWS == objects.PROMPTS.index('a red cube')
  background = np.all(np.abs(clay[cube] - 0.5) < 1e-6, axis=-1)
  on_object = ~background
  assert on_object.mean() > 0.05
  pixels = clay[cube][on_object]
  np.testing.assert_allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)
  # The textured cube is red: its photographs were not grey.
  red = plain[cube][on_object]
  assert np.mean(red[:, 0] - red[:, 1]) > 0.1
