"""Regularisers of the NeRF (paper section 3.1, appendix A.2). All pure.

Each takes render outputs and returns a scalar averaged over rays, so its
weight means the same at any resolution and batch size.
"""

import jax
import jax.numpy as jnp


def orientation(weights, sample_normals, directions):
  """Orientation loss of Ref-NeRF as used by the paper.

    L = mean over rays of sum_i stopgrad(w_i) max(0, n_i . d)^2

  It penalises normals that face away from the camera where the ray sees
  mass; the weights are constants, so the loss moves normals, not density.

  Args:
    weights: [..., N] compositing weights.
    sample_normals: [..., N, 3] unit normals.
    directions: [..., 3] unit ray directions (camera to scene).
  """
  n_dot_d = jnp.sum(sample_normals * directions[..., None, :], axis=-1)
  per_ray = jnp.sum(jax.lax.stop_gradient(weights) *
                    jnp.maximum(n_dot_d, 0.0) ** 2, axis=-1)
  return jnp.mean(per_ray)


def opacity(opacity_values):
  """The paper's sparsity loss: mean of sqrt(opacity^2 + 0.01)."""
  return jnp.mean(jnp.sqrt(opacity_values ** 2 + 0.01))


def entropy(opacity_values, eps=1e-5):
  """Binary entropy of the opacity, pushing pixels to 0 or 1 (peers' choice)."""
  o = jnp.clip(opacity_values, eps, 1.0 - eps)
  return jnp.mean(-o * jnp.log(o) - (1.0 - o) * jnp.log(1.0 - o))
