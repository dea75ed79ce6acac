"""A CIF-aware tokenizer: a few hundred tokens that cover every crystal document exactly.

Vocabulary (in id order): special tokens, conditioning-header keys, CIF tags, the 230 space-group
symbols, the 118 element symbols, a few whitespace runs, and every printable ASCII character as a
fallback, so any ASCII text encodes and decodes back byte for byte. Numbers are split one digit per
token (as LLaMA does), which keeps the vocabulary small and lets constrained decoding reason about
numbers digit by digit.

Segmentation is a single regular expression (longest alternatives first) run by the Hugging Face
``tokenizers`` library, so the result is a standard ``PreTrainedTokenizerFast``: saved with
``save_pretrained`` beside a model and loaded with ``AutoTokenizer.from_pretrained`` by any
``transformers`` code, with no code of ours needed at load time. Space-group symbols are tokens only
right after the ``_symmetry_space_group_name_H-M`` tag (a look-behind), so a formula like ``P4 O10``
is never read as space group P4.

For LLaMA-family base models the model's own tokenizer is used instead (see :func:`load_tokenizer`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from llamat_cif.cif import CIF_HEADER_TAGS, CIF_SITE_TAGS

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

#: Conditioning-header keys (a document may start with "# formula: NaCl" lines).
HEADER_KEYS = ("formula", "spacegroup", "e_hull", "band_gap", "task")
HEADER_TOKENS = tuple(f"# {k}: " for k in HEADER_KEYS)

EXTRA_TAGS = (
    "data_",
    "loop_",
    "_symmetry_equiv_pos_site_id",
    "_symmetry_equiv_pos_as_xyz",
    "_chemical_formula_structural",
    "_space_group_symop_operation_xyz",
    "_atom_site_symmetry_Wyckoff",
)
CIF_TAGS = tuple(dict.fromkeys(CIF_HEADER_TAGS + CIF_SITE_TAGS + EXTRA_TAGS))
WHITESPACE_RUNS = ("  ", "   ", "    ")
_SG_LOOKBEHIND = "_H-M "


@lru_cache(maxsize=1)
def space_group_symbols() -> tuple[str, ...]:
    """Short Hermann-Mauguin symbols of the 230 space groups in spglib's default settings
    (the settings :func:`llamat_cif.cif.to_text` writes), index = number - 1."""
    import spglib

    symbols: dict[int, str] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        symbols.setdefault(t.number, t.international_short)
    return tuple(symbols[n] for n in range(1, 231))


@lru_cache(maxsize=1)
def element_symbols() -> tuple[str, ...]:
    from pymatgen.core import Element

    return tuple(Element.from_Z(z).symbol for z in range(1, 119))


def vocabulary() -> list[str]:
    """The full token list, in id order (ids are stable for a given package version)."""
    ascii_chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = list(SPECIAL_TOKENS) + list(HEADER_TOKENS) + list(CIF_TAGS)
    vocab += list(dict.fromkeys(space_group_symbols()))
    vocab += list(element_symbols()) + list(WHITESPACE_RUNS) + ascii_chars
    return list(dict.fromkeys(vocab))  # single-letter elements are also ASCII chars: keep the first


def _pattern() -> str:
    def alt(tokens) -> str:
        return "|".join(re.escape(t) for t in sorted(set(tokens), key=len, reverse=True))

    sg = f"(?<={re.escape(_SG_LOOKBEHIND)})(?:{alt(space_group_symbols())})(?=\\s|$)"
    words = alt(HEADER_TOKENS + CIF_TAGS + element_symbols() + WHITESPACE_RUNS)
    return f"{sg}|{words}|[\\s\\S]"


def build_tokenizer(model_max_length: int = 1024):
    """Build the CIF tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_pattern()), behavior="isolated")
    tok.decoder = decoders.Fuse()  # tokens are exact substrings: decoding is concatenation
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({})  # registers special tokens so they are never split
    return fast


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved beside a model (ours or a LLaMA-family model's own), offline.

    For LLaMA-family tokenizers digits are already one per token (SentencePiece ``split_digits``);
    for a fast tokenizer that merges digits we add a digit-splitting pre-tokenizer when the backend
    allows it.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _split_digits_if_possible(tok)
    return tok


def _split_digits_if_possible(tok) -> None:
    if not getattr(tok, "is_fast", False) or is_cif_tokenizer(tok):
        return
    ids = tok("12345", add_special_tokens=False)["input_ids"]
    if len(ids) >= 5:
        return  # already one digit per token
    try:
        from tokenizers import pre_tokenizers

        backend = tok.backend_tokenizer
        digits = pre_tokenizers.Digits(individual_digits=True)
        backend.pre_tokenizer = (
            pre_tokenizers.Sequence([digits, backend.pre_tokenizer]) if backend.pre_tokenizer else digits
        )
    except Exception:  # noqa: BLE001 - some backends cannot be changed; leave them as they are
        return


def is_cif_tokenizer(tok) -> bool:
    """True when ``tok`` is this module's CIF tokenizer (it has the CIF tags as single tokens)."""
    vocab = tok.get_vocab()
    return "_cell_length_a" in vocab and "_atom_site_fract_x" in vocab and len(vocab) < 2000


def encode(tok, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return tok(text, add_special_tokens=False)["input_ids"]


def decode(tok, ids) -> str:
    """Text of ``ids``, special tokens dropped, no whitespace clean-up (exact inverse of encode)."""
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
