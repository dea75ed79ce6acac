"""Dataset registry on the shared data (through $LLAMAT_CIF_DATA)."""

import subprocess
import sys

import pytest

from llamat_cif import data as D
from tests.conftest import requires_data


@requires_data
def test_mp20_available_subsets_have_documented_sizes():
    test = D.load_split("mp20", "test")
    train = D.load_split("mp20", "train")
    assert len(test) == 7342 and test["id"].is_unique
    assert len(train) == 8344 and train["id"].is_unique
    assert not set(test["id"]) & set(train["id"])  # no leakage between the available subsets
    assert D.split_status("mp20", "test").source == "available subset"


@requires_data
def test_iter_structures_yields_structures_and_properties():
    rows = list(D.iter_structures("mp20", "test", limit=3))
    assert len(rows) == 3
    sid, s, props = rows[0]
    assert sid.startswith("mp-") and len(s) > 0 and "formation_energy_per_atom" in props


@requires_data
def test_verify_matches_shared_checksums():
    res = D.verify()
    assert res and not [r for r in res if r.status == "mismatch"]
    assert sum(r.status == "ok" for r in res) >= 15


def test_missing_split_names_expected_paths(tmp_path):
    with pytest.raises(D.DataError, match=str(tmp_path)):
        D.load_split("perov5", "test", data_dir=tmp_path)
    with pytest.raises(D.DataError, match="unknown dataset"):
        D.get_dataset("nope")


def test_fetch_offline_fails_fast_with_locations(tmp_path):
    # No network here: the probe fails at once and the message says where the files go.
    r = subprocess.run([sys.executable, "-c", "from llamat_cif.cli import main; main()", "data", "fetch", "mp20",
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "mp_20/train.csv" in r.stdout + r.stderr
