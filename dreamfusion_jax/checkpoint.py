"""Orbax checkpoints of the train state under `<workdir>/checkpoints/<step>/`.

Only the train state (NeRF params, optimiser state, step, bad-step counter)
is saved; the frozen prior never is. Saves are asynchronous; `close` waits
for them. Restoring reads into an abstract target built with
`jax.eval_shape`, placed with the current mesh's replicated sharding, so a
checkpoint written on N devices restores on M.
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from dreamfusion_jax import errors


class Checkpointer:
  """An orbax CheckpointManager that keeps the newest K checkpoints."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save of `state` as checkpoint `step`."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores `step` (default: newest) into the structure and shardings of
    `abstract_state` (a pytree of jax.ShapeDtypeStruct)."""
    step = self._manager.latest_step() if step is None else step
    try:
      return self._manager.restore(
          step, args=ocp.args.StandardRestore(abstract_state))
    except ValueError as e:
      if 'mismatch' not in str(e).lower():
        raise
      raise errors.UserError(
          f'checkpoint {step} in {self.directory} holds a train state of '
          'another shape (written by another version, or with another '
          'render.sampler or field); use a new --workdir, or the version '
          'and config that wrote it.') from None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or structs) placed with `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)
