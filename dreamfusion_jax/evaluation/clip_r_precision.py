"""CLIP R-Precision of generated objects (paper section 4, table 1).

Each workdir holds one trained object for one caption (several workdirs per
caption are seeds). Every object is rendered from `num_views` cameras at 30
degrees elevation, evenly spaced in azimuth and looking at the origin, in two
modes: 'color' (albedo under Lambertian shading) and 'geo' (textureless
Lambertian shading, the paper's "Geo" column). A CLIP model embeds every
render and every caption of the caption set; a render is a hit when its most
similar caption (cosine similarity) is its own. R@1 is the hit rate: averaged
over a workdir's views, then over a caption's seeds, then over the captions
evaluated. With the same number of seeds per caption this is the plain
average over all renders. Retrieval is always among all captions of the set,
also when only some of them have workdirs.

The default caption set is the 153 object-centric COCO captions of the Dream
Fields evaluation, shipped in `data/coco_object_centric_val.txt` of the
package (its header names the source); any list of captions can be passed
instead.

Rendering and scoring are separate: `clip_r_precision` takes a
`renderer(workdir, cameras, mode) -> images [V, H, W, 3]` callable, so the
scoring runs on any images. The default, `CheckpointRenderer`, renders a
run's newest checkpoint.
"""

import os
import pathlib
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import errors
from dreamfusion_jax import render
from dreamfusion_jax import runs
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax.evaluation import clip_model

PathLike = Union[str, os.PathLike]
RenderFn = Callable[[str, cameras_lib.Cameras, str], np.ndarray]

# Render mode -> shading used for it (DESIGN.md section 3, `shading.py`).
SHADING = {'color': 'lambertian', 'geo': 'textureless'}
MODES = tuple(SHADING)
# The paper's evaluation renders (section 4).
ELEVATION = 30.0
# CLIP models of the paper's table 1: ViT-B/32, ViT-B/16, ViT-L/14.
CLIP_MODELS = ('openai/clip-vit-base-patch32', 'openai/clip-vit-base-patch16',
               'openai/clip-vit-large-patch14')
CAPTIONS_FILE = (pathlib.Path(__file__).resolve().parent.parent / 'data'
                 / 'coco_object_centric_val.txt')


def load_captions(path: Optional[PathLike] = None) -> List[str]:
  """Captions from a text file: one per line; '#' lines and blanks skipped.

  Args:
    path: the file; None for the shipped object-centric COCO captions.

  Returns:
    The captions, in file order.
  """
  path = pathlib.Path(path) if path is not None else CAPTIONS_FILE
  if not path.is_file():
    raise errors.UserError(
        f'Caption file {str(path)!r} does not exist; pass a text file with '
        'one caption per line.')
  lines = (line.strip() for line in path.read_text().splitlines())
  captions = [line for line in lines if line and not line.startswith('#')]
  if not captions:
    raise errors.UserError(
        f'Caption file {str(path)!r} holds no captions; put one caption per '
        'line.')
  return captions


def _key(caption: str) -> str:
  """Caption identity: case, outer spaces and end punctuation ignored."""
  return ' '.join(caption.lower().strip(' .,').split())


def caption_labels(prompts: Sequence[str],
                   captions: Sequence[str]) -> np.ndarray:
  """Index of each prompt in the caption set.

  Prompts match captions up to case, surrounding spaces and end punctuation
  ('A red cube' matches 'a red cube.').

  Args:
    prompts: W prompts, one per workdir.
    captions: N captions, distinct under that matching.

  Returns:
    [W] int labels into `captions`.

  Raises:
    errors.UserError: two captions coincide, or a prompt is not a caption.
  """
  index = {}
  for i, caption in enumerate(captions):
    if _key(caption) in index:
      raise errors.UserError(
          f'Caption {caption!r} appears twice in the caption set; remove the '
          'duplicate so that retrieval has one right answer.')
    index[_key(caption)] = i
  labels = []
  for prompt in prompts:
    if _key(prompt) not in index:
      raise errors.UserError(
          f'Prompt {prompt!r} is not in the caption set; add it to the '
          'caption file or leave that workdir out.')
    labels.append(index[_key(prompt)])
  return np.asarray(labels, np.int32)


def retrieval_hits(image_emb, text_emb, labels) -> np.ndarray:
  """Whether each image's most similar caption is its own (top-1 retrieval).

  Args:
    image_emb: [M, D] unit-norm image embeddings.
    text_emb: [N, D] unit-norm caption embeddings.
    labels: [M] index of each image's caption in [0, N).

  Returns:
    [M] bool.
  """
  image_emb = np.asarray(image_emb, np.float64)
  text_emb = np.asarray(text_emb, np.float64)
  labels = np.asarray(labels)
  if image_emb.ndim != 2 or text_emb.ndim != 2:
    raise ValueError(
        f'Embeddings must be [M, D] and [N, D]; got {image_emb.shape} and '
        f'{text_emb.shape}.')
  if labels.shape != image_emb.shape[:1]:
    raise ValueError(
        f'labels {labels.shape} must be [M] for images {image_emb.shape}.')
  scores = image_emb @ text_emb.T  # [M, N]
  return np.argmax(scores, axis=-1) == labels


def r_precision(image_emb, text_emb, labels) -> float:
  """R@1: the fraction of images whose top-1 caption is their own.

  Args:
    image_emb: [M, D] unit-norm image embeddings.
    text_emb: [N, D] unit-norm caption embeddings.
    labels: [M] index of each image's caption in [0, N).

  Returns:
    R@1 in [0, 1].
  """
  return float(np.mean(retrieval_hits(image_emb, text_emb, labels)))


def protocol_cameras(num_views: int, elevation: float = ELEVATION,
                     distance: float = 1.3,
                     focal: float = 1.0) -> cameras_lib.Cameras:
  """The evaluation cameras: an orbit at fixed elevation around the origin.

  Args:
    num_views: V cameras, azimuths 0, 360/V, ... degrees.
    elevation: degrees above the xy-plane (the paper's 30).
    distance: camera distance from the origin.
    focal: focal length in units of the image width.

  Returns:
    Cameras with leading shape [V], each with a headlight.
  """
  if num_views < 1:
    raise errors.UserError(
        f'num_views = {num_views}; render at least one view per object.')
  return cameras_lib.orbit_cameras(num_views, elevation, distance, focal)


def workdir_prompt(workdir: PathLike) -> str:
  """The prompt a workdir was trained on, read from its config.json."""
  prompt = runs.load_config(os.fspath(workdir)).get('prompt')
  if not isinstance(prompt, str) or not prompt:
    raise errors.UserError(
        f'{str(workdir)!r} has no prompt in its config.json; pass a workdir '
        'written by experiments/train.py.')
  return prompt


def render_shading(mode: str) -> shading_lib.ShadingParams:
  """The shading of a render mode (a key of SHADING).

  'color' is the albedo under Lambertian shading (ambient 0.1, diffuse 0.9)
  lit by the protocol cameras' headlights, as in the paper's colour renders;
  'geo' is the same light on a white (textureless) surface.
  """
  if mode not in SHADING:
    raise errors.UserError(
        f"Render mode '{mode}' is unknown; use one of {list(MODES)}.")
  return shading_lib.lambertian(textureless=SHADING[mode] == 'textureless')


class CheckpointRenderer:
  """A `RenderFn` of trained runs: the newest checkpoint of each workdir.

  A workdir's checkpoint is loaded once and kept while consecutive calls ask
  for the same workdir (clip_r_precision renders every mode of a workdir
  before the next), so memory holds one run's parameters at a time.
  """

  def __init__(self, resolution: Optional[int] = None):
    """Args: resolution: image size; None uses each run's export.resolution."""
    if resolution is not None and resolution < 1:
      raise errors.UserError(
          f'resolution = {resolution}; render at least 1x1 pixels.')
    self.resolution = resolution
    self._workdir = None
    self._loaded = None

  def load(self, workdir: PathLike):
    """(config, model, params) of the workdir's newest checkpoint, cached."""
    workdir = os.path.abspath(os.fspath(workdir))
    if workdir != self._workdir:
      self._loaded = None  # Frees the previous run before loading the next.
      config, model, params, _ = runs.load_trained(workdir)
      self._workdir, self._loaded = workdir, (config, model, params)
    return self._loaded

  def __call__(self, workdir: PathLike, cams: cameras_lib.Cameras,
               mode: str) -> np.ndarray:
    """Renders cameras [V] of a run in `mode`: images [V, H, W, 3] in [0, 1]."""
    config, model, params = self.load(workdir)
    resolution = self.resolution or config.export.resolution
    out = render.render_cameras(model, params, cams, resolution,
                                config.render, render_shading(mode))
    return np.clip(out['rgb'].astype(np.float32), 0.0, 1.0)


def clip_r_precision(
    workdirs: Sequence[PathLike],
    captions: Optional[Sequence[str]] = None,
    clip_models: Sequence[str] = CLIP_MODELS,
    num_views: int = 8,
    renderer: Optional[RenderFn] = None,
    prompts: Optional[Sequence[str]] = None,
    modes: Sequence[str] = MODES,
    elevation: float = ELEVATION,
    distance: float = 1.3,
    focal: float = 1.0,
    revision: str = '',
) -> Dict:
  """CLIP R-Precision of trained objects, per CLIP model and render mode.

  Args:
    workdirs: W trained runs, one per (caption, seed).
    captions: N captions to retrieve among; None for the shipped set.
    clip_models: CLIP hub ids or folders.
    num_views: V renders per workdir and mode.
    renderer: (workdir, cameras [V], mode) -> images [V, H, W, 3] in
      [0, 1]; `mode` is a key of SHADING. None: `CheckpointRenderer()`
      (each run's newest checkpoint at its export.resolution).
    prompts: W prompts of the workdirs; None reads each config.json.
    modes: render modes, a subset of MODES.
    elevation, distance, focal: the protocol cameras (`protocol_cameras`).
    revision: hub revision of the CLIP models ('' for the default).

  Returns:
    A JSON-serialisable dict: 'r_precision' {model: {mode: R@1}}, the
    protocol ('num_views', 'elevation', 'distance', 'focal', 'modes',
    'models'), counts ('num_captions', 'num_workdirs',
    'num_evaluated_captions', 'seeds_per_caption' [min, max]) and
    'per_workdir': a list of {'workdir', 'prompt', 'label', 'r_precision'
    {model: {mode: hit rate over its views}}}.
  """
  workdirs = [os.fspath(w) for w in workdirs]
  if not workdirs:
    raise errors.UserError('No workdirs to evaluate; pass at least one.')
  if not clip_models:
    raise errors.UserError(
        'No CLIP models given; pass e.g. openai/clip-vit-base-patch32.')
  unknown = [m for m in modes if m not in SHADING]
  if unknown or not modes:
    raise errors.UserError(
        f'Render modes {list(modes)} are not a non-empty subset of '
        f'{list(MODES)}; use those names.')
  captions = list(captions) if captions is not None else load_captions()
  if prompts is None:
    prompts = [workdir_prompt(w) for w in workdirs]
  elif len(prompts) != len(workdirs):
    raise errors.UserError(
        f'Got {len(prompts)} prompts for {len(workdirs)} workdirs; pass one '
        'prompt per workdir.')
  labels = caption_labels(prompts, captions)
  cams = protocol_cameras(num_views, elevation, distance, focal)
  renderer = renderer or CheckpointRenderer()

  # All CLIP models are loaded up front so that each object is rendered once.
  clips = [clip_model.load_clip(m, revision) for m in clip_models]
  text_embs = [clip_model.embed_texts(c, captions) for c in clips]

  # hits[model][mode]: [W, V] bool.
  hits = {m: {mode: [] for mode in modes} for m in clip_models}
  for workdir, label in zip(workdirs, labels):
    for mode in modes:
      images = np.asarray(renderer(workdir, cams, mode), np.float32)
      if images.ndim != 4 or images.shape[0] != num_views or (
          images.shape[-1] != 3):
        raise ValueError(
            f'renderer returned shape {images.shape} for {workdir}; '
            f'expected [{num_views}, H, W, 3].')
      for name, clip, text_emb in zip(clip_models, clips, text_embs):
        image_emb = clip_model.embed_images(clip, images)
        view_labels = np.full((num_views,), label)
        hits[name][mode].append(
            retrieval_hits(image_emb, text_emb, view_labels))

  per_workdir = []
  for i, (workdir, prompt, label) in enumerate(zip(workdirs, prompts, labels)):
    per_workdir.append({
        'workdir': workdir, 'prompt': prompt, 'label': int(label),
        'r_precision': {m: {mode: float(np.mean(hits[m][mode][i]))
                            for mode in modes} for m in clip_models}})

  # View average per workdir, seed average per caption, caption average.
  evaluated = np.unique(labels)
  summary = {}
  for m in clip_models:
    summary[m] = {}
    for mode in modes:
      per_run = np.mean(np.stack(hits[m][mode]), axis=1)  # [W]
      per_caption = [np.mean(per_run[labels == c]) for c in evaluated]
      summary[m][mode] = float(np.mean(per_caption))
  seeds = np.bincount(labels)[evaluated]
  return {
      'metric': 'R@1',
      'r_precision': summary,
      'models': list(clip_models),
      'modes': list(modes),
      'num_views': int(num_views),
      'elevation': float(elevation),
      'distance': float(distance),
      'focal': float(focal),
      'num_captions': len(captions),
      'num_workdirs': len(workdirs),
      'num_evaluated_captions': int(len(evaluated)),
      'seeds_per_caption': [int(seeds.min()), int(seeds.max())],
      'per_workdir': per_workdir,
  }


def format_table(results: Dict) -> str:
  """A plain-text table of R@1 (percent), one row per CLIP model."""
  modes = results['modes']
  width = max(len('CLIP model'), *(len(m) for m in results['models']))
  lines = [
      f"CLIP R-Precision (R@1, %) among {results['num_captions']} captions",
      f"{results['num_workdirs']} workdirs for "
      f"{results['num_evaluated_captions']} captions (seeds per caption "
      f"{results['seeds_per_caption'][0]}-{results['seeds_per_caption'][1]}),"
      f" {results['num_views']} views at {results['elevation']:g} deg "
      'elevation',
      '',
      'CLIP model'.ljust(width) + ''.join(f'{m:>8}' for m in modes),
  ]
  for model in results['models']:
    row = results['r_precision'][model]
    lines.append(model.ljust(width)
                 + ''.join(f'{100.0 * row[m]:8.1f}' for m in modes))
  return '\n'.join(lines)
