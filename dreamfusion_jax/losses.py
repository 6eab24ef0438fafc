"""Regularisers of the NeRF (paper section 3.1, appendix A.2). All pure.

Each takes render outputs and returns a scalar averaged over rays, so its
weight means the same at any resolution and batch size.
"""

import jax
import jax.numpy as jnp
import ml_collections

from dreamfusion_jax import errors


ORIENTATION_NORMALIZATIONS = ('rays', 'opaque')
# Opacity above which a ray counts as seeing the object ('opaque').
OPAQUE_RAY = 1e-3


def orientation(weights, sample_normals, directions, normalize='rays'):
  """Orientation loss of Ref-NeRF as used by the paper.

    L = sum over rays of sum_i stopgrad(w_i) max(0, n_i . d)^2 / count

  It penalises normals that face away from the camera where the ray sees
  mass; the weights are constants, so the loss moves normals, not density.
  `count` is every ray ('rays', a mean) or the rays whose opacity exceeds
  OPAQUE_RAY ('opaque', threestudio's): then the loss does not weaken as
  the object covers less of the image.

  Args:
    weights: [..., N] compositing weights.
    sample_normals: [..., N, 3] unit normals.
    directions: [..., 3] unit ray directions (camera to scene).
    normalize: one of ORIENTATION_NORMALIZATIONS.
  """
  weights = jax.lax.stop_gradient(weights)
  n_dot_d = jnp.sum(sample_normals * directions[..., None, :], axis=-1)
  per_ray = jnp.sum(weights * jnp.maximum(n_dot_d, 0.0) ** 2, axis=-1)
  if normalize == 'opaque':
    seen = jnp.sum(weights, axis=-1) > OPAQUE_RAY
    return jnp.sum(per_ray) / jnp.maximum(jnp.sum(seen), 1)
  return jnp.mean(per_ray)


def opacity(opacity_values):
  """The paper's sparsity loss: mean of sqrt(opacity^2 + 0.01)."""
  return jnp.mean(jnp.sqrt(opacity_values ** 2 + 0.01))


def entropy(opacity_values, eps=1e-5):
  """Binary entropy of the opacity, pushing pixels to 0 or 1 (peers' choice)."""
  o = jnp.clip(opacity_values, eps, 1.0 - eps)
  return jnp.mean(-o * jnp.log(o) - (1.0 - o) * jnp.log(1.0 - o))


def distortion(weights, t, delta, length):
  """The distortion loss of mip-NeRF 360 (Barron et al., 2022, eq. 15).

    L = sum_ij w_i w_j |s_i - s_j| + 1/3 sum_i w_i^2 d_i,

  with s = t / length and d = delta / length the samples' positions and bin
  widths in units of `length` (pass the scene's diameter so that the loss
  does not depend on its scale). It is small when each ray's weight sits in
  one short interval: a sharp surface rather than a soft shell. Computed in
  O(N) per ray from prefix sums; samples must be sorted along the ray.

  Args:
    weights: [..., N] compositing weights.
    t: [..., N] sample distances, ascending.
    delta: [..., N] bin widths.
    length: the unit of distance.

  Returns:
    Scalar mean over rays.
  """
  s, d = t / length, delta / length
  # sum_{i != j} w_i w_j |s_i - s_j| = 2 sum_i w_i (s_i W_<i - (ws)_<i).
  w_before = jnp.cumsum(weights, axis=-1) - weights
  ws_before = jnp.cumsum(weights * s, axis=-1) - weights * s
  between = 2.0 * jnp.sum(weights * (s * w_before - ws_before), axis=-1)
  within = jnp.sum(weights ** 2 * d, axis=-1) / 3.0
  return jnp.mean(between + within)


def validate(loss_config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for an invalid `loss` group."""
  c = loss_config
  for name in ('orientation_weight_start', 'orientation_weight_end',
               'opacity_weight', 'entropy_weight', 'distortion_weight'):
    if c[name] < 0:
      raise errors.UserError(
          f'loss.{name} = {c[name]} is negative; use 0 (off) or a positive '
          'weight.')
  if c.orientation_normalize not in ORIENTATION_NORMALIZATIONS:
    raise errors.UserError(
        f"loss.orientation_normalize = '{c.orientation_normalize}' is "
        "unknown; use 'rays' (mean over all rays) or 'opaque' (over the "
        "rays that see the object).")
  if c.orientation_ramp_shape not in ('geometric', 'linear'):
    raise errors.UserError(
        f"loss.orientation_ramp_shape = '{c.orientation_ramp_shape}' is "
        "unknown; use 'geometric' or 'linear'.")
  ramp = tuple(loss_config.distortion_ramp)
  if len(ramp) != 2 or not 0.0 <= ramp[0] <= ramp[1] <= 1.0:
    raise errors.UserError(
        f'loss.distortion_ramp = {ramp} must be two fractions of training '
        '(a, b) with 0 <= a <= b <= 1, e.g. (0.5, 0.8).')
