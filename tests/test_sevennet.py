"""SevenNet as a second offline potential, and agreement mode (relax with one potential, score with two).

Known answers: SevenNet-0 predicts uncorrected MPtrj energies, so a DFT-quality SrTiO3 (on MP's hull)
lands on the hull only after the MP2020 corrections (3/5 x -0.687 eV per O atom = -0.41 eV/atom).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import requires_data

pytest.importorskip("sevenn")

from llamat_cif.stability.agreement import agreement_summary, potential_names  # noqa: E402
from llamat_cif.stability.hull import Hull  # noqa: E402
from llamat_cif.stability.pipeline import StabilityConfig, run_stability  # noqa: E402
from llamat_cif.stability.potentials import PotentialError, load_potential, resolve_potential  # noqa: E402
from llamat_cif.stability.relax import RelaxConfig  # noqa: E402


@pytest.fixture(scope="module")
def sevennet():
    return load_potential("sevennet-0", device="cpu")


@pytest.fixture(scope="module")
def mp_hull():
    return Hull.from_data_dir()


def test_names_resolve_without_loading():
    assert resolve_potential("sevennet-0") == ("sevennet", "sevennet-0")
    assert resolve_potential("SevenNet-MF-0") == ("sevennet", "sevennet-mf-0")
    assert resolve_potential("sevennet:/x/checkpoint.pth") == ("sevennet", "/x/checkpoint.pth")
    with pytest.raises(PotentialError, match="does not exist"):
        load_potential("sevennet:/no/such/checkpoint.pth")
    assert potential_names(" chgnet , sevennet-0 ") == ["chgnet", "sevennet-0"]
    for bad in ("", " , ", "chgnet,chgnet"):
        with pytest.raises(ValueError):
            potential_names(bad)


def test_sevennet_declares_uncorrected_scale(sevennet):
    assert sevennet.backend == "sevennet" and sevennet.energy_scale == "mp-uncorrected"
    assert sevennet.needs_mp2020_correction and sevennet.mp_hull_compatible
    p = sevennet.protocol()
    assert p["mp2020_correction_applied"] is True and p["checkpoint"] == "checkpoint_sevennet_0.pth"


@requires_data
def test_sevennet_puts_srtio3_on_the_hull_only_after_mp2020(sevennet, mp_hull, perovskite):
    from llamat_cif.stability.hull import mp2020_corrected_energy

    e = sevennet.predict_energies([perovskite])[0]
    e_hull = mp_hull.e_above_hull(perovskite.composition, mp2020_corrected_energy(perovskite, e) / 5)
    e_hull_uncorrected = mp_hull.e_above_hull(perovskite.composition, e / 5)
    assert abs(e_hull) < 0.05  # cubic SrTiO3 is MP's ground state (E_hull 0)
    # the oxide correction alone: 3 O x -0.687 eV over 5 atoms
    assert e_hull_uncorrected - e_hull == pytest.approx(3 * 0.687 / 5, abs=0.01)


@requires_data
def test_agreement_mode_relaxes_with_the_first_and_scores_with_both(tmp_path, mp_hull, nacl, perovskite):
    items = pd.DataFrame({"id": ["nacl", "srtio3", "junk"],
                          "cif": [nacl.to(fmt="cif"), perovskite.to(fmt="cif"), "garbage"]})
    cfg = StabilityConfig(potential="chgnet,sevennet-0", relax=RelaxConfig(max_steps=100), batch_size=1)
    df = run_stability(items, tmp_path, cfg, potential=load_potential("chgnet", device="cpu"), hull=mp_hull, progress=False)
    rows = df.set_index("id")
    assert "e_hull:sevennet-0" in df.columns
    for sid in ("nacl", "srtio3"):
        both = [rows.loc[sid, "e_hull"], rows.loc[sid, "e_hull:sevennet-0"]]
        assert max(abs(x) for x in both) < 0.05  # both ground states, by both potentials
        assert rows.loc[sid, "e_hull_spread"] == pytest.approx(abs(both[0] - both[1]), abs=1e-9)
        assert not rows.loc[sid, "disagree"]
    assert rows.loc["junk", "error"] and np.isnan(rows.loc["junk", "e_hull:sevennet-0"])
    summary = json.loads((tmp_path / "stability_summary.json").read_text())
    a = summary["agreement"]
    assert a["relaxed_with"] == "chgnet" and a["threshold_ev_atom"] == 0.1
    assert a["potentials"]["sevennet-0"]["metastable"] == {"rate": 2 / 3, "numerator": 2, "denominator": 3}
    assert a["disagree"]["numerator"] == 0 and a["disagree"]["denominator"] == 2
    assert a["metastable_by_every_potential"]["numerator"] == 2
    assert summary["protocol"]["agreement"]["check_potentials"][0]["energy_scale"] == "mp-uncorrected"


def test_disagreement_is_flagged_above_the_threshold():
    # a hand-made table: one row 0.25 eV/atom apart, one 0.05 apart, one not scored by the check
    df = pd.DataFrame({"e_hull": [0.0, 0.3, np.nan], "e_hull:x": [0.25, 0.25, np.nan],
                       "e_hull_spread": [0.25, 0.05, np.nan]})
    a = agreement_summary(df, primary="p", threshold=0.1)
    assert a["disagree"] == {"rate": 0.5, "numerator": 1, "denominator": 2,
                             "denominator_is": "rows scored by every potential"}
    assert a["potentials"]["x"]["median_abs_diff_ev_atom"] == pytest.approx(0.15)
    assert a["metastable_by_every_potential"]["numerator"] == 0  # 0.25 by x, 0.3 by p
    assert agreement_summary(df[["e_hull"]], primary="p", threshold=0.1) is None
