"""Stable Diffusion (or a pixel-space diffusers UNet) as a frozen `Prior`.

Loads a diffusers-layout folder or Hugging Face hub id (DESIGN.md section 6):

  unet/          FlaxUNet2DConditionModel   (required)
  vae/           FlaxAutoencoderKL          (absent: a pixel-space model)
  text_encoder/  FlaxCLIPTextModel          (used once, then dropped)
  tokenizer/     CLIPTokenizer
  scheduler/     scheduler_config.json      (the betas give alpha-bar_t)

Weights, per component, in this order: Flax msgpack; PyTorch safetensors
(one file or shards), renamed to Flax with the libraries' own per-key rules
but without torch or a random init; a pickled PyTorch `.bin` only when the
caller allows pickle (unpickling can run code) and torch is installed.

The result is a `prior.Prior`: frozen params (UNet, VAE encoder, schedule),
the text embeddings of the view prompts, of each view's negative view prompt
and of the negative/empty prompt, and
two pure functions, `encode` (render -> diffusion space, differentiable) and
`predict_noise` (one UNet call). Nothing here knows about SDS.
"""

import dataclasses
import json
import pathlib
from typing import Any, Dict, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from dreamfusion_jax import errors
from dreamfusion_jax.guidance import hub
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.guidance import weight_files
from dreamfusion_jax.guidance import quiet  # pylint: disable=unused-import
# After `quiet`, so the libraries' Flax deprecation notices are filtered.
import diffusers  # pylint: disable=g-bad-import-order
from diffusers.models import modeling_flax_pytorch_utils as diffusers_pt
import transformers  # pylint: disable=g-bad-import-order
from transformers import modeling_flax_pytorch_utils as transformers_pt

# Sub-trees of the VAE params used to encode; the decoder is left on disk.
_VAE_ENCODER = ('encoder', 'quant_conv')

Params = Any


def resolve_dtype(name: str, backend: Optional[str] = None) -> jnp.dtype:
  """The networks' compute dtype for guidance.dtype on `backend`.

  'auto' is float16 on GPUs, as the peers run Stable Diffusion (at CFG 100
  the conditional-unconditional difference is multiplied by 100, and
  float16 keeps 11 mantissa bits against bfloat16's 8), bfloat16 on TPUs
  (their native half type), and float32 on CPUs, where half precision is
  emulated and slower.
  """
  backend = backend or jax.default_backend()
  prior_lib.check_dtype(name, backend)
  if name == 'auto':
    return {'gpu': jnp.float16, 'cuda': jnp.float16, 'rocm': jnp.float16,
            'tpu': jnp.bfloat16}.get(backend, jnp.float32)
  return jnp.dtype(name)


def alphas_cumprod(scheduler_config: Dict[str, Any]) -> np.ndarray:
  """alpha-bar_t of a diffusers scheduler config (`prior.noise_schedule`).

  Args:
    scheduler_config: the scheduler_config.json contents.

  Returns:
    [num_train_timesteps] float32.
  """
  return prior_lib.noise_schedule(
      int(scheduler_config.get('num_train_timesteps', 1000)),
      float(scheduler_config.get('beta_start', 0.0001)),
      float(scheduler_config.get('beta_end', 0.02)),
      scheduler_config.get('beta_schedule', 'linear'),
      scheduler_config.get('trained_betas'))


# ----------------------------------------------------------------------------
# Weights.


def _read_pickle(path: pathlib.Path, allow_pickle: bool,
                 check_only: bool = False) -> Optional[Dict[str, np.ndarray]]:
  """Unpickles PyTorch weights if allowed and possible (else UserError)."""
  if not allow_pickle:
    raise errors.UserError(
        f'{path} holds pickled PyTorch weights, and unpickling can run '
        'arbitrary code; use a model with safetensors or Flax weights, or set '
        'guidance.allow_pickle=True if you trust the file.')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(
        f'{path} holds pickled PyTorch weights, which need torch to read; '
        'install torch (the CPU build is enough) or use a model with '
        'safetensors or Flax weights.') from None
  if check_only:
    return None
  state = torch.load(path, map_location='cpu', weights_only=True)
  return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
          for k, v in state.items()}


def _read_pytorch_state(path: pathlib.Path,
                        allow_pickle: bool) -> Dict[str, np.ndarray]:
  """A PyTorch state dict as numpy arrays, without torch for safetensors."""
  if path.name.endswith('.bin'):
    return _read_pickle(path, allow_pickle)
  if path.name.endswith('.index.json'):
    shards = sorted(set(json.loads(path.read_text())['weight_map'].values()))
    state = {}
    for shard in shards:
      state.update(safetensors.numpy.load_file(str(path.parent / shard)))
    return state
  return safetensors.numpy.load_file(str(path))


def _pytorch_to_flax(state: Dict[str, np.ndarray], shapes: Dict[Tuple, Any],
                     library: str, model_prefix: str = '') -> Dict[Tuple, Any]:
  """Renames and reshapes PyTorch weights to Flax, key by key.

  The libraries' own `convert_pytorch_state_dict_to_flax` functions need a
  randomly initialised model (diffusers' also calls `.numpy()` on every
  tensor, so it wants torch tensors). Their per-key rules need only the set
  of Flax names, which `jax.eval_shape` gives for free.
  """
  flat = {}
  for name, tensor in state.items():
    if library == 'diffusers':
      key = tuple(diffusers_pt.rename_key(name).split('.'))
      key, tensor = diffusers_pt.rename_key_and_reshape_tensor(
          key, tensor, shapes)
    else:
      key, tensor = transformers_pt.rename_key_and_reshape_tensor(
          tuple(name.split('.')), tensor, shapes, model_prefix)
    flat[key] = tensor
  return flat


def load_weights(subfolder: pathlib.Path, library: str, shapes: Params,
                 allow_pickle: bool = False,
                 keep: Optional[Sequence[str]] = None) -> Params:
  """Reads a component's weights and checks them against its config.

  Args:
    subfolder: e.g. <model>/unet.
    library: 'diffusers' or 'transformers' (their PyTorch naming differs).
    shapes: the Flax params' shape tree (`jax.eval_shape` of the init).
    allow_pickle: permit a pickled `.bin`.
    keep: top-level params names to keep (None: all); others are neither
      required nor returned.

  Returns:
    Nested dict of numpy arrays with exactly the keys of `shapes` (or of its
    `keep` sub-trees), in the file's dtype.

  Raises:
    errors.UserError: no weights, pickle not allowed, or weights that do not
      fit the config.
  """
  path = weight_files.weight_file(subfolder, library)
  every = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  expected = {k: v for k, v in every.items() if keep is None or k[0] in keep}
  if path.name.endswith('.msgpack'):
    loaded = flax.traverse_util.flatten_dict(
        flax.serialization.msgpack_restore(path.read_bytes()))
  else:
    model_prefix = transformers.FlaxCLIPTextModel.base_model_prefix
    try:
      loaded = _pytorch_to_flax(_read_pytorch_state(path, allow_pickle),
                                every, library, model_prefix)
    except (AssertionError, ValueError) as e:
      if isinstance(e, errors.UserError):
        raise
      raise errors.UserError(
          f'The weights in {path} do not fit {subfolder}/config.json ({e}); '
          'check that the folder holds one consistent model.') from None
  missing = sorted(set(expected) - set(loaded))
  wrong = sorted(k for k in expected if k in loaded
                 and tuple(loaded[k].shape) != tuple(expected[k].shape))
  if missing or wrong:
    example = '/'.join((missing or wrong)[0])
    raise errors.UserError(
        f'The weights in {path} do not fit {subfolder}/config.json '
        f'({len(missing)} missing, {len(wrong)} of the wrong shape, e.g. '
        f'{example}); check that the folder holds one consistent model.')
  return flax.traverse_util.unflatten_dict(
      {k: np.asarray(loaded[k]) for k in expected})


def _cast(params: Params, dtype) -> Params:
  # jax.tree.map, not the libraries' to_bf16 (broken on jax 0.10).
  return jax.tree.map(lambda p: jnp.asarray(p, dtype), params)


def _read_config(subfolder: pathlib.Path) -> Dict[str, Any]:
  path = subfolder / 'config.json'
  if not path.is_file():
    raise errors.UserError(
        f'{path} is missing; guidance.model must be a Stable Diffusion '
        'folder in diffusers layout (unet/, text_encoder/, tokenizer/, '
        'scheduler/, optionally vae/).')
  return json.loads(path.read_text())


def _diffusers_model(cls, config: Dict[str, Any], dtype):
  # Drop the PyTorch-only fields (act_fn, upcast_attention, ...) that the
  # Flax class does not take, rather than have diffusers log each one.
  fields = {f.name for f in dataclasses.fields(cls)}
  kwargs = {k: (tuple(v) if isinstance(v, list) else v)
            for k, v in config.items() if k in fields and k != 'dtype'}
  return cls(dtype=dtype, **kwargs)


def load_unet(folder: pathlib.Path, dtype=jnp.float32,
              allow_pickle: bool = False):
  """Returns (FlaxUNet2DConditionModel, params cast to `dtype`)."""
  module = _diffusers_model(diffusers.FlaxUNet2DConditionModel,
                            _read_config(folder / 'unet'), dtype)
  shapes = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
  params = load_weights(folder / 'unet', 'diffusers', shapes, allow_pickle)
  return module, _cast(params, dtype)


def load_vae(folder: pathlib.Path, dtype=jnp.float32,
             allow_pickle: bool = False):
  """Returns (FlaxAutoencoderKL, its encoder's params cast to `dtype`)."""
  module = _diffusers_model(diffusers.FlaxAutoencoderKL,
                            _read_config(folder / 'vae'), dtype)
  shapes = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
  params = load_weights(folder / 'vae', 'diffusers', shapes, allow_pickle,
                        keep=_VAE_ENCODER)
  return module, _cast(params, dtype)


def encode_prompts(folder: pathlib.Path, prompts: Sequence[str],
                   allow_pickle: bool = False) -> np.ndarray:
  """CLIP text embeddings as Stable Diffusion conditions on them.

  The prompts are padded to the tokenizer's length and the text encoder's
  last hidden state is returned (what the SD pipelines pass to the UNet).
  Runs once on the host; the encoder is not kept.

  Returns:
    [len(prompts), tokens, width] float32.
  """
  try:
    tokenizer = transformers.CLIPTokenizer.from_pretrained(
        str(folder / 'tokenizer'))
  except (OSError, TypeError, ValueError):
    raise errors.UserError(
        f'{folder / "tokenizer"} does not hold a CLIP tokenizer (vocab.json, '
        'merges.txt); point guidance.model at a complete diffusers-layout '
        'folder.') from None
  config = transformers.CLIPTextConfig.from_dict(
      _read_config(folder / 'text_encoder'))
  length = min(tokenizer.model_max_length, config.max_position_embeddings)
  ids = tokenizer(list(prompts), padding='max_length', max_length=length,
                  truncation=True, return_tensors='np').input_ids
  model = transformers.FlaxCLIPTextModel(
      config, input_shape=(1, length), _do_init=False)
  params = load_weights(folder / 'text_encoder', 'transformers',
                        model.params_shape_tree, allow_pickle)
  # One compiled call: op-by-op execution compiles every op separately.
  run = jax.jit(lambda params, ids: model(ids, params=params).last_hidden_state)
  return np.asarray(run(params, jnp.asarray(ids, jnp.int32)), np.float32)


# ----------------------------------------------------------------------------
# The prior.


def make_prior(unet, unet_params: Params, vae, vae_params: Optional[Params],
               view_embeddings, uncond_embedding, schedule: np.ndarray,
               prediction_type: str = 'epsilon', dtype=jnp.float32,
               negative_view_embeddings=None) -> prior_lib.Prior:
  """Wraps loaded (or randomly initialised) networks as a `Prior`.

  Args:
    unet: a FlaxUNet2DConditionModel.
    unet_params: its params.
    vae: a FlaxAutoencoderKL, or None for a pixel-space UNet.
    vae_params: params with at least the encoder's sub-trees, or None.
    view_embeddings: [len(prior.VIEWS), tokens, width] text embeddings.
    uncond_embedding: [tokens, width] negative or empty prompt embedding.
    schedule: [T] alpha-bar_t.
    prediction_type: the UNet's output: 'epsilon', 'v_prediction' or
      'sample' (converted to epsilon in `predict_noise`).
    dtype: compute dtype of the networks.
    negative_view_embeddings: [len(prior.VIEWS), tokens, width] or None.

  Returns:
    The prior; its `encode` and `predict_noise` are closures over the modules
    (static) and read all arrays from `params`.
  """
  if prediction_type not in ('epsilon', 'v_prediction', 'sample'):
    raise errors.UserError(
        f'The scheduler config has prediction_type {prediction_type!r}; '
        'supported are epsilon, v_prediction and sample.')
  params = {'unet': _cast(unet_params, dtype),
            'alphas_cumprod': jnp.asarray(schedule, jnp.float32)}
  if vae is not None:
    params['vae'] = _cast(
        {k: vae_params[k] for k in _VAE_ENCODER}, dtype)
    size = vae_input_size(unet, vae)
    scaling = float(vae.scaling_factor)
  else:
    size = int(unet.sample_size)
    scaling = None

  def encode(params, images):
    """[B, H, W, 3] in [0, 1] -> x [B, h, w, c] (float32), differentiable.

    Latent models: resize to the VAE's own input size, map to [-1, 1],
    encode and take the mean of the posterior (deterministic: the encoder's
    sampling noise would only add variance to an already noisy gradient),
    scaled by the VAE's scaling factor so the latents have unit variance as
    the UNet was trained on. Pixel models: resize to the UNet's size.
    """
    batch = images.shape[0]
    if images.shape[1:3] != (size, size):
      images = jax.image.resize(images, (batch, size, size, 3), 'linear')
    x = 2.0 * images - 1.0
    if vae is None:
      return x.astype(jnp.float32)
    x_nchw = jnp.transpose(x.astype(dtype), (0, 3, 1, 2))
    posterior = vae.apply({'params': params['vae']}, x_nchw,
                          method=vae.encode).latent_dist
    return (posterior.mean * scaling).astype(jnp.float32)

  def predict_noise(params, z_t, t, embedding):
    """eps(z_t; y, t): z_t [B, h, w, c], t [B] int32, embedding [B, L, D]."""
    sample = jnp.transpose(z_t.astype(dtype), (0, 3, 1, 2))
    out = unet.apply({'params': params['unet']}, sample, t,
                     embedding.astype(dtype)).sample
    out = jnp.transpose(out, (0, 2, 3, 1)).astype(jnp.float32)
    if prediction_type == 'epsilon':
      return out
    abar = params['alphas_cumprod'][t][:, None, None, None]
    alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
    if prediction_type == 'v_prediction':
      # v = alpha eps - sigma x  =>  eps = sigma z_t + alpha v.
      return sigma * z_t + alpha * out
    # x-prediction: eps = (z_t - alpha x) / sigma.
    return (z_t - alpha * out) / sigma

  return prior_lib.Prior(
      params=params,
      view_embeddings=jnp.asarray(view_embeddings, jnp.float32),
      uncond_embedding=jnp.asarray(uncond_embedding, jnp.float32),
      alphas_cumprod=jnp.asarray(schedule, jnp.float32),
      encode=encode,
      predict_noise=predict_noise,
      negative_view_embeddings=None if negative_view_embeddings is None
      else jnp.asarray(negative_view_embeddings, jnp.float32))


def vae_input_size(unet, vae) -> int:
  """Pixel size of the VAE's input: the UNet's latent size times the VAE's
  downsampling factor, 2 per down block after the first.

  The VAE config's own `sample_size` is only the size it was trained at
  (512 for v1.5, where the two agree; not for every checkpoint).
  """
  return int(unet.sample_size) * 2 ** (len(vae.block_out_channels) - 1)


def load(model: str, view_prompts: Sequence[str], negative_prompt: str = '',
         *, negative_view_prompts: Sequence[str] = (), revision: str = '',
         dtype: str = 'auto', allow_pickle: bool = False) -> prior_lib.Prior:
  """Loads a Stable Diffusion (or pixel-space) prior with its embeddings.

  Args:
    model: hub id or diffusers-layout folder.
    view_prompts: one prompt per entry of `prior.VIEWS`.
    negative_prompt: the unconditional prompt of classifier-free guidance
      ('' is the empty prompt the model was trained with).
    negative_view_prompts: one per view (guidance.negative_view_prompts's
      texts), or () for a prior without them.
    revision: hub revision ('' = default branch).
    dtype: one of prior.DTYPES (`resolve_dtype`): the networks' compute
      dtype.
    allow_pickle: permit pickled `.bin` weights.

  Returns:
    The prior, with params on the default device.
  """
  batched = load_batch(model, [(view_prompts, negative_prompt,
                                negative_view_prompts)], revision=revision,
                       dtype=dtype, allow_pickle=allow_pickle)
  return batched.replace(**{name: getattr(batched, name)[0]
                            for name in prior_lib.EMBEDDINGS
                            if getattr(batched, name) is not None})


def load_batch(model: str, prompt_sets: Sequence[Tuple[Sequence[str], str,
                                                       Sequence[str]]],
               *, revision: str = '', dtype: str = 'auto',
               allow_pickle: bool = False) -> prior_lib.Prior:
  """`load` for several objects: one set of weights, embeddings per object.

  Args:
    model, revision, dtype, allow_pickle: as in `load`.
    prompt_sets: per object, (view_prompts, negative_prompt,
      negative_view_prompts) as `load` takes them; every object has
      negative view prompts or none does.

  Returns:
    A prior whose `prior.EMBEDDINGS` fields have a leading object axis and whose
    weights are shared (vmap it with in_axes 0 for those fields only).
  """
  for view_prompts, _, negatives in prompt_sets:
    if len(view_prompts) != len(prior_lib.VIEWS):
      raise ValueError(f'Need {len(prior_lib.VIEWS)} view prompts, got '
                       f'{len(view_prompts)}.')
    if bool(negatives) != bool(prompt_sets[0][2]):
      raise ValueError('Either every object has negative view prompts or '
                       'none has.')
  compute_dtype = resolve_dtype(dtype)
  folder = weight_files.fetch(model, revision, allow_pickle,
                              half=compute_dtype != jnp.float32)
  for required in ('unet', 'text_encoder'):
    _read_config(folder / required)
  scheduler_path = folder / 'scheduler' / 'scheduler_config.json'
  if not scheduler_path.is_file():
    raise errors.UserError(
        f'{scheduler_path} is missing; guidance.model must be a Stable '
        'Diffusion folder in diffusers layout.')
  scheduler = json.loads(scheduler_path.read_text())
  # Refuse missing or pickled weights before any slow work.
  for component in weight_files.COMPONENTS:
    if (folder / component).is_dir():
      path = weight_files.weight_file(folder / component, weight_files.LIBRARY[component])
      if path.name.endswith('.bin'):
        _read_pickle(path, allow_pickle, check_only=True)

  # Text first, so the encoder is gone before the UNet is loaded.
  texts = [list(views) + [negative] + list(negatives)
           for views, negative, negatives in prompt_sets]
  embeddings = encode_prompts(folder, sum(texts, []), allow_pickle)
  embeddings = embeddings.reshape((len(texts), len(texts[0])) +
                                  embeddings.shape[1:])
  views = len(prior_lib.VIEWS)
  unet, unet_params = load_unet(folder, compute_dtype, allow_pickle)
  vae = vae_params = None
  if (folder / 'vae').is_dir():
    vae, vae_params = load_vae(folder, compute_dtype, allow_pickle)
    expected = unet.in_channels
    if vae.latent_channels != expected:
      raise errors.UserError(
          f'{folder}: the VAE has {vae.latent_channels} latent channels but '
          f'the UNet takes {expected}; the folder mixes two models.')
  elif unet.in_channels != 3:
    raise errors.UserError(
        f'{folder} has no vae/ but its UNet takes {unet.in_channels} '
        'channels; a pixel-space model takes 3.')
  return make_prior(
      unet, unet_params, vae, vae_params,
      view_embeddings=embeddings[:, :views],
      uncond_embedding=embeddings[:, views],
      schedule=alphas_cumprod(scheduler),
      prediction_type=scheduler.get('prediction_type', 'epsilon'),
      dtype=compute_dtype, negative_view_embeddings=embeddings[:, views + 1:]
      if prompt_sets[0][2] else None)
