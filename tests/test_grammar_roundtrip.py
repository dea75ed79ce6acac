"""The CIF grammar against the canonical text of real crystals (:func:`llamat_cif.cif.to_text`).

200 MP-20 test structures are written with ``to_text`` (the text the model is trained on), given the
conditioning header the corpus writes (``# formula:`` and ``# spacegroup:``, read off the text
itself, in both orders) and fed through :class:`~llamat_cif.sampling.engine.Decoder` with the CIF
grammar. At each step the grammar must allow the next piece of the text (and, where the sampler
would run it, pass the look-ahead check), and the document must be able to end.

The grammar's own limits are lifted: the physics rules are off (``Conditions``' defaults: no
covalent-contact ratio, no volume window; some real crystals sit outside the calibrated windows by
design) and the size limits (atoms, elements, atoms per element, site lines) are raised so that a
large conventional cell is not refused for its size. CDVAE's 0.5 Å distance floor stays on (every
real crystal keeps it). Cells with a length of 60 Å or more are left out: the grammar's lattice
window ends there (:attr:`~llamat_cif.sampling.lattice.LatticeWindow.LEN_HI`, one structure of 200).

The grammar writes the text exactly: ``to_text`` writes the volume of the cell as written
(:func:`llamat_cif.cif.written_volume`) and 4-decimal coordinates (``0.3333 0.6667`` on the
three-fold axes, which the reader takes as exact thirds), as the grammar does, and the look-ahead
also tries the values one Wyckoff subspace pins a coordinate to while another leaves it free
(mp-1023488, P-6m2 Mg15Sb: "Mg 6 0.3342 0.1671 0.2502" lies on the line y = x / 2, between the
probe points of y's second digit; refused before).
:func:`test_cif_grammar_writes_to_text_exactly` walks the grammar's own tokens along every document;
:func:`test_cif_grammar_allows_the_tokenizers_tokens` feeds the tokenizer's own tokens of the same
texts, so a literal the grammar forces in other tokens than the training text's (once the case for
the Hermann-Mauguin symbol: ``P6_3/mmc`` is one token after the tag, but split into characters when
encoded alone) fails it.
"""

import re
import warnings

import pytest
from pymatgen.core import Structure

from llamat_cif.cif import to_text
from llamat_cif.sampling.engine import Decoder, Stats, Vocab
from llamat_cif.sampling.fields import Conditions
from llamat_cif.sampling.grammars import cif_grammar
from llamat_cif.sampling.lattice import LatticeWindow

N_STRUCTURES = 200
#: limits far above anything in MP-20 (<= 20 atoms in the primitive cell, so <= 80 conventional)
OPEN_LIMITS = dict(max_atoms=400, max_elements=10, max_count=400, max_lines=400)
_NUMBER = r"([0-9.]+)"


@pytest.fixture(scope="module")
def vocab():
    from llamat_cif.model import resolve_model_path
    from llamat_cif.tokenizer import load_tokenizer

    return Vocab(load_tokenizer(resolve_model_path("default")))


def _cell(text: str) -> list[float]:
    return [float(re.search(rf"_cell_{k} {_NUMBER}\n", text).group(1)) for k in
            ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")]


@pytest.fixture(scope="module")
def documents() -> list[tuple[str, str]]:
    from llamat_cif.data import load_split

    df = load_split("mp20", "test", limit=N_STRUCTURES)
    assert len(df) == N_STRUCTURES
    docs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (sid, cif) in enumerate(zip(df["id"], df["cif"], strict=True)):
            body = to_text(Structure.from_str(cif, fmt="cif"))
            if max(_cell(body)[:3]) >= LatticeWindow.LEN_HI:
                continue  # beyond the grammar's lattice window
            formula = re.search(r"_chemical_formula_sum '([^']*)'", body).group(1)
            number = re.search(r"_symmetry_Int_Tables_number (\d+)", body).group(1)
            lines = [f"# formula: {formula}\n", f"# spacegroup: {number}\n"]
            docs.append((sid, "".join(lines if i % 2 == 0 else lines[::-1]) + body))
    return docs


def _decoder(vocab: Vocab) -> Decoder:
    stats = Stats()
    return Decoder(cif_grammar(vocab, Conditions(**OPEN_LIMITS), stats), vocab, stats)


def _step(d: Decoder, tid: int) -> bool:
    """Feed one token the way the sampler does (checked only when there is a choice)."""
    allowed = d.allowed()
    if tid not in allowed or (d.needs_check() and len(allowed) > 1 and not d.check(tid)):
        return False
    d.advance(tid)
    return True


def _text_rejection(vocab: Vocab, text: str) -> str | None:
    """Walk the grammar's own tokens along ``text``: ``None`` when it writes exactly ``text`` and can
    end, else where it refused."""
    d, pos = _decoder(vocab), 0
    while pos < len(text):
        pieces = {t: vocab.tok.convert_ids_to_tokens(t) for t in d.allowed() if t != vocab.eos}
        fits = [t for t, s in pieces.items() if text.startswith(s, pos)]
        tid = max(fits, key=lambda t: len(pieces[t])) if fits else None
        if tid is None or not _step(d, tid):
            return f"refused at ...{text[max(0, pos - 50):pos]!r} | {text[pos:pos + 12]!r}"
        pos += len(pieces[tid])
    return None if d.allowed() == [vocab.eos] else "cannot end"


def _token_rejection(vocab: Vocab, text: str) -> str | None:
    """Feed the tokenizer's own tokens of ``text``: ``None`` when all pass and the document can end."""
    d = _decoder(vocab)
    ids = vocab.tok(text, add_special_tokens=False)["input_ids"]
    for k, tid in enumerate(ids):
        if not _step(d, tid):
            return f"token {k} refused at ...{vocab.tok.decode(ids[max(0, k - 12):k + 1])!r}"
    return None if d.allowed() == [vocab.eos] else "cannot end"


def test_cif_grammar_writes_to_text_exactly(vocab, documents):
    assert len(documents) >= N_STRUCTURES - 2
    rejected = {sid: why for sid, text in documents if (why := _text_rejection(vocab, text))}
    assert not rejected, f"{len(rejected)} of {len(documents)}: {rejected}"


def test_cif_grammar_allows_the_tokenizers_tokens(vocab, documents):
    rejected = {sid: why for sid, text in documents if (why := _token_rejection(vocab, text))}
    assert not rejected, f"{len(rejected)} of {len(documents)}: {rejected}"
