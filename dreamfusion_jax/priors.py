"""Picks the frozen prior named by `config.guidance.model`.

  prior = priors.load_prior(config)   # once, before training

'toy' is the offline toy world's exact denoiser (`toy.exact_prior`); any
other value is a Hugging Face hub id or a diffusers-layout folder, loaded by
`guidance.stable_diffusion` (Stable Diffusion, or a pixel-space model when
the folder has no vae/). Both return a `guidance.prior.Prior`, so the train
step never knows which one it has. This dispatcher sits above both, so that
neither imports the other.
"""

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
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


def load_object_prior(configs: Sequence[ml_collections.ConfigDict]
                      ) -> Tuple[prior_lib.Prior, prior_lib.Prior]:
  """One prior for several objects (one config each, differing in prompt
  and in what sets the text embeddings: object_batch.PER_OBJECT).

  Returns:
    (prior, axes). `axes` has the prior's structure with 0 where a leaf has
    a leading object axis and None where it is shared: the vmap in_axes of
    `train_step.make_object_train_step`. Stable Diffusion loads its weights
    once and encodes every object's prompts in one call, so only its
    embeddings are per object, and so are the toy prior's (its image set,
    every toy object's photographs, is shared).
  """
  config = configs[0]
  if config.guidance.model == 'toy':
    # One image set holds every toy object's photographs; a prompt only
    # picks its groups through the embeddings.
    prior = exact_prior.make_toy_prior(config)
    per_object = [exact_prior.embeddings(c) for c in configs]
    view, uncond, negative = (jnp.stack([jnp.asarray(e[i])
                                         for e in per_object])
                              for i in range(3))
    prior = prior.replace(view_embeddings=view, uncond_embedding=uncond,
                          negative_view_embeddings=negative)
    return prior, object_axes(prior, prior_lib.EMBEDDINGS)
  # pylint: disable-next=g-import-not-at-top
  from dreamfusion_jax.guidance import stable_diffusion
  prior = stable_diffusion.load_batch(
      config.guidance.model,
      [(guidance.view_prompts(c.prompt, c.guidance.view_prompts),
        c.negative_prompt,
        guidance.negative_view_prompts(c.prompt, c.negative_prompt))
       for c in configs],
      revision=config.guidance.revision, dtype=config.guidance.dtype,
      allow_pickle=config.guidance.allow_pickle)
  return prior, object_axes(prior, prior_lib.EMBEDDINGS)


def object_axes(prior: prior_lib.Prior, per_object: Sequence[str]
                ) -> prior_lib.Prior:
  """vmap in_axes of a batched prior: 0 for the fields named in
  `per_object` (each a leading object axis), None for every other leaf."""
  axes = jax.tree.map(lambda _: None, prior)
  return axes.replace(**{name: 0 for name in per_object
                         if getattr(prior, name) is not None})
