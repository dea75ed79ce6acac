"""Space-group maths of :mod:`llamat_cif.symmetry` against independent references: pyxtal's Wyckoff
tables (the International Tables) and moyopy's space-group operations."""

import numpy as np
import pytest

from llamat_cif.symmetry import (
    _grid_stabilisers,
    _orbit_sizes,
    _solve_values,
    allocation_entry,
    compatible_spacegroups,
    crystal_system,
    orbit_sizes,
    reachable_counts,
    solve_values,
    space_group_ops,
    wyckoff_subspaces,
)


@pytest.mark.parametrize("number", range(1, 231))
def test_wyckoff_multiplicities_equal_pyxtal(number):
    symmetry = pytest.importorskip("pyxtal.symmetry")
    reference = {w.multiplicity for w in symmetry.Group(number).Wyckoff_positions}
    assert set(orbit_sizes(number)) == reference


def test_shipped_table_is_what_the_operations_give():
    """The precomputed multiplicities equal a fresh computation (P4_132's 4a/4b at odd eighths
    included: the grid once missed them)."""
    assert all(orbit_sizes(n) == _orbit_sizes(n) for n in range(1, 231))
    assert 4 in orbit_sizes(213) and allocation_entry(213)[1] == (4,)


def _op_set(rots, trans) -> set:
    return {(np.asarray(r, dtype=int).tobytes(), tuple(np.round(np.mod(t, 1.0), 6) % 1.0))
            for r, t in zip(rots, trans, strict=True)}


@pytest.mark.parametrize("number", [1, 2, 14, 15, 62, 141, 166, 167, 191, 194, 225, 227, 229, 230])
def test_operations_equal_moyopy(number):
    moyopy = pytest.importorskip("moyopy")
    rots, trans = space_group_ops(number)
    ref = moyopy.operations_from_number(number, setting=moyopy.Setting.spglib())
    assert len(rots) == ref.num_operations
    # the same operations (spglib keeps its own order, see the module docstring)
    assert _op_set(rots, trans) == _op_set(ref.rotations, ref.translations)


def test_operation_counts_of_well_known_groups():
    # |G| of the conventional cell: point-group order x centring translations
    for number, order in ((1, 1), (2, 2), (14, 4), (62, 8), (166, 36), (194, 24), (225, 192), (229, 96)):
        assert len(space_group_ops(number)[0]) == order, number


def test_crystal_systems_at_their_boundaries():
    assert [crystal_system(n) for n in (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        "triclinic", "triclinic", "monoclinic", "monoclinic", "orthorhombic", "orthorhombic", "tetragonal",
        "tetragonal", "trigonal", "trigonal", "hexagonal", "hexagonal", "cubic", "cubic"]


@pytest.mark.parametrize("number", [1, 2, 14, 15, 62, 141, 146, 166, 167, 191, 194, 221, 225, 227, 229, 230])
def test_grid_stabilisers_equal_the_einsum_form(number):
    """The shared grid (one matrix product, in place) fixes exactly the points the per-multiplicity
    einsum it replaced fixed: the Wyckoff subspaces, their order and the probe points built on
    them (seeded samples depend on all three) are unchanged."""
    rots, trans = space_group_ops(number)
    g = np.arange(24) / 24
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    d = np.einsum("kij,pj->kpi", rots, pts) + trans[:, None, :] - pts[None]
    fixed = (np.abs(d - np.round(d)) < 1e-6).all(-1)
    got_pts, got_fixed, got_sizes = _grid_stabilisers(number)
    assert np.array_equal(got_pts, pts) and np.array_equal(got_fixed, fixed.T)
    assert np.array_equal(got_sizes, len(rots) // fixed.sum(0))


@pytest.mark.parametrize(("number", "m"), [(225, 24), (225, 48), (191, 6), (139, 16), (12, 4), (166, 18), (62, 4)])
def test_kept_solvers_answer_like_a_fresh_solve(number, m):
    """solve_values keeps each subspace's pseudo-inverse and null-space verdict per question; the
    values are bit for bit those of :func:`_solve_values` computing them afresh."""
    subs = wyckoff_subspaces(number, m)
    rng = np.random.default_rng(number * 100 + m)
    for x, y in [(0.0, 0.5), (0.25, 0.25), (0.1667, 0.3333), *np.round(rng.random((12, 2)), 4).tolist()]:
        for typed, target in (((), 0), (((0, x),), 1), (((0, x), (1, y)), 2), (((1, y),), 2)):
            kept, fresh = solve_values(number, m, typed, target), _solve_values(subs, dict(typed), target)
            assert (kept is None) == (fresh is None)
            assert kept is None or kept.tobytes() == fresh.tobytes()


def test_reachable_counts_from_shared_tables():
    """Reachable counts and compatible groups read from tables grown on demand (questions asked
    with limits in any order) equal the direct sums."""
    def direct(sizes, limit):
        ok = [True] + [False] * limit
        for t in range(1, limit + 1):
            ok[t] = any(t >= s and ok[t - s] for s in sizes)
        return frozenset(t for t in range(limit + 1) if ok[t])

    for number, limit in ((225, 30), (225, 7), (225, 200), (1, 5), (62, 64), (62, 3), (191, 96)):
        assert reachable_counts(number, limit) == direct(sorted(orbit_sizes(number)), limit)
    for counts in ({"Na": 4, "Cl": 4}, {"A": 1, "B": 3}, {"A": 7}, {"A": 2, "B": 96, "C": 5}):
        top = max(counts.values())
        expected = frozenset(n for n in range(1, 231) if all(
            c in direct(sorted(orbit_sizes(n)), top) for c in counts.values()))
        assert compatible_spacegroups(counts) == expected


def test_pinned_values_of_a_coordinate_another_subspace_leaves_free():
    """P-6m2 (187), multiplicity 6: 6l (x, y, 0) and 6m (x, y, 1/2) leave y free once x is typed,
    6n (x, -x, z) pins it, here written as the orbit member (2x, x, z) of mp-1023488's Mg site."""
    assert solve_values(187, 6, ((0, 0.3342),), 1) is None  # free: the look-ahead probes y
    pinned = solve_values(187, 6, ((0, 0.3342),), 1, pinned=True)
    assert 0.1671 in np.round(pinned, 4)  # y = x / 2
    assert 0.6658 in np.round(pinned, 4)  # y = -x
    # where no subspace leaves the target free, pinned=True changes nothing
    assert np.array_equal(solve_values(225, 4, (), 0, pinned=True), solve_values(225, 4, (), 0))


def test_probe_points_are_the_shifted_halton_sequence():
    """Bases 2, 3, 5 from the second point on: (1/2, 1/3, 1/5), (1/4, 2/3, 2/5), (3/4, 1/9, 3/5) ...,
    shifted by 0.0703 off the special values."""
    from llamat_cif.symmetry import _probe_params

    pts = _probe_params(3)
    assert pts.shape == (96, 3)
    first = np.array([[1 / 2, 1 / 3, 1 / 5], [1 / 4, 2 / 3, 2 / 5], [3 / 4, 1 / 9, 3 / 5], [1 / 8, 4 / 9, 4 / 5]])
    assert np.allclose(pts[:4], (first + 0.0703) % 1.0, atol=1e-15)
    assert np.array_equal(_probe_params(1)[:, 0], pts[:16, 0])


def test_solve_rows_answers_as_one_call_per_row():
    """The look-ahead solves the last coordinate for every probe value of the one before in one pass:
    the same arrays (or ``None`` where a subspace leaves it free) as one call per value."""
    from llamat_cif.symmetry import orbit_sizes, solve_rows, solve_values

    def solve_values_many(sg, m, typed, axis, values, target, pinned):
        return solve_rows(sg, m, (typed[0][0], axis), np.column_stack([np.full(len(values), typed[0][1]), values]),
                          target, pinned=pinned)

    probes = np.round(np.array([9, 5, 13, 3, 0.0, 4, 8, 2.4, 1.6, 12]) / 16, 4)
    for sg in (1, 12, 62, 139, 166, 191, 194, 221, 225, 227):
        for m in sorted(orbit_sizes(sg)):
            for xv in (0.0, 0.125, 0.25, 0.3125, 0.5, 0.6667):
                ys = np.unique(np.concatenate([probes, [xv / 2, xv, 1 - xv]]).round(4))
                for pinned in (False, True):
                    many = solve_values_many(sg, m, ((0, xv),), 1, ys, 2, pinned=pinned)
                    for yv, got in zip(ys, many, strict=True):
                        want = solve_values(sg, m, ((0, xv), (1, float(yv))), 2, pinned=pinned)
                        assert (got is None) == (want is None), (sg, m, xv, yv)
                        assert got is None or np.array_equal(got, want), (sg, m, xv, yv)
    # Fm-3m, x = 1/4, y = 0: z = 0 (24e), 1/4 and 3/4 (24d) or 1/2 (24e moved by the F centring);
    # 32f (x, x, x): with x = y typed, z is pinned to x (among others)
    assert solve_rows(225, 24, (0, 1), np.array([[0.25, 0.0]]), 2)[0].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert 0.2 in solve_rows(225, 32, (0, 1), np.array([[0.2, 0.2]]), 2)[0].tolist()
