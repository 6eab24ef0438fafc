"""Mesh files that Blender, game engines, web viewers and slicers open.

`write_textured_mesh` writes a `texture.TexturedMesh` as:

  mesh.glb      glTF 2.0 binary: positions, normals, UVs, indices and a PBR
                material (metallic 0, roughness 1) whose base-colour texture
                is embedded as a PNG.
  mesh.obj      positions, UVs and normals with separate indices, so the
                positions stay shared (watertight) across UV seams; with
  mesh.mtl      a material whose diffuse map (map_Kd) is
  texture.png   the baked texture.
  mesh.ply      the watertight mesh with 8-bit RGBA vertex colours.

Colour values: the texture holds the colours as the renders show them.
glTF and PNG textures are sRGB-encoded by definition, so viewers decode
them to linear light and encode the result for display, which under white
light gives back the rendered values. (glTF vertex colours, by contrast,
are linear; the GLB has none, since glTF multiplies them into the texture.)
"""

import os
from typing import List

import numpy as np
import trimesh
from PIL import Image

from dreamfusion_jax import files
from dreamfusion_jax import images
from dreamfusion_jax import texture as texture_lib


def glb_mesh(textured: texture_lib.TexturedMesh) -> trimesh.Trimesh:
  """The mesh as glTF stores it: one vertex per (position, UV) pair.

  Vertices on a UV seam are duplicated; each copy keeps the normal of its
  position, so shading stays smooth across seams.
  """
  mesh = textured.mesh
  vertices = np.asarray(mesh.vertices, np.float32)[textured.uv_to_vertex]
  normals = np.asarray(mesh.vertex_normals, np.float32)[textured.uv_to_vertex]
  material = trimesh.visual.material.PBRMaterial(
      name='albedo',
      baseColorTexture=Image.fromarray(images.to_uint8(textured.texture)),
      metallicFactor=0.0, roughnessFactor=1.0)
  out = trimesh.Trimesh(vertices=vertices, faces=textured.uv_faces,
                        vertex_normals=normals, process=False)
  out.visual = trimesh.visual.TextureVisuals(uv=textured.uv,
                                             material=material)
  return out


def obj_text(textured: texture_lib.TexturedMesh, mtl_name: str) -> str:
  """OBJ with `v`, `vt`, `vn` and `f v/vt/vn` (1-based) lines."""
  mesh = textured.mesh
  position_faces = textured.uv_to_vertex[textured.uv_faces] + 1
  uv_faces = textured.uv_faces + 1
  corners = np.stack([position_faces, uv_faces, position_faces], axis=-1)
  lines = [f'mtllib {mtl_name}', 'usemtl albedo']
  lines += ['v %.6f %.6f %.6f' % tuple(p) for p in mesh.vertices]
  lines += ['vt %.6f %.6f' % tuple(t) for t in textured.uv]
  lines += ['vn %.6f %.6f %.6f' % tuple(n) for n in mesh.vertex_normals]
  lines += ['f ' + ' '.join('%d/%d/%d' % tuple(c) for c in face)
            for face in corners]
  return '\n'.join(lines) + '\n'


def mtl_text(texture_name: str) -> str:
  """A matte material whose diffuse colour is the texture."""
  return ('newmtl albedo\n'
          'Ka 0.000 0.000 0.000\n'
          'Kd 1.000 1.000 1.000\n'
          'Ks 0.000 0.000 0.000\n'
          'd 1.0\n'
          'illum 1\n'
          f'map_Kd {texture_name}\n')


def write_textured_mesh(textured: texture_lib.TexturedMesh, out_dir: str,
                        name: str = 'mesh',
                        texture_name: str = 'texture.png') -> List[str]:
  """Writes GLB, OBJ + MTL + PNG texture and PLY (see the module doc).

  Args:
    textured: a mesh with its atlas and texture (`texture.bake`).
    out_dir: created if missing.
    name: stem of the mesh files.
    texture_name: file name of the texture image.

  Returns:
    The written paths: [glb, obj, mtl, texture, ply].
  """
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, name)
  glb = glb_mesh(textured).export(file_type='glb', include_normals=True)
  files.write_bytes(stem + '.glb', glb)
  texture_path = images.write_png(textured.texture,
                                  os.path.join(out_dir, texture_name))
  files.write_bytes(stem + '.obj',
                    obj_text(textured, name + '.mtl').encode())
  files.write_bytes(stem + '.mtl', mtl_text(texture_name).encode())
  files.write_bytes(stem + '.ply', textured.mesh.export(file_type='ply',
                                                        encoding='binary'))
  return [stem + '.glb', stem + '.obj', stem + '.mtl', texture_path,
          stem + '.ply']
