"""The package's layering (DESIGN.md section 3): imports run one way, down.

Every import of a project module, module-level or inside a function, is
read from the source; a module may import only from its own floor or below,
and the import graph has no cycle. A new module must be given a floor here.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'dreamfusion_jax'

# Floor of each module (a package's __init__ is its package name).
FLOORS = {
    # Ground: no project imports but these.
    'errors': 0, 'numerics': 0, 'files': 0, 'schedules': 0, 'losses': 0,
    'checkpoint': 0, 'launch': 0, 'images': 0,
    # Which objects a batch run trains and their folders (configs only).
    'object_batch': 0,
    # The occupancy grid of the renderer's samples.
    'occupancy': 0.5,
    # 1: cameras, shading, the field; meshes of any field.
    'cameras': 1, 'shading': 1, 'nerf': 1, 'nerf.encoding': 1,
    'nerf.field': 1, 'meshing': 1,
    # 2: rendering; texture baking (composites rays like the renderer) and
    # mesh files; the prior interface, SDS and Stable Diffusion.
    'render': 2, 'texture': 2, 'mesh_files': 2, 'guidance': 2, 'guidance.prior': 2, 'guidance.sds': 2,
    'guidance.hub': 2, 'guidance.quiet': 2, 'guidance.stable_diffusion': 2,
    'guidance.weight_files': 2,
    'guidance.views': 2,
    # 2.5: the toy world, which implements the prior interface.
    'toy': 2.5, 'toy.objects': 2.5, 'toy.raytrace': 2.5,
    'toy.exact_prior': 2.5, 'toy.metrics': 2.5,
    # 3: the prior dispatcher, the train step, exports.
    'priors': 3, 'train_step': 3, 'export': 3,
    # 3.5: the run folder (reads train states).
    'runs': 3.5,
    # 4: the loop; the loop of many objects.
    'train': 4, 'train_objects': 4.5,
    # 5: evaluation, which trains and reads runs.
    'evaluation': 5, 'evaluation.clip_model': 5,
    'evaluation.clip_r_precision': 5, 'evaluation.toy_sweep': 5,
    'evaluation.ablation': 5,
    'evaluation.janus': 5, 'evaluation.sds_at_truth': 5,
}

MAX_LINES = 500


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix('').parts
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules():
  return {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))
          if _module_name(p)}


def _imports(path: pathlib.Path, known) -> set:
  """Project modules imported anywhere in `path` (functions included)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      # `from dreamfusion_jax.x import y`: y is a module, or a name in x
      # (found below as the longest module the dotted name starts with).
      names = [f'{node.module}.{a.name}' for a in node.names]
    for name in names:
      if not name.startswith('dreamfusion_jax.'):
        continue
      name = name[len('dreamfusion_jax.'):]
      # The longest known module the name starts with.
      while name and name not in known:
        name = name.rpartition('.')[0]
      if name:
        found.add(name)
  return found


def _graph():
  modules = _modules()
  return {name: _imports(path, modules) - {name}
          for name, path in modules.items()}


def test_every_module_has_a_floor():
  missing = sorted(set(_modules()) - set(FLOORS))
  assert not missing, f'give these modules a floor in FLOORS: {missing}'


def test_imports_run_down_the_floors():
  upward = [f'{m} (floor {FLOORS[m]}) imports {d} (floor {FLOORS[d]})'
            for m, deps in _graph().items() for d in sorted(deps)
            if FLOORS.get(d, 99) > FLOORS.get(m, -1)]
  assert not upward, upward


def test_no_import_cycles():
  graph = _graph()
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for dep in sorted(graph[node]):
      if state.get(dep) == 'open':
        cycle = stack[stack.index(dep):] + [dep]
        pytest.fail('import cycle: ' + ' -> '.join(cycle))
      if dep not in state:
        visit(dep, stack + [dep])
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])


def test_the_layout_check_sees_function_level_imports(tmp_path):
  source = tmp_path / 'mod.py'
  source.write_text('def f():\n'
                    '  from dreamfusion_jax.toy import exact_prior\n'
                    '  import dreamfusion_jax.train\n')
  assert _imports(source, FLOORS) == {'toy.exact_prior', 'train'}


def test_no_file_holds_two_concerns_by_length():
  long = {name: n for name, path in _modules().items()
          if (n := len(path.read_text().splitlines())) > MAX_LINES}
  assert not long, f'files over {MAX_LINES} lines: {long}'
