"""Which files of a Stable Diffusion repository the prior reads, and fetching
just those.

A diffusers repository also holds a safety checker, non-EMA copies,
single-file checkpoints and often half-precision variants: gigabytes the
prior never reads. `fetch` asks the hub (or the local cache) for configs and
tokenizer, then one set of weights per component, in this order:

  Flax msgpack; float16 safetensors variants (only for a half-precision
  run); safetensors; pickles (only if allowed).

`experiments/download_weights.py` calls the same function, so what it
downloads is exactly what training later reads offline.
"""

import pathlib

from dreamfusion_jax import errors
from dreamfusion_jax.guidance import hub

COMPONENTS = ('unet', 'vae', 'text_encoder')
_DIFFUSERS_PARTS = ('unet', 'vae')
LIBRARY = {'unet': 'diffusers', 'vae': 'diffusers',
           'text_encoder': 'transformers'}

CONFIG_PATTERNS = ('model_index.json', 'scheduler/*.json', 'tokenizer/*') + (
    tuple(f'{c}/config.json' for c in COMPONENTS))
FLAX_PATTERNS = tuple(
    f'{c}/diffusion_flax_model.msgpack' for c in _DIFFUSERS_PARTS) + (
        'text_encoder/flax_model.msgpack',)
HALF_PATTERNS = tuple(
    f'{c}/diffusion_pytorch_model.fp16.safetensors'
    for c in _DIFFUSERS_PARTS) + ('text_encoder/model.fp16.safetensors',)
SAFETENSORS_PATTERNS = tuple(
    f'{c}/diffusion_pytorch_model{suffix}' for c in _DIFFUSERS_PARTS
    for suffix in ('.safetensors', '.safetensors.index.json',
                   '-*.safetensors')) + (
                       'text_encoder/model.safetensors',
                       'text_encoder/model.safetensors.index.json',
                       'text_encoder/model-*.safetensors')
PICKLE_PATTERNS = tuple(
    f'{c}/diffusion_pytorch_model.bin' for c in _DIFFUSERS_PARTS) + (
        'text_encoder/pytorch_model.bin',)

# Weight file names per library, in order of preference: full precision
# first, so a folder that holds both loads the exact weights.
_WEIGHT_FILES = {
    'diffusers': ('diffusion_flax_model.msgpack',
                  'diffusion_pytorch_model.safetensors',
                  'diffusion_pytorch_model.safetensors.index.json',
                  'diffusion_pytorch_model.fp16.safetensors',
                  'diffusion_pytorch_model.bin'),
    'transformers': ('flax_model.msgpack', 'model.safetensors',
                     'model.safetensors.index.json', 'model.fp16.safetensors',
                     'pytorch_model.bin'),
}


def weight_file(subfolder: pathlib.Path, library: str) -> pathlib.Path:
  """The weights to load from a component's folder (UserError if none)."""
  for name in _WEIGHT_FILES[library]:
    if (subfolder / name).is_file():
      return subfolder / name
  raise errors.UserError(
      f'{subfolder} has no weights (looked for '
      f'{", ".join(_WEIGHT_FILES[library])}); download the full model or '
      'point guidance.model at a complete diffusers-layout folder.')


def _has_weights(folder: pathlib.Path, component: str, patterns) -> bool:
  subfolder = folder / component
  return any((subfolder / name).is_file()
             for name in _WEIGHT_FILES[LIBRARY[component]]
             if any(pathlib.PurePath(f'{component}/{name}').match(p)
                    for p in patterns))


def fetch(model: str, revision: str = '', allow_pickle: bool = False,
          half: bool = False) -> pathlib.Path:
  """The model's folder: a local one as is, or the hub snapshot.

  From the hub, only what the prior reads (module docstring): each kind of
  weights is fetched only when the ones before it leave some component
  without weights.

  Args:
    model: hub id or local folder.
    revision: hub revision ('' = default branch).
    allow_pickle: also fetch pickled `.bin` weights as a last resort.
    half: the run computes in float16 or bfloat16, so the repository's
      float16 variants (half the download) serve as well as full weights.
  """
  steps = [FLAX_PATTERNS] + ([HALF_PATTERNS] if half else []) + [
      SAFETENSORS_PATTERNS] + ([PICKLE_PATTERNS] if allow_pickle else [])
  seen = ()
  folder = None
  for patterns in steps:
    seen = seen + patterns
    folder = hub.resolve(model, revision, CONFIG_PATTERNS + patterns)
    if all(_has_weights(folder, c, seen)
           for c in COMPONENTS if (folder / c).is_dir()):
      break
  return folder
