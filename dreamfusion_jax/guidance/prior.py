"""The interface every frozen 2D diffusion prior implements.

A prior is data plus pure functions. Its arrays (network weights, text
embeddings, the noise schedule) are pytree leaves: they are passed into the
jitted train step as an argument, replicated across devices, never optimised
and never checkpointed. Its functions are static: the step calls them without
knowing which model is behind them (Stable Diffusion, a pixel-space model, or
the toy world's exact denoiser).
"""

from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dreamfusion_jax import errors

# Order of the view-dependent embeddings (DESIGN.md section 4).
VIEWS = ('front', 'side', 'back', 'overhead')
# Compute dtypes of a prior's networks (guidance.dtype); 'auto' is float16
# on GPUs, bfloat16 on TPUs and float32 on CPUs.
DTYPES = ('auto', 'float32', 'bfloat16', 'float16')


def check_dtype(name: str, backend: str) -> None:
  """Raises UserError for an unknown dtype, or float16 on a CPU."""
  if name not in DTYPES:
    raise errors.UserError(
        f"guidance.dtype = '{name}' is unknown; use one of "
        f"{', '.join(repr(d) for d in DTYPES)}.")
  if name == 'float16' and backend == 'cpu':
    raise errors.UserError(
        "guidance.dtype = 'float16' needs a GPU (on a CPU it is emulated and "
        "slow); use 'auto' or 'float32' here.")


# The Prior fields that hold text embeddings: what differs between the
# objects of a batch run (a batched prior has a leading object axis on
# these and shares every other leaf).
EMBEDDINGS = ('view_embeddings', 'uncond_embedding',
              'negative_view_embeddings')


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
    negative_view_embeddings: [len(VIEWS), ...] per view, the embedding of
      the prompt naming the views it must not show (`views.NEGATIVE_VIEWS`:
      '<prompt>, back view' for the front; the negative prompt for
      overhead), used with guidance.negative_view_prompts; None for a prior
      built without them.
  """

  params: Any
  view_embeddings: jax.Array
  uncond_embedding: jax.Array
  alphas_cumprod: jax.Array
  encode: Callable = flax.struct.field(pytree_node=False)
  predict_noise: Callable = flax.struct.field(pytree_node=False)
  negative_view_embeddings: Optional[jax.Array] = None


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


def noise_schedule(num_timesteps: int, beta_start: float, beta_end: float,
                   beta_schedule: str = 'scaled_linear',
                   trained_betas: Optional[Sequence[float]] = None
                   ) -> np.ndarray:
  """alpha-bar_t = prod_{s <= t} (1 - beta_s) of a discrete schedule.

  In the paper's notation alpha_t^2 = alpha-bar_t and sigma_t^2 = 1 -
  alpha-bar_t (section 2, variance preserving).

  Args:
    num_timesteps: T.
    beta_start, beta_end: the first and last beta.
    beta_schedule: 'scaled_linear' (latent diffusion's, linear in
      sqrt(beta); Stable Diffusion and the toy prior), 'linear' (DDPM) or
      'squaredcos_cap_v2' (Nichol & Dhariwal's cosine, betas capped at
      0.999).
    trained_betas: explicit betas, which override the rest.

  Returns:
    [T] float32, decreasing from 1 - beta_1.
  """
  if trained_betas is not None:
    betas = np.asarray(trained_betas, np.float64)
  elif beta_schedule == 'scaled_linear':
    betas = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end),
                        num_timesteps, dtype=np.float64)**2
  elif beta_schedule == 'linear':
    betas = np.linspace(beta_start, beta_end, num_timesteps,
                        dtype=np.float64)
  elif beta_schedule == 'squaredcos_cap_v2':
    def abar(u):
      return np.cos((u + 0.008) / 1.008 * np.pi / 2)**2
    u = np.arange(num_timesteps, dtype=np.float64) / num_timesteps
    betas = np.minimum(1 - abar(u + 1 / num_timesteps) / abar(u), 0.999)
  else:
    raise errors.UserError(
        f'The scheduler config has beta_schedule {beta_schedule!r}; '
        'supported are linear, scaled_linear and squaredcos_cap_v2.')
  return np.cumprod(1.0 - betas).astype(np.float32)
