"""The Janus fixes (guidance/views.py) through sds_loss, on analytic priors.

Negative view prompts, interpolated view embeddings and Perp-Neg: their
weights at known azimuths, the perpendicular projection, the one batched
UNet call, and the SDS gradient property (nothing flows through the UNet),
against written-out references.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfusion_jax import errors
from dreamfusion_jax import guidance
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.guidance import sds
from dreamfusion_jax.guidance import views
from configs import default

_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})

T = 1000
SIZE = 8
# Azimuths across all segments (both signs, wrapped), and overhead cameras.
AZIMUTH = np.array([0, 30, 45, 89.9, 90, 120, 180, 200, 270, 330, -60, 10,
                    0, 180], np.float32)
ELEVATION = np.array([0, 10, 0, 0, 20, 0, 0, 30, 0, 0, 0, 0, 70, 61],
                     np.float32)
BATCH = AZIMUTH.size
ZERO = ((0.0, 0.0, 0.0),) * 4  # Perp-Neg with every negative weight 0.


def _trapped_noise(params, z_t, t, embedding):
  """eps = a tanh(z_t) + sum_k embedding_k P_k (1 + z_t / 4) + t/T, trapped.

  Depends non-linearly on z_t, and on the embedding through fixed random
  images P_k, so that different embeddings give non-parallel predictions.
  Any differentiation of it raises.
  """
  return _trap(params, z_t, t, embedding)


@jax.custom_jvp
def _trap(params, z_t, t, embedding):
  e = jnp.tensordot(embedding, params['p'], axes=1)  # [B, H, W, 3]
  return (params['a'] * jnp.tanh(z_t) + e * (1.0 + 0.25 * z_t)
          + (t.astype(jnp.float32) / T)[:, None, None, None])


@_trap.defjvp
def _(primals, tangents):
  del primals, tangents
  raise AssertionError('predict_noise was differentiated')


def make_prior(predict_noise=_trapped_noise):
  """View i's embedding is e_i in R^6; the negatives are e_{4 + i mod 2}."""
  eye = jnp.eye(6, dtype=jnp.float32)
  return prior_lib.Prior(
      params={'a': jnp.float32(0.5),
              'u': jnp.arange(1.0, 7.0, dtype=jnp.float32) / 6.0,
              'p': jax.random.normal(jax.random.key(9), (6, SIZE, SIZE, 3))},
      view_embeddings=eye[:4],
      uncond_embedding=jnp.zeros((6,), jnp.float32),
      alphas_cumprod=jnp.asarray(prior_lib.noise_schedule(T, 0.00085, 0.012)),
      encode=lambda params, images: 2.0 * images - 1.0,
      predict_noise=predict_noise,
      negative_view_embeddings=eye[jnp.array([4, 5, 4, 5])])


def _images(key=0):
  return jax.random.uniform(jax.random.key(key), (BATCH, SIZE, SIZE, 3))


def _kwargs(mode, perp_neg=views.PERP_NEG_DEFAULTS):
  return {'plain': {},
          'negative': {'negative_view_prompts': True},
          'interpolation': {'view_interpolation': True},
          'perp_neg': {'perp_neg': perp_neg},
          'perp_neg_zero': {'perp_neg': ZERO}}[mode]


@functools.partial(_jit, static_argnames=('mode',))
def _gradients(prior, images, key, mode):
  """d sum(loss) / d (prior, images), the loss, and a written-out target."""

  def total(prior, images):
    loss, aux = sds.sds_loss(prior, images, AZIMUTH, ELEVATION, key,
                             scale=7.5, t_min=0.02, t_max=0.98,
                             weighting='sigma2', **_kwargs(mode))
    return jnp.sum(loss), aux

  (g_prior, g_images), aux = jax.grad(total, argnums=(0, 1), has_aux=True)(
      prior, images)
  return g_prior, g_images, _reference_target(prior, images, key, mode)


def _reference_target(prior, images, key, mode):
  """w(t)(eps_hat - eps) with one UNet call per embedding, written out."""
  key_t, key_eps = jax.random.split(key)
  x = 2.0 * images - 1.0
  t = sds.sample_timesteps(key_t, BATCH, T, 0.02, 0.98)
  abar = prior.alphas_cumprod[t][:, None, None, None]
  eps = jax.random.normal(key_eps, x.shape)
  z = jnp.sqrt(abar) * x + jnp.sqrt(1 - abar) * eps
  unet = lambda emb: prior.predict_noise(prior.params, z, t, emb)
  emb = prior.view_embeddings
  view = prior_lib.view_index(AZIMUTH, ELEVATION)
  uncond = jnp.broadcast_to(prior.uncond_embedding, (BATCH, 6))
  # threestudio's interpolation, written per segment.
  az = np.abs((AZIMUTH + 180.0) % 360.0 - 180.0)
  r = np.where(az < 90, 1 - az / 90, 2 - az / 90)[:, None]
  pos = jnp.where(az[:, None] < 90, r * emb[0] + (1 - r) * emb[1],
                  r * emb[1] + (1 - r) * emb[2])
  pos = jnp.where(ELEVATION[:, None] > 60, emb[3], pos)
  if mode == 'plain':
    eps_hat = unet(uncond) + 7.5 * (unet(emb[view]) - unet(uncond))
  elif mode == 'negative':
    neg = prior.negative_view_embeddings[view]
    eps_hat = unet(neg) + 7.5 * (unet(emb[view]) - unet(neg))
  else:
    eps_u = unet(uncond)
    d_pos = unet(pos) - eps_u
    total = d_pos
    if mode == 'perp_neg':
      decay = lambda a, b, c, r: a * np.exp(-b * r) + c
      r = r[:, 0]
      front_side = az < 90
      negs = [(jnp.where(front_side[:, None], emb[0], emb[1]),
               np.where(front_side, -decay(4, 0.5, -2.426, r),
                        -decay(1, 0.5, -0.606, r))),
              (jnp.where(front_side[:, None], emb[1], emb[0]),
               np.where(front_side, -decay(4, 0.5, -2.426, 1 - r),
                        -decay(1, 0.5, 0.967, r)))]
      for neg, w in negs:
        d = unet(neg) - eps_u
        dot = jnp.sum(d * d_pos, axis=(1, 2, 3), keepdims=True)
        norm2 = jnp.sum(d_pos * d_pos, axis=(1, 2, 3), keepdims=True)
        w = np.where(ELEVATION > 60, 0.0, w)[:, None, None, None]
        total = total + w * (d - dot / norm2 * d_pos)
    eps_hat = eps_u + 7.5 * total
  return (1 - abar) * (eps_hat - eps)


@pytest.mark.parametrize('mode', ['plain', 'negative', 'interpolation',
                                  'perp_neg', 'perp_neg_zero'])
def test_gradient_is_the_guided_residual_and_the_prior_gets_none(mode):
  prior = make_prior()
  g_prior, g_images, target = _gradients(prior, _images(),
                                         jax.random.key(3), mode)
  # d loss / d images = 2 w (eps_hat - eps): encode is x = 2 images - 1.
  np.testing.assert_allclose(g_images, 2.0 * target, rtol=2e-4, atol=2e-5)
  for leaf in jax.tree.leaves(g_prior):
    np.testing.assert_array_equal(leaf, 0.0)


def test_perp_neg_with_zero_weights_is_plain_cfg():
  prior, images, key = make_prior(), _images(), jax.random.key(4)
  _, zero, _ = _gradients(prior, images, key, 'perp_neg_zero')
  _, interpolated, _ = _gradients(prior, images, key, 'interpolation')
  _, plain, _ = _gradients(prior, images, key, 'plain')
  _, perp, _ = _gradients(prior, images, key, 'perp_neg')
  np.testing.assert_allclose(zero, interpolated, rtol=1e-5, atol=1e-6)
  # At the views' own azimuths (and overhead) interpolation is the nearest
  # view, so Perp-Neg without negatives is the paper's guidance there.
  exact = np.isin(AZIMUTH % 360, [0, 90, 180, 270]) | (ELEVATION > 60)
  np.testing.assert_allclose(zero[exact], plain[exact], rtol=1e-5, atol=1e-6)
  assert not np.allclose(zero[~exact], plain[~exact], atol=1e-3)
  # The negatives matter wherever their weights are not ~0.
  assert not np.allclose(perp[~(ELEVATION > 60)], zero[~(ELEVATION > 60)],
                         atol=1e-3)


def test_perpendicular_is_orthogonal_per_sample():
  kx, ky = jax.random.split(jax.random.key(5))
  x = jax.random.normal(kx, (6, 4, 4, 3))
  y = jax.random.normal(ky, (6, 4, 4, 3)) * jnp.arange(1.0, 7.0)[
      :, None, None, None]
  p = np.asarray(views.perpendicular(x, y), np.float64)
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  cos = np.sum(p * y, (1, 2, 3)) / np.linalg.norm(
      p.reshape(6, -1), axis=1) / np.linalg.norm(y.reshape(6, -1), axis=1)
  np.testing.assert_allclose(cos, 0.0, atol=1e-5)
  # x - p is along y, sample by sample: x = p + c_b y_b.
  c = np.sum((x - p) * y, (1, 2, 3)) / np.sum(y * y, (1, 2, 3))
  np.testing.assert_allclose(x - p, c[:, None, None, None] * y, atol=1e-5)
  # Each sample alone gives the same: no inner product across the batch.
  np.testing.assert_allclose(views.perpendicular(x[2:3], y[2:3]), p[2:3],
                             rtol=1e-5, atol=1e-6)
  # y = 0 leaves x as it is (no NaN).
  np.testing.assert_array_equal(
      views.perpendicular(x[:1], np.zeros_like(y[:1])), x[:1])


def test_interpolation_weights_at_the_views():
  az = jnp.array([0.0, 90.0, 180.0, -90.0, 270.0, 360.0, 45.0, 135.0,
                  -150.0, 0.0])
  el = jnp.array([0.0] * 9 + [75.0])
  w = np.asarray(views.interpolation_weights(az, el))
  np.testing.assert_allclose(w[:6], np.eye(4)[[0, 1, 2, 1, 1, 0]], atol=1e-6)
  np.testing.assert_allclose(w[6], [0.5, 0.5, 0, 0], atol=1e-6)
  np.testing.assert_allclose(w[7], [0, 0.5, 0.5, 0], atol=1e-6)
  np.testing.assert_allclose(w[8], [0, 1 / 3, 2 / 3, 0], atol=1e-6)
  np.testing.assert_allclose(w[9], [0, 0, 0, 1])
  # The mixed embedding at 0 / 90 / 180 is the front / side / back one.
  emb = jax.random.normal(jax.random.key(0), (4, 3, 5))
  mixed = views.mix(views.interpolation_weights(az[:3], el[:3]), emb)
  np.testing.assert_allclose(mixed, emb[:3], atol=1e-6)


def test_perp_neg_weights_at_the_views():
  az = jnp.array([0.0, 90.0, 180.0, 45.0, 0.0])
  el = jnp.array([0.0, 0.0, 0.0, 0.0, 80.0])
  neg, w = views.perp_neg_negatives(az, el)
  np.testing.assert_array_equal(neg[:3], [[0, 1], [1, 0], [1, 0]])
  # Front: the front negative ~0, the side -(4 - 2.426); side (r = 1 in
  # the side-back segment): -(e^-0.5 - 0.606) ~ 0 and -(e^-0.5 + 0.967);
  # back: -(1 - 0.606) and -(1 + 0.967).
  np.testing.assert_allclose(w[0], [0.0, -1.574], atol=2e-4)
  np.testing.assert_allclose(w[1], [-0.0005, -1.5735], atol=2e-4)
  np.testing.assert_allclose(w[2], [-0.394, -1.967], atol=1e-4)
  assert np.all(np.asarray(w[:4]) <= 1e-3)
  np.testing.assert_array_equal(w[4], 0.0)


@pytest.mark.parametrize('mode,passes', [
    ('plain', 2), ('negative', 2), ('interpolation', 2), ('perp_neg', 4)])
def test_one_batched_unet_call_per_step(mode, passes):
  calls = []

  def predict_noise(params, z_t, t, embedding):
    calls.append((z_t.shape[0], t.shape[0], embedding.shape))
    return params['a'] * z_t

  prior = make_prior(predict_noise)
  step = functools.partial(
      sds.sds_loss, scale=7.5, t_min=0.02, t_max=0.98, weighting='sigma2',
      **_kwargs(mode))
  _jit(jax.grad(lambda im: jnp.sum(step(prior, im, AZIMUTH, ELEVATION,
                                        jax.random.key(0))[0])))(_images())
  n = passes * BATCH
  assert calls == [(n, n, (n, 6))]


def test_negative_views_use_the_negative_embeddings():
  """eps = embedding . u: each view's CFG is against its negative."""
  prior = make_prior(lambda params, z_t, t, emb: jnp.zeros_like(z_t) + (
      emb @ params['u'])[:, None, None, None])
  z = jnp.zeros((BATCH, SIZE, SIZE, 3))
  t = jnp.full((BATCH,), 500)
  got = sds.guided_noise(prior, prior.params, z, t, AZIMUTH, ELEVATION,
                         scale=2.0, negative_view_prompts=True)[:, 0, 0, 0]
  u = np.arange(1.0, 7.0) / 6.0
  view = np.asarray(prior_lib.view_index(AZIMUTH, ELEVATION))
  neg = np.array([4, 5, 4, 5])[view]
  np.testing.assert_allclose(got, u[neg] + 2.0 * (u[view] - u[neg]),
                             rtol=1e-6)


def test_negative_view_prompt_texts():
  assert guidance.negative_view_prompts('a cat', 'blurry') == [
      'a cat, back view', 'a cat, front view, back view',
      'a cat, front view', 'blurry']


@pytest.mark.parametrize('fields,match', [
    ({'perp_neg': True, 'view_prompts': False}, 'view_prompts'),
    ({'negative_view_prompts': True, 'perp_neg': True}, 'negative_view'),
    ({'perp_neg_f_fs': (1.0, 2.0)}, 'three numbers'),
])
def test_bad_view_guidance_is_one_sentence(fields, match):
  config = default.get_config()
  for name, value in fields.items():
    config.guidance[name] = value
  with pytest.raises(errors.UserError, match=match):
    guidance.validate(config.guidance)


def test_perp_neg_weights_from_the_config():
  config = default.get_config()
  assert guidance.perp_neg_weights(config.guidance) is None
  config.guidance.perp_neg = True
  assert guidance.perp_neg_weights(config.guidance) == views.PERP_NEG_DEFAULTS
