"""The interface every frozen 2D diffusion prior implements.

A prior is data plus pure functions. Its arrays (network weights, text
embeddings, the noise schedule) are pytree leaves: they are passed into the
jitted train step as an argument, replicated across devices, never optimised
and never checkpointed. Its functions are static: the step calls them without
knowing which model is behind them (Stable Diffusion, a pixel-space model, or
the toy world's exact denoiser).
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

# Order of the view-dependent embeddings (DESIGN.md section 4).
VIEWS = ('front', 'side', 'back', 'overhead')


@flax.struct.dataclass
class Prior:
  """A frozen diffusion prior.

  Attributes:
    params: frozen weights, any pytree; the first argument of `encode` and
      `predict_noise`.
    view_embeddings: [len(VIEWS), ...] conditional embedding per view, in the
      order of `VIEWS` (all equal when view prompts are off).
    uncond_embedding: [...] embedding of the negative (or empty) prompt.
    alphas_cumprod: [T] the discrete schedule's cumulative alpha-bar_t.
    encode: (params, images [B, H, W, 3] in [0, 1]) -> x [B, h, w, c], the
      differentiable map from a render to the model's diffusion space (resize
      + VAE encoder for latent models; resize + rescale to [-1, 1] for pixel
      models).
    predict_noise: (params, z_t [B, h, w, c], t [B] int32, embedding [B, ...])
      -> eps [B, h, w, c] float32.
  """

  params: Any
  view_embeddings: jax.Array
  uncond_embedding: jax.Array
  alphas_cumprod: jax.Array
  encode: Callable = flax.struct.field(pytree_node=False)
  predict_noise: Callable = flax.struct.field(pytree_node=False)


def view_index(azimuth, elevation, overhead_elevation=60.0,
               front_half_width=45.0):
  """Index into VIEWS for cameras at (azimuth, elevation) in degrees.

  Overhead when elevation > 60; otherwise front when |azimuth| <= 45, back
  when |azimuth - 180| <= 45, side otherwise (DESIGN.md section 4).

  Args:
    azimuth: [...] degrees, any range (wrapped to (-180, 180]).
    elevation: [...] degrees.

  Returns:
    [...] int32 indices.
  """
  az = jnp.mod(azimuth + 180.0, 360.0) - 180.0  # [-180, 180)
  front = jnp.abs(az) <= front_half_width
  back = jnp.abs(jnp.abs(az) - 180.0) <= front_half_width
  view = jnp.where(front, 0, jnp.where(back, 2, 1))
  return jnp.where(elevation > overhead_elevation, 3, view).astype(jnp.int32)
