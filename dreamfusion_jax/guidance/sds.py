"""Score Distillation Sampling (paper section 3, equation 3).

For a render x = g(theta), t ~ U{t_min T, ..., t_max T} and eps ~ N(0, I),
z_t = alpha_t x + sigma_t eps with alpha_t^2 = alpha-bar_t and sigma_t^2 =
1 - alpha-bar_t, and

  grad_theta L_SDS = E_t,eps[ w(t) (eps_hat(z_t; y, t) - eps) dx/dtheta ].

The UNet's Jacobian is dropped: the residual is held under `stop_gradient`,
so the UNet is never differentiated. `sds_loss` returns a surrogate whose
gradient with respect to x is exactly w(t)(eps_hat - eps); for latent models
x = encode(render) and the gradient reaches the render through the VAE
encoder's vector-Jacobian product.

The prior is any `prior.Prior` (Stable Diffusion, a pixel-space model, the
toy world's exact denoiser): this module only calls its `encode` and
`predict_noise` and reads its embeddings and schedule. Which embeddings
guide a view (the nearest view prompt, or one of the Janus fixes: negative
view prompts, interpolated views, Perp-Neg) is `views`' business; every
UNet evaluation of a step goes into one batched `predict_noise` call.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from dreamfusion_jax import errors
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.guidance import views as views_lib

WEIGHTINGS = ('sigma2', 'uniform', 'snr_sqrt')


def weight(alphas_cumprod_t: jax.Array, weighting: str) -> jax.Array:
  """w(t) of the SDS gradient from alpha-bar_t.

  'sigma2': sigma_t^2 = 1 - alpha-bar_t, the paper's choice (section 3).
  'uniform': 1 ("performed similarly" in the paper).
  'snr_sqrt': alpha_t sigma_t = sigma_t^2 sqrt(SNR_t). Since eps_hat - eps
    = (alpha_t / sigma_t)(x - x0_hat(z_t)), this weighting makes the gradient
    alpha-bar_t (x - x0_hat): the one-step denoised image's residual weighted
    by the share of signal in z_t. It vanishes at both ends of the schedule,
    damping near-pure-noise steps whose x0_hat is the blurry prior mean
    (sigma2 gives them the most weight) as well as near-clean steps.

  Args:
    alphas_cumprod_t: [B] alpha-bar at the sampled t.
    weighting: one of WEIGHTINGS.

  Returns:
    [B] float32.
  """
  abar = alphas_cumprod_t.astype(jnp.float32)
  if weighting == 'sigma2':
    return 1.0 - abar
  if weighting == 'uniform':
    return jnp.ones_like(abar)
  if weighting == 'snr_sqrt':
    return jnp.sqrt(abar * (1.0 - abar))
  raise errors.UserError(
      f'guidance.weighting is {weighting!r}; use one of '
      f'{", ".join(WEIGHTINGS)}.')


def classifier_free_guidance(eps_cond: jax.Array, eps_uncond: jax.Array,
                             scale) -> jax.Array:
  """eps_hat = eps_u + scale (eps_c - eps_u) (DESIGN.md section 1).

  The paper writes eps_hat = (1 + omega) eps_c - omega eps_u (section 2),
  which is this formula with scale = 1 + omega: the
  paper's omega = 100 is scale 101. scale = 1 is the plain conditional
  prediction; scale = 0 the unconditional one.
  """
  return eps_uncond + scale * (eps_cond - eps_uncond)


def sample_timesteps(key: jax.Array, batch: int, num_timesteps: int, t_min,
                     t_max) -> jax.Array:
  """t ~ uniform over the discrete steps in [t_min T, t_max T].

  t_min and t_max are fractions of the schedule and may be traced (annealed
  inside the step); the ends are rounded to the nearest step and included.

  Returns:
    [batch] int32 in [0, T - 1].
  """
  low = jnp.clip(jnp.round(t_min * num_timesteps), 0, num_timesteps - 1)
  high = jnp.clip(jnp.round(t_max * num_timesteps), low, num_timesteps - 1)
  return jax.random.randint(key, (batch,), low.astype(jnp.int32),
                            high.astype(jnp.int32) + 1, dtype=jnp.int32)


def guided_noise(prior: prior_lib.Prior, params, z_t: jax.Array,
                 t: jax.Array, azimuth: jax.Array, elevation: jax.Array, *,
                 scale, negative_view_prompts: bool = False,
                 view_interpolation: bool = False,
                 perp_neg: Optional[views_lib.PerpNegWeights] = None
                 ) -> jax.Array:
  """eps_hat(z_t; y, t) for each camera, from one batched UNet call.

  The nearest view's embedding y_v and the unconditional one (batch 2B),
  with classifier-free guidance; or, per the Janus fixes (guidance/views):
  y_v against the view's negative prompt (negative_view_prompts, 2B); the
  interpolated embedding y(az) (view_interpolation, 2B); Perp-Neg with
  y(az), the unconditional embedding and two negative views (4B).

  Args:
    prior: the prior (embeddings under stop_gradient here).
    params: its params, already under stop_gradient.
    z_t: [B, h, w, c] noisy inputs (no gradient).
    t: [B] int32.
    azimuth, elevation: [B] degrees.
    scale: guidance scale s.
    negative_view_prompts, view_interpolation: the fixes (static).
    perp_neg: Perp-Neg's (f_sb, f_fsb, f_fs, f_sf), or None for off.

  Returns:
    [B, h, w, c] float32.
  """
  embeddings = jax.lax.stop_gradient(prior.view_embeddings)
  uncond = jax.lax.stop_gradient(prior.uncond_embedding)
  view = prior_lib.view_index(azimuth, elevation)
  if perp_neg is not None or view_interpolation:
    cond = views_lib.mix(views_lib.interpolation_weights(azimuth, elevation),
                         embeddings)
  else:
    cond = embeddings[view]
  uncond = jnp.broadcast_to(uncond, cond.shape).astype(cond.dtype)
  if perp_neg is not None:
    neg_views, neg_w = views_lib.perp_neg_negatives(azimuth, elevation,
                                                    perp_neg)
    batch = [cond, uncond, embeddings[neg_views[:, 0]].astype(cond.dtype),
             embeddings[neg_views[:, 1]].astype(cond.dtype)]
  elif negative_view_prompts:
    if prior.negative_view_embeddings is None:
      raise ValueError('This prior has no negative view embeddings.')
    batch = [cond, jax.lax.stop_gradient(
        prior.negative_view_embeddings)[view].astype(cond.dtype)]
  else:
    batch = [cond, uncond]
  n = len(batch)
  eps = prior.predict_noise(params, jnp.concatenate([z_t] * n),
                            jnp.concatenate([t] * n),
                            jnp.concatenate(batch)).astype(jnp.float32)
  eps = jnp.split(eps, n)
  if perp_neg is not None:
    return views_lib.perp_neg_guidance(eps[0], eps[1], eps[2:], neg_w, scale)
  return classifier_free_guidance(eps[0], eps[1], scale)


def sds_loss(prior: prior_lib.Prior, images: jax.Array, azimuth: jax.Array,
             elevation: jax.Array, key: jax.Array, *, scale, t_min, t_max,
             weighting: str, negative_view_prompts: bool = False,
             view_interpolation: bool = False,
             perp_neg: Optional[views_lib.PerpNegWeights] = None
             ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The SDS surrogate loss per view (paper equation 3).

  loss[b] = sum(stop_gradient(w(t_b) (eps_hat_b - eps_b)) * x_b), so that
  d loss[b] / d x_b = w(t_b)(eps_hat_b - eps_b) exactly; its value has no
  meaning. The prior's params are stop_gradient-ed before use and the UNet
  sees only stop_gradient-ed inputs, so the UNet is never differentiated and
  no gradient reaches the prior. One UNet call evaluates every prediction
  eps_hat needs (`guided_noise`: batch 2B, or 4B with Perp-Neg).

  Args:
    prior: the frozen prior (a jit argument; its functions are static).
    images: [B, H, W, 3] float32 renders in [0, 1].
    azimuth: [B] camera azimuth in degrees (chooses the view prompt).
    elevation: [B] camera elevation in degrees.
    key: typed PRNG key (jax.random.key) for t and eps.
    scale: classifier-free guidance scale (see `classifier_free_guidance`;
      the paper's omega is scale - 1).
    t_min: lowest t as a fraction of the schedule (paper: 0.02).
    t_max: highest t as a fraction of the schedule (paper: 0.98).
    weighting: w(t), one of WEIGHTINGS (static).
    negative_view_prompts, view_interpolation, perp_neg: the Janus fixes
      (static; see `guided_noise` and guidance/views.py). Off by default:
      the paper's nearest view prompt.

  Returns:
    loss: [B] surrogate per view.
    aux: 't' [B] int32 sampled step, 't_frac' [B] t / T, 'residual_norm' [B]
      ||eps_hat - eps||_2, 'weight' [B] w(t).
  """
  key_t, key_eps = jax.random.split(key)
  params = jax.lax.stop_gradient(prior.params)
  x = prior.encode(params, images)  # Differentiable: the render's path.
  batch = x.shape[0]
  num_timesteps = prior.alphas_cumprod.shape[0]

  t = sample_timesteps(key_t, batch, num_timesteps, t_min, t_max)
  abar = jax.lax.stop_gradient(prior.alphas_cumprod)[t]
  eps = jax.random.normal(key_eps, x.shape, jnp.float32)
  abar_b = abar[:, None, None, None]
  z_t = jnp.sqrt(abar_b) * x + jnp.sqrt(1.0 - abar_b) * eps
  z_t = jax.lax.stop_gradient(z_t)

  eps_hat = guided_noise(
      prior, params, z_t, t, azimuth, elevation, scale=scale,
      negative_view_prompts=negative_view_prompts,
      view_interpolation=view_interpolation, perp_neg=perp_neg)

  w = weight(abar, weighting)
  residual = jax.lax.stop_gradient(eps_hat - eps)
  target = jax.lax.stop_gradient(w[:, None, None, None] * residual)
  loss = jnp.sum(target * x, axis=(1, 2, 3))
  aux = {
      't': t,
      't_frac': t.astype(jnp.float32) / num_timesteps,
      'residual_norm': jnp.sqrt(jnp.sum(residual**2, axis=(1, 2, 3))),
      'weight': w,
  }
  return loss, aux
