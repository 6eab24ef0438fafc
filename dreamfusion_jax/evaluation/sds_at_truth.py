"""How far the true object is from a fixed point of SDS, per shading mode.

A prior that agreed with every render of the true object would leave it
where it is: the expected SDS gradient E_{t, eps}[w(t)(eps_hat - eps)] at
its renders would vanish. The toy world knows the true object, so this can
be measured. `gradient_at_truth` renders each true object from training
cameras, with the training lights and the prior's backdrops, three ways
(albedo only, lit, textureless), averages the gradient that `sds.sds_loss`
gives each render over draws of t and eps, and reports

  - its root mean square over the object's pixels and over the
    background's: the pull the true shape meets in each mode;
  - the opacity rate: the render faded towards its backdrop,
    x = b + a (x_true - b), and the gradient's component along x_true - b
    over the object's interior (two pixels in from its outline), as a rate
    of change of a under gradient descent, da/dt = -<g, d> / <d, d>.
    Positive grows the faded object back, negative fades it further; where
    it crosses zero is the opacity SDS settles at.
  - the outline rate: the render with its outline blurred,
    x = b + (soft + s (mask - soft)) (c - b), where soft is the coverage
    mask blurred by a Gaussian of one pixel and c the object's colour
    (beyond the outline, the view's mean object colour), and the
    gradient's component along d = dx/ds, as ds/dt = -<g, d> / <d, d> at
    s = 0 (blurred) and s = 1 (the true, sharp outline). Positive sharpens
    the outline; negative at s = 1 means SDS blurs a sharp outline, and
    the field answers with a translucent rim.

What is left at the truth is the prior's disagreement with the render: a
finite image set's nearest photographs differ in camera and light (this
part shrinks as the set grows), and a render the set holds nothing like
(a white "red cube": the prior has only seen it red) meets a pull that the
field can answer only through its shape, by darkening or thinning it.
"""

import copy
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import ndimage

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import errors
from dreamfusion_jax import guidance
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax.evaluation import toy_sweep
from dreamfusion_jax.guidance import sds
from dreamfusion_jax.toy import exact_prior
from dreamfusion_jax.toy import raytrace

MODES = ('albedo', 'lit', 'textureless')
OPACITIES = (0.3, 0.6, 1.0)
# Gaussian blur (pixels) of the outline that the outline rate starts from.
OUTLINE_BLUR = 1.0
# Pixels this far inside the outline are the object's interior.
_INTERIOR_PIXELS = 2
# The cameras' key: the same views for every prompt and setting.
_CAMERA_SEED = 7


def _mode_shading(mode: str, shading_config, num: int
                  ) -> shading_lib.ShadingParams:
  if mode == 'albedo':
    return shading_lib.albedo_only((num,))
  return shading_lib.lambertian((num,), shading_config.ambient,
                                shading_config.diffuse,
                                textureless=mode == 'textureless')


def gradient_at_truth(config: ml_collections.ConfigDict, prompt: str,
                      num_cameras: int = 48, num_noise: int = 24,
                      seed: int = 0, opacities: Sequence[float] = OPACITIES,
                      azimuth_offset: float = 0.0) -> Dict[str, Dict]:
  """The expected SDS gradient at the true object's renders: RMS, opacity rate.

  Args:
    config: a toy config (its prior, cameras, shading and guidance; t is
      drawn from [guidance.t_min, guidance.t_max], the range at step 0).
    prompt: one of the toy prompts.
    num_cameras: training cameras (and lights); their backdrops cycle
      through toy.background_colors.
    num_noise: (t, eps) draws averaged per render.
    seed: key of the (t, eps) draws (the same for every mode and opacity).
    opacities: the fades a at which the opacity rate is measured.
    azimuth_offset: degrees added to each camera's azimuth where the prior
      reads it (its view prompt), not where the render is taken. To a
      prior that sees only the image and the view, that is the true object
      turned by this angle about the vertical axis: 180 shows it a
      snowman with its nose on the back, 90 one with its nose on the left.
      0 measures the truth.

  Returns:
    {mode: {'object': RMS over the object's pixels, 'background': RMS
    over the rest (in the prior's [-1, 1] units per channel, at full
    opacity), 'opacity_rate': {'<a>': da/dt}, 'outline_rate': {'0': ds/dt
    blurred, '1': ds/dt sharp}}}.
  """
  config = copy.deepcopy(config)
  config.prompt = prompt
  prior = exact_prior.make_toy_prior(config)
  cams = cameras_lib.sample_cameras(jax.random.key(_CAMERA_SEED),
                                    config.camera, num_cameras)
  colors = np.asarray(config.toy.background_colors, np.float32)
  backdrop = jnp.asarray(colors[np.arange(num_cameras) % len(colors)])
  g = config.guidance
  # The azimuth the prior is told (its view functions wrap any range).
  told = cams.azimuth + azimuth_offset

  def surrogate(images, key):
    loss, _ = sds.sds_loss(
        prior, images, told, cams.elevation, key, scale=g.scale,
        t_min=g.t_min, t_max=g.t_max, weighting=g.weighting,
        negative_view_prompts=g.negative_view_prompts,
        view_interpolation=g.view_interpolation,
        perp_neg=guidance.perp_neg_weights(g))
    return jnp.sum(loss)

  @jax.jit
  def mean_gradient(images, key):
    # d surrogate / d render = 2 w(t)(eps_hat - eps) (the encoding 2x - 1).
    grads = jax.vmap(lambda k: jax.grad(surrogate)(images, k))(
        jax.random.split(key, num_noise))
    return 0.5 * jnp.mean(grads, axis=0)

  results = {}
  for mode in MODES:
    shade = _mode_shading(mode, config.shading, num_cameras)
    rgb, mask = raytrace.render(prompt, cams, config.render.resolution, shade,
                                (0.0, 0.0, 0.0), config.toy.supersample)
    mask = np.asarray(mask)
    back = backdrop[:, None, None, :]
    towards_object = np.asarray(rgb + (1.0 - mask[..., None]) * back - back)
    size = 2 * _INTERIOR_PIXELS + 1
    interior = np.stack([ndimage.minimum_filter(m, size=size) > 0.99
                         for m in mask])[..., None]
    grads = {a: np.asarray(mean_gradient(back + a * towards_object,
                                         jax.random.key(seed)))
             for a in sorted(set(opacities) | {1.0})}
    norm2 = np.sum(towards_object**2 * interior, axis=(1, 2, 3))
    seen = norm2 > 0  # Views that show some of the object's interior.
    rates = {}
    for a in opacities:
      along = np.sum(grads[a] * towards_object * interior, axis=(1, 2, 3))
      rates[f'{a:g}'] = float(np.mean(-along[seen] / norm2[seen]))
    # The outline, blurred (s = 0) and sharp (s = 1, the image above at a = 1).
    covered = mask[..., None]
    hit_rgb, back_rgb = np.asarray(rgb), np.asarray(back)
    mean_colour = (np.sum(hit_rgb, axis=(1, 2)) /
                   np.maximum(np.sum(covered, axis=(1, 2)), 1e-6))
    colour = np.where(covered > 0, hit_rgb / np.maximum(covered, 1e-6),
                      mean_colour[:, None, None, :])
    soft = np.stack([ndimage.gaussian_filter(m, OUTLINE_BLUR) for m in mask])
    to_sharp = (mask - soft)[..., None] * (colour - back_rgb)
    blurred = back_rgb + soft[..., None] * (colour - back_rgb)
    outline_grads = {
        '0': np.asarray(mean_gradient(jnp.asarray(blurred, jnp.float32),
                                      jax.random.key(seed))),
        '1': grads[1.0]}
    to_sharp2 = np.sum(to_sharp**2, axis=(1, 2, 3))
    has_outline = to_sharp2 > 0
    outline = {}
    for end, g_end in outline_grads.items():
      along = np.sum(g_end * to_sharp, axis=(1, 2, 3))
      outline[end] = float(np.mean(-along[has_outline] /
                                   to_sharp2[has_outline]))
    grad = grads[1.0]
    on_object = np.broadcast_to(mask[..., None] > 0.5, grad.shape)
    results[mode] = {
        'object': float(np.sqrt(np.mean(grad[on_object]**2))),
        'background': float(np.sqrt(np.mean(grad[~on_object]**2))),
        'opacity_rate': rates,
        'outline_rate': outline,
    }
  return results


def evaluate(config: ml_collections.ConfigDict, prompts: Sequence[str],
             num_cameras: int = 48, num_noise: int = 24,
             azimuth_offset: float = 0.0) -> Dict:
  """`gradient_at_truth` for each prompt: {'prompts': {prompt: ...}, ...}.

  Checks the config, every prompt and the offset before any work: the
  measurement needs the exact prior, a true object and a finite angle.
  """
  toy_sweep.check_toy_inputs(config, prompts)
  if not np.isfinite(azimuth_offset):
    raise errors.UserError(
        f'--azimuth_offset={azimuth_offset} is not an angle; give degrees, '
        'e.g. --azimuth_offset=180.')
  return {
      'num_cameras': num_cameras,
      'num_noise': num_noise,
      'images_per_view': int(config.toy.images_per_view),
      'textureless_photographs': float(config.toy.textureless_prob),
      'azimuth_offset': float(azimuth_offset),
      'prompts': {p: gradient_at_truth(config, p, num_cameras, num_noise,
                                       azimuth_offset=azimuth_offset)
                  for p in prompts},
  }


def format_table(results: Dict) -> str:
  """Markdown: object-pixel RMS per mode and textureless / lit; then the
  opacity rate per mode at each fade, and the outline rate."""
  modes = results['prompts'][next(iter(results['prompts']))]
  fades = list(modes[MODES[0]]['opacity_rate'])
  lines = [
      f"Expected SDS gradient at the true object ({results['num_cameras']} "
      f"training views, {results['num_noise']} draws of t and eps each; "
      f"{results['images_per_view']} photographs per view, "
      f"{results['textureless_photographs']:g} of the lit ones untextured"
      + (f"; the prior told each view is {results['azimuth_offset']:g} "
         'degrees further round' if results.get('azimuth_offset') else '')
      + "): RMS over the object's pixels (background's in brackets)", '',
      '| prompt | ' + ' | '.join(MODES) + ' | textureless / lit |',
      '|' + '---|' * (len(MODES) + 2)]
  for prompt, modes in results['prompts'].items():
    cells = [f"{modes[m]['object']:.3f} ({modes[m]['background']:.3f})"
             for m in MODES]
    ratio = modes['textureless']['object'] / modes['lit']['object']
    lines.append(f'| {prompt} | ' + ' | '.join(cells) + f' | {ratio:.2f} |')
  lines += ['', 'Opacity rate da/dt of the object faded to opacity a '
            f"(a = {', '.join(fades)}); > 0 grows it back", '',
            '| prompt | ' + ' | '.join(MODES) + ' |',
            '|' + '---|' * (len(MODES) + 1)]
  for prompt, modes in results['prompts'].items():
    cells = [' / '.join(f'{r:+.2f}' for r in modes[m]['opacity_rate'].values())
             for m in MODES]
    lines.append(f'| {prompt} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'Outline rate ds/dt from an outline blurred by '
            f'{OUTLINE_BLUR:g} pixel (s = 0) to the sharp one (s = 1), at '
            'each; > 0 sharpens',
            '', '| prompt | ' + ' | '.join(MODES) + ' |',
            '|' + '---|' * (len(MODES) + 1)]
  for prompt, modes in results['prompts'].items():
    cells = [' / '.join(f'{r:+.2f}' for r in modes[m]['outline_rate'].values())
             for m in MODES]
    lines.append(f'| {prompt} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
