"""Numerics with finite values and gradients, and chunked evaluation.

Rendering and SDS push values to extremes (empty space, saturated density,
zero-length gradients); the safe_* helpers keep forward values and gradients
finite there, so a bad sample never turns a step into NaN.

`evaluate_points` runs a function of points over any number of them in
fixed-size chunks, so that it compiles once and memory stays bounded.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


def stratum_offsets(key, shape):
  """Where each sample sits in its stratum: U(0, 1) of `shape`, or 0.5.

  Args:
    key: one PRNG key; a [B] array of keys when shape is [B, ...] (one per
      view, so a view's samples do not depend on the batch it is rendered
      in); or None for the strata's midpoints (deterministic evaluation).
    shape: the offsets' shape.
  """
  if key is None:
    return jnp.full(shape, 0.5)
  if key.ndim == 1:
    return jax.vmap(lambda k: jax.random.uniform(k, shape[1:]))(key)
  return jax.random.uniform(key, shape)


# Points per evaluation: large enough to keep an accelerator busy, small
# enough that an MLP's activations for one chunk fit in memory.
DEFAULT_CHUNK = 65536

PointFn = Callable[[jax.Array], jax.Array]


def as_partial(fn: PointFn) -> jax.tree_util.Partial:
  """Wraps `fn` so that it can be an argument of a jitted function.

  A `jax.tree_util.Partial` carries its bound arguments (e.g. params) as
  pytree leaves, so they are traced rather than baked into the program as
  constants; a plain callable is treated as static.
  """
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


def map_in_chunks(fn, points, chunk: int):
  """fn over points [..., 3] in chunks of `chunk` points, inside jit.

  The points are flattened and zero-padded to whole chunks; `jax.lax.map`
  evaluates one chunk at a time, so only one chunk's intermediates are
  live. Outputs keep the points' leading shape.

  Args:
    fn: points [C, 3] -> a pytree of arrays with leading dimension C.
    points: [..., 3].
    chunk: points per evaluation.

  Returns:
    fn's pytree with leading shape points.shape[:-1].
  """
  shape = points.shape[:-1]
  n = points[..., 0].size
  chunk = min(chunk, n)
  blocks = jnp.pad(points.reshape(-1, 3), ((0, -n % chunk), (0, 0)))
  out = jax.lax.map(fn, blocks.reshape(-1, chunk, 3))
  return jax.tree.map(
      lambda x: x.reshape(-1, *x.shape[2:])[:n].reshape(shape + x.shape[2:]),
      out)


@jax.jit
def _apply(fn, points):
  return fn(points)


def evaluate_points(fn: PointFn, points, chunk: int = DEFAULT_CHUNK
                    ) -> np.ndarray:
  """Evaluates `fn` on [N, 3] points in fixed-size, zero-padded chunks.

  Every chunk has the same shape, so `fn` compiles once for any N.

  Args:
    fn: points [C, 3] -> [C, ...]; a plain callable or a
      `jax.tree_util.Partial` whose bound arguments (params) are traced.
    points: [N, 3], or [N, D] rows of any width D that fn takes (e.g. a
      point and a normal, `texture.seen_colours`).
    chunk: points per evaluation (smaller inputs use the next power of two).

  Returns:
    np.ndarray [N, ...], the stacked outputs.
  """
  points = np.asarray(points, np.float32)
  n = len(points)
  chunk = int(min(chunk, 2 ** int(np.ceil(np.log2(max(n, 1))))))
  fn = as_partial(fn)
  outputs = []
  for start in range(0, n, chunk):
    block = points[start:start + chunk]
    valid = len(block)
    block = np.pad(block, ((0, chunk - valid), (0, 0)))
    outputs.append(np.asarray(_apply(fn, block))[:valid])
  return np.concatenate(outputs, axis=0)
