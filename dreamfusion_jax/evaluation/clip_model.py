"""CLIP image and text embeddings for evaluation (CLIP R-Precision).

A `Clip` holds a transformers `FlaxCLIPModel`'s weights, its tokenizer and
two jitted embedding functions. `embed_texts` and `embed_images` return
L2-normalised embeddings as numpy arrays, so their dot products are the
cosine similarities CLIP retrieval ranks by. Images enter as the rest of the
code makes them, [N, H, W, 3] floats in [0, 1]; resizing, CLIP's pixel
normalisation and the NHWC -> NCHW transpose happen here and nowhere else.

The model is a Hugging Face hub id such as 'openai/clip-vit-base-patch32' or
a local folder in the transformers layout (config.json, tokenizer files and
flax_model.msgpack or model.safetensors weights); `hub.resolve` finds it.
"""

import dataclasses
import json
import pathlib
import types
from typing import Any, Callable, Sequence, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import safetensors

from dreamfusion_jax import errors
from dreamfusion_jax.guidance import hub
from dreamfusion_jax.guidance import quiet  # pylint: disable=unused-import
# After `quiet`, so the libraries' Flax deprecation notices are filtered.
import transformers  # pylint: disable=g-bad-import-order
from transformers import modeling_flax_pytorch_utils as pt_utils

# CLIP's pixel statistics (RGB in [0, 1]); a model folder's
# preprocessor_config.json overrides them.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Repository files read besides the weights: config, tokenizer, preprocessor.
CONFIG_PATTERNS = ('*.json', '*.txt')
FLAX_WEIGHTS = 'flax_model.msgpack'
SAFETENSORS_WEIGHTS = 'model.safetensors'


@dataclasses.dataclass(frozen=True)
class Clip:
  """A loaded CLIP model.

  Attributes:
    name: the model id or folder it was loaded from.
    params: the FlaxCLIPModel weights (a pytree).
    tokenizer: the transformers CLIP tokenizer.
    image_size: side of the square images the vision tower takes.
    max_length: tokens per caption (padded / truncated to this).
    mean: [3] pixel mean used to normalise images in [0, 1].
    std: [3] pixel standard deviation.
    text_fn: jitted (params, input_ids [B, L] int32, attention_mask [B, L])
      -> [B, D] unit-norm text embeddings.
    image_fn: jitted (params, images [B, H, W, 3] in [0, 1]) -> [B, D]
      unit-norm image embeddings.
  """

  name: str
  params: Any
  tokenizer: Any
  image_size: int
  max_length: int
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  text_fn: Callable
  image_fn: Callable


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def preprocess_images(images, image_size: int, mean, std):
  """Render batch to CLIP pixel values, as CLIP's own preprocessing does.

  The shorter side is resized to `image_size` (bicubic, antialiased), the
  centre is cropped to a square, values are clipped to [0, 1] and normalised
  per channel, and the layout becomes NCHW.

  Args:
    images: [B, H, W, 3] floats in [0, 1].
    image_size: the vision tower's input side S.
    mean: [3] channel means.
    std: [3] channel standard deviations.

  Returns:
    [B, 3, S, S] float32 pixel values.
  """
  images = jnp.asarray(images, jnp.float32)
  b, h, w, c = images.shape
  scale = image_size / min(h, w)
  new_h = max(image_size, int(round(h * scale)))
  new_w = max(image_size, int(round(w * scale)))
  if (new_h, new_w) != (h, w):
    images = jax.image.resize(images, (b, new_h, new_w, c), method='cubic',
                              antialias=True)
  top = (new_h - image_size) // 2
  left = (new_w - image_size) // 2
  images = images[:, top:top + image_size, left:left + image_size]
  images = jnp.clip(images, 0.0, 1.0)
  images = (images - jnp.asarray(mean)) / jnp.asarray(std)
  return jnp.transpose(images, (0, 3, 1, 2))


def _weights(folder: pathlib.Path) -> str:
  if (folder / FLAX_WEIGHTS).is_file():
    return FLAX_WEIGHTS
  if (folder / SAFETENSORS_WEIGHTS).is_file():
    return SAFETENSORS_WEIGHTS
  return ''


def _convert_safetensors(path: pathlib.Path, flax_model, model: str):
  """PyTorch-layout safetensors CLIP weights -> Flax params, without torch.

  transformers' converter only reads the parameter shapes and the base model
  prefix of the Flax model, so it is given the abstract shape tree instead of
  randomly initialised weights (which for ViT-L/14 take long to create).
  """
  with safetensors.safe_open(str(path), framework='flax') as f:
    state = {k: f.get_tensor(k) for k in f.keys()}
  shapes = flax_model.params_shape_tree
  target = types.SimpleNamespace(
      params=shapes, base_model_prefix=flax_model.base_model_prefix)
  converted = traverse_util.flatten_dict(
      pt_utils.convert_pytorch_state_dict_to_flax(state, target))
  expected = traverse_util.flatten_dict(shapes)
  missing = sorted('/'.join(k) for k in expected if k not in converted)
  if missing:
    raise errors.UserError(
        f'CLIP weights {str(path)!r} of {model!r} lack {len(missing)} '
        f'parameters, such as {missing[0]}; pass a complete CLIP checkpoint.')
  # Buffers such as position_ids are not parameters of the Flax model.
  return traverse_util.unflatten_dict(
      {k: converted[k] for k in expected})


def _read_json(path: pathlib.Path) -> dict:
  with path.open() as f:
    return json.load(f)


def load_clip(model: str, revision: str = '') -> Clip:
  """Loads a CLIP model (weights, tokenizer, preprocessing) for embedding.

  Flax weights are used where the repository has them; otherwise the
  PyTorch-layout safetensors weights are converted (no torch needed). Pickled
  .bin weights are never read.

  Args:
    model: Hugging Face hub id (e.g. 'openai/clip-vit-large-patch14') or a
      local folder in the transformers layout.
    revision: hub branch, tag or commit; '' for the default.

  Returns:
    A Clip.

  Raises:
    errors.UserError: the model is not available offline, is not a CLIP
      model, or has no Flax or safetensors weights.
  """
  model = str(model)
  patterns = CONFIG_PATTERNS + (FLAX_WEIGHTS,)
  # evaluate.py's flag that names the CLIP models, for messages.
  setting = '--clip_models'
  folder = hub.resolve(model, revision, allow_patterns=patterns,
                       setting=setting)
  if not _weights(folder):
    # Second round: only repositories without Flax weights fetch these.
    folder = hub.resolve(
        model, revision,
        allow_patterns=CONFIG_PATTERNS + (SAFETENSORS_WEIGHTS,),
        setting=setting)
  config_path = folder / 'config.json'
  if not config_path.is_file():
    raise errors.UserError(
        f'CLIP model {model!r} has no config.json in {folder}; pass a hub id '
        'such as openai/clip-vit-base-patch32 or a folder saved with '
        'save_pretrained.')
  model_type = _read_json(config_path).get('model_type')
  if model_type != 'clip':
    raise errors.UserError(
        f'{model!r} is a {model_type!r} model, not a CLIP model; pass a CLIP '
        'model such as openai/clip-vit-base-patch32.')
  weights = _weights(folder)
  if not weights:
    raise errors.UserError(
        f'CLIP model {model!r} has neither {FLAX_WEIGHTS} nor '
        f'{SAFETENSORS_WEIGHTS} in {folder}; download one of them or save '
        'the model with save_pretrained.')

  if weights == FLAX_WEIGHTS:
    flax_model, params = transformers.FlaxCLIPModel.from_pretrained(
        folder, _do_init=False)
  else:
    flax_model = transformers.FlaxCLIPModel(
        transformers.CLIPConfig.from_pretrained(folder), _do_init=False)
    params = _convert_safetensors(folder / weights, flax_model, model)
  # float32 device arrays: placed once, not copied at every call.
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
  config = flax_model.config

  mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
  preprocessor_path = folder / 'preprocessor_config.json'
  if preprocessor_path.is_file():
    preprocessor = _read_json(preprocessor_path)
    mean = tuple(preprocessor.get('image_mean', mean))
    std = tuple(preprocessor.get('image_std', std))
  image_size = int(config.vision_config.image_size)

  def text_fn(params, input_ids, attention_mask):
    return _normalize(flax_model.get_text_features(
        input_ids, attention_mask, params=params))

  def image_fn(params, images):
    pixels = preprocess_images(images, image_size, mean, std)
    return _normalize(flax_model.get_image_features(pixels, params=params))

  return Clip(
      name=model, params=params, tokenizer=tokenizer, image_size=image_size,
      max_length=int(config.text_config.max_position_embeddings),
      mean=mean, std=std, text_fn=jax.jit(text_fn), image_fn=jax.jit(image_fn))


def _batched(fn, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
  """fn over fixed-size batches (the last one padded): one compilation."""
  n = arrays[0].shape[0]
  out = []
  for start in range(0, n, batch_size):
    chunk = [a[start:start + batch_size] for a in arrays]
    pad = batch_size - chunk[0].shape[0]
    if pad:
      chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)])
               for c in chunk]
    out.append(np.asarray(fn(*chunk))[:batch_size - pad])
  return np.concatenate(out, axis=0)


def embed_texts(clip: Clip, texts: Sequence[str],
                batch_size: int = 64) -> np.ndarray:
  """Unit-norm CLIP text embeddings.

  Args:
    clip: a loaded Clip.
    texts: N captions.
    batch_size: captions per call of the text tower.

  Returns:
    [N, D] float32, each row of norm 1.
  """
  if not texts:
    raise ValueError('embed_texts needs at least one text.')
  tokens = clip.tokenizer(list(texts), padding='max_length', truncation=True,
                          max_length=clip.max_length, return_tensors='np')
  ids = tokens['input_ids'].astype(np.int32)
  mask = tokens['attention_mask'].astype(np.int32)
  fn = lambda i, m: clip.text_fn(clip.params, i, m)
  return _batched(fn, [ids, mask], min(batch_size, len(texts)))


def embed_images(clip: Clip, images, batch_size: int = 32) -> np.ndarray:
  """Unit-norm CLIP image embeddings.

  Args:
    clip: a loaded Clip.
    images: [N, H, W, 3] floats in [0, 1] (any H, W; resized to the model's
      input size, centre-cropped if not square).
    batch_size: images per call of the vision tower.

  Returns:
    [N, D] float32, each row of norm 1.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3 or not images.shape[0]:
    raise ValueError(
        f'embed_images needs images [N, H, W, 3]; got shape {images.shape}.')
  fn = lambda x: clip.image_fn(clip.params, x)
  return _batched(fn, [images], min(batch_size, images.shape[0]))
