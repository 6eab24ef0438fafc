"""Which objects a batch run trains, and where each one's folder is.

A batch run trains prompts x seeds together (`train_objects.py`). It is
asked for with any of config.prompts, config.prompts_file, config.seeds:

    <root>/batch.json                 the batch's config, as launched
    <root>/<prompt>/seed_<seed>/      one object: a complete single-run
                                      workdir (config.json with its prompt
                                      and seed, checkpoints, export, ...)

so `experiments/export.py --workdir=<root>/<prompt>/seed_<seed>` and the
evaluations read an object exactly as they read a single run.
"""

import copy
import dataclasses
import itertools
import os
import re
from typing import List, Sequence

import ml_collections

from dreamfusion_jax import errors

BATCH_FILE = 'batch.json'
# The fields that may differ between the objects of one batch: the object
# (prompt, seed) and what changes only the prior's text embeddings, which
# are per object (priors.load_object_prior): the negative prompt, view
# prompts on or off, and the toy prior's view bias.
PER_OBJECT = ('prompt', 'seed', 'negative_prompt', 'guidance.view_prompts',
              'toy.view_frequencies', 'toy.view_adherence')


@dataclasses.dataclass(frozen=True)
class ObjectRun:
  """One object of a batch: its single-run config and its workdir."""
  config: ml_collections.ConfigDict
  workdir: str

  @property
  def name(self) -> str:
    return f'{self.config.prompt!r} seed {self.config.seed}'


def is_batch(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` asks for several objects (prompts, file or seeds)."""
  return bool(config.prompts or config.prompts_file or config.seeds)


def folder_name(prompt: str) -> str:
  """A prompt as a folder name: spaces to '_', other unsafe characters
  dropped, at most 100 characters."""
  name = re.sub(r'[^A-Za-z0-9_,.+-]', '', prompt.strip().replace(' ', '_'))
  return name.strip('.')[:100] or 'prompt'


def object_workdir(root: str, prompt: str, seed: int) -> str:
  """ROOT/<prompt as a folder name>/seed_<seed>."""
  return os.path.join(os.fspath(root), folder_name(prompt), f'seed_{seed}')


def read_prompts_file(path: str) -> List[str]:
  """Prompts, one per non-empty line; '#' starts a comment line."""
  if not os.path.isfile(path):
    state = 'is a folder' if os.path.isdir(path) else 'does not exist'
    raise errors.UserError(
        f'prompts_file {path} {state}; pass a text file with one prompt per '
        'line.')
  with open(path, encoding='utf-8') as f:
    lines = [line.strip() for line in f]
  prompts = [line for line in lines if line and not line.startswith('#')]
  if not prompts:
    raise errors.UserError(
        f'prompts_file {path} holds no prompts; write one prompt per line.')
  return prompts


def batch_prompts(config: ml_collections.ConfigDict) -> List[str]:
  """config.prompts then the prompts file's lines; [prompt] when neither."""
  prompts = [str(p).strip() for p in config.prompts]
  if config.prompts_file:
    prompts += read_prompts_file(config.prompts_file)
  if not config.prompts and not config.prompts_file:
    prompts = [str(config.prompt).strip()]
  for i, prompt in enumerate(prompts):
    if not prompt:
      raise errors.UserError(
          f'prompt {i + 1} of the batch is empty; remove it or write the '
          'text.')
  names = {}
  for i, prompt in enumerate(prompts):
    name = folder_name(prompt)
    if name in names:
      j = names[name]
      same = prompts[j] == prompt
      raise errors.UserError(
          f'prompts {j + 1} and {i + 1} of the batch are '
          f'{"the same" if same else "the same folder name"} ({prompt!r}); '
          'remove one, and use config.seeds for several runs of a prompt.')
    names[name] = i
  return prompts


def batch_seeds(config: ml_collections.ConfigDict) -> List[int]:
  """config.seeds, or [config.seed]; refuses duplicates."""
  seeds = [int(s) for s in config.seeds] or [int(config.seed)]
  if len(set(seeds)) != len(seeds):
    raise errors.UserError(
        f'config.seeds = {tuple(config.seeds)} repeats a seed; list each '
        'seed once.')
  return seeds


def single_config(config: ml_collections.ConfigDict, prompt: str,
                  seed: int) -> ml_collections.ConfigDict:
  """The single-run config of one object: `config` with its prompt and
  seed, and no batch fields."""
  single = copy.deepcopy(config)
  with single.unlocked():
    single.prompt = prompt
    single.seed = int(seed)
    single.prompts = ()
    single.prompts_file = ''
    single.seeds = ()
  return single


def plan(config: ml_collections.ConfigDict, root: str) -> List[ObjectRun]:
  """The objects of a batch config: prompts x seeds, prompt-major."""
  return [ObjectRun(single_config(config, prompt, seed),
                    object_workdir(root, prompt, seed))
          for prompt, seed in itertools.product(batch_prompts(config),
                                                batch_seeds(config))]


def _flat(tree: dict, prefix: str = '') -> dict:
  """{'group.key': value} of a nested config dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def check_batchable(objects: Sequence[ObjectRun]) -> None:
  """Raises UserError unless the objects differ only in PER_OBJECT fields
  and have distinct workdirs (what one batched program can train)."""
  if not objects:
    raise errors.UserError('The batch has no objects; pass a prompt.')
  first = _flat(objects[0].config.to_dict())
  for obj in objects[1:]:
    other = _flat(obj.config.to_dict())
    for key in sorted(set(first) | set(other)):
      if key not in PER_OBJECT and first.get(key) != other.get(key):
        raise errors.UserError(
            f'{obj.name} has {key} = {other.get(key)!r} but the first object '
            f'has {first.get(key)!r}; objects of one batch differ only in '
            'prompt, seed and the prior\'s text embeddings '
            f'({", ".join(PER_OBJECT[2:])}), so train other settings as '
            'separate runs.')
  workdirs = [os.path.abspath(o.workdir) for o in objects]
  if len(set(workdirs)) != len(workdirs):
    raise errors.UserError(
        'Two objects of the batch share a workdir; give each (prompt, seed) '
        'once.')
