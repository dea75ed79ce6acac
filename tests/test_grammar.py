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


def test_steering_tiers_keep_the_widest_margin_some_value_allows():
    """A field with two steering tiers: the finite set of positions shrinks to the first tier's
    values when one passes, else to the second's, else stays with the hard rule."""
    vocab = Vocab(build_tokenizer())
    values = np.array([0.1, 0.2, 0.3])

    def kept(tiers):
        def grammar():
            yield Num(0.0, 0.9999, 4, (" ",), max_int_digits=1, values=values, accept=lambda x: x >= 0.15,
                      strict_accept=tiers)
        d = Decoder(grammar(), vocab, Stats())
        return sorted(np.round(d.spec.values, 4).tolist())

    assert kept((lambda x: x >= 0.25, lambda x: x >= 0.15)) == [0.3]
    assert kept((lambda x: x >= 0.5, lambda x: x >= 0.25)) == [0.3]
    assert kept((lambda x: x >= 0.5, lambda x: x >= 0.9)) == [0.2, 0.3]  # hard rule alone
    assert kept(lambda x: x >= 0.25) == [0.3]  # a single callable is one tier


def test_processor_falls_back_tier_by_tier():
    """Sampled digits: the first tier refuses every token, so the draw keeps the second tier's
    margin (x >= 0.5 here), although the model puts almost all its mass on 1."""
    import torch

    from llamat_cif.sampling.processor import GrammarLogitsProcessor

    vocab = Vocab(build_tokenizer())

    def grammar():
        yield Num(0.0, 0.9, 1, (" ",), max_int_digits=1, accept=lambda x: x >= 0.1,
                  strict_accept=(lambda x: x >= 2.0, lambda x: x >= 0.5))
        yield Num(0, 0, 0, ("\n",))

    for seed in range(5):
        torch.manual_seed(seed)
        d = Decoder(grammar(), vocab, Stats())
        d.advance(vocab.digits["0"])
        d.advance(vocab.dot)
        proc = GrammarLogitsProcessor([d], 0, vocab.eos, temperature=1.0, top_p=0.9)
        scores = torch.zeros(1, len(vocab.tok))
        scores[0, vocab.digits["1"]] = 8.0
        out = proc(torch.zeros(1, 0, dtype=torch.long), scores)
        chosen = [t for t in range(scores.shape[1]) if out[0, t] > float("-inf")]
        assert len(chosen) == 1 and int(vocab.digit_of[chosen[0]]) >= 5
    assert d.steer_tiers() == 2


def test_a_tier_no_token_passed_is_not_asked_again_in_the_field():
    """At the first fractional digit no token keeps tier 0 (its check refuses every value), so the
    draw keeps tier 1; the field's next digit does not ask tier 0 again, the next field does."""
    import torch

    from llamat_cif.sampling.processor import GrammarLogitsProcessor

    vocab = Vocab(build_tokenizer())
    asked: list[float] = []

    def never(x: float) -> bool:
        asked.append(x)
        return False

    def grammar():
        for _ in range(2):
            yield Num(0.0, 0.99, 2, (" ",), max_int_digits=1, accept=lambda x: x >= 0.1,
                      strict_accept=(never, lambda x: x >= 0.5))

    torch.manual_seed(0)
    d = Decoder(grammar(), vocab, Stats())
    proc = GrammarLogitsProcessor([d], 0, vocab.eos, temperature=1.0, top_p=0.9)

    def draw() -> int:
        out = proc(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, len(vocab.tok)))
        (tid,) = [t for t in range(out.shape[1]) if out[0, t] > float("-inf")]
        d.advance(tid)
        return tid

    d.advance(vocab.digits["0"])
    d.advance(vocab.dot)
    assert d.live_tiers() == [0, 1]
    first = draw()
    assert int(vocab.digit_of[first]) >= 5  # tier 1 kept
    n_first = len(asked)
    assert n_first >= 10 and d.live_tiers() == [1]  # every digit was asked, none passed
    draw()  # the second fractional digit
    assert len(asked) == n_first  # tier 0 not asked again in this field
    d.advance(vocab.id_of[" "])  # next field: every tier is live again
    assert d.live_tiers() == [0, 1]


def test_known_points_are_kept_once_in_the_order_found():
    from llamat_cif.sampling.grammars import _Known

    k = _Known()
    k.add(np.array([[0.25, 0.5, 0.99996], [0.1, 0.2, 0.3]]))  # 0.99996 is typed as 1.0000, i.e. 0
    k.add(np.array([0.25, 0.5, 0.0]))  # the same point again
    k.add(np.array([[0.7, 0.8, 0.9]]))
    assert k.points().tolist() == [[0.25, 0.5, 0.0], [0.1, 0.2, 0.3], [0.7, 0.8, 0.9]]
