"""The frozen 2D diffusion prior's interface and Score Distillation Sampling.

  loss, aux = guidance.sds_loss(prior, images, azimuth, elevation, key,
                                scale=..., t_min=..., t_max=...,
                                weighting=...)  # inside the jitted step

  prior          the `Prior` interface: frozen params, embeddings, schedule,
                 `encode` and `predict_noise`; view choice; noise schedules
  sds            the SDS surrogate loss (paper equation 3) and CFG
  stable_diffusion  Stable Diffusion (or a pixel-space diffusers UNet) as a
                 Prior, loaded from a hub id or a diffusers-layout folder
  hub, quiet     finding weights offline; silencing deprecation chatter

`dreamfusion_jax.priors.load_prior(config)` picks a prior by
`config.guidance.model`. Only this package (and evaluation's CLIP loading)
imports diffusers and transformers, and only when a real model is loaded.
"""

from typing import List

import jax
import ml_collections

from dreamfusion_jax import errors
from dreamfusion_jax.guidance import prior
from dreamfusion_jax.guidance import sds

Prior = prior.Prior
sds_loss = sds.sds_loss


def view_prompts(prompt: str, enabled: bool = True) -> List[str]:
  """One prompt per entry of prior.VIEWS ('<prompt>, front view', ...).

  With `enabled` False every view gets the bare prompt.
  """
  if not enabled:
    return [prompt] * len(prior.VIEWS)
  return [f'{prompt}, {view} view' for view in prior.VIEWS]


def validate(guidance_config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for an invalid `guidance` group."""
  g = guidance_config
  if not 0.0 <= g.t_min < g.t_max <= 1.0:
    raise errors.UserError(
        f'guidance.t_min = {g.t_min} and guidance.t_max = {g.t_max} must '
        'satisfy 0 <= t_min < t_max <= 1; the paper uses 0.02 and 0.98.')
  if g.t_max_end is not None and not g.t_min < g.t_max_end <= g.t_max:
    raise errors.UserError(
        f'guidance.t_max_end = {g.t_max_end} must lie in (t_min, t_max] = '
        f'({g.t_min}, {g.t_max}]; leave it unset for a constant t_max.')
  if g.scale < 0:
    raise errors.UserError(
        f'guidance.scale = {g.scale} is negative; use 0 (no guidance) or '
        'more (the paper uses 100).')
  if g.weighting not in sds.WEIGHTINGS:
    raise errors.UserError(
        f"guidance.weighting = '{g.weighting}' is unknown; use one of "
        f"{', '.join(repr(w) for w in sds.WEIGHTINGS)}.")
  prior.check_dtype(g.dtype, jax.default_backend())
