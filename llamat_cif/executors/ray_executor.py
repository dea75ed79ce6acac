"""Ray executor: the screen's batches, chunks and relaxations as Ray tasks, results written locally.

Each stage keeps its own output files and resume rules (``samples.parquet`` parts by batch,
``validity.parts/`` by chunk, ``stability.parquet`` by row); only the work moves to Ray:

* **generation**: one task per batch ``b``, drawn with seed ``(seed, b)`` by a
  :class:`~llamat_cif.sampling.sample.BatchSampler` that each worker process loads once and keeps, so the
  candidates are those of a local run with the same seed;
* **validation**: each chunk of the local run is cut into sub-chunks of ``validate_chunk`` texts;
* **relaxation**: one task per structure; each worker process loads the potential once (with
  ``--device cuda``, each task asks for a quarter of a GPU).

Results come back to the driver, which writes them (no shared file system needed). Every task
asks for ``num_cpus`` (and a GPU for sampling when the cluster has one); at most
``in_flight_per_cpu`` x the cluster's CPUs tasks are in flight (backpressure). A worker that dies
(killed, out of memory) has its task retried ``max_retries`` times by Ray; a task that still
fails, or runs past its time limit (then cancelled and its worker killed), is split into single
items, and a single item that fails becomes an error row, so one hostile structure never fails
the screen.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: environment the workers need (data and model folders, offline switches, thread caps)
PASSED_ENV = ("LLAMAT_CIF_DATA", "LLAMAT_CIF_MODELS", "LLAMAT_CIF_CACHE", "HF_HUB_OFFLINE",
              "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS")

#: per Ray worker process: the loaded sampler / potential (a worker runs many tasks)
_CACHE: dict[Any, Any] = {}


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


# ------------------------------------------------------------------------- task functions (workers)


def _quiet() -> None:
    warnings.simplefilter("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _sampler(cfg: dict, targets: list | None):
    from llamat_cif.sampling.sample import BatchSampler, SampleConfig

    key = ("sampler", json.dumps(cfg, sort_keys=True, default=str))
    if key not in _CACHE:
        for k in [k for k in _CACHE if k[0] == "sampler"]:  # one model per worker
            del _CACHE[k]
        _quiet()
        sampler = BatchSampler(SampleConfig(**cfg), targets=targets)
        _CACHE[key] = sampler
        _CACHE[("sampler", json.dumps(asdict(sampler.cfg), sort_keys=True, default=str))] = sampler
    return _CACHE[key]


def _resolve_task(cfg: dict, targets: list | None) -> dict:
    return asdict(_sampler(cfg, targets).cfg)


def _sample_task(cfg: dict, targets: list | None, b: int) -> tuple[list[dict], dict[str, int]]:
    s = _sampler(cfg, targets)
    before = asdict(s.stats)
    rows = s.rows(b)
    return rows, {k: v - before[k] for k, v in asdict(s.stats).items()}


def _validate_task(thresholds: dict, timeout_s: float, keep_cif: bool, payload: tuple) -> list[dict]:
    from llamat_cif.validators.core import Thresholds
    from llamat_cif.validators.run import _validate_records

    _quiet()
    return _validate_records(payload[2], Thresholds(**thresholds), timeout_s=timeout_s, keep_cif=keep_cif)


def _reason(exc: BaseException) -> str:
    """One line: the task's own exception when there is one, else Ray's."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1][:300] if str(cause).strip() else ''}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:300] if text else ''}"


def _relax_task(spec: str, device: str | None, scale: str | None, config, items: list[tuple[str, Any]]) -> list[dict]:
    import torch

    from llamat_cif.stability.potentials import load_potential
    from llamat_cif.stability.relax import quiet_warnings, relax_structure

    key = ("potential", spec, device, scale)
    if key not in _CACHE:
        torch.set_num_threads(1)
        _quiet()
        quiet_warnings()
        _CACHE[key] = load_potential(spec, device=device, energy_scale=scale)
    return [relax_structure(s, _CACHE[key], config, sid=sid) for sid, s in items]  # Structure or CIF text


# ------------------------------------------------------------------------------------- the executor


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once (not after Ray's minute of retries) when nothing listens at ``HOST:PORT``."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise RayUnavailable(f"no Ray cluster answers at {address} ({exc}); start one with "
                             "`ray start --head`, or drop --address to start Ray here") from None


@dataclass
class RayExecutor:
    """Run a screen's stages on Ray.

    Attributes:
        address: ``None`` starts a Ray instance on this machine (``num_cpus``); ``"auto"`` or
            ``HOST:PORT`` joins a running cluster (``ray start --head`` / ``ray start --address``).
        num_cpus: CPUs of a Ray instance started here (None: all).
        max_retries: Ray's retries of a task whose worker died.
        in_flight_per_cpu: tasks in flight per cluster CPU (backpressure).
        validate_chunk: texts per validation task.
        relax_timeout_s: wall-clock limit of one relaxation task (None: twice the relaxer's CPU
            limit plus two minutes); past it the task is cancelled and the structure is an error row.
    """

    address: str | None = None
    num_cpus: int | None = None
    max_retries: int = 3
    in_flight_per_cpu: int = 2
    validate_chunk: int = 50
    relax_timeout_s: float | None = None
    _started_here: bool = field(default=False, repr=False)
    _remote: dict = field(default_factory=dict, repr=False)

    # ---- lifecycle

    def start(self) -> RayExecutor:
        """Connect to (or start) Ray; the workers get this process's data/model settings."""
        try:
            import ray
        except ImportError as exc:
            raise RayUnavailable("the Ray executor needs Ray: pip install -e '.[ray]'") from exc
        if self.address is not None:
            _probe(self.address)  # also when this process already holds a Ray connection
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          logging_level=logging.ERROR,
                                          runtime_env={"env_vars": env} if env else None)
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus
            else:
                kwargs["address"] = self.address
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayUnavailable(f"cannot reach a Ray cluster at {self.address!r}: {exc}") from exc
            self._started_here = True
        return self

    def shutdown(self) -> None:
        """Disconnect (and stop the instance if this executor started it)."""
        import ray

        if self._started_here and ray.is_initialized():
            ray.shutdown()
        self._started_here = False

    def __enter__(self) -> RayExecutor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def resources(self) -> dict[str, float]:
        import ray

        return dict(ray.cluster_resources())

    def describe(self) -> str:
        r = self.resources()
        return f"ray ({int(r.get('CPU', 0))} CPUs, {int(r.get('GPU', 0))} GPUs)"

    def _fn(self, fn: Callable, **options) -> Any:
        import ray

        key = (fn.__name__, tuple(sorted(options.items())))
        if key not in self._remote:
            self._remote[key] = ray.remote(fn).options(max_retries=self.max_retries, retry_exceptions=False,
                                                       **options)
        return self._remote[key]

    # ---- the loop every stage uses

    def imap(
        self,
        fn: Callable,
        payloads: Iterable[Any],
        *,
        args: Sequence[Any] = (),
        num_cpus: float = 1,
        num_gpus: float = 0,
        timeout_s: Callable[[Any], float | None] | None = None,
        split: Callable[[Any], list[Any]] | None = None,
    ) -> Iterator[tuple[Any, Any, str | None]]:
        """``fn(*args, payload)`` for every payload as Ray tasks: yields ``(payload, result, error)``
        in completion order (``error`` None on success).

        A task that fails after Ray's retries, or runs longer than ``timeout_s(payload)`` (then
        cancelled, its worker killed), is replaced by ``split(payload)`` when that gives several
        payloads, else yielded with the reason as ``error``.
        """
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        remote = self._fn(fn, num_cpus=num_cpus, num_gpus=num_gpus)
        queue = deque(payloads)
        cap = max(1, int(self.in_flight_per_cpu * max(1.0, self.resources().get("CPU", 1.0))))
        flight: dict[Any, tuple[Any, float]] = {}

        def failed(payload: Any, reason: str) -> tuple[Any, Any, str] | None:
            parts = split(payload) if split is not None else []
            if len(parts) > 1:
                queue.extendleft(reversed(parts))
                return None
            return payload, None, reason

        while queue or flight:
            while queue and len(flight) < cap:
                payload = queue.popleft()
                flight[remote.remote(*args, payload)] = (payload, time.monotonic())
            ready, _ = ray.wait(list(flight), num_returns=1, timeout=0.5)
            for ref in ready:
                payload, _t = flight.pop(ref)
                try:
                    yield payload, ray.get(ref), None
                except (RayError, GetTimeoutError) as exc:
                    out = failed(payload, f"ray: {_reason(exc)}")
                    if out is not None:
                        yield out
            if timeout_s is not None:
                now = time.monotonic()
                for ref, (payload, t) in list(flight.items()):
                    limit = timeout_s(payload)
                    if limit is not None and now - t > limit:
                        ray.cancel(ref, force=True)  # kills the worker process holding it
                        flight.pop(ref)
                        out = failed(payload, f"timeout: no result after {limit:g} s (Ray worker killed)")
                        if out is not None:
                            yield out

    # ---- generation

    def _gpus_per_sampler(self) -> float:
        return 1.0 if self.resources().get("GPU", 0) >= 1 else 0.0

    def _remote_cfg(self, cfg) -> dict:
        from llamat_cif.model import resolve_model_path

        d = asdict(cfg)
        d["model"] = str(resolve_model_path(cfg.model).resolve())  # workers may start elsewhere
        return d

    def resolve_sampling(self, cfg, targets: list | None):
        """The run settings with the model's recommendations filled in (read on a worker)."""
        import ray

        from llamat_cif.sampling import SampleConfig

        remote = self._fn(_resolve_task, num_cpus=1, num_gpus=self._gpus_per_sampler())
        resolved = ray.get(remote.remote(self._remote_cfg(cfg), targets))
        resolved["model"] = cfg.model
        resolved["shard"] = cfg.shard
        return SampleConfig(**resolved)

    def sample_batches(self, cfg, todo: Sequence[int], targets: list | None,
                       stats: dict[str, int]) -> Iterator[tuple[int, list[dict]]]:
        """Yield ``(b, rows)`` for every batch in ``todo`` as workers finish them; constraint
        statistics are summed into ``stats``."""
        import ray

        cfg_ref, targets_ref = ray.put(self._remote_cfg(cfg)), ray.put(targets)
        for b, result, error in self.imap(_sample_task, todo, args=(cfg_ref, targets_ref),
                                          num_gpus=self._gpus_per_sampler()):
            if error is not None:
                raise RuntimeError(f"batch {b} could not be drawn on Ray: {error}")
            rows, delta = result
            for k, v in delta.items():
                stats[k] = stats.get(k, 0) + v
            yield b, rows

    # ---- validation

    def validate_chunks(self, chunks: Sequence[tuple[int, list[dict]]], thresholds, *, timeout_s: float,
                        keep_cif: bool) -> Iterator[tuple[int, list[dict]]]:
        """Yield ``(k, rows)`` for every chunk (rows in input order) once all its texts are done."""
        from llamat_cif.validators.core import empty_row
        from llamat_cif.validators.pool import hard_timeout

        per_text = hard_timeout(timeout_s)  # the local pool's hard limit
        pending: dict[int, list] = {}
        payloads = []
        for k, records in chunks:
            pending[k] = [None] * len(records)
            for j in range(0, len(records), self.validate_chunk):
                payloads.append((k, j, records[j:j + self.validate_chunk]))

        def split(p):
            k, j, recs = p
            return [(k, j + i, [r]) for i, r in enumerate(recs)]

        for (k, j, recs), rows, error in self.imap(
                _validate_task, payloads, args=(asdict(thresholds), timeout_s, keep_cif),
                timeout_s=lambda p: per_text * len(p[2]) + 30.0, split=split):
            if error is not None:
                row = empty_row(recs[0].get("id", ""), str(recs[0].get("fmt") or "?"))
                row["error"] = error
                rows = [row]
            pending[k][j:j + len(rows)] = rows
            if all(r is not None for r in pending[k]):
                yield k, pending.pop(k)

    # ---- relaxation

    def relax(self, items: Iterable[tuple[str, Any]], potential, config, *, device: str | None = None) -> Iterator[dict]:
        """Relax ``(id, Structure|CIF)`` pairs, yielding result rows as they finish."""
        from llamat_cif.stability.potentials import Potential
        from llamat_cif.stability.relax import error_row

        spec = potential.name if isinstance(potential, Potential) else str(potential)
        scale = potential.energy_scale if isinstance(potential, Potential) else None
        limit = self.relax_timeout_s or 2.0 * config.time_limit_s + 120.0
        payloads = ([(sid, s)] for sid, s in items)  # Structures as themselves: CIF text would round them
        # a GPU device asks Ray for a share of a GPU (four relaxations per GPU), else CPU only
        gpu_share = 0.25 if device and str(device).startswith("cuda") else 0.0
        for payload, rows, error in self.imap(_relax_task, payloads, args=(spec, device or "cpu", scale, config),
                                              num_gpus=gpu_share, timeout_s=lambda p: limit * len(p)):
            if error is not None:
                rows = [error_row(payload[0][0], error)]
            yield from rows


def executor_from_options(executor: str, address: str | None, num_cpus: int | None = None) -> RayExecutor | None:
    """The executor a CLI asked for: None for ``local``, a :class:`RayExecutor` for ``ray``."""
    if executor == "local":
        if address:
            raise ValueError("--address applies to --executor ray")
        return None
    if executor != "ray":
        raise ValueError(f"executor must be local or ray, not {executor!r}")
    return RayExecutor(address=address, num_cpus=num_cpus)


__all__ = ["PASSED_ENV", "RayExecutor", "RayUnavailable", "executor_from_options"]
