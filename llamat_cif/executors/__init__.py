"""Where a screen's work runs: here (the default) or on a Ray cluster (:class:`RayExecutor`).

The local executor is the code path every stage already has (one process, or a process pool).
:class:`RayExecutor` sends the same per-batch / per-chunk / per-structure functions to Ray tasks and
hands their results back to the stage, which writes them exactly as a local run does; see
:mod:`llamat_cif.executors.ray_executor`.
"""

from __future__ import annotations

from llamat_cif.executors.ray_executor import RayExecutor, RayUnavailable

__all__ = ["RayExecutor", "RayUnavailable"]
