"""Finding a pretrained model on disk: a local folder or a Hugging Face hub id.

`resolve` turns `config.guidance.model` (or any other model name) into a
local folder in the diffusers/transformers layout. A hub id is fetched with
`huggingface_hub.snapshot_download`, which reuses the local cache and only
downloads missing files. When a hub id is neither cached nor downloadable, the
user gets one sentence (errors.UserError) that names the id, the cache
location and the fix, not a traceback from inside huggingface_hub.
"""

import os
import pathlib
from typing import Optional, Sequence, Union

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors

from dreamfusion_jax import errors

PathLike = Union[str, os.PathLike]


def cache_dir() -> pathlib.Path:
  """The Hugging Face hub cache folder, read from the environment now.

  huggingface_hub reads HF_HUB_CACHE / HF_HOME once at import; reading them at
  call time makes a cache set later in the process (tests, notebooks) count.
  """
  if os.environ.get('HF_HUB_CACHE'):
    return pathlib.Path(os.environ['HF_HUB_CACHE']).expanduser()
  if os.environ.get('HF_HOME'):
    return pathlib.Path(os.environ['HF_HOME']).expanduser() / 'hub'
  return pathlib.Path(hf_constants.HF_HUB_CACHE)


def _offline() -> bool:
  value = os.environ.get('HF_HUB_OFFLINE', '')
  return (value.upper() in ('1', 'ON', 'YES', 'TRUE')
          or bool(hf_constants.HF_HUB_OFFLINE))


def _looks_like_path(model: str) -> bool:
  # Hub ids are 'name' or 'owner/name'; anything else is meant as a path.
  return (model.startswith(('/', '.', '~')) or model.count('/') > 1
          or os.path.exists(model))


def resolve(model: PathLike, revision: str = '',
            allow_patterns: Optional[Sequence[str]] = None,
            setting: str = 'guidance.model') -> pathlib.Path:
  """Returns a local folder holding `model`'s files.

  Args:
    model: a local folder (returned as is) or a Hugging Face hub id such as
      'stable-diffusion-v1-5/stable-diffusion-v1-5'.
    revision: hub branch, tag or commit; '' for the repository's default.
      Ignored for local folders.
    allow_patterns: glob patterns of the repository files to fetch (None:
      every file, which for Stable Diffusion repositories includes several GB
      of duplicate checkpoints; pass patterns).
    setting: the flag or config field that names the model, for messages.

  Returns:
    The folder (for a hub id, the snapshot folder inside the cache).

  Raises:
    errors.UserError: the folder does not exist, or the hub id is neither in
      the local cache nor downloadable.
  """
  model = os.fspath(model)
  if _looks_like_path(model):
    folder = pathlib.Path(model).expanduser()
    if not folder.is_dir():
      raise errors.UserError(
          f'Model folder {model!r} does not exist; set {setting} to a '
          'folder in diffusers layout or to a Hugging Face hub id.')
    return folder

  cache = cache_dir()
  offline = _offline()
  how = (f'download it with `huggingface-cli download {model}'
         + (f' --revision {revision}' if revision else '')
         + f'` or set {setting} to a local folder in diffusers layout')
  try:
    folder = huggingface_hub.snapshot_download(
        model,
        revision=revision or None,
        cache_dir=cache,
        allow_patterns=list(allow_patterns) if allow_patterns else None,
        local_files_only=offline)
  except hf_errors.RevisionNotFoundError:
    raise errors.UserError(
        f'Model {model!r} has no revision {revision!r} on the Hugging Face '
        'hub; set guidance.revision to an existing branch or leave it empty.'
    ) from None
  except hf_errors.RepositoryNotFoundError:
    # Also gated or private repositories without a token.
    raise errors.UserError(
        f'Model {model!r} was not found on the Hugging Face hub (or needs a '
        f'login); check the id, run `huggingface-cli login`, or {how}.'
    ) from None
  except hf_errors.HFValidationError:
    raise errors.UserError(
        f'Model {model!r} is neither an existing folder nor a valid Hugging '
        f'Face hub id; set {setting} to a diffusers-layout folder or a hub '
        'id.') from None
  except (hf_errors.LocalEntryNotFoundError, hf_errors.HfHubHTTPError,
          OSError):
    state = 'offline mode is on' if offline else 'it could not be downloaded'
    raise errors.UserError(
        f'Model {model!r} is not in the Hugging Face cache at {cache} and '
        f'{state}; {how}.') from None
  return pathlib.Path(folder)
