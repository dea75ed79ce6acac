"""Sampler with the shipped model: constrained decoding, conditions, interrupt + resume."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Structure

from llamat_cif.cif import strip_header
from llamat_cif.sample import SampleConfig, generate, parse_formula


def _rows(out):
    f = out / "samples.csv"
    if not f.is_file() or f.stat().st_size == 0:
        return pd.DataFrame(columns=["id", "text"])
    return pd.read_csv(f, keep_default_na=False)


def test_formula_and_spacegroup_conditions_are_met(tmp_path):
    df = generate(SampleConfig(n=2, out_dir=str(tmp_path), formula="NaCl", spacegroup=225, batch_size=2, seed=3),
                  progress=False)
    assert len(df) == 2
    parsed = 0
    for r in df.itertuples():
        header, _ = strip_header(r.text)
        # forced by the grammar: the requested conditions, the matching symbol and formula sum
        assert header["spacegroup"] == "225"
        assert Composition(header["formula"]).reduced_formula == "NaCl"
        assert "_symmetry_space_group_name_H-M Fm-3m" in r.text
        assert f"_chemical_formula_sum '{header['formula']}'" in r.text
        assert r.cif, r.error  # constrained decoding: every sample decodes, with the requested composition
        parsed += 1
        assert Structure.from_str(r.cif, fmt="cif").composition.reduced_formula == "NaCl"
        assert (tmp_path / "cifs" / f"{r.id}.cif").is_file()
    assert parsed == 2


def test_constrained_text_follows_the_grammar(tmp_path):
    df = generate(SampleConfig(n=2, out_dir=str(tmp_path), batch_size=2, seed=0), progress=False)
    for r in df.itertuples():
        lines = r.text.splitlines()
        assert lines[0].startswith("# ") and lines[1].startswith("# ") and lines[2].startswith("data_")
        assert r.n_tokens > 50
        assert r.cif and not r.error, r.error
        s = Structure.from_str(r.cif, fmt="cif")
        if len(s) > 1:
            assert (s.distance_matrix + 9 * np.eye(len(s))).min() >= 0.5 - 1e-3


def test_interrupted_run_resumes_to_exactly_n(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    generate(SampleConfig(n=4, out_dir=str(ref), batch_size=2, seed=5, formula="MgO"), progress=False)
    code = ("from llamat_cif.sample import SampleConfig, generate;"
            f"generate(SampleConfig(n=4, out_dir={str(out)!r}, batch_size=2, seed=5, formula='MgO'), progress=False)")
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if (out / "samples.csv").is_file() and len(_rows(out)) >= 2:
            break
        time.sleep(0.5)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)  # hard interrupt after the first batch
    p.wait()
    assert len(_rows(out)) in (2, 4)
    generate(SampleConfig(n=4, out_dir=str(out), batch_size=2, seed=5, formula="MgO"), progress=False)
    done, want = _rows(out), _rows(ref)
    assert list(done["id"]) == ["s000000", "s000001", "s000002", "s000003"]
    assert list(done["text"]) == list(want["text"])  # same rows as the uninterrupted run


def test_resume_with_other_settings_is_refused(tmp_path):
    generate(SampleConfig(n=1, out_dir=str(tmp_path), batch_size=1, seed=0, formula="Si"), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate(SampleConfig(n=2, out_dir=str(tmp_path), batch_size=1, seed=1, formula="Si"), progress=False)


def test_bad_formula_is_a_clear_error():
    with pytest.raises(ValueError, match="formula"):
        parse_formula("Xq2")
