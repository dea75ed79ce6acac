"""Corpus builder on real MP-20 rows: documents, held-out dedup, arrays, stats."""

import json

import numpy as np

from llamat_cif.corpus import CorpusConfig, build_corpus, make_document
from llamat_cif.tokenizer import build_tokenizer, decode
from tests.conftest import requires_data


def test_document_header_states_the_written_cell(nacl):
    doc = make_document(nacl, "cif", props={"spacegroup.number": 225}, header=("formula", "spacegroup"))
    assert doc.startswith("# formula: Na4 Cl4\n# spacegroup: 225\ndata_NaCl\n")
    doc = make_document(nacl.get_primitive_structure(), "llamat", header=("formula",))
    assert doc.startswith("# formula: Na1 Cl1\n4.0 4.0 4.0\n")


@requires_data
def test_build_small_corpus(tmp_path):
    cfg = CorpusConfig(out_dir=str(tmp_path), sources=("mp20:train",), holdout=("mp20:test",), fmt="cif",
                       limit=40, roundtrip_sample=10, n_jobs=1, val_fraction=0.1)
    stats = build_corpus(cfg, progress=False)
    assert stats["structures_in"] == 40
    assert stats["structures_used"] + sum(stats["skipped"].values()) == 40
    assert stats["roundtrip"]["checked"] == 10 and stats["roundtrip"]["matched"] >= 9
    tokens = np.load(tmp_path / "train.tokens.npy")
    offsets = np.load(tmp_path / "train.offsets.npy")
    assert offsets[-1] == len(tokens) and len(offsets) - 1 == stats["train"]["documents"]
    tok = build_tokenizer()
    docs = [json.loads(x)["text"] for x in (tmp_path / "documents.train.jsonl").read_text().splitlines()]
    # every document decodes back exactly from its token ids
    for i, d in enumerate(docs):
        ids = tokens[offsets[i]:offsets[i + 1]]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert decode(tok, ids.tolist()) == d
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert {"train", "val", "roundtrip", "skipped"} <= set(saved)


@requires_data
def test_held_out_structures_are_dropped(tmp_path):
    # the test split against itself: every row is dropped by material_id
    cfg = CorpusConfig(out_dir=str(tmp_path), sources=("mp20:test",), holdout=("mp20:test",), limit=5,
                       roundtrip_sample=0, n_jobs=1)
    stats = build_corpus(cfg, progress=False)
    assert stats["structures_used"] == 0 and stats["skipped"] == {"material_id in held-out split": 5}
