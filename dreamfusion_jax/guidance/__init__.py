"""The frozen 2D diffusion prior's interface and Score Distillation Sampling.

  loss, aux = guidance.sds_loss(prior, images, azimuth, elevation, key,
                                scale=..., t_min=..., t_max=...,
                                weighting=...)  # inside the jitted step

  prior          the `Prior` interface: frozen params, embeddings, schedule,
                 `encode` and `predict_noise`; view choice; noise schedules
  sds            the SDS surrogate loss (paper equation 3) and CFG
  views          which embeddings guide a camera: the Janus fixes
                 (negative view prompts, interpolated views, Perp-Neg)
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
from dreamfusion_jax.guidance import views

Prior = prior.Prior
sds_loss = sds.sds_loss
negative_view_prompts = views.negative_view_prompts


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
  _validate_view_guidance(g)
  prior.check_dtype(g.dtype, jax.default_backend())


def _validate_view_guidance(g: ml_collections.ConfigDict) -> None:
  """The Janus fixes' keys (guidance/views.py)."""
  fixes = [name for name in ('negative_view_prompts', 'view_interpolation',
                             'perp_neg') if g[name]]
  if fixes and not g.view_prompts:
    raise errors.UserError(
        f'guidance.{fixes[0]} needs view prompts; set '
        'guidance.view_prompts=True or turn it off.')
  if g.perp_neg and g.negative_view_prompts:
    raise errors.UserError(
        'guidance.perp_neg brings its own negative views; turn '
        'guidance.negative_view_prompts off when it is on.')
  for name in ('perp_neg_f_sb', 'perp_neg_f_fsb', 'perp_neg_f_fs',
               'perp_neg_f_sf'):
    value = g[name]
    if len(value) != 3 or not all(isinstance(v, (int, float))
                                  for v in value):
      raise errors.UserError(
          f'guidance.{name} = {value!r} must be three numbers (a, b, c) '
          'of the negative weight -(a exp(-b r) + c).')


def perp_neg_weights(guidance_config: ml_collections.ConfigDict):
  """(f_sb, f_fsb, f_fs, f_sf) for sds_loss, or None when Perp-Neg is off."""
  g = guidance_config
  if not g.perp_neg:
    return None
  return tuple(tuple(float(v) for v in g[name]) for name in (
      'perp_neg_f_sb', 'perp_neg_f_fsb', 'perp_neg_f_fs', 'perp_neg_f_sf'))
