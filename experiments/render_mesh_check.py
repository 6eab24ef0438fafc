r"""Proof that the exported mesh is the object: an independent renderer's view.

  python experiments/render_mesh_check.py --workdir=/tmp/toy \
      [--mesh=glb|obj] [--num_views=8] [--resolution=128] [--out=check.png]

Renders `<workdir>/export/mesh.glb` (or mesh.obj + texture.png) with Mitsuba
3 (`pip install mitsuba`, scalar_rgb variant, CPU) from the turntable's
cameras, and the trained field's albedo render from the same cameras, and
prints the PSNR of the two over the object's mask (pixels that either image
covers by at least half). Mitsuba shares no code with this project: it
parses the OBJ and the texture itself, and the GLB is parsed by trimesh;
its albedo AOV is the texture's colour at the first hit, which is what an
unlit viewer shows. Both images are composited over the field's
background, so a silhouette that differs counts against the PSNR.

--out writes the views side by side (field above, mesh below).
"""

import os
import sys

# Config files import `configs.default` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags
import numpy as np

from dreamfusion_jax import launch

_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder of a training run.')
_MESH = flags.DEFINE_enum('mesh', 'glb', ['glb', 'obj'], 'File to render.')
_VIEWS = flags.DEFINE_integer('num_views', 8, 'Turntable views compared.')
_RESOLUTION = flags.DEFINE_integer('resolution', 128, 'Image size.')
_SPP = flags.DEFINE_integer('spp', 16, 'Mitsuba samples per pixel.')
_OUT = flags.DEFINE_string('out', None, 'Side-by-side PNG to write.')
_EXPORT = flags.DEFINE_string('export_dir', None, 'Folder of the mesh files '
                              '(default <workdir>/export).')


def _srgb_encode(linear):
  linear = np.clip(linear, 0.0, 1.0)
  return np.where(linear <= 0.0031308, 12.92 * linear,
                  1.055 * linear ** (1.0 / 2.4) - 0.055)


def _srgb_decode(encoded):
  return np.where(encoded <= 0.04045, encoded / 12.92,
                  ((encoded + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _mitsuba_shape(mesh_path: str):
  """The mesh as a Mitsuba shape with a textured diffuse material."""
  import mitsuba as mi  # pylint: disable=g-import-not-at-top
  if mesh_path.endswith('.obj'):
    folder = os.path.dirname(mesh_path)
    return {'type': 'obj', 'filename': mesh_path,
            'bsdf': {'type': 'diffuse', 'reflectance': {
                'type': 'bitmap',
                'filename': os.path.join(folder, 'texture.png')}}}
  import trimesh  # pylint: disable=g-import-not-at-top
  loaded = trimesh.load(mesh_path, force='mesh')
  shape = mi.Mesh('mesh', len(loaded.vertices), len(loaded.faces),
                  has_vertex_normals=True, has_vertex_texcoords=True)
  params = mi.traverse(shape)
  params['vertex_positions'] = np.ravel(loaded.vertices).astype(np.float32)
  params['faces'] = np.ravel(loaded.faces).astype(np.uint32)
  params['vertex_normals'] = np.ravel(loaded.vertex_normals).astype(
      np.float32)
  # trimesh gives UVs with v up (it flips glTF's); Mitsuba's v points down.
  uv = np.asarray(loaded.visual.uv, np.float32) * [1.0, -1.0] + [0.0, 1.0]
  params['vertex_texcoords'] = np.ravel(uv).astype(np.float32)
  params.update()
  image = np.asarray(loaded.visual.material.baseColorTexture.convert('RGB'))
  # glTF base-colour textures are sRGB: decode to the linear values a
  # viewer shades with (a float Bitmap is taken as linear).
  texture = mi.load_dict({'type': 'bitmap', 'bitmap': mi.Bitmap(
      _srgb_decode(image.astype(np.float32) / 255.0))})
  shape.set_bsdf(mi.load_dict({'type': 'diffuse', 'reflectance': texture}))
  return shape


def mitsuba_views(mesh_path: str, cams, resolution: int, spp: int = 16):
  """Display-space albedo [V, H, W, 3] and coverage [V, H, W] of a mesh."""
  import mitsuba as mi  # pylint: disable=g-import-not-at-top
  mi.set_variant('scalar_rgb')
  shape = _mitsuba_shape(mesh_path)
  rgb, alpha = [], []
  for position, rotation, focal in zip(np.asarray(cams.position),
                                       np.asarray(cams.rotation),
                                       np.asarray(cams.focal)):
    up, back = rotation[:, 1], rotation[:, 2]
    scene = mi.load_dict({
        'type': 'scene', 'mesh': shape,
        # The direct integrator supplies the coverage (alpha); the AOV is
        # the BSDF's albedo at the first hit (linear, 0 on a miss).
        'integrator': {'type': 'aov', 'aovs': 'albedo:albedo',
                       'inner': {'type': 'direct'}},
        'sensor': {
            'type': 'perspective', 'fov_axis': 'x',
            'fov': float(2.0 * np.degrees(np.arctan(0.5 / focal))),
            'to_world': mi.ScalarTransform4f().look_at(
                origin=position.tolist(), target=(position - back).tolist(),
                up=up.tolist()),
            'film': {'type': 'hdrfilm', 'width': resolution,
                     'height': resolution, 'pixel_format': 'rgba',
                     'rfilter': {'type': 'box'}},
            'sampler': {'type': 'independent', 'sample_count': spp}}})
    image = np.asarray(mi.render(scene), np.float32)
    coverage = np.clip(image[..., 3], 0.0, 1.0)
    albedo = image[..., 4:7] / np.maximum(coverage, 1e-6)[..., None]
    rgb.append(_srgb_encode(albedo))
    alpha.append(coverage)
  return np.stack(rgb), np.stack(alpha)


def _psnr(squared_error, mask):
  """PSNR (dB) per view of [V, H, W, 3] squared errors over [V, H, W] mask."""
  total = np.where(mask[..., None], squared_error, 0.0).sum(axis=(1, 2, 3))
  mse = total / (3 * np.maximum(mask.sum(axis=(1, 2)), 1))
  return -10.0 * np.log10(np.maximum(mse, 1e-12))


def _erode(mask, pixels):
  """[V, H, W] mask shrunk by `pixels` (a square neighbourhood per step)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  return ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool),
                                iterations=pixels)


# Pixels of the 128^2 check within this distance of the outline form the
# ring: 4 pixels = one pixel of the toy's 32^2 training renders.
OUTLINE_PIXELS = 4


def compare(workdir: str, mesh: str = 'glb', num_views: int = 8,
            resolution: int = 128, spp: int = 16, export_dir=None):
  """PSNR (dB) per view over the mask, and the two image stacks.

  Also the PSNR over the mask's interior (pixels more than OUTLINE_PIXELS
  inside both images' silhouettes) and over the outline ring (the rest of
  the mask), as `regions` {'interior': [V], 'outline': [V]}: a field's
  soft rim against a mesh's hard edge costs the ring, a wrong texture the
  interior.

  Returns:
    psnr [V], field rgb [V, H, W, 3], mesh rgb [V, H, W, 3], regions.
  """
  from dreamfusion_jax import cameras  # pylint: disable=g-import-not-at-top
  from dreamfusion_jax import render  # pylint: disable=g-import-not-at-top
  from dreamfusion_jax import runs  # pylint: disable=g-import-not-at-top
  config, model, params, _ = runs.load_trained(workdir)
  cams = cameras.orbit_cameras(num_views, config.export.elevation,
                               config.camera.eval_distance,
                               config.camera.eval_focal)
  field = render.render_cameras(model, params, cams, resolution, config.render)
  rgb, coverage = mitsuba_views(
      os.path.join(export_dir or os.path.join(workdir, 'export'),
                   'mesh.' + mesh), cams, resolution, spp)
  background = field['background']
  mesh_rgb = coverage[..., None] * rgb + (1 - coverage[..., None]) * background
  mask = (field['opacity'] > 0.5) | (coverage > 0.5)
  interior = _erode((field['opacity'] > 0.5) & (coverage > 0.5),
                    OUTLINE_PIXELS)
  squared_error = (mesh_rgb - field['rgb']) ** 2
  regions = {'interior': _psnr(squared_error, interior),
             'outline': _psnr(squared_error, mask & ~interior)}
  return (_psnr(squared_error, mask), np.clip(field['rgb'], 0, 1),
          np.clip(mesh_rgb, 0, 1), regions)


def main(argv):
  del argv
  from dreamfusion_jax import images  # pylint: disable=g-import-not-at-top
  psnr, field, mesh, regions = compare(
      _WORKDIR.value, _MESH.value, _VIEWS.value, _RESOLUTION.value,
      _SPP.value, _EXPORT.value)
  print('PSNR per view (dB):', ' '.join(f'{p:.1f}' for p in psnr))
  print(f'PSNR mean over views: {psnr.mean():.2f} dB (interior, more than '
        f'{OUTLINE_PIXELS} px inside both outlines: '
        f"{regions['interior'].mean():.2f} dB; outline ring: "
        f"{regions['outline'].mean():.2f} dB)")
  if _OUT.value:
    images.write_png(np.concatenate([np.concatenate(list(field), 1),
                                     np.concatenate(list(mesh), 1)], 0),
                     _OUT.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  launch.run(main)
