"""Look-ahead of constrained decoding: Wyckoff allocation and placement, with known answers, and a
random-policy drive of the whole CIF grammar (every choice uniform among the offered tokens), which
must always end in a document that parses, keeps its atoms apart and has the declared composition."""

import random
import warnings

import numpy as np
import pytest
from pymatgen.core import Composition

from llamat_cif.cif import from_text
from llamat_cif.sampling.engine import Decoder, Stats, Vocab
from llamat_cif.sampling.fields import Conditions
from llamat_cif.sampling.grammars import cif_grammar
from llamat_cif.sampling.lattice import lattice_matrix
from llamat_cif.sampling.placement import Placement
from llamat_cif.symmetry import _allocation_table, allocatable, allocation_entry
from llamat_cif.tokenizer import build_tokenizer
from llamat_cif.validators.composition import compositional_validity


def test_allocation_respects_special_points():
    # Pm-3m: two 1-fold points (1a, 1b), two 3-fold points (3c, 3d); 6, 8, 12, ... have free parameters
    assert allocatable(221, (4, 18, 1))  # 3c+1a, 12h+6e, 1b
    assert not allocatable(221, (1, 1, 1))  # a third 1-fold site does not exist
    assert not allocatable(221, (3, 3, 3))  # 3 = 3c, 3d or 1+1+1: one element is left out
    assert allocatable(221, (3, 3, 1))
    # P422: four 1-fold points; every other multiplicity is even
    assert allocatable(89, (8, 7, 1, 7))
    assert not allocatable(89, (7, 7, 1, 7, 1))  # five odd counts need five 1-fold points
    assert allocatable(1, (64,))  # P1: general position only, any number of sites


def test_precomputed_allocation_table_matches_the_operations():
    table = _allocation_table()
    assert len(table) == 230
    for n in (2, 89, 166, 194, 221, 225, 227):
        assert table[n] == allocation_entry(n), n


def test_site_check_reads_orbits_as_pymatgen_does():
    fcc = Placement(225, np.eye(3) * 4.0)
    assert fcc.check(np.array([[0.0, 0.0, 0.0]]), 4)[0]
    assert not fcc.check(np.array([[0.0, 0.0, 0.0]]), 8)[0]  # 4a has 4 members, not 8
    assert fcc.check(np.array([[0.2424, 0.0, 0.0]]), 24)[0]  # 24e
    assert not fcc.check(np.array([[0.04, 0.0, 0.0]]), 24)[0]  # 24e copies 0.32 A apart
    fcc.place(np.array([0.0, 0.0, 0.0]))
    assert not fcc.check(np.array([[0.0, 0.0, 0.0]]), 4)[0]  # occupied
    assert fcc.check(np.array([[0.5, 0.5, 0.5]]), 4)[0]  # 4b is free
    # P422: (0.9999, y, 1/2) is not on the 4n line x=0; its 8 images come in pairs 0.0007 A apart
    tet = Placement(89, lattice_matrix(3.464, 3.464, 41.109, 90, 90, 90))
    assert not tet.check(np.array([[0.9999, 0.2255, 0.5]]), 4)[0]
    assert not tet.check(np.array([[0.9999, 0.2255, 0.5]]), 8)[0]
    # P6_3/mmc: 2c (1/3, 2/3, 1/4) written with 4 decimals is still a 2-fold site
    hcp = Placement(194, lattice_matrix(3.2, 3.2, 5.2, 90, 90, 120))
    assert hcp.check(np.array([[0.3333, 0.6667, 0.25]]), 2)[0]
    assert len(hcp.orbit_of(np.array([0.3333, 0.6667, 0.25]))) == 2


def test_fits_knows_when_a_cell_is_full():
    assert Placement(1, np.eye(3) * 10.0).fits([64])
    assert Placement(1, np.eye(3) * 10.0).fits([20, 20, 24])
    assert not Placement(1, np.eye(3) * 1.0).fits([64])  # 1 A^3 holds a dozen atoms 0.5 A apart
    p = Placement(221, np.eye(3) * 4.0)
    p.place(np.array([0.0, 0.0, 0.0]))
    assert p.fits([1])
    p.place(np.array([0.5, 0.5, 0.5]))
    assert not p.fits([1])  # both 1-fold points are taken


@pytest.fixture(scope="module")
def vocab():
    return Vocab(build_tokenizer())


def _drive(vocab, cond, rng):
    stats = Stats()
    d = Decoder(cif_grammar(vocab, cond, stats), vocab, stats)
    ids = []
    while not d.done and len(ids) < 3000:
        t = rng.choice(d.allowed_checked())
        ids.append(t)
        d.advance(t)
    return vocab.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False), stats


def _assert_sound(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = from_text(text, "cif")
    formula = text.splitlines()[[ln.startswith("# formula:") for ln in text.splitlines()].index(True)]
    assert s.composition == Composition(formula.split(":", 1)[1]), text  # orbits = declared multiplicities
    if len(s) > 1:
        assert (s.distance_matrix + np.eye(len(s)) * 9).min() >= 0.5 - 1e-3, text
    return s


def test_random_choices_always_give_a_sound_crystal(vocab):
    rng = random.Random(0)
    for _ in range(10):
        text, stats = _drive(vocab, Conditions(max_atoms=16), rng)
        _assert_sound(text)
        assert stats.fallbacks == 0, text


def test_random_choices_meet_a_requested_formula(vocab):
    rng = random.Random(1)
    for formula in ("Cs2KPdF6", "Zn2SbN3", "NaCl", "SrTiO3"):
        comp = Composition(formula)
        text, _ = _drive(vocab, Conditions(formula={e.symbol: a for e, a in comp.items()}), rng)
        assert _assert_sound(text).composition.reduced_formula == comp.reduced_formula


def test_charge_balanced_formulas(vocab):
    """A charge-balanced formula whenever the grammar did not have to drop the balance to finish the
    crystal (its documented fallback, counted in ``stats.fallbacks``); random walks through the
    grammar rarely need it (4 of these 20 do: TiAs11, Ra10LiTs, ...)."""
    rng = random.Random(2)
    clean = 0
    for _ in range(20):
        text, stats = _drive(vocab, Conditions(max_atoms=12, max_elements=3, charge_balanced=True), rng)
        s = _assert_sound(text)
        assert compositional_validity(s.composition).ok or stats.fallbacks, text
        clean += stats.fallbacks == 0
    assert clean >= 15


def test_target_formula_limits_the_space_group():
    from llamat_cif.symmetry import spacegroups_for_formula

    # KLaSiS4 in Fm-3m would need three 4-fold sites (only 4a and 4b exist) or three 8-fold ones
    assert 225 not in spacegroups_for_formula((1, 1, 1, 4), 64)
    assert 225 in spacegroups_for_formula((1, 1), 64)  # rock salt
    assert 1 in spacegroups_for_formula((1, 1, 1, 4), 64)


def test_a_site_that_blocks_the_special_points_still_needed_is_refused():
    # P6_3/mcm (a = c = 9.908 A): 4d and 4c taken; Dy2 + Bi2 still need 2a (0,0,1/4) and 2b (0,0,0)
    p = Placement(193, lattice_matrix(9.908, 9.908, 9.908, 90, 90, 120))
    p.place(np.array([1 / 3, 2 / 3, 0.0]))
    p.place(np.array([2 / 3, 1 / 3, 0.75]))
    assert not p.site_fits(np.array([0.3333, 0.6667, 0.75]), 4, [2, 2])  # on an occupied 4c point
    assert not p.site_fits(np.array([0.0, 0.0, 0.03]), 4, [2, 2])  # 4e next to 2b: 2b is lost
    assert p.site_fits(np.array([0.0, 0.0, 0.125]), 4, [2, 2])


def test_min_lines_and_the_line_budget(vocab):
    from llamat_cif.symmetry import min_lines

    assert min_lines(1, (5, 3)) == 8  # P1: one line per atom
    assert min_lines(225, (4, 8)) == 2
    assert min_lines(225, (12,)) == 2  # 4 + 8
    rng = random.Random(5)
    for _ in range(4):
        text, _ = _drive(vocab, Conditions(max_atoms=40, max_lines=5), rng)
        body = text.split("_atom_site_occupancy\n", 1)[1]
        assert 1 <= len(body.strip().splitlines()) <= 5, text
        _assert_sound(text)


def test_search_counts_site_lines_where_geometry_decides():
    # Pm with b = 0.8 A: a general 2-fold site (x,y,z),(x,-y,z) has its copies at most b/2 = 0.4 A
    # apart, so two atoms need two 1-fold mirror-plane sites, i.e. two lines, although the group's
    # multiplicities alone (min_lines) would allow one.
    from llamat_cif.symmetry import min_lines

    matrix = np.diag([4.0, 0.8, 4.0])
    assert min_lines(6, (2,)) == 1
    assert Placement(6, matrix).fits([2])
    assert not Placement(6, matrix).fits([2], lines=1)
    assert Placement(6, matrix).fits([2], lines=2)
    p = Placement(6, matrix)
    assert p.fits([2])  # a certificate with two orbits is cached ...
    assert not p.fits([2], lines=1)  # ... and is not taken for a one-line answer
    assert not p.multiplicity_ok(1, [1], lines=0) and p.multiplicity_ok(1, [1], lines=1)


def test_min_image_distances_match_the_direct_sum():
    """The expanded |v + s|^2 (one matrix product) gives the direct 27-image minimum, and the
    own-copies cache answers exactly what a fresh Placement computes."""
    from llamat_cif.sampling.lattice import SHIFTS, pair_distances

    rng = np.random.default_rng(3)
    for _ in range(20):
        m = np.triu(rng.uniform(-1.5, 1.5, (3, 3))) + np.diag(rng.uniform(3, 9, 3))
        a, b = rng.random((7, 3)), rng.random((11, 3))
        d = a[:, None, :] - b[None, :, :]
        d -= np.round(d)
        diff = (d @ m)[:, :, None, :] + (SHIFTS @ m)[None, None]
        direct = np.sqrt((diff ** 2).sum(-1).min(-1))
        np.testing.assert_allclose(pair_distances(a, b, m), direct, atol=1e-9)
    # rock salt, Fm-3m, contact ratio 0.7 (Na 1.66, Cl 1.02 Å: pairs >= 1.876 Å): Cl on 4b, a/2 from
    # the Na at the origin, fits at a = 5.64 (2.82 Å) and not at a = 3.2 (1.6 Å); asked twice, the
    # cached own-copies answer gives the same mask
    for a, want in ((5.64, True), (3.2, False)):
        p = Placement(225, np.eye(3) * a, contact_ratio=0.7)
        p.place(np.zeros(3), "Na")
        cl = np.array([[0.5, 0.5, 0.5]])
        assert p.check(cl, 4, radius=p.radius_of("Cl"))[0] == want
        assert p.check(cl, 4, radius=p.radius_of("Cl"))[0] == want


def test_steering_asks_for_a_completion_that_keeps_a_wider_ratio():
    """Rock salt in Fm-3m: Na on 4a leaves Cl only 4b, at a/2 (Na 1.66 Å + Cl 1.02 Å covalent radii)."""
    na = np.zeros(3)
    tight = Placement(225, np.eye(3) * 3.698, contact_ratio=0.68)  # Na-Cl 1.849 Å = 0.69 x 2.68
    assert tight.site_fits(na, 4, {"Cl": 4}, element="Na")  # the hard rule (0.68) has a completion
    assert not tight.site_fits(na, 4, {"Cl": 4}, element="Na", rest_ratio=0.70)  # none that keeps 0.70
    assert tight.site_fits(na, 4, {"Cl": 4}, element="Na", rest_ratio=0.68)  # (not wider: the hard rule)
    assert tight.site_fitting(na[None, :], 4, {"Cl": 4}, element="Na", rest_ratio=0.70) is None
    assert tight.optimistic == 0
    roomy = Placement(225, np.eye(3) * 3.80, contact_ratio=0.68)  # 1.90 Å = 0.709 x 2.68
    assert roomy.site_fits(na, 4, {"Cl": 4}, element="Na", rest_ratio=0.70)
    assert not roomy.site_fits(na, 4, {"Cl": 4}, element="Na", rest_ratio=0.72)
    # the steering questions leave the hard look-ahead's answers alone
    assert roomy.site_fits(na, 4, {"Cl": 4}, element="Na") and roomy.f == 0.68


def _header(vocab, cond, rng):
    """A random walk through the CIF grammar's conditioning header: (counts, space group)."""
    import re

    stats = Stats()
    d = Decoder(cif_grammar(vocab, cond, stats), vocab, stats)
    ids = []
    text = ""
    while "data_" not in text:
        t = rng.choice(d.allowed_checked())
        ids.append(t)
        d.advance(t)
        text = vocab.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    formula = re.search(r"# formula: (.*)\n", text).group(1)
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"([A-Z][a-z]*)(\d+)", formula)}
    return counts, int(re.search(r"# spacegroup: (\d+)\n", text).group(1)), stats


def test_lattice_points_count_the_centring():
    from llamat_cif.symmetry import lattice_points

    assert [lattice_points(n) for n in (1, 62, 12, 139, 38, 166, 225, 227)] == [1, 1, 2, 2, 2, 3, 4, 4]


def test_self_chosen_formulas_keep_the_primitive_cell_cap(vocab):
    """At most 20 atoms per primitive cell (written atoms / lattice points): a primitive group caps
    the written cell at 20, an F-centred one allows up to 80 (so up to max_atoms); the header order
    is the walk's choice, so both the formula-first and the group-first paths are driven."""
    from llamat_cif.symmetry import lattice_points

    rng = random.Random(5)
    sizes = []
    for _ in range(30):
        counts, sg, stats = _header(vocab, Conditions(max_primitive_atoms=20), rng)
        n = sum(counts.values())
        assert n <= 20 * lattice_points(sg), (counts, sg)
        assert stats.fallbacks == 0
        sizes.append(n)
    assert max(sizes) > 20  # centred groups still hold larger written cells
    for _ in range(5):
        counts, sg, _ = _header(vocab, Conditions(spacegroup=62, max_primitive_atoms=8), rng)
        assert sg == 62 and sum(counts.values()) <= 8, counts
    # without the cap a random walk in Pnma writes larger cells
    assert max(sum(_header(vocab, Conditions(spacegroup=62), rng)[0].values()) for _ in range(5)) > 8


def test_a_requested_formula_is_never_capped(vocab):
    # Li7La3Zr2O12: 24 atoms per formula unit, more than any primitive-group cap of 20 allows
    rng = random.Random(6)
    comp = {"Li": 7, "La": 3, "Zr": 2, "O": 12}
    counts, sg, stats = _header(vocab, Conditions(formula=comp, max_primitive_atoms=20), rng)
    k = counts["Li"] // 7
    assert counts == {el: n * k for el, n in comp.items()} and stats.fallbacks == 0


def test_same_element_distance_counts_placed_atoms_and_own_images():
    """The anion-anion steering question: a site keeps a distance to atoms of its own element only."""
    p = Placement(1, np.eye(3) * 5.0, contact_ratio=0.68)
    p.place(np.array([0.0, 0.0, 0.0]), "O")
    pts = np.array([[0.4, 0.0, 0.0], [0.5, 0.0, 0.0]])  # 2.0 and 2.5 Å from the placed O
    assert p.same_element_ok(pts, 1, "O", 2.39).tolist() == [False, True]
    assert p.same_element_ok(pts, 1, "F", 2.39).tolist() == [True, True]  # another element is not held
    # its own lattice images: a 2.0 Å cubic cell puts an O 2.0 Å from its copy
    assert not Placement(221, np.eye(3) * 2.0).same_element_ok(np.zeros((1, 3)), 1, "O", 2.39)[0]
    assert Placement(221, np.eye(3) * 2.5).same_element_ok(np.zeros((1, 3)), 1, "O", 2.39)[0]
    # site_fits / site_fitting apply it on top of the contact rule
    rest = {"Ti": 1}
    assert p.site_fits(pts[0], 1, rest, element="O") and not p.site_fits(pts[0], 1, rest, element="O", same_min=2.39)
    assert np.allclose(p.site_fitting(pts, 1, rest, element="O", same_min=2.39), pts[1])


def test_anion_steering_setting_resolves_to_the_calibrated_table():
    from llamat_cif.sampling.config import resolve_anion_steer, same_element_table

    assert resolve_anion_steer("auto", 0.68) == "auto" and resolve_anion_steer("auto", 0.0) == "off"
    table = same_element_table("auto")
    assert table["O"] == pytest.approx(2.39) and set(table) >= {"O", "F", "S", "Cl"} and same_element_table("off") is None
    with pytest.raises(ValueError, match="auto or off"):
        resolve_anion_steer("2.4", 0.68)


def test_cation_steering_adds_the_other_elements_own_distances():
    from llamat_cif.sampling.config import SampleConfig, same_element_table

    both = same_element_table("auto", "auto")
    # metals keep their own (metallic) scale, anions their ionic one; off stays off
    assert both["O"] == pytest.approx(2.39) and 2.0 < both["Fe"] < 2.6 and 2.2 < both["Al"] < 3.0
    assert "Fe" not in same_element_table("auto") and set(same_element_table("off", "auto")) == set(both) - set(same_element_table("auto"))
    assert same_element_table("off", "off") is None
    assert SampleConfig(n=1, out_dir="x").steer_cation_distance == "off"  # measured before it became a default


def test_site_fitting_over_segments_matches_the_stacked_points():
    """The look-ahead passes the known points and the (kept) probe grid as two segments: the answer
    is the first admissible site of the stacked points, whichever way they are split, ``tries``
    (admissible candidates asked about) counting across segments."""
    p = Placement(193, lattice_matrix(9.908, 9.908, 9.908, 90, 90, 120))
    p.place(np.array([1 / 3, 2 / 3, 0.0]))
    p.place(np.array([2 / 3, 1 / 3, 0.75]))
    pts = np.array([[0.3333, 0.6667, 0.75], [0.0, 0.0, 0.03], [0.0, 0.0, 0.125], [0.0, 0.0, 0.375]])
    assert np.allclose(p.site_fitting(pts, 4, [2, 2]), pts[2])  # 4c taken, 4e at z 0.03 blocks 2b
    for cut in range(len(pts) + 1):
        assert np.allclose(p.site_fitting((pts[:cut], pts[cut:]), 4, [2, 2]), pts[2]), cut
    # tries=1: only the first admissible candidate is asked about, across the cut as on the stack
    assert p.site_fitting(pts, 4, [2, 2], tries=1) is None
    assert p.site_fitting((pts[:1], pts[1:]), 4, [2, 2], tries=1) is None
    assert p.site_fitting((np.zeros((0, 3)), pts[2:]), 4, [2, 2], tries=1) is not None


def test_completion_grid_lists_the_points_a_prefix_can_reach():
    from llamat_cif.sampling.grids import completion_grid as _completion_grid

    # Fm-3m, 24-fold 24e (x, 0, 0): x = 0.25 typed, y and z are pinned to 0 on that line
    grid = _completion_grid(225, 24, 0.25, None)
    assert not grid.flags.writeable and (grid[:, 0] == 0.25).all()
    assert [0.25, 0.0, 0.0] in grid.tolist()
    # P1: nothing pins y or z: every y probe carries every z probe
    g1 = _completion_grid(1, 1, 0.5, None)
    assert len(g1) == len(np.unique(g1[:, 1])) * len(np.unique(g1[:, 2])) > 100
    assert _completion_grid(1, 1, 0.5, 0.125)[:, 1].tolist() == [0.125] * len(np.unique(g1[:, 2]))


def test_distance_test_matches_the_27_image_distances_on_skewed_cells():
    """Placement.images.far (direct image alone below half the smallest plane spacing, else 27 images)
    answers exactly as pair_distances >= threshold, on flat triclinic cells and near the switch."""
    from llamat_cif.sampling.lattice import block, pair_distances

    rng = np.random.default_rng(7)
    for params in [(3.1, 7.9, 4.4, 62.0, 118.0, 75.0), (2.6, 2.7, 11.0, 90.0, 90.0, 120.0), (5.0, 5.0, 5.0, 90, 90, 90)]:
        p = Placement(1, lattice_matrix(*params))
        new, old = np.round(rng.random((40, 3)), 4), np.round(rng.random((9, 3)), 4)
        dist = pair_distances(new, old, p.matrix)
        for thr in (0.5, p.images.direct * 0.999, p.images.direct * 1.001, 2.5, float(np.median(dist))):
            assert (p.images.far(new, old, np.full((1, len(old)), thr)) == (dist >= thr)).all()
        # the switch itself: below it only the direct image can be that close
        assert p.images.direct <= 0.5 * min(params[:3]) + 1e-12
        # a block of atoms with radii: max(dmin, ratio x (r + r_j)) per atom
        radii = np.linspace(0.3, 2.0, len(old))
        blk = block(old, radii)
        expect = (dist >= np.maximum(0.5, 0.8 * (0.7 + radii))[None, :]).all(1)
        assert (p.images.clear_of(new, blk, 0.7, 0.8, 0.5) == expect).all()


def _grid_one_at_a_time(sg, m, xv, yv):
    """The completion grid as the grammar built it one typed value at a time (before the batched builder)."""
    from llamat_cif.sampling.grids import PROBE, probes
    from llamat_cif.symmetry import solve_values

    ys = solve_values(sg, m, ((0, xv),), 1) if yv is None else np.array([yv])
    ys = probes(sg, m, ((0, xv),), 1) if ys is None else ys
    zs = []
    for yy in ys:
        typed = ((0, xv), (1, round(float(yy), 4)))
        z = solve_values(sg, m, typed, 2)
        zs.append(np.concatenate([PROBE, solve_values(sg, m, typed, 2, pinned=True)]) if z is None else z)
    return np.vstack([np.zeros((0, 3))] + [np.column_stack([np.full(len(zz), xv), np.full(len(zz), float(yy)), zz])
                                           for yy, zz in zip(ys, zs, strict=True)])


def test_batched_completion_grids_equal_the_one_at_a_time_grids():
    """The grids of a digit interval's probe values are solved together: bit for bit the grids of
    one value at a time, for x alone and for (x, y), across groups with lines, planes and points."""
    from llamat_cif.sampling import grids
    from llamat_cif.symmetry import wyckoff_table

    rng = np.random.default_rng(0)
    compared = 0
    for sg in (1, 2, 12, 62, 139, 166, 191, 194, 221, 225, 227):
        for m in sorted(wyckoff_table(sg)):
            xs = [round(float(v), 4) for v in [*np.linspace(0.1, 0.1999, 11), 0.25, 0.5, 0.3333, *rng.random(6)]]
            grids._GRIDS.clear()
            got = grids.completion_grids(sg, m, [(x, None) for x in xs])
            x0 = xs[-1]
            ys = [round(float(v), 4) for v in [*np.linspace(0.3, 0.3999, 11), 0.0, 0.6667, *rng.random(4)]]
            got_y = grids.completion_grids(sg, m, [(x0, y) for y in ys])
            for (x, y), g in zip([(x, None) for x in xs] + [(x0, y) for y in ys], got + got_y, strict=True):
                want = _grid_one_at_a_time(sg, m, x, y)
                assert g.shape == want.shape and np.array_equal(g, want), (sg, m, x, y)
                assert not g.flags.writeable
                compared += 1
    assert compared > 1000
    # a full store starts over and still returns every grid asked for (kept ones included)
    grids._GRIDS.clear()
    kept = grids.completion_grids(225, 24, [(0.25, None), (0.1, None)])
    cap = grids._MAX_KEPT
    try:
        grids._MAX_KEPT = 3
        again = grids.completion_grids(225, 24, [(0.25, None), (0.3, None), (0.1, None), (0.4, None)])
    finally:
        grids._MAX_KEPT = cap
    assert np.array_equal(again[0], kept[0]) and np.array_equal(again[2], kept[1]) and len(grids._GRIDS) == 4


def test_site_fitting_any_asks_what_one_group_at_a_time_asks():
    """Several groups of candidates (a digit interval's probe values): the same point as site_fitting
    of each group in turn up to the first hit (site_fitting_each: of every group), and the same
    search budget spent; a group of one point with one try is site_fits."""
    rng = np.random.default_rng(1)
    found, spent = 0, []
    for trial in range(40):  # Pnma, general position (8d), a small cell: some questions search, some fail
        groups = [rng.random((rng.integers(1, 6), 3)).round(4) for _ in range(rng.integers(2, 8))]
        rest = {"O": int(rng.choice([4, 8, 12, 16])), "Mg": int(rng.choice([0, 4, 8]))}
        batched, one = (Placement(62, lattice_matrix(4.6, 5.2, 6.3, 90, 90, 90), contact_ratio=0.75) for _ in range(2))
        for q in (batched, one):
            q.place(np.array([0.1, 0.25, 0.2]), "Mg")
        got = batched.site_fitting_any(groups, 8, rest, element="O")
        want = next((p for g in groups if (p := one.site_fitting(g, 8, rest, element="O")) is not None), None)
        assert (got is None) == (want is None) and (got is None or np.array_equal(got, want)), trial
        assert batched._spent == one._spent, trial
        found += got is not None
        spent.append(batched._spent)
        each, one = (Placement(62, lattice_matrix(4.6, 5.2, 6.3, 90, 90, 90), contact_ratio=0.75) for _ in range(2))
        for q in (each, one):
            q.place(np.array([0.1, 0.25, 0.2]), "Mg")
        got = list(each.site_fitting_each(groups, 8, rest, element="O"))
        want = [one.site_fitting(g, 8, rest, element="O") for g in groups]
        assert [None if p is None else p.tolist() for p in got] == [None if p is None else p.tolist() for p in want]
        assert each._spent == one._spent, trial
    assert 10 <= found <= 30 and max(spent) > 100  # both answers, and real searches, were compared
    mat = lattice_matrix(5.64, 5.64, 5.64, 90, 90, 90)
    p = Placement(225, mat, contact_ratio=0.7)
    p.place(np.array([0.0, 0.0, 0.0]), "Na")
    for z in (0.0, 0.05, 0.5):
        pt = np.array([0.5, 0.5, z])
        assert (p.site_fitting_any([pt], 4, {}, 1, element="Cl") is not None) == p.site_fits(pt, 4, {}, element="Cl")


def test_check_any_of_and_each_ask_what_one_value_at_a_time_asks():
    """Decoder's batched accept: any_of asks the first value alone, then the rest lazily up to the
    first pass; each answers for every value; both with the verdicts of asking each value in turn."""
    from llamat_cif.sampling.engine import Check, _keep

    asked = []

    def one(v):
        asked.append(round(float(v), 4))
        return v > 0.5

    chk = Check(one, lambda vals: (one(v) for v in vals))
    assert chk(0.7) and not chk(0.2)
    asked.clear()
    assert chk.any_of(np.array([0.9, 0.1])) and asked == [0.9]  # the first value decided: the rest not asked
    asked.clear()
    assert chk.any_of(np.array([0.1, 0.2, 0.8, 0.3])) and asked == [0.1, 0.2, 0.8]
    assert not chk.any_of(np.array([0.1, 0.2])) and not chk.any_of(np.array([]))
    vals = np.array([0.1, 0.6, 0.3, 0.9])
    assert chk.each(vals).tolist() == [False, True, False, True] and chk.each(np.array([])).tolist() == []
    assert _keep(chk, vals).tolist() == _keep(one, vals).tolist() == [0.6, 0.9]
