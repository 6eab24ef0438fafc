"""The Flax prior against diffusers' and transformers' PyTorch models.

Skipped when torch is absent (the project does not need it). With torch, the
tiny safetensors model is loaded once by the project's loader (converted to
Flax without torch) and once by the PyTorch classes, and the UNet's noise
prediction, the VAE encoder's latents and the text embeddings must agree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,g-bad-import-order
from configs import default
from dreamfusion_jax import guidance
from dreamfusion_jax import priors
import tiny_models  # tests/ is on sys.path under pytest.
import diffusers
import transformers
# pylint: enable=g-import-not-at-top,g-bad-import-order


def _close(flax_value, torch_value, tolerance=1e-4):
  flax_value = np.asarray(flax_value, np.float64)
  torch_value = np.asarray(torch_value, np.float64)
  scale = max(np.abs(torch_value).max(), 1e-6)
  np.testing.assert_allclose(flax_value, torch_value, atol=tolerance * scale)


@pytest.mark.slow
def test_flax_prior_matches_pytorch(tmp_path):
  folder = tiny_models.make_tiny_stable_diffusion(
      tmp_path / 'sd', weights='safetensors')
  config = default.get_config()
  config.prompt = 'a red cube'
  config.guidance.model = str(folder)
  config.guidance.dtype = 'float32'
  prior = priors.load_prior(config)
  torch.manual_seed(0)

  # Text: the front-view prompt's embedding.
  tokenizer = transformers.CLIPTokenizer.from_pretrained(
      str(folder / 'tokenizer'))
  ids = tokenizer(['a red cube, front view'], padding='max_length',
                  max_length=tokenizer.model_max_length,
                  return_tensors='pt').input_ids
  text = transformers.CLIPTextModel.from_pretrained(
      str(folder / 'text_encoder')).eval()
  with torch.no_grad():
    hidden = text(ids).last_hidden_state.numpy()
  _close(prior.view_embeddings[0], hidden[0])

  # UNet: eps(z_t; y, t) for two steps.
  unet = diffusers.UNet2DConditionModel.from_pretrained(
      str(folder / 'unet')).eval()
  rng = np.random.default_rng(0)
  z_t = rng.normal(size=(2, 16, 16, 4)).astype(np.float32)
  t = np.array([20, 900], np.int32)
  embedding = np.asarray(prior.view_embeddings[:2])
  eps = jax.jit(prior.predict_noise)(prior.params, jnp.asarray(z_t),
                                     jnp.asarray(t), jnp.asarray(embedding))
  with torch.no_grad():
    eps_torch = unet(torch.from_numpy(z_t.transpose(0, 3, 1, 2)),
                     torch.from_numpy(t.astype(np.int64)),
                     encoder_hidden_states=torch.from_numpy(embedding)).sample
  _close(eps, eps_torch.numpy().transpose(0, 2, 3, 1))

  # VAE encoder: the scaled posterior mean of a 32x32 render.
  vae = diffusers.AutoencoderKL.from_pretrained(str(folder / 'vae')).eval()
  images = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  latents = jax.jit(prior.encode)(prior.params, jnp.asarray(images))
  with torch.no_grad():
    posterior = vae.encode(
        torch.from_numpy(2 * images.transpose(0, 3, 1, 2) - 1)).latent_dist
  _close(latents, posterior.mean.numpy().transpose(0, 2, 3, 1)
         * vae.config.scaling_factor)
