"""Grammar pieces with known answers (no model needed)."""

import numpy as np

from llamat_cif.sampling.engine import Decoder, Num, Stats, Vocab
from llamat_cif.sampling.lattice import min_distance
from llamat_cif.symmetry import (
    _solve_values,
    orbit,
    orbit_sizes,
    space_group_ops,
    wyckoff_subspaces,
)
from llamat_cif.tokenizer import build_tokenizer


def test_orbits_and_multiplicities_of_fm3m():
    ops = space_group_ops(225)
    assert len(ops[0]) == 192  # 48 point operations x 4 F-centring translations
    assert len(orbit(np.array([0.0, 0.0, 0.0]), ops)) == 4  # 4a
    assert len(orbit(np.array([0.25, 0.25, 0.25]), ops)) == 8  # 8c
    assert len(orbit(np.array([0.2424, 0.0, 0.0]), ops)) == 24  # 24e
    assert {4, 8, 24, 48, 192} <= orbit_sizes(225)


def test_wyckoff_subspaces_constrain_coordinates():
    subs = wyckoff_subspaces(225, 24)  # 24e (x,0,0) and 24d (0,1/4,1/4)
    ys = _solve_values(subs, {0: 0.2424}, 1)
    assert ys is not None and set(np.round(ys, 4)) == {0.0, 0.5}
    fixed = _solve_values(wyckoff_subspaces(225, 4), {}, 0)
    assert set(np.round(fixed, 4)) == {0.0, 0.5}


def test_min_distance_is_periodic():
    m = np.eye(3) * 4.0
    d = min_distance(np.array([[0.95, 0.0, 0.0]]), np.array([[0.05, 0.0, 0.0]]), m)
    assert abs(d[0] - 0.4) < 1e-9


def _drive(spec):
    tok = build_tokenizer()
    v = Vocab(tok)

    def g():
        value = yield spec
        yield Num(0, 0, 0, ("\n",))  # placeholder so the generator does not end
        return value

    return Decoder(g(), v, Stats()), v


def test_number_field_only_allows_in_range_digits():
    d, v = _drive(Num(1.0, 12.5, 1, ("\n",), max_int_digits=2))
    first = {v.tok.convert_ids_to_tokens(t) for t in d.allowed()}
    assert first == {str(i) for i in range(1, 10)}  # no leading zero, 1..9 can start 1.0..12.5
    d.advance(v.digits["1"])
    assert {v.tok.convert_ids_to_tokens(t) for t in d.allowed()} == {"0", "1", "2", "."}
    d.advance(v.digits["2"])
    assert {v.tok.convert_ids_to_tokens(t) for t in d.allowed()} == {"."}
    d.advance(v.dot)
    assert {v.tok.convert_ids_to_tokens(t) for t in d.allowed()} == {"0", "1", "2", "3", "4", "5"}


def test_hints_keep_a_narrow_window_reachable_digit_by_digit():
    # only x in [0.4374, 0.4376] is admissible: the 11 probe points of the interval [0.4, 0.4999]
    # miss it, a hint (a value known to pass) does not
    from llamat_cif.sampling.engine import Decoder, Num, Stats, Vocab
    from llamat_cif.tokenizer import build_tokenizer

    vocab = Vocab(build_tokenizer())

    def walk(hints):
        def grammar():
            yield Num(0.0, 0.9999, 4, (" ",), max_int_digits=1, accept=lambda x: abs(x - 0.4375) < 1.5e-4,
                      hints=hints)
        stats = Stats()
        d = Decoder(grammar(), vocab, stats)
        ok = []
        for ch in "0.4375":
            tid = vocab.tok.convert_tokens_to_ids(ch)
            ok.append(d.check(tid))
            d.advance(tid)
        return ok

    assert walk(lambda: np.array([0.4375])) == [True] * 6
    assert walk(None)[2] is False  # the digit 4 is refused without the hint
