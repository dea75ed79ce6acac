"""The run store: parts appear whole, a rerun skips what is written, commits merge without duplicates."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa

from llamat_cif.runs import RunStore


def test_append_resume_and_commit(tmp_path):
    path = tmp_path / "run" / "stability.parquet"
    store = RunStore(path, columns=["id", "e_hull", "error"])
    store.write_part([{"id": "a", "e_hull": 0.1}, {"id": "b", "e_hull": 0.2}])
    # an error batch: e_hull all missing, error set; must not turn e_hull into an object column
    store.write_part([{"id": "c", "e_hull": None, "error": "relax: NaN energy"}])
    # a half-written part of a killed run is only a .tmp file: never read
    (store.parts_dir / "part-000002.parquet.tmp").write_bytes(b"garbage")

    rerun = RunStore(path, columns=["id", "e_hull", "error"])
    assert rerun.done_ids() == {"a", "b", "c"}
    assert [p.name for p in rerun.part_paths()] == ["part-000000.parquet", "part-000001.parquet"]
    rerun.write_part([{"id": "b", "e_hull": 0.25}, {"id": "d", "e_hull": -0.05}])  # b written again
    df = rerun.read().set_index("id")
    assert list(df.index) == ["a", "c", "b", "d"]  # one row per id, the last one wins
    assert df.loc["b", "e_hull"] == 0.25
    assert df["e_hull"].dtype == np.float64 and np.isnan(df.loc["c", "e_hull"])
    assert list(rerun.read().columns[:3]) == ["id", "e_hull", "error"]

    rerun.commit()
    assert not rerun.parts_dir.exists()
    committed = pd.read_parquet(path)
    assert len(committed) == 4 and committed["id"].is_unique

    # appending after a commit: committed rows stay part of the table
    later = RunStore(path)
    later.write_part([{"id": "e", "e_hull": 0.0}])
    assert later.done_ids() == {"a", "b", "c", "d", "e"}
    later.commit()
    assert sorted(pd.read_parquet(path)["id"]) == ["a", "b", "c", "d", "e"]
    stamp = path.stat().st_mtime_ns
    RunStore(path).commit()  # nothing new: the committed file is not rewritten
    assert path.stat().st_mtime_ns == stamp


def test_chunked_manifest_and_streaming_commit(tmp_path):
    path = tmp_path / "validity.parquet"
    schema = pa.schema([("id", pa.string()), ("valid", pa.bool_())])
    manifest = {"input": "x.csv", "chunk_size": 2}
    store = RunStore(path, manifest=manifest, append=False)
    store.write_part(pa.table({"id": ["2", "3"], "valid": [True, False]}, schema=schema), k=1)
    store.write_part(pa.table({"id": ["0", "1"], "valid": [False, True]}, schema=schema), k=0)

    assert RunStore(path, manifest=manifest, append=False).part_path(1).exists()  # same settings: reused
    other = RunStore(path, manifest={**manifest, "chunk_size": 3}, append=False)  # other settings: discarded
    assert other.part_paths() == []

    store = RunStore(path, manifest=manifest, append=False)
    store.write_part(pa.table({"id": ["2", "3"], "valid": [True, False]}, schema=schema), k=1)
    store.write_part(pa.table({"id": ["0", "1"], "valid": [False, True]}, schema=schema), k=0)
    path.write_bytes(b"an older committed file is not part of a chunked table")
    store.commit(schema=schema)
    out = pd.read_parquet(path)
    assert list(out["id"]) == ["0", "1", "2", "3"] and list(out["valid"]) == [False, True, True, False]
    assert not store.parts_dir.exists()


def test_reset_starts_over(tmp_path):
    path = tmp_path / "rows.parquet"
    store = RunStore(path)
    store.write_part([{"id": "a"}])
    store.commit()
    store.write_part([{"id": "b"}])
    fresh = RunStore(path, reset=True)
    assert fresh.done_ids() == set() and not path.exists()
    assert fresh.write_part([]) is None and fresh.read().empty


def test_writers_side_by_side_share_one_store(tmp_path):
    """The shards of a generation run write parts of one store at once: a second writer with the same
    manifest leaves the manifest (and the first writer's parts) alone, and the table is ordered by
    ``sort_by`` whatever order the parts were written in."""
    path = tmp_path / "samples.parquet"
    first = RunStore(path, manifest={"seed": 0}, sort_by="batch")
    manifest = first.parts_dir / "manifest.json"
    inode = manifest.stat().st_ino
    first.write_part([{"id": "s2", "batch": 1}], k=1)
    second = RunStore(path, manifest={"seed": 0}, sort_by="batch")
    assert manifest.stat().st_ino == inode and second.part_path(1).exists()
    second.write_part([{"id": "s0", "batch": 0}, {"id": "s1", "batch": 0}], k=0)
    assert list(first.read()["id"]) == ["s0", "s1", "s2"]
    assert list(pd.read_parquet(second.commit())["id"]) == ["s0", "s1", "s2"]
    assert not list(tmp_path.glob("**/*.tmp"))  # every temporary file was renamed into place


def test_write_json_replaces_the_file_whole(tmp_path):
    """Shards read ``sample_config.json`` while another shard writes it: the file is replaced by a
    rename (its inode changes), never truncated and rewritten in place, and no temporary is left."""
    import json

    from llamat_cif.runs import write_json

    path = tmp_path / "sample_config.json"
    write_json({"n": 1}, path)
    first = path.stat().st_ino
    with open(path) as held:  # a reader that opened the old file keeps reading the old, whole text
        write_json({"n": 2, "shard": None}, path)
        assert json.loads(held.read()) == {"n": 1}
    assert json.loads(path.read_text()) == {"n": 2, "shard": None}
    assert path.stat().st_ino != first
    assert [p.name for p in tmp_path.iterdir()] == ["sample_config.json"]


def test_a_new_run_started_by_two_writers_at_once_keeps_both(tmp_path):
    """Shards start side by side on a new folder: a writer that finds the folder without a manifest
    (another one is writing it) claims it instead of clearing it, so nothing the other writer has
    put there is deleted; and writers racing for real all keep their parts."""
    import multiprocessing as mp

    path = tmp_path / "samples.parquet"
    parts = tmp_path / "samples.parts"
    parts.mkdir()
    in_flight = parts / "manifest.json.99999.tmp"  # another process between its write and its rename
    in_flight.write_text('{"seed": 0}')
    store = RunStore(path, manifest={"seed": 0})
    assert in_flight.exists() and json.loads((parts / "manifest.json").read_text()) == {"seed": 0}
    assert RunStore(path, manifest={"seed": 1}).part_paths() == [] and not in_flight.exists()  # other settings: cleared
    del store

    ctx = mp.get_context("fork")
    for trial in range(8):
        out = tmp_path / f"race{trial}" / "samples.parquet"
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_race_writer, args=(out, barrier, k)) for k in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert sorted(RunStore(out).read()["id"]) == ["w0", "w1", "w2"]


def _race_writer(out, barrier, k):
    barrier.wait()
    RunStore(out, manifest={"seed": 0}).write_part([{"id": f"w{k}"}], k=k)
