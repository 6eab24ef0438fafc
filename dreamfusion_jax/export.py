"""Exports of a trained scene: turntable videos and images, and meshes.

`export_all` turns a NeRF and its params into files: turntables rendered
with `render.render_cameras` (albedo, textureless, normals, depth, all from
one pass per frame) written by `images`; the marching-cubes mesh of
`meshing`, unwrapped and textured by `texture`, written by `mesh_files`.

Exports can take long on a CPU (the default 120 frames of 256^2 pixels
with 64 samples are 0.5 G samples, each with its normal), so
`export_all` logs an estimate before it starts, with the config keys that
shorten it, then progress with counts and an ETA for every stage.
"""

import os
import time
from typing import Dict, List

from absl import logging
import jax
import ml_collections
import numpy as np

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import errors
from dreamfusion_jax import images
from dreamfusion_jax import mesh_files
from dreamfusion_jax import meshing
from dreamfusion_jax import numerics
from dreamfusion_jax import render as render_lib
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax import texture
from dreamfusion_jax.nerf import field as field_lib

# A turntable frame costs about this many plain field evaluations per sample:
# autodiff normals (render.py: about 2.5x), compositing and the frame's
# share of writing the videos (measured on the toy on a 2-core CPU).
_FRAME_COST = 5.0
# Samples per texel ray, and the ray's half-length in cells of the mesh grid:
# the marching-cubes surface lies within about a cell of the field's.
BAKE_SAMPLES = 16
BAKE_DEPTH_CELLS = 2.0
# Share of a texture that xatlas's charts cover (0.55-0.7 measured).
_ATLAS_COVERAGE = 0.7
_SHORTEN = ('--config.export.num_frames, --config.export.resolution, '
            '--config.export.mesh_resolution, --config.export.texture_size '
            '(or export.at_end=False and experiments/export.py later)')


def validate(export_config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for an invalid export group."""
  e = export_config
  for name in ('num_frames', 'resolution', 'fps', 'gif_size'):
    if not isinstance(e[name], int) or e[name] <= 0:
      raise errors.UserError(
          f'export.{name} = {e[name]!r} must be a positive integer.')
  if not isinstance(e.mesh_resolution, int) or e.mesh_resolution < 2:
    raise errors.UserError(
        f'export.mesh_resolution = {e.mesh_resolution!r} must be an integer '
        '>= 2, e.g. --config.export.mesh_resolution=128.')
  if not isinstance(e.texture_size, int) or not 16 <= e.texture_size <= 8192:
    raise errors.UserError(
        f'export.texture_size = {e.texture_size!r} must be an integer from '
        '16 to 8192, e.g. --config.export.texture_size=1024.')
  for name in ('target_faces', 'smooth_iterations'):
    if not isinstance(e[name], int) or e[name] < 0:
      raise errors.UserError(
          f'export.{name} = {e[name]!r} must be 0 (off) or a positive '
          'integer.')
  if e.mesh_bound <= 0:
    raise errors.UserError(
        f'export.mesh_bound = {e.mesh_bound} must be positive; the toy '
        'objects fit in 1.0.')


def _format_time(seconds: float) -> str:
  seconds = int(round(max(seconds, 0)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


def field_rate(model, params) -> float:
  """Field evaluations (density and albedo) per second on this machine.

  Times one compiled chunk of `numerics.DEFAULT_CHUNK` points, after a
  first call that compiles it.
  """
  density_fn, _ = field_lib.point_functions(model, params)
  points = np.random.default_rng(0).uniform(
      -0.5, 0.5, (numerics.DEFAULT_CHUNK, 3)).astype(np.float32)
  numerics.evaluate_points(density_fn, points)
  start = time.time()
  numerics.evaluate_points(density_fn, points)
  return len(points) / max(time.time() - start, 1e-6)


def estimate(config: ml_collections.ConfigDict, rate: float
             ) -> Dict[str, float]:
  """Seconds each stage of `export_all` should take at `rate` evals/s."""
  e = config.export
  frame = e.resolution ** 2 * config.render.num_samples * _FRAME_COST
  texels = _ATLAS_COVERAGE * e.texture_size ** 2
  return {
      'turntables': e.num_frames * frame / rate,
      'grid': e.mesh_resolution ** 3 / rate,
      'texture': texels * BAKE_SAMPLES / rate,
  }


def render_turntable(model, params, config: ml_collections.ConfigDict
                     ) -> Dict[str, np.ndarray]:
  """Renders an orbit in albedo and textureless shading, one pass a frame.

  Cameras: `config.export.num_frames` views at `config.export.elevation`,
  `config.camera.eval_distance` and `config.camera.eval_focal`, with a
  headlight. Each frame is rendered once, albedo only; its composited
  Lambert term gives the textureless frame exactly
  (`render.textureless_rgb`). Progress is logged with an ETA.

  Returns:
    Displayable frames, each [N, H, W, 3] float in [0, 1]: 'rgb' (albedo),
    'textureless' (white, lit), 'normals' (camera space), 'depth'.
  """
  e = config.export
  cams = cameras_lib.orbit_cameras(e.num_frames, e.elevation,
                                   config.camera.eval_distance,
                                   config.camera.eval_focal)
  start = time.time()
  last_log = [start]

  def progress(done, total):
    now = time.time()
    if done in (1, total) or now - last_log[0] >= 10.0:
      last_log[0] = now
      # The first frame includes compilation; later ones set the pace.
      per_frame = (now - start) / done
      logging.info('Turntable: frame %d/%d (%.2f s per frame), ETA %s.',
                   done, total, per_frame,
                   _format_time((total - done) * per_frame))

  out = render_lib.render_cameras(model, params, cams, e.resolution,
                                  config.render, shading_lib.albedo_only(),
                                  progress=progress)
  return {
      'rgb': out['rgb'],
      'textureless': render_lib.textureless_rgb(
          out, config.shading.ambient, config.shading.diffuse),
      'normals': images.normals_to_rgb(out['normals'], out['opacity'],
                                       np.asarray(cams.rotation)),
      'depth': images.colorize_depth(out['depth'], out['opacity']),
  }


def textured_mesh(model, params, config: ml_collections.ConfigDict
                  ) -> texture.TexturedMesh:
  """The field's surface as a textured mesh, each stage logged.

  Density grid (`export.mesh_resolution`^3 over `export.mesh_bound`) ->
  marching cubes at `export.mesh_threshold` -> optional Taubin smoothing
  and decimation (`export.smooth_iterations`, `export.target_faces`) -> UV
  atlas and a baked `export.texture_size`^2 texture.

  Raises:
    errors.UserError: the field has no surface at the mesh threshold.
  """
  e = config.export
  density_fn, albedo_fn = field_lib.point_functions(model, params)
  start = time.time()
  logging.info('Density grid: %d^3 = %.2f M points.', e.mesh_resolution,
               e.mesh_resolution ** 3 / 1e6)
  grid = meshing.density_grid(density_fn, e.mesh_resolution, e.mesh_bound)
  logging.info('Density grid done in %.1f s; marching cubes.',
               time.time() - start)
  start = time.time()
  mesh = meshing.mesh_from_grid(grid, e.mesh_bound, e.mesh_threshold,
                                e.remove_floaters, e.floater_fraction)
  faces = len(mesh.faces)
  mesh = meshing.simplify(mesh, e.smooth_iterations, e.target_faces)
  logging.info('Mesh: %d faces from marching cubes, %d after smoothing (%d '
               'iterations) and decimation, %d vertices, in %.1f s.', faces,
               len(mesh.faces), e.smooth_iterations, len(mesh.vertices),
               time.time() - start)
  cell = 2.0 * e.mesh_bound / (e.mesh_resolution - 1)
  return texture.bake(mesh, density_fn, albedo_fn, e.texture_size,
                      depth=BAKE_DEPTH_CELLS * cell, num_samples=BAKE_SAMPLES)


def export_all(config: ml_collections.ConfigDict, model, params,
               out_dir: str) -> List[str]:
  """Writes turntables (mp4, gif, contact sheet) and meshes to out_dir.

  Files: {rgb,textureless,normals,depth}.{mp4,gif,png}, mesh.glb,
  mesh.obj + mesh.mtl + texture.png, mesh.ply (`mesh_files`).

  Raises:
    errors.UserError: an invalid export group, an unwritable out_dir, or a
      field with no surface at the mesh threshold.

  Returns:
    The written paths.
  """
  validate(config.export)
  e = config.export
  try:
    os.makedirs(out_dir, exist_ok=True)
    probe = os.path.join(out_dir, '.write_test')
    with open(probe, 'wb'):
      pass
    os.remove(probe)
  except OSError as err:
    raise errors.UserError(
        f'the export folder {out_dir} cannot be written ({err.strerror}); '
        'pass --out with a folder you can write to.') from None
  rate = field_rate(model, params)
  stages = estimate(config, rate)
  total = sum(stages.values())
  log = logging.warning if total > 600 else logging.info
  log('Export to %s: estimated %s on %s at %.1f M field evaluations/s '
      '(turntables %s: %d frames of %d^2 px, %d samples per ray, with '
      'normals; density grid %s: %d^3; texture %s: %d^2 px). To shorten it, '
      'lower %s.', out_dir, _format_time(total), jax.devices()[0].platform,
      rate / 1e6, _format_time(stages['turntables']), e.num_frames,
      e.resolution, config.render.num_samples, _format_time(stages['grid']),
      e.mesh_resolution, _format_time(stages['texture']), e.texture_size,
      _SHORTEN)
  start = time.time()
  paths = []
  for name, frames in render_turntable(model, params, config).items():
    paths += images.write_turntable(frames, out_dir, name, e.fps, e.gif_size)
  logging.info('Turntables written in %.1f s.', time.time() - start)
  paths += mesh_files.write_textured_mesh(
      textured_mesh(model, params, config), out_dir, 'mesh')
  logging.info('Export finished in %s.', _format_time(time.time() - start))
  return paths
