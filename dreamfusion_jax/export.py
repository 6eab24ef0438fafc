"""Exports of a trained scene: turntable videos and images, and meshes.

`export_all` turns a NeRF and its params into files: turntables rendered
with `render.render_cameras` (albedo, textureless, normals, depth) written
by `images`, and the marching-cubes mesh of `meshing`.
"""

import os
from typing import Dict, List

import ml_collections
import numpy as np

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import images
from dreamfusion_jax import meshing
from dreamfusion_jax import render as render_lib
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax.nerf import field as field_lib


def render_turntable(model, params, config: ml_collections.ConfigDict
                     ) -> Dict[str, np.ndarray]:
  """Renders an orbit around the object in albedo and textureless shading.

  Cameras: `config.export.num_frames` views at `config.export.elevation`,
  `config.camera.eval_distance` and `config.camera.eval_focal`, with a
  headlight.

  Returns:
    Displayable frames, each [N, H, W, 3] float in [0, 1]: 'rgb' (albedo),
    'textureless' (white, lit), 'normals' (camera space), 'depth'.
  """
  e = config.export
  cams = cameras_lib.orbit_cameras(e.num_frames, e.elevation,
                                   config.camera.eval_distance,
                                   config.camera.eval_focal)
  textureless = shading_lib.lambertian(ambient=config.shading.ambient,
                                       diffuse=config.shading.diffuse,
                                       textureless=True)
  plain = render_lib.render_cameras(model, params, cams, e.resolution,
                                    config.render, shading_lib.albedo_only())
  lit = render_lib.render_cameras(model, params, cams, e.resolution,
                                  config.render, textureless)
  return {
      'rgb': plain['rgb'],
      'textureless': lit['rgb'],
      'normals': images.normals_to_rgb(plain['normals'], plain['opacity'],
                                       np.asarray(cams.rotation)),
      'depth': images.colorize_depth(plain['depth'], plain['opacity']),
  }


def export_all(config: ml_collections.ConfigDict, model, params,
               out_dir: str) -> List[str]:
  """Writes turntables (mp4, gif, contact sheet) and the mesh to out_dir.

  Files: {rgb,textureless,normals,depth}.{mp4,gif,png} and
  mesh.{glb,obj,mtl,ply}.

  Raises:
    errors.UserError: the field has no surface at the mesh threshold.

  Returns:
    The written paths.
  """
  e = config.export
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, frames in render_turntable(model, params, config).items():
    paths += images.write_turntable(frames, out_dir, name, e.fps, e.gif_size)
  density_fn, albedo_fn = field_lib.point_functions(model, params)
  mesh = meshing.extract_mesh(
      density_fn, albedo_fn, e.mesh_resolution, e.mesh_bound,
      threshold=e.mesh_threshold, remove_floaters=e.remove_floaters,
      floater_fraction=e.floater_fraction)
  paths += meshing.write_mesh(mesh, out_dir, 'mesh')
  return paths
