"""Picks the frozen prior named by `config.guidance.model`.

  prior = priors.load_prior(config)   # once, before training

'toy' is the offline toy world's exact denoiser (`toy.exact_prior`); any
other value is a Hugging Face hub id or a diffusers-layout folder, loaded by
`guidance.stable_diffusion` (Stable Diffusion, or a pixel-space model when
the folder has no vae/). Both return a `guidance.prior.Prior`, so the train
step never knows which one it has. This dispatcher sits above both, so that
neither imports the other.
"""

import ml_collections

from dreamfusion_jax import guidance
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.toy import exact_prior


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for a config the chosen prior cannot serve."""
  if config.guidance.model == 'toy':
    exact_prior.validate(config)  # Unknown toy prompts, bad toy settings.


def load_prior(config: ml_collections.ConfigDict) -> prior_lib.Prior:
  """The prior named by config.guidance.model, with its text embeddings.

  Embeddings of the view prompts, of each view's negative view prompt
  (guidance.negative_view_prompts) and of config.negative_prompt (the empty
  prompt when unset) are computed here, once; the text encoder is dropped.
  """
  if config.guidance.model == 'toy':
    return exact_prior.make_toy_prior(config)
  # Imported here: diffusers and transformers take seconds to import and the
  # toy world does not need them.
  # pylint: disable-next=g-import-not-at-top
  from dreamfusion_jax.guidance import stable_diffusion
  return stable_diffusion.load(
      config.guidance.model,
      guidance.view_prompts(config.prompt, config.guidance.view_prompts),
      config.negative_prompt,
      negative_view_prompts=guidance.negative_view_prompts(
          config.prompt, config.negative_prompt),
      revision=config.guidance.revision,
      dtype=config.guidance.dtype,
      allow_pickle=config.guidance.allow_pickle)
