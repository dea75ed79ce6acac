"""``--json``: the summary alone on stdout (one JSON object), tables and progress on stderr."""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner
from conftest import requires_data

from llamat_cif.cli import main


def test_validate_json_is_the_summary_on_stdout(tmp_path, nacl, diamond):
    src = tmp_path / "cifs"
    src.mkdir()
    (src / "nacl.cif").write_text(nacl.to(fmt="cif"))
    (src / "diamond.cif").write_text(diamond.to(fmt="cif"))
    (src / "broken.cif").write_text("data_broken\n_cell_length_a 1\n")
    res = CliRunner().invoke(main, ["validate", str(src), "--out", str(tmp_path / "v"), "--jobs", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)  # nothing else on stdout
    assert summary["n"] == 3 and summary["parsed"] == 2 and summary["valid"] == 2
    assert "validity (3 structures)" in res.stderr  # the table still shows, on stderr
    # the console is back on stdout for whatever runs next in this process
    res2 = CliRunner().invoke(main, ["validate", str(src), "--out", str(tmp_path / "v2"), "--jobs", "1"])
    assert "validity (3 structures)" in res2.stdout


@requires_data
def test_stability_json_is_the_summary_on_stdout(tmp_path, nacl):
    src = tmp_path / "cifs"
    src.mkdir()
    (src / "nacl.cif").write_text(nacl.to(fmt="cif"))
    res = CliRunner().invoke(main, ["stability", str(src), "--out", str(tmp_path / "s"), "--max-steps", "50",
                                    "--json", "--seed", "3"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["metastable"]["numerator"] == 1 and summary["metastable"]["denominator"] == 1
    assert summary["seed"] == 3
    assert pd.read_parquet(tmp_path / "s" / "stability.parquet")["e_hull"].iloc[0] < 0.05
