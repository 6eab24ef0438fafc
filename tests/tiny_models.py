"""Tiny random Stable Diffusion folders for tests (no downloads).

`make_tiny_stable_diffusion(folder)` writes a complete diffusers-layout
Stable Diffusion folder with random weights in a few seconds:

  folder/
    model_index.json
    unet/          config.json + weights      FlaxUNet2DConditionModel
    vae/           config.json + weights      FlaxAutoencoderKL (latent form)
    text_encoder/  config.json + weights      FlaxCLIPTextModel
    tokenizer/     vocab.json, merges.txt ... CLIPTokenizer
    scheduler/     scheduler_config.json      SD's scaled-linear schedule

Weights are either Flax msgpack (`weights='flax'`, what `save_pretrained` of
the Flax classes writes) or PyTorch-named safetensors (`weights=
'safetensors'`, the layout of Stable Diffusion repositories on the hub): the
Flax parameters renamed and transposed to the PyTorch state-dict convention
and saved with `safetensors.numpy`, so torch is not needed. With the same
seed both forms hold the same numbers, so a loader must produce identical
outputs from either.

Sizes (chosen so one SDS step compiles and runs in seconds on a CPU):
  latent form: the VAE takes 32x32 renders (2 blocks, one 2x downsample) to
    16x16x4 latents; the UNet works at 16x16 with channels (32, 64).
  pixel form (`pixel_space=True`): no vae/ folder; the UNet takes 16x16x3
    images directly.
  text: CLIP with width 32, 2 layers, 77 tokens, a byte-level vocabulary of
    529 tokens.

Usage in a test:

  folder = tiny_models.make_tiny_stable_diffusion(tmp_path / 'sd')
  config.guidance.model = str(folder)
"""

import json
import os
import pathlib
import re
from typing import Dict, Tuple, Union

import flax
import jax
import numpy as np
import safetensors.numpy

from dreamfusion_jax.guidance import quiet  # pylint: disable=unused-import
import diffusers  # pylint: disable=g-bad-import-order
import transformers  # pylint: disable=g-bad-import-order

# XLA options for tests' jax.jit(..., compiler_options=FAST_COMPILE): on a
# CPU, LLVM's optimisation dominates compile time (a tiny UNet's SDS step
# compiles about twice as fast without it, jax.random.normal about 7x) and
# tiny models run fast enough unoptimised.
FAST_COMPILE = {'xla_backend_optimization_level': 0}

TEXT_LENGTH = 77
TEXT_WIDTH = 32
LATENT_CHANNELS = 4

# Stable Diffusion v1's noise schedule and scheduler config (PNDM).
SCHEDULER_CONFIG = {
    '_class_name': 'PNDMScheduler',
    '_diffusers_version': diffusers.__version__,
    'beta_end': 0.012,
    'beta_schedule': 'scaled_linear',
    'beta_start': 0.00085,
    'num_train_timesteps': 1000,
    'prediction_type': 'epsilon',
    'set_alpha_to_one': False,
    'skip_prk_steps': True,
    'steps_offset': 1,
    'trained_betas': None,
}

# Words whose merges the tiny vocabulary holds, so BPE merging is exercised.
_MERGED_WORDS = ('a', 'the', 'view', 'front', 'side', 'back')


def unet_config(pixel_space: bool = False) -> Dict:
  """Keyword arguments of the tiny FlaxUNet2DConditionModel."""
  channels = 3 if pixel_space else LATENT_CHANNELS
  return dict(
      sample_size=16,
      in_channels=channels,
      out_channels=channels,
      down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
      block_out_channels=(32, 64),
      layers_per_block=1,
      attention_head_dim=4,  # diffusers reads this as the number of heads.
      cross_attention_dim=TEXT_WIDTH,
  )


def vae_config() -> Dict:
  """Keyword arguments of the tiny FlaxAutoencoderKL (32x32 -> 16x16x4)."""
  return dict(
      sample_size=32,
      in_channels=3,
      out_channels=3,
      down_block_types=('DownEncoderBlock2D', 'DownEncoderBlock2D'),
      up_block_types=('UpDecoderBlock2D', 'UpDecoderBlock2D'),
      block_out_channels=(32, 64),
      layers_per_block=1,
      latent_channels=LATENT_CHANNELS,
      scaling_factor=0.18215,
  )


def text_config(vocab_size: int) -> transformers.CLIPTextConfig:
  return transformers.CLIPTextConfig(
      vocab_size=vocab_size,
      hidden_size=TEXT_WIDTH,
      intermediate_size=64,
      projection_dim=TEXT_WIDTH,
      num_hidden_layers=2,
      num_attention_heads=2,
      max_position_embeddings=TEXT_LENGTH,
      # CLIP's specials sit at the end of the vocabulary.
      bos_token_id=vocab_size - 2,
      eos_token_id=vocab_size - 1,
      pad_token_id=vocab_size - 1,
  )


def _byte_symbols():
  """CLIP's byte-level alphabet: one printable character per byte value."""
  printable = (list(range(ord('!'), ord('~') + 1))
               + list(range(ord('\xa1'), ord('\xac') + 1))
               + list(range(ord('\xae'), ord('\xff') + 1)))
  symbols = {b: chr(b) for b in printable}
  extra = 0
  for b in range(256):
    if b not in symbols:
      symbols[b] = chr(256 + extra)
      extra += 1
  return [symbols[b] for b in range(256)]


def write_tokenizer(folder: pathlib.Path) -> int:
  """Writes a tiny CLIP BPE tokenizer; returns its vocabulary size."""
  folder.mkdir(parents=True, exist_ok=True)
  symbols = _byte_symbols()
  tokens = symbols + [s + '</w>' for s in symbols]
  merges = []
  for word in _MERGED_WORDS:
    # Merge left to right: ('f','r') -> 'fr', ('fr','o') -> 'fro', ... with
    # the end-of-word marker on the last symbol, as CLIP's BPE splits words.
    parts = list(word[:-1]) + [word[-1] + '</w>']
    merged = parts[0]
    for part in parts[1:]:
      pair = (merged, part)
      merged = merged + part
      if pair not in merges:
        merges.append(pair)
        tokens.append(merged)
  tokens = list(dict.fromkeys(tokens))
  tokens += ['<|startoftext|>', '<|endoftext|>']
  vocab = {token: i for i, token in enumerate(tokens)}
  with open(folder / 'vocab.json', 'w', encoding='utf-8') as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(folder / 'merges.txt', 'w', encoding='utf-8') as f:
    f.write('#version: 0.2\n')
    f.writelines(f'{a} {b}\n' for a, b in merges)
  tokenizer = transformers.CLIPTokenizer(
      str(folder / 'vocab.json'), str(folder / 'merges.txt'),
      model_max_length=TEXT_LENGTH)
  tokenizer.save_pretrained(str(folder))
  return len(vocab)


# Flax module names whose trailing "_<n>" is part of the PyTorch name too
# (diffusers' TimestepEmbedding.linear_1); every other "name_<n>" is the
# PyTorch ModuleList entry "name.<n>".
_LITERAL_INDEXED = ('linear_1', 'linear_2')
# diffusers' Flax attention names -> PyTorch Attention names.
_ATTENTION = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v',
              'proj_attn': 'to_out.0'}


def diffusers_flax_to_pytorch(params) -> Dict[str, np.ndarray]:
  """diffusers Flax params -> PyTorch state dict (numpy), the inverse of
  diffusers' `convert_pytorch_state_dict_to_flax`.

  Conv kernels HWIO -> OIHW, dense kernels transposed, norm scales renamed to
  weight, list entries "blocks_0" -> "blocks.0", attention projections
  renamed.
  """
  state = {}
  for path, value in flax.traverse_util.flatten_dict(params).items():
    value = np.asarray(value)
    names = []
    for name in path[:-1]:
      match = re.fullmatch(r'(.+)_(\d+)', name)
      if match and name not in _LITERAL_INDEXED:
        names += [match.group(1), match.group(2)]
      else:
        names.append(name)
    if names[-1] in _ATTENTION:
      names[-1] = _ATTENTION[names[-1]]
    leaf = path[-1]
    if leaf == 'kernel':
      leaf = 'weight'
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    elif leaf == 'scale':
      leaf = 'weight'
    state['.'.join(names + [leaf])] = np.ascontiguousarray(value)
  return state


def transformers_flax_to_pytorch(params) -> Dict[str, np.ndarray]:
  """transformers FlaxCLIPTextModel params -> PyTorch CLIPTextModel names."""
  state = {}
  for path, value in flax.traverse_util.flatten_dict(params).items():
    value = np.asarray(value)
    leaf = path[-1]
    if leaf == 'kernel':
      leaf, value = 'weight', value.T
    elif leaf in ('scale', 'embedding'):
      leaf = 'weight'
    state['.'.join(path[:-1] + (leaf,))] = np.ascontiguousarray(value)
  return state


def _save_safetensors(state: Dict[str, np.ndarray], path: pathlib.Path):
  # The 'pt' format tag is what PyTorch-saved files carry; transformers
  # requires it to convert the names.
  safetensors.numpy.save_file(state, str(path), metadata={'format': 'pt'})


def _save_diffusers_model(module, params, folder: pathlib.Path,
                          weights: str, torch_class: str):
  module.save_config(str(folder))
  config_path = folder / 'config.json'
  config = json.loads(config_path.read_text())
  # Hub repositories name the PyTorch class; the loader must not care.
  config['_class_name'] = torch_class
  config_path.write_text(json.dumps(config, indent=2))
  if weights == 'flax':
    (folder / 'diffusion_flax_model.msgpack').write_bytes(
        flax.serialization.to_bytes(params))
  else:
    _save_safetensors(diffusers_flax_to_pytorch(params),
                      folder / 'diffusion_pytorch_model.safetensors')


def random_params(shapes, seed: int):
  """Random weights for a shape tree (from `jax.eval_shape` of an init).

  Running a model's init, even jitted, takes minutes for a UNet on a busy
  2-core CPU; drawing numbers for its shapes takes milliseconds. Kernels and
  embeddings ~ N(0, 1/fan_in), so activations keep unit scale through the
  layers; biases and norm offsets small but non-zero, so a conversion that
  drops or misplaces them shows.
  """
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  params = {}
  for path in sorted(flat):
    shape = flat[path].shape
    leaf = path[-1]
    if leaf == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(size=shape) / np.sqrt(fan_in)
    elif leaf == 'embedding':
      value = rng.normal(size=shape) / np.sqrt(shape[-1])
    elif leaf == 'scale':
      value = 1.0 + 0.1 * rng.normal(size=shape)
    else:
      value = 0.02 * rng.normal(size=shape)
    params[path] = value.astype(np.float32)
  return flax.traverse_util.unflatten_dict(params)


def _diffusers_params(module, seed: int):
  shapes = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
  return random_params(shapes, seed)


def make_tiny_stable_diffusion(
    folder: Union[str, os.PathLike], weights: str = 'flax',
    pixel_space: bool = False, seed: int = 0) -> pathlib.Path:
  """Writes a tiny random Stable Diffusion in diffusers layout.

  Args:
    folder: where to write (created; existing files are overwritten).
    weights: 'flax' (msgpack) or 'safetensors' (PyTorch names).
    pixel_space: leave out the VAE; the UNet then denoises 16x16 RGB images.
    seed: weights depend only on the seed (not on `weights`).

  Returns:
    The folder.
  """
  if weights not in ('flax', 'safetensors'):
    raise ValueError(f'weights must be flax or safetensors, not {weights!r}')
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)

  vocab_size = write_tokenizer(folder / 'tokenizer')
  (folder / 'scheduler').mkdir(exist_ok=True)
  (folder / 'scheduler' / 'scheduler_config.json').write_text(
      json.dumps(SCHEDULER_CONFIG, indent=2))

  unet = diffusers.FlaxUNet2DConditionModel(**unet_config(pixel_space))
  (folder / 'unet').mkdir(exist_ok=True)
  _save_diffusers_model(unet, _diffusers_params(unet, seed),
                        folder / 'unet', weights, 'UNet2DConditionModel')

  if not pixel_space:
    vae = diffusers.FlaxAutoencoderKL(**vae_config())
    (folder / 'vae').mkdir(exist_ok=True)
    _save_diffusers_model(vae, _diffusers_params(vae, seed + 1),
                          folder / 'vae', weights, 'AutoencoderKL')

  text_encoder = transformers.FlaxCLIPTextModel(
      text_config(vocab_size), input_shape=(1, TEXT_LENGTH), _do_init=False)
  text_params = random_params(text_encoder.params_shape_tree, seed + 2)
  text_folder = folder / 'text_encoder'
  if weights == 'flax':
    text_encoder.save_pretrained(str(text_folder), params=text_params)
  else:
    text_encoder.config.save_pretrained(str(text_folder))
    _save_safetensors(transformers_flax_to_pytorch(text_params),
                      text_folder / 'model.safetensors')

  index = {
      '_class_name': 'StableDiffusionPipeline',
      '_diffusers_version': diffusers.__version__,
      'scheduler': ['diffusers', 'PNDMScheduler'],
      'text_encoder': ['transformers', 'CLIPTextModel'],
      'tokenizer': ['transformers', 'CLIPTokenizer'],
      'unet': ['diffusers', 'UNet2DConditionModel'],
  }
  if not pixel_space:
    index['vae'] = ['diffusers', 'AutoencoderKL']
  (folder / 'model_index.json').write_text(json.dumps(index, indent=2))
  return folder


def tiny_shapes() -> Tuple[int, int]:
  """(render size the tiny VAE takes, latent size), for tests."""
  size = vae_config()['sample_size']
  return size, size // 2
