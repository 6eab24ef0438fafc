"""Properties of SDS (guidance/sds.py) on small analytic priors.

An analytic prior (closed-form `predict_noise`, linear `encode`) makes every
property checkable exactly; tests/test_guidance.py repeats the key ones with
a real (tiny) Stable Diffusion.

Speed: on a CPU, compiling is the cost (the PRNG alone takes a second or
more), so the tests share a few compiled functions: `_evaluate` computes
everything a test may ask about in one jit, and the priors' functions are
module-level objects so that jit's cache sees them as the same.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfusion_jax import errors
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.guidance import sds

# As tests/tiny_models.FAST_COMPILE (not imported: it pulls in diffusers).
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})

T = 1000
SIZE = 8
BATCH = 16
# Boundary cameras of DESIGN.md section 4 and the view each must pick.
AZIMUTH = np.array([0, 45, 45.01, 90, 134.99, 135, 180, 225, 225.01,
                    314.99, 315, 360, -45, 0, 0, 200], np.float32)
ELEVATION = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0,
                      0, 0, 0, 0, 60, 60.01, 90], np.float32)
EXPECTED_VIEW = np.array([0, 0, 1, 1, 1, 2, 2, 2, 1,
                          1, 0, 0, 0, 0, 3, 3])


def _schedule():
  # Stable Diffusion's scaled-linear schedule.
  return jnp.asarray(prior_lib.noise_schedule(T, 0.00085, 0.012))


def _trap(fn):
  """`fn`, but differentiating it (any non-zero tangent in) raises."""

  @jax.custom_jvp
  def trapped(params, z_t, t, embedding):
    return fn(params, z_t, t, embedding)

  @trapped.defjvp
  def _(primals, tangents):
    del primals, tangents
    raise AssertionError('predict_noise was differentiated')

  return trapped


def _cond(embedding):
  return jnp.mean(embedding, axis=(1, 2))[:, None, None, None]


@_trap
def tanh_noise(params, z_t, t, embedding):
  """eps = a tanh(z_t) + mean(embedding) + t / T: depends on all inputs."""
  return (params['a'] * jnp.tanh(z_t) + _cond(embedding)
          + (t.astype(jnp.float32) / T)[:, None, None, None])


@_trap
def embedding_noise(params, z_t, t, embedding):
  """eps = mean(embedding): shows which embedding was used."""
  del params, t
  return jnp.zeros_like(z_t) + _cond(embedding)


def pixel_encode(params, images):
  del params
  return 2.0 * images - 1.0


_MIX = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)


def latent_encode(params, images):
  """A stand-in VAE: resize to 4x4, then a fixed non-linear 3 -> 4 map."""
  del params
  small = jax.image.resize(images, (images.shape[0], 4, 4, 3), 'linear')
  return jnp.tanh((2 * small - 1) @ _MIX)


def make_prior(predict_noise=tanh_noise, encode=pixel_encode,
               uncond_value=0.0):
  """An analytic prior on [B, 8, 8, 3] renders; view i's embedding is i+1."""
  return prior_lib.Prior(
      params={'a': jnp.float32(0.5)},
      view_embeddings=jnp.broadcast_to(
          jnp.arange(1.0, 5.0)[:, None, None], (4, 2, 3)),
      uncond_embedding=jnp.full((2, 3), uncond_value, jnp.float32),
      alphas_cumprod=_schedule(),
      encode=encode,
      predict_noise=predict_noise)


def _images(key=0):
  return jax.random.uniform(jax.random.key(key), (BATCH, SIZE, SIZE, 3))


def _reference_target(prior, images, azimuth, elevation, key, scale, t_min,
                      t_max, weighting):
  """w(t)(eps_hat - eps) written out: two UNet calls, the paper's CFG."""
  key_t, key_eps = jax.random.split(key)
  x = prior.encode(prior.params, images)
  t = sds.sample_timesteps(key_t, x.shape[0], T, t_min, t_max)
  abar = prior.alphas_cumprod[t][:, None, None, None]
  eps = jax.random.normal(key_eps, x.shape)
  z_t = jnp.sqrt(abar) * x + jnp.sqrt(1 - abar) * eps
  cond = prior.view_embeddings[prior_lib.view_index(azimuth, elevation)]
  uncond = jnp.broadcast_to(prior.uncond_embedding, cond.shape)
  eps_c = prior.predict_noise(prior.params, z_t, t, cond)
  eps_u = prior.predict_noise(prior.params, z_t, t, uncond)
  omega = scale - 1.0
  eps_hat = (1 + omega) * eps_c - omega * eps_u
  w = {'sigma2': 1 - abar, 'uniform': jnp.ones_like(abar),
       'snr_sqrt': jnp.sqrt(abar * (1 - abar))}[weighting]
  return w * (eps_hat - eps)


@functools.partial(_jit, static_argnames=('weighting',))
def _evaluate(prior, images, azimuth, elevation, key, scale, t_min, t_max,
              weighting):
  """Everything the tests check, in one compiled function."""

  def loss_fn(prior, images):
    return sds.sds_loss(prior, images, azimuth, elevation, key, scale=scale,
                        t_min=t_min, t_max=t_max, weighting=weighting)

  def total(prior, images):
    loss, aux = loss_fn(prior, images)
    return jnp.sum(loss), (loss, aux)

  (grad_prior, grad_images), (loss, aux) = jax.grad(
      total, argnums=(0, 1), has_aux=True)(prior, images)
  grad_first = jax.grad(lambda im: loss_fn(prior, im)[0][0])(images)
  target = _reference_target(prior, images, azimuth, elevation, key, scale,
                             t_min, t_max, weighting)
  _, encode_vjp = jax.vjp(lambda im: prior.encode(prior.params, im), images)
  return {
      'loss': loss, 'aux': aux, 'grad_images': grad_images,
      'grad_prior': grad_prior, 'grad_first': grad_first, 'target': target,
      'target_vjp': encode_vjp(target)[0],
      'view': prior_lib.view_index(azimuth, elevation),
  }


def _run(prior=None, azimuth=AZIMUTH, elevation=ELEVATION, key=7, *, scale,
         t_min=0.02, t_max=0.98, weighting='sigma2'):
  # Every argument passed the same way, so calls share the compiled code.
  prior = prior or make_prior()
  return _evaluate(prior, _images(), jnp.asarray(azimuth),
                   jnp.asarray(elevation), jax.random.key(key), scale, t_min,
                   t_max, weighting=weighting)


def test_gradient_is_weighted_residual_and_prior_gets_none():
  out = _run(scale=7.5)
  # Pixel path: x = 2 images - 1, so d/d images = 2 w (eps_hat - eps).
  np.testing.assert_allclose(out['grad_images'], 2 * out['target'],
                             rtol=1e-5, atol=1e-6)
  assert np.abs(out['target']).min() > 0
  # predict_noise is trapped (it raises if differentiated), and every leaf
  # of the prior, params included, gets an exact zero.
  for leaf in jax.tree.leaves(out['grad_prior']):
    np.testing.assert_array_equal(leaf, 0.0)
  # Each view's loss depends on its own render only.
  assert np.abs(out['grad_first'][0]).max() > 0
  np.testing.assert_array_equal(out['grad_first'][1:], 0.0)


def test_the_trap_catches_differentiation():
  with pytest.raises(AssertionError, match='differentiated'):
    jax.grad(lambda a: jnp.sum(tanh_noise(
        {'a': a}, jnp.ones((1, 2, 2, 3)), jnp.zeros(1, jnp.int32),
        jnp.zeros((1, 2, 3)))))(1.0)


def test_gradient_through_encoder_is_its_vjp():
  out = _run(make_prior(encode=latent_encode), scale=100.0)
  np.testing.assert_allclose(out['grad_images'], out['target_vjp'],
                             rtol=1e-5, atol=1e-5)
  assert np.abs(out['grad_images']).max() > 0


def test_classifier_free_guidance_formula():
  eps_c, eps_u = jnp.float32(0.3), jnp.float32(-0.2)
  np.testing.assert_allclose(
      sds.classifier_free_guidance(eps_c, eps_u, 7.5),
      eps_u + 7.5 * (eps_c - eps_u))
  # The paper's (1 + omega) eps_c - omega eps_u is scale = 1 + omega.
  omega = 100.0
  np.testing.assert_allclose(
      sds.classifier_free_guidance(eps_c, eps_u, 1 + omega),
      (1 + omega) * eps_c - omega * eps_u, rtol=1e-6)
  np.testing.assert_allclose(
      sds.classifier_free_guidance(eps_c, eps_u, 1.0), eps_c)

  # Inside sds_loss, with eps_c = view + 1 and eps_u = 0.5: the gradient
  # changes with the scale by 2 w (s1 - s2)(eps_c - eps_u); the noise and
  # t cancel in the difference (same key).
  prior = make_prior(predict_noise=embedding_noise, uncond_value=0.5)
  high = _run(prior, scale=100.0, weighting='uniform')
  low = _run(prior, scale=10.0, weighting='uniform')
  expected = 2 * 90.0 * (EXPECTED_VIEW + 1.0 - 0.5)
  np.testing.assert_allclose(
      (high['grad_images'] - low['grad_images'])[:, 0, 0, 0], expected,
      rtol=1e-4)


def test_view_prompt_choice_at_boundaries():
  prior = make_prior(predict_noise=embedding_noise)
  chosen = _run(prior, scale=1.0, weighting='uniform')
  np.testing.assert_array_equal(chosen['view'], EXPECTED_VIEW)
  # sds_loss conditions on that view's embedding (value view + 1): at scale
  # 1 the gradient differs from the all-front one by 2 (view + 1 - 1).
  front = _run(prior, np.zeros(BATCH, np.float32),
               np.zeros(BATCH, np.float32), scale=1.0, weighting='uniform')
  np.testing.assert_allclose(
      (chosen['grad_images'] - front['grad_images'])[:, 0, 0, 0],
      2.0 * EXPECTED_VIEW, atol=1e-4)


def test_aux():
  out = _run(scale=100.0, t_min=0.3, t_max=0.4)
  loss, aux = out['loss'], out['aux']
  assert loss.shape == (BATCH,)
  assert set(aux) == {'t', 't_frac', 'residual_norm', 'weight'}
  assert aux['t'].dtype == jnp.int32
  assert np.all((aux['t'] >= 300) & (aux['t'] <= 400))
  np.testing.assert_allclose(aux['t_frac'], aux['t'] / T)
  weight = 1 - np.asarray(_schedule())[aux['t']]
  np.testing.assert_allclose(aux['weight'], weight, rtol=1e-6)
  residual = out['target'] / weight[:, None, None, None]
  np.testing.assert_allclose(
      aux['residual_norm'], np.sqrt(np.sum(residual**2, axis=(1, 2, 3))),
      rtol=1e-4)


def test_one_batched_unet_call_and_one_trace():
  calls = []

  def predict_noise(params, z_t, t, embedding):
    calls.append((z_t.shape, t.shape, embedding.shape))
    return params['a'] * z_t + _cond(embedding)

  prior = make_prior(predict_noise=predict_noise)
  step = _jit(sds.sds_loss, static_argnames=('weighting',))
  kwargs = dict(scale=100.0, t_min=0.02, t_max=0.98, weighting='sigma2')
  step(prior, _images(), AZIMUTH, ELEVATION, jax.random.key(0), **kwargs)
  # Other params, renders, cameras and key: the same compiled step.
  other = prior.replace(params={'a': jnp.float32(2.0)})
  step(other, _images(1), AZIMUTH + 1, ELEVATION, jax.random.key(1),
       **kwargs)
  assert calls == [((2 * BATCH, SIZE, SIZE, 3), (2 * BATCH,),
                    (2 * BATCH, 2, 3))]


def test_timesteps_cover_the_range():
  sample = _jit(sds.sample_timesteps, static_argnums=(1, 2))
  t = np.asarray(sample(jax.random.key(0), 20000, T, 0.02, 0.98))
  assert t.dtype == np.int32
  assert t.min() == 20 and t.max() == 980
  # Uniform over the 961 steps: every tenth of the range about equally full.
  counts = np.histogram(t, bins=10, range=(20, 981))[0]
  assert counts.min() > 0.85 * counts.mean()
  # Fractions are traced (annealed inside a step); a degenerate range.
  fixed = sample(jax.random.key(0), 20000, T, 0.5, 0.5)
  np.testing.assert_array_equal(fixed, 500)


def test_weights():
  abar = np.array([0.99, 0.5, 0.01], np.float32)
  np.testing.assert_allclose(sds.weight(abar, 'sigma2'), 1 - abar)
  np.testing.assert_allclose(sds.weight(abar, 'uniform'), 1.0)
  np.testing.assert_allclose(sds.weight(abar, 'snr_sqrt'),
                             np.sqrt(abar * (1 - abar)), rtol=1e-6)
  with pytest.raises(errors.UserError, match='guidance.weighting'):
    sds.weight(abar, 'nope')
