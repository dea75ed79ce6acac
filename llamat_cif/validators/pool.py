"""A small process pool with a hard per-structure time limit.

``concurrent.futures`` cannot stop one hung task: a structure that sends spglib or the CIF parser
into a long C loop would hold its worker forever. Here each worker reports every finished
structure; when a worker makes no progress for ``hard_timeout_s`` it is killed, the structure it was
on becomes a ``timeout`` error row, the rest of its batch goes back in the queue, and a fresh worker
takes its place. Workers come from a fork server that has pymatgen imported already, so a restart
costs milliseconds, not seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

from llamat_cif.validators.core import Thresholds, empty_row, validate_one

_CTX: Any = None


def hard_timeout(timeout_s: float) -> float:
    """Seconds without a result after which a structure's worker is killed (soft limit x1.5 + 5 s)."""
    return timeout_s * 1.5 + 5.0


def _context():
    global _CTX
    if _CTX is None:
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file and not os.path.exists(main_file):
            # code run from stdin or an embedded interpreter: a fork server would try to re-import
            # a main module that does not exist; plain fork works (workers only run this module)
            _CTX = mp.get_context("fork")
            return _CTX
        try:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["llamat_cif.validators._preload"])
        except ValueError:  # pragma: no cover - platforms without fork server
            ctx = mp.get_context("spawn")
        _CTX = ctx
    return _CTX


def _worker_main(conn, thresholds: dict[str, Any], soft_timeout_s: float | None, keep_cif: bool) -> None:
    import warnings

    warnings.simplefilter("ignore")  # warnings are captured per row by the parser; do not spam stderr
    t = Thresholds(**thresholds)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            batch = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if batch is None:
            return
        for idx, task in batch:
            row = validate_one(task.get("text"), fmt=task.get("fmt"), target_formula=task.get("target_formula"),
                               target_spacegroup=task.get("target_spacegroup"), id=task.get("id", ""),
                               timeout_s=soft_timeout_s, keep_cif=keep_cif, _thresholds=t)
            conn.send((idx, row))
        conn.send(("done", None))


class _Worker:
    def __init__(self, ctx, args) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.batch: deque[tuple[int, dict]] = deque()
        self.since = time.monotonic()

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        finally:
            self.conn.close()


class ValidationPool:
    """``n_workers`` processes running :func:`validate_one` with a hard per-structure limit.

    Args:
        n_workers: worker processes.
        thresholds: the suite's settings.
        timeout_s: per-structure limit: a soft one (SIGALRM inside the worker, gives a clean
            error row) and a hard one (worker killed) at ``timeout_s * 1.5 + 5`` s.
        keep_cif: add the parsed structure's CIF to each row.
        batch_size: structures sent to a worker at once (fewer round trips).
        start_timeout_s: how long a new worker may take to become ready.
        soft_timeout_s: the in-worker limit (default: ``timeout_s``; ``None`` disables it, which
            only tests want: it makes every overrun a hard kill).
    """

    def __init__(self, n_workers: int, thresholds: Thresholds, *, timeout_s: float = 30.0, keep_cif: bool = False,
                 batch_size: int = 8, start_timeout_s: float = 120.0,
                 soft_timeout_s: float | None | str = "same") -> None:
        self.n_workers = max(1, int(n_workers))
        self.timeout_s = float(timeout_s)
        self.hard_timeout_s = hard_timeout(self.timeout_s)
        self.start_timeout_s = start_timeout_s
        self.batch_size = max(1, int(batch_size))
        soft = self.timeout_s if soft_timeout_s == "same" else soft_timeout_s
        self._args = (thresholds.as_dict(), soft, keep_cif)
        self._ctx = _context()
        self._workers: list[_Worker] = []
        self._pending_results: list[tuple[int, dict]] = []
        self.n_killed = 0
        self._failed_starts = 0

    def __enter__(self) -> ValidationPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, self._args)
        self._workers.append(w)
        return w

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.kill()
            else:
                w.conn.close()
        self._workers = []

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self.n_killed += 1

    def map(self, tasks: Iterable[tuple[int, dict]]) -> Iterator[tuple[int, dict]]:
        """Yield ``(index, row)`` for every task, in completion order."""
        queue: deque[tuple[int, dict]] = deque(tasks)
        outstanding = len(queue)
        while len(self._workers) < self.n_workers:
            self._spawn()
        while outstanding:
            now = time.monotonic()
            for w in list(self._workers):
                if w.ready and not w.batch and queue:
                    batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                    w.batch.extend(batch)
                    w.since = now
                    w.conn.send(batch)
            ready = wait([w.conn for w in self._workers], timeout=0.5)
            by_conn = {id(w.conn): w for w in self._workers}
            for conn in ready:
                w = by_conn.get(id(conn))
                if w is None:
                    continue
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    # the worker died (killed by the OS for memory, or a crash in C code)
                    outstanding -= self._fail_current(w, queue, "worker process died on this structure")
                    continue
                kind, payload = msg
                if kind == "ready":
                    w.ready, w.since = True, time.monotonic()
                    self._failed_starts = 0
                elif kind == "done":
                    w.since = time.monotonic()
                else:
                    if w.batch and w.batch[0][0] == kind:
                        w.batch.popleft()
                    w.since = time.monotonic()
                    outstanding -= 1
                    yield kind, payload
            now = time.monotonic()
            for w in list(self._workers):
                if w.batch and now - w.since > self.hard_timeout_s:
                    outstanding -= self._fail_current(
                        w, queue, f"timeout: no result after {self.hard_timeout_s:g} s (worker killed)")
                elif not w.ready and now - w.since > self.start_timeout_s:
                    self._replace(w)
                    self._spawn()
            for _ in range(self.n_workers - len(self._workers)):
                self._spawn()
            if self._pending_results:
                yield from self._pending_results
                self._pending_results = []

    def _fail_current(self, w: _Worker, queue: deque, message: str) -> int:
        """Kill ``w``; its current structure becomes an error row; the rest go back to the queue."""
        if not w.ready:
            self._failed_starts += 1
            if self._failed_starts > 5:
                raise RuntimeError("validation workers keep dying before they start; run with n_jobs=1 to see why")
        failed = 0
        if w.batch:
            idx, task = w.batch.popleft()
            row = empty_row(task.get("id", ""), str(task.get("fmt") or "?"))
            row["error"] = message
            row["time_s"] = time.monotonic() - w.since
            self._pending_results = [*self._pending_results, (idx, row)]
            failed = 1
            queue.extendleft(reversed(w.batch))
            w.batch.clear()
        self._replace(w)
        return failed
