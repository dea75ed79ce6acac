"""``screen --executor ray`` on a real local Ray cluster (no mocks).

Known answers come from the local executor: with the same seed a Ray screen must write the same
candidates (the same ``samples.parquet`` table, value for value), the same validity and stability verdicts and the same
funnel; killing a Ray worker process mid-run and killing the driver mid-run must still end with
exactly those rows, none duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from llamat_cif.runs import RunStore
from llamat_cif.sampling.rows import read_samples
from tests.conftest import requires_data

ray = pytest.importorskip("ray")

N, BATCH, STEPS = 2, 1, 10
TIMING = ("time_s", "cpu_s", "wall_s")


def _config(out: Path):
    from llamat_cif.screen import ScreenConfig
    from llamat_cif.stability import RelaxConfig

    return ScreenConfig.of(n=N, out_dir=str(out), batch_size=BATCH, seed=3, relax=RelaxConfig(max_steps=STEPS))


def _rows(out: Path, name: str) -> pd.DataFrame:
    df = pd.read_parquet(out / name)
    return df.drop(columns=[c for c in TIMING if c in df.columns]).sort_values("id").reset_index(drop=True)


def _assert_same_screen(ref: Path, got: Path) -> None:
    pd.testing.assert_frame_equal(read_samples(got), read_samples(ref), obj="samples")
    for name in ("validity.parquet", "stability.parquet"):
        a, b = _rows(ref, name), _rows(got, name)
        assert not b["id"].duplicated().any(), name
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=name)
    fa = json.loads((ref / "funnel.json").read_text())["stages"]
    fb = json.loads((got / "funnel.json").read_text())["stages"]
    assert [(s["stage"], s["numerator"]) for s in fa] == [(s["stage"], s["numerator"]) for s in fb]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    from llamat_cif.screen import run_screen

    out = tmp_path_factory.mktemp("local")
    run_screen(_config(out), progress=False)
    stab = pd.read_parquet(out / "stability.parquet")
    assert len(stab) >= 1  # at least one relaxation to compare
    return out


def _cli(out: Path) -> list[str]:
    exe = str(Path(sys.executable).with_name("llamat-cif"))
    return [exe, "screen", "-n", str(N), "--batch-size", str(BATCH), "--seed", "3", "--max-steps", str(STEPS),
            "--out", str(out), "--executor", "ray", "--ray-cpus", "2", "--no-progress"]


@requires_data
def test_interrupted_driver_resumes(local_run, tmp_path):
    """The driver (and the Ray instance it started) killed with SIGKILL after its first rows; the
    rerun with the same --out finishes with exactly the local run's rows."""
    out = tmp_path / "ray"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen(_cli(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        if RunStore(out / "samples.parquet").part_paths():  # the first batch is written
            break
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be interrupted"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "funnel.json").exists()
    done = subprocess.run(_cli(out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_screen(local_run, out)


@pytest.fixture(scope="module")
def executor():
    from llamat_cif.executors import RayExecutor

    ex = RayExecutor(num_cpus=2).start()
    yield ex
    ex.shutdown()


@requires_data
def test_ray_screen_equals_local(local_run, executor, tmp_path):
    from llamat_cif.screen import run_screen

    funnel = run_screen(_config(tmp_path / "ray"), progress=False, executor=executor)
    assert funnel["executor"].startswith("ray (2 CPUs")
    _assert_same_screen(local_run, tmp_path / "ray")


def _task_pids(name: str) -> list[int]:
    """PIDs of Ray worker processes running ``name`` (Ray titles them ``ray::<task>``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="ignore").startswith(f"ray::{name}"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@requires_data
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray workers through /proc")
def test_killed_worker_still_gives_every_row_once(local_run, executor, tmp_path):
    """SIGKILL one worker while it draws a batch: Ray retries the batch (same seed), and the screen
    ends with the local run's rows, none duplicated."""
    from llamat_cif.screen import run_screen

    result: dict = {}

    def go():
        try:
            result["funnel"] = run_screen(_config(tmp_path / "ray"), progress=False, executor=executor)
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            result["error"] = exc

    th = threading.Thread(target=go)
    th.start()
    killed = None
    deadline = time.monotonic() + 300
    while th.is_alive() and killed is None and time.monotonic() < deadline:
        pids = _task_pids("_sample_task")
        if pids:
            time.sleep(0.5)  # inside the batch, not at its start
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    th.join(timeout=600)
    assert "error" not in result, result.get("error")
    assert killed is not None, "no sampling worker was seen"
    _assert_same_screen(local_run, tmp_path / "ray")


def test_no_cluster_at_address_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner

    from llamat_cif.cli import main

    res = CliRunner().invoke(main, ["screen", "-n", "1", "--out", str(tmp_path / "x"), "--executor", "ray",
                                    "--address", "127.0.0.1:1"])
    assert res.exit_code != 0 and "no Ray cluster answers at 127.0.0.1:1" in res.output
    assert not (tmp_path / "x").exists()
    res = CliRunner().invoke(main, ["screen", "-n", "1", "--out", str(tmp_path / "y"), "--address", "auto"])
    assert res.exit_code != 0 and "--address applies to --executor ray" in res.output
