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
Fields evaluation, shipped in `data/coco_object_centric_val.txt` (its header
names the source); any list of captions can be passed instead.

Rendering and scoring are separate: `clip_r_precision` takes a
`render_views(workdir, cameras, mode) -> images [V, H, W, 3]` callable, so the
scoring runs on any images. The default, `CheckpointRenderer`, renders a
run's newest checkpoint.

The toy world (DESIGN.md section 7) has known answers instead of captions:
`toy_evaluate` trains (or reuses) one run per (toy prompt, seed) and scores
it against the true object with `toy.metrics` (IoU, albedo error and, for the
snowman, the Janus check); `format_toy_table` prints the results.
"""

import copy
import json
import os
import pathlib
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import jax
import ml_collections
import numpy as np

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import checkpoint as checkpoint_lib
from dreamfusion_jax import errors
from dreamfusion_jax import render
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax import train
from dreamfusion_jax.guidance import clip as clip_lib
from dreamfusion_jax.toy import metrics as toy_metrics
from dreamfusion_jax.toy import objects as toy_objects

PathLike = Union[str, os.PathLike]
RenderViews = Callable[[str, cameras_lib.Cameras, str], np.ndarray]

# Render mode -> shading used for it (DESIGN.md section 3, `shading.py`).
SHADING = {'color': 'lambertian', 'geo': 'textureless'}
MODES = tuple(SHADING)
# The paper's evaluation renders (section 4).
ELEVATION = 30.0
# CLIP models of the paper's table 1: ViT-B/32, ViT-B/16, ViT-L/14.
CLIP_MODELS = ('openai/clip-vit-base-patch32', 'openai/clip-vit-base-patch16',
               'openai/clip-vit-large-patch14')
CAPTIONS_FILE = (pathlib.Path(__file__).resolve().parent / 'data'
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
  path = pathlib.Path(workdir) / 'config.json'
  if not path.is_file():
    raise errors.UserError(
        f'{str(workdir)!r} has no config.json, so its prompt is unknown; '
        'pass a workdir written by experiments/train.py.')
  with path.open() as f:
    prompt = json.load(f).get('prompt')
  if not isinstance(prompt, str) or not prompt:
    raise errors.UserError(
        f'{str(path)!r} has no prompt; pass a workdir written by '
        'experiments/train.py.')
  return prompt


def workdirs_under(root: PathLike) -> List[str]:
  """The sorted subfolders of `root` that hold a config.json (trained runs)."""
  root = pathlib.Path(root)
  found = sorted(str(p.parent) for p in root.glob('*/config.json'))
  if not found:
    raise errors.UserError(
        f'No workdirs (folders with a config.json) under {str(root)!r}; pass '
        'the folder that holds one workdir per prompt and seed.')
  return found


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
  """`render_views` of trained runs: the newest checkpoint of each workdir.

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
      config, model, params, _ = train.load_trained(workdir)
      self._workdir, self._loaded = workdir, (config, model, params)
    return self._loaded

  def __call__(self, workdir: PathLike, cams: cameras_lib.Cameras,
               mode: str) -> np.ndarray:
    """Renders cameras [V] of a run in `mode`: images [V, H, W, 3] in [0, 1]."""
    config, model, params = self.load(workdir)
    resolution = self.resolution or config.export.resolution
    shading = render_shading(mode)
    num_views = cams.azimuth.shape[0]
    images = []
    for i in range(num_views):
      cam = jax.tree.map(lambda a, i=i: a[i], cams)
      out = render.render_image(model, params, cam, resolution,
                                config.render, shading)
      images.append(np.asarray(out['rgb'], np.float32))
    return np.clip(np.stack(images), 0.0, 1.0)


def clip_r_precision(
    workdirs: Sequence[PathLike],
    captions: Optional[Sequence[str]] = None,
    clip_models: Sequence[str] = CLIP_MODELS,
    num_views: int = 8,
    render_views: Optional[RenderViews] = None,
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
    render_views: (workdir, cameras [V], mode) -> images [V, H, W, 3] in
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
  render_views = render_views or CheckpointRenderer()

  # All CLIP models are loaded up front so that each object is rendered once.
  clips = [clip_lib.load_clip(m, revision) for m in clip_models]
  text_embs = [clip_lib.embed_texts(c, captions) for c in clips]

  # hits[model][mode]: [W, V] bool.
  hits = {m: {mode: [] for mode in modes} for m in clip_models}
  for workdir, label in zip(workdirs, labels):
    for mode in modes:
      images = np.asarray(render_views(workdir, cams, mode), np.float32)
      if images.ndim != 4 or images.shape[0] != num_views or (
          images.shape[-1] != 3):
        raise ValueError(
            f'render_views returned shape {images.shape} for {workdir}; '
            f'expected [{num_views}, H, W, 3].')
      for name, clip, text_emb in zip(clip_models, clips, text_embs):
        image_emb = clip_lib.embed_images(clip, images)
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


def write_results(results: Dict, path: PathLike) -> None:
  """Writes the results dict as indented JSON (parent folders created)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(results, indent=2) + '\n')
  os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The toy world: scores against the true objects (DESIGN.md section 7).

TOY_PROMPTS = toy_objects.PROMPTS
TOY_RESULTS = 'toy_results.json'
# Per workdir: the training time measured when toy_evaluate trained it.
EVAL_FILE = 'eval.json'
IOU_RESOLUTION = 64
SNOWMAN = 'a snowman'


def toy_workdir(root: PathLike, prompt: str, seed: int) -> str:
  """ROOT/<prompt with spaces as _>/seed_<seed>."""
  return os.path.join(os.fspath(root), prompt.replace(' ', '_'),
                      f'seed_{seed}')


def _finished_step(workdir: str) -> Optional[int]:
  """The newest checkpoint step of a workdir; None when it has none."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return None
  ckpt = checkpoint_lib.Checkpointer(workdir, 1)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def _read_json(path: str) -> Dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _train_or_reuse(config: ml_collections.ConfigDict, workdir: str,
                    export: bool) -> Dict:
  """Trains the run in `workdir` unless it is complete; returns its timing.

  A complete run is not touched (its config must still match); a partial one
  resumes and its time adds to the time stored before. The stored time is
  the wall time of `train.train_and_evaluate` (prior loading and compilation
  included), so a re-evaluation reports the time the run took to train.

  Returns:
    {'train_seconds': total training time (0 when unknown: trained
    elsewhere), 'trained_now': bool, 'step': final step}.
  """
  eval_path = os.path.join(workdir, EVAL_FILE)
  stored = _read_json(eval_path)
  done = _finished_step(workdir)
  complete = done is not None and done >= config.num_steps
  if complete and not export:
    train.validate_config(config)
    train.prepare_workdir(config, workdir)  # Refuses another config's run.
    seconds, trained_now = 0.0, False
  else:
    t0 = time.time()
    train.train_and_evaluate(config, workdir)
    seconds, trained_now = time.time() - t0, not complete
  if trained_now:
    total = stored.get('train_seconds', 0.0) + seconds
    stored = {'train_seconds': total, 'num_steps': config.num_steps}
    write_results(stored, eval_path)
  return {'train_seconds': float(stored.get('train_seconds', 0.0)),
          'trained_now': trained_now,
          'step': int(_finished_step(workdir))}


def score_toy_run(workdir: PathLike, prompt: str, threshold: float,
                  resolution: int = IOU_RESOLUTION) -> Dict:
  """toy.metrics of a run's newest checkpoint against the object `prompt`.

  Returns:
    {'iou', 'albedo_error', 'janus'}; 'janus' is the janus_check dict for the
    snowman and None otherwise.
  """
  _, model, params, _ = train.load_trained(os.fspath(workdir))
  field = jax.jit(lambda params, points: model.apply(
      params, points, method=model.density_and_albedo))
  density_fn = lambda points: field(params, points)[0]
  albedo_fn = lambda points: field(params, points)[1]
  return {
      'iou': toy_metrics.iou(prompt, density_fn, threshold, resolution),
      'albedo_error': toy_metrics.albedo_error(prompt, albedo_fn,
                                               density_fn=density_fn),
      'janus': (toy_metrics.janus_check(density_fn, albedo_fn, threshold)
                if prompt == SNOWMAN else None),
  }


def _summary(runs: Sequence[Dict]) -> Dict:
  iou = np.asarray([r['iou'] for r in runs])
  albedo = np.asarray([r['albedo_error'] for r in runs])
  janus = [r['janus'] for r in runs if r['janus'] is not None]
  return {
      'seeds': [r['seed'] for r in runs],
      'iou': iou.tolist(),
      'iou_mean': float(iou.mean()),
      'iou_std': float(iou.std()),
      'albedo_error': albedo.tolist(),
      'albedo_error_mean': float(albedo.mean()),
      # Runs with a nose on the front / on the back (snowman only).
      'nose_front': sum(j['front'] for j in janus) if janus else None,
      'nose_back': sum(j['back'] for j in janus) if janus else None,
      'minutes_per_run': float(np.mean([r['train_seconds']
                                        for r in runs])) / 60.0,
  }


def toy_evaluate(config: ml_collections.ConfigDict, root: PathLike,
                 prompts: Sequence[str] = TOY_PROMPTS,
                 seeds: Sequence[int] = (0, 1, 2), threshold: float = 5.0,
                 export: bool = False) -> Dict:
  """Trains (or reuses) and scores one toy run per (prompt, seed).

  Each run lives in `toy_workdir(root, prompt, seed)` and is trained with
  `config` with its prompt and seed set (and export.at_end = `export`); a
  complete run is reused as it is. Its newest checkpoint is scored with
  `score_toy_run`. The results are also written to ROOT/toy_results.json.

  Args:
    config: a toy config (guidance.model 'toy'), e.g. configs/toy.py.
    root: folder of the runs.
    prompts: toy prompts (toy.objects.PROMPTS).
    seeds: seeds per prompt.
    threshold: density of the surface for the IoU and the Janus check.
    export: whether runs export turntables and meshes when they finish.

  Returns:
    A JSON-serialisable dict: 'threshold', 'iou_resolution', 'num_steps',
    'runs' (one dict per (prompt, seed): 'prompt', 'seed', 'workdir',
    'step', 'iou', 'albedo_error', 'janus', 'train_seconds', 'trained_now')
    and 'prompts' {prompt: summary over seeds: 'seeds', 'iou', 'iou_mean',
    'iou_std', 'albedo_error', 'albedo_error_mean', 'nose_front',
    'nose_back' (run counts; None but for the snowman), 'minutes_per_run'}.
  """
  if config.guidance.model != 'toy':
    raise errors.UserError(
        f"guidance.model = '{config.guidance.model}'; the toy evaluation "
        'needs a toy config such as configs/toy.py.')
  if not prompts or not seeds:
    raise errors.UserError('Pass at least one toy prompt and one seed.')
  for prompt in prompts:
    toy_objects.check_prompt(prompt)
  runs = []
  for prompt in prompts:
    for seed in seeds:
      run_config = copy.deepcopy(config)
      run_config.prompt = prompt
      run_config.seed = int(seed)
      run_config.export.at_end = bool(export)
      workdir = toy_workdir(root, prompt, seed)
      timing = _train_or_reuse(run_config, workdir, export)
      scores = score_toy_run(workdir, prompt, threshold)
      runs.append({'prompt': prompt, 'seed': int(seed), 'workdir': workdir,
                   **timing, **scores})
  results = {
      'threshold': float(threshold),
      'iou_resolution': IOU_RESOLUTION,
      'num_steps': int(config.num_steps),
      'runs': runs,
      'prompts': {p: _summary([r for r in runs if r['prompt'] == p])
                  for p in prompts},
  }
  write_results(results, os.path.join(os.fspath(root), TOY_RESULTS))
  return results


def format_toy_table(results: Dict) -> str:
  """A plain-text table of toy_evaluate's results, one row per prompt."""
  header = (f"{'prompt':<16}{'seeds':>6}  {'IoU mean+-std':<15}"
            f"{'IoU per seed':<24}{'albedo err':>11}{'nose F/B':>10}"
            f"{'min/run':>9}")
  lines = [
      f"Toy world: IoU at density > {results['threshold']:g} on a "
      f"{results['iou_resolution']}^3 grid, {results['num_steps']} steps",
      '', header]
  for prompt, row in results['prompts'].items():
    per_seed = ' '.join(f'{v:.3f}' for v in row['iou'])
    nose = ('-' if row['nose_front'] is None
            else f"{row['nose_front']}/{row['nose_back']}")
    lines.append(
        f"{prompt:<16}{len(row['seeds']):>6}  "
        f"{row['iou_mean']:.3f}+-{row['iou_std']:.3f}".ljust(39)
        + f"{per_seed:<24}{row['albedo_error_mean']:>11.3f}{nose:>10}"
        f"{row['minutes_per_run']:>9.2f}")
  return '\n'.join(lines)
