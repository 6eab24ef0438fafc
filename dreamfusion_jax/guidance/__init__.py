"""The frozen 2D diffusion prior and Score Distillation Sampling.

  prior = guidance.load_prior(config)      # once, before training
  loss, aux = guidance.sds_loss(prior, images, azimuth, elevation, key,
                                scale=..., t_min=..., t_max=...,
                                weighting=...)  # inside the jitted step

`config.guidance.model` picks the prior: 'toy' (the offline toy world),
or a Hugging Face hub id or a diffusers-layout folder (Stable Diffusion, or a
pixel-space model when the folder has no vae/). Only this package imports
diffusers and transformers, and only when a real model is loaded.
"""

from typing import List

import ml_collections

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


def load_prior(config: ml_collections.ConfigDict) -> prior.Prior:
  """The prior named by config.guidance.model, with its text embeddings.

  Embeddings of the view prompts and of config.negative_prompt (the empty
  prompt when unset) are computed here, once; the text encoder is dropped.
  """
  if config.guidance.model == 'toy':
    # pylint: disable-next=g-import-not-at-top
    from dreamfusion_jax.toy import prior as toy_prior
    return toy_prior.make_toy_prior(config)
  # Imported here: diffusers and transformers take seconds to import and the
  # toy world does not need them.
  # pylint: disable-next=g-import-not-at-top
  from dreamfusion_jax.guidance import stable_diffusion
  return stable_diffusion.load(
      config.guidance.model,
      view_prompts(config.prompt, config.guidance.view_prompts),
      config.negative_prompt,
      revision=config.guidance.revision,
      dtype=config.guidance.dtype,
      allow_pickle=config.guidance.allow_pickle)
