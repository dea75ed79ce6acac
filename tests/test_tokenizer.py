"""CIF tokenizer: exact round trip, sensible segmentation, Hugging Face save/load."""

from transformers import AutoTokenizer

from llamat_cif.cif import to_text
from llamat_cif.tokenizer import build_tokenizer, decode, encode, is_cif_tokenizer, vocabulary


def test_vocabulary_is_a_few_hundred_tokens():
    v = vocabulary()
    assert 300 < len(v) < 600 and len(set(v)) == len(v)
    assert v[:4] == ["<pad>", "<s>", "</s>", "<unk>"]


def test_exact_round_trip_and_segmentation(nacl, perovskite):
    tok = build_tokenizer()
    for s in (nacl, perovskite):
        for fmt in ("cif", "llamat"):
            text = "# formula: X\n" + to_text(s, fmt)
            assert decode(tok, encode(tok, text)) == text
    pieces = tok.convert_ids_to_tokens(encode(tok, to_text(nacl)))
    assert "_cell_length_a" in pieces and "Fm-3m" in pieces and "Na" in pieces and "Cl" in pieces
    assert "5" in pieces and "." in pieces  # digits one per token


def test_space_group_symbol_only_after_its_tag():
    tok = build_tokenizer()
    # "P4" in a formula is phosphorus + 4, not space group P4
    pieces = tok.convert_ids_to_tokens(encode(tok, "_chemical_formula_sum 'P4 O10'\n_symmetry_space_group_name_H-M P4\n"))
    assert pieces[2:5] == ["'", "P", "4"] and "P4" in pieces


def test_save_and_load_like_any_hf_tokenizer(tmp_path, nacl):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = to_text(nacl)
    assert again(text, add_special_tokens=False)["input_ids"] == encode(tok, text)
    assert (again.bos_token, again.eos_token, again.pad_token) == ("<s>", "</s>", "<pad>")
    assert is_cif_tokenizer(again)


def _corpus_docs(split, limit):
    import warnings

    from pymatgen.core import Structure

    from llamat_cif.corpus import make_document
    from llamat_cif.data import load_split

    warnings.filterwarnings("ignore")
    df = load_split("mp20", split, limit=limit)
    for rec in df.to_dict("records"):
        s = Structure.from_str(rec["cif"], fmt="cif")
        for fmt in ("cif", "llamat"):
            yield make_document(s, fmt, props=rec, header=("formula", "spacegroup"))


def _assert_exact(docs):
    tok = build_tokenizer()
    n = 0
    for d in docs:
        assert decode(tok, encode(tok, d)) == d
        assert tok.unk_token_id not in encode(tok, d)
        n += 1
    return n


def test_real_documents_round_trip_exactly():
    from tests.conftest import _has_data

    if not _has_data():
        import pytest

        pytest.skip("needs the shared data")
    assert _assert_exact(_corpus_docs("test", 100)) == 200


import pytest  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("split", ["test", "train"])
def test_every_mp20_document_round_trips_exactly(split):
    assert _assert_exact(_corpus_docs(split, None)) > 14000
