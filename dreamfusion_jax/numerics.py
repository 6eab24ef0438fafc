"""Numerics with finite values and gradients for every input.

Rendering and SDS push values to extremes (empty space, saturated density,
zero-length gradients); these helpers keep forward values and gradients
finite there, so a bad sample never turns a step into NaN.
"""

import jax
import jax.numpy as jnp

# exp(88) is near float32's maximum; stay well below it.
_MAX_EXP_INPUT = 40.0


@jax.custom_jvp
def safe_exp(x):
  """exp(x) with the input clipped so the value and gradient stay finite."""
  return jnp.exp(jnp.minimum(x, _MAX_EXP_INPUT))


@safe_exp.defjvp
def _safe_exp_jvp(primals, tangents):
  (x,), (x_dot,) = primals, tangents
  y = safe_exp(x)
  return y, y * x_dot


def safe_normalize(x, axis=-1, eps=1e-20):
  """x / |x| along `axis`; a zero vector stays zero with a finite gradient."""
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def safe_sqrt(x, eps=1e-20):
  """sqrt(x) for x >= 0 with a finite gradient at 0."""
  return jnp.sqrt(jnp.maximum(x, eps))
