r"""Downloads just the Stable Diffusion files that training reads.

  python experiments/download_weights.py \
      --model=stable-diffusion-v1-5/stable-diffusion-v1-5 [--half]

It fetches, into the Hugging Face cache, what `guidance/weight_files.fetch`
asks for when a run loads the model: configs, tokenizer and one set of
weights per component (the UNet, the VAE and the text encoder; not the
safety checker, non-EMA copies or single-file checkpoints). With --half
(the default where guidance.dtype 'auto' computes in float16 or bfloat16,
i.e. on an accelerator) the repository's float16 variants are preferred.
It prints the folder and its size; training then finds the files offline.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from dreamfusion_jax import launch

_MODEL = flags.DEFINE_string(
    'model', 'stable-diffusion-v1-5/stable-diffusion-v1-5',
    'Hub id (guidance.model).')
_REVISION = flags.DEFINE_string('revision', '', 'Hub revision.')
_HALF = flags.DEFINE_bool(
    'half', None, 'Prefer float16 variants (default: whether this machine '
    "computes guidance.dtype='auto' in half precision).")
_ALLOW_PICKLE = flags.DEFINE_bool(
    'allow_pickle', False, 'Also fetch pickled .bin weights if nothing '
    'else exists.')


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from dreamfusion_jax.guidance import stable_diffusion
  from dreamfusion_jax.guidance import weight_files
  # pylint: enable=g-import-not-at-top
  half = _HALF.value
  if half is None:
    half = stable_diffusion.resolve_dtype('auto') != jnp.float32
  folder = weight_files.fetch(_MODEL.value, _REVISION.value,
                              _ALLOW_PICKLE.value, half=half)
  total = 0
  for path in sorted(folder.rglob('*')):
    if path.is_file():
      size = path.stat().st_size  # The cache's links resolve to the blobs.
      total += size
      print(f'{size / 2**20:10.1f} MiB  {path.relative_to(folder)}')
  print(f'{total / 2**30:.2f} GiB in {folder}')


if __name__ == '__main__':
  launch.run(main)
