"""Structures -> training documents -> token arrays: the corpus a generator is trained on.

A document is an optional conditioning header followed by the crystal text of
:func:`llamat_cif.cif.to_text`::

    # formula: Na1 Cl1
    # spacegroup: 225
    5.6 5.6 5.6          (llamat format; or the canonical CIF)
    ...

The header's formula is the composition of the cell the body writes, so a sampler prompted with
``# formula: ...`` can hold the body to it exactly. Header lines come in random order during
training (``header_order="random"``) so that a prompt may start with either key.

Output folder (read by :mod:`llamat_cif.train`)::

    tokenizer/                    PreTrainedTokenizerFast
    train.tokens.npy  uint16      concatenated documents, each [bos] + ids + [eos]
    train.offsets.npy int64       n_docs + 1 start offsets
    val.tokens.npy / val.offsets.npy
    documents.train.jsonl / documents.val.jsonl
    stats.json, corpus_config.json
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llamat_cif.cif import CrystalTextError, from_text, read_cif, read_cif_or_none, to_text
from llamat_cif.progress import progress_bar
from llamat_cif.protocol import CSP_MATCHER, matcher_label

#: Keys a header may carry, and the table columns they come from.
HEADER_SOURCES = {
    "formula": None,  # computed from the written cell
    "spacegroup": "spacegroup.number",
    "e_hull": "e_above_hull",
    "band_gap": "band_gap",
}


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides a corpus; written to ``corpus_config.json`` beside it."""

    out_dir: str
    sources: tuple[str, ...] = ("mp20:train",)  # "dataset:split" entries
    holdout: tuple[str, ...] = ("mp20:test",)  # never train on these (by id and by structure)
    fmt: str = "cif"
    header: tuple[str, ...] = ("formula", "spacegroup")  # keys of HEADER_SOURCES; () for none
    header_order: str = "random"  # "random" or "fixed"
    translations: int = 0  # extra randomly translated copies per structure (llamat format)
    permute: bool = False  # shuffle site order in augmented copies (llamat format)
    val_fraction: float = 0.02  # documents held out for validation loss (by id hash)
    max_sites: int = 64  # skip larger cells (MP-20 has <= 20; MPTS-52 <= 52)
    roundtrip_sample: int = 500  # structures re-parsed and matched to measure the round trip
    limit: int | None = None  # per source, for quick runs
    seed: int = 0
    n_jobs: int = 2
    data_dir: str | None = None


def format_header(fields: dict[str, str], order: list[str]) -> str:
    """Conditioning header lines ``# key: value`` in the given key order."""
    return "".join(f"# {k}: {fields[k]}\n" for k in order if k in fields)


def cell_formula(structure) -> str:
    """Composition of the written cell, pymatgen order, explicit counts ("Na1 Cl1")."""
    return structure.composition.formula


def _header_fields(body_structure, props: dict, keys: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for k in keys:
        if k == "formula":
            out[k] = cell_formula(body_structure)
        elif k == "spacegroup":
            v = props.get("spacegroup.number")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

                try:
                    v = SpacegroupAnalyzer(body_structure, symprec=0.1).get_space_group_number()
                except Exception:  # noqa: BLE001
                    continue
            out[k] = str(int(v))
        else:
            v = props.get(HEADER_SOURCES.get(k) or k)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out[k] = f"{float(v):.2f}"
    return out


def make_document(structure, fmt: str, *, props: dict | None = None, header: tuple[str, ...] = (),
                  rng: np.random.Generator | None = None, permute: bool = False) -> str:
    """One training document: header + canonical text of ``structure``."""
    body = to_text(structure, fmt, permute=rng if (permute and rng is not None) else None)
    if not header:
        return body
    fields = _header_fields(structure, props or {}, header)
    if fmt == "cif" and "formula" in fields:
        # The CIF body writes the conventional cell: the header states that cell's composition.
        fields["formula"] = _cif_formula_sum(body)
    order = [k for k in header if k in fields]
    if rng is not None:
        order = list(rng.permutation(order))
    return format_header(fields, order) + body


def _cif_formula_sum(cif_text: str) -> str:
    for line in cif_text.split("\n"):
        if line.startswith("_chemical_formula_sum"):
            return line.split(None, 1)[1].strip().strip("'")
    raise CrystalTextError("CIF has no _chemical_formula_sum")


# ---------------------------------------------------------------------------- worker pieces

_HOLDOUT: dict[str, list] = {}
_HOLDOUT_IDS: set[str] = set()


def _load_holdout(holdout_cifs: list[tuple[str, str]]) -> None:
    """Parse held-out structures once, in the parent (forked workers inherit them)."""
    import warnings

    warnings.filterwarnings("ignore")
    _HOLDOUT.clear()
    _HOLDOUT_IDS.clear()
    for hid, cif in holdout_cifs:
        _HOLDOUT_IDS.add(hid)
        s = read_cif_or_none(cif)
        if s is None:
            continue
        _HOLDOUT.setdefault(s.composition.reduced_formula, []).append(s)


def roundtrip_matcher():
    """The round-trip check's ``StructureMatcher`` (the CSP preset ``CSP_MATCHER``: CDVAE's tolerances)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**CSP_MATCHER)


def _process(task: tuple) -> dict:
    """Parse, deduplicate, write documents for one structure (runs in a worker)."""
    import warnings

    warnings.filterwarnings("ignore")
    sid, cif, props, cfg, check_roundtrip, seed = task
    out: dict = {"id": sid, "docs": [], "skip": None, "roundtrip": None, "source": props.get("_source")}
    try:
        s = read_cif(cif)
    except CrystalTextError as exc:  # the skip reason names pymatgen's error, as a count key
        out["skip"] = f"unparsable CIF ({type(exc.__cause__ or exc).__name__})"
        return out
    if len(s) > cfg["max_sites"]:
        out["skip"] = f"more than {cfg['max_sites']} sites"
        return out
    if not s.is_ordered:
        out["skip"] = "disordered"
        return out
    if sid in _HOLDOUT_IDS:
        out["skip"] = "material_id in held-out split"
        return out
    same = _HOLDOUT.get(s.composition.reduced_formula, [])
    if same:
        sm = roundtrip_matcher()
        if any(sm.fit(s, h) for h in same):
            out["skip"] = "structure matches a held-out structure"
            return out
    rng = np.random.default_rng([seed, int(hashlib.md5(sid.encode()).hexdigest()[:8], 16)])
    header = tuple(cfg["header"])
    fmt = cfg["fmt"]
    try:
        doc_rng = rng if cfg["header_order"] == "random" else None
        out["docs"].append(make_document(s, fmt, props=props, header=header, rng=doc_rng))
        for _ in range(cfg["translations"]):
            t = s.copy()
            t.translate_sites(list(range(len(t))), rng.random(3), frac_coords=True, to_unit_cell=True)
            out["docs"].append(make_document(t, fmt, props=props, header=header, rng=doc_rng,
                                             permute=cfg["permute"]))
        if check_roundtrip:
            body = to_text(s, fmt)
            out["roundtrip"] = bool(roundtrip_matcher().fit(s, from_text(body, fmt)))
    except CrystalTextError as exc:
        out["skip"] = f"cannot write: {exc}"
        out["docs"] = []
    except Exception as exc:  # noqa: BLE001 - one structure never stops the corpus
        out["skip"] = f"error: {type(exc).__name__}: {exc}"
        out["docs"] = []
    return out


def _is_val(sid: str, fraction: float) -> bool:
    h = int(hashlib.sha1(sid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


def _write_split(out: Path, name: str, docs: list[tuple[str, str]], tok) -> dict:
    from llamat_cif.tokenizer import encode

    ids_all: list[np.ndarray] = []
    offsets = [0]
    lengths = []
    with open(out / f"documents.{name}.jsonl", "w") as fh:
        for sid, text in docs:
            ids = [tok.bos_token_id] + encode(tok, text) + [tok.eos_token_id]
            ids_all.append(np.asarray(ids, dtype=np.uint16))
            offsets.append(offsets[-1] + len(ids))
            lengths.append(len(ids))
            fh.write(json.dumps({"id": sid, "text": text}) + "\n")
    tokens = np.concatenate(ids_all) if ids_all else np.zeros(0, dtype=np.uint16)
    np.save(out / f"{name}.tokens.npy", tokens)
    np.save(out / f"{name}.offsets.npy", np.asarray(offsets, dtype=np.int64))
    pct = np.percentile(lengths, [5, 25, 50, 75, 95, 100]).tolist() if lengths else []
    return {"documents": len(docs), "tokens": int(tokens.size),
            "doc_tokens_percentiles": dict(zip(["p5", "p25", "p50", "p75", "p95", "max"], pct, strict=False))}


def build_corpus(config: CorpusConfig, *, progress: bool = True) -> dict:
    """Build a tokenized corpus; returns the statistics also written to ``stats.json``."""
    from llamat_cif.data import load_split
    from llamat_cif.tokenizer import build_tokenizer, decode, encode

    t0 = time.time()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    holdout: list[tuple[str, str]] = []
    for spec in config.holdout:
        ds, sp = spec.split(":")
        h = load_split(ds, sp, data_dir=config.data_dir)
        holdout += list(zip(h["id"], h["cif"], strict=True))
    tasks = []
    cfg = {k: getattr(config, k) for k in ("max_sites", "header", "header_order", "fmt", "translations", "permute")}
    for spec in config.sources:
        ds, sp = spec.split(":")
        df = load_split(ds, sp, data_dir=config.data_dir, limit=config.limit)
        props_cols = [c for c in df.columns if c not in ("id", "cif")]
        for rec in df.to_dict("records"):
            props = {c: rec[c] for c in props_cols}
            props["_source"] = spec
            tasks.append([str(rec["id"]), rec["cif"], props])
    rng = np.random.default_rng(config.seed)
    check = set(rng.choice(len(tasks), size=min(config.roundtrip_sample, len(tasks)), replace=False).tolist())
    tasks = [(sid, cif, props, cfg, i in check, config.seed) for i, (sid, cif, props) in enumerate(tasks)]

    results = []
    _load_holdout(holdout)
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # workers inherit the parsed held-out structures
    with progress_bar(enabled=progress) as bar, ProcessPoolExecutor(
        max_workers=max(1, config.n_jobs), mp_context=ctx
    ) as pool:
        job = bar.add_task(f"documents ({config.fmt})", total=len(tasks))
        for r in pool.map(_process, tasks, chunksize=16):
            results.append(r)
            bar.advance(job)

    seen_ids: set[str] = set()
    train_docs, val_docs, skipped = [], [], Counter()
    skipped_examples: dict[str, list[str]] = {}
    per_source = Counter()
    for r in results:
        if r["skip"] is None and r["id"] in seen_ids:
            r["skip"] = "duplicate material_id across sources"
        if r["skip"]:
            skipped[r["skip"]] += 1
            skipped_examples.setdefault(r["skip"], []).append(r["id"])
            continue
        seen_ids.add(r["id"])
        per_source[r["source"]] += 1
        dest = val_docs if _is_val(r["id"], config.val_fraction) else train_docs
        dest.extend((r["id"], d) for d in r["docs"])

    tok = build_tokenizer()
    tok.save_pretrained(out / "tokenizer")
    # Exactness of the tokenizer on every document (cheap; a mismatch is a bug, so fail loudly).
    bad = [sid for sid, d in train_docs + val_docs if decode(tok, encode(tok, d)) != d]
    if bad:
        raise RuntimeError(f"tokenizer does not round-trip {len(bad)} documents, e.g. {bad[:3]}")
    stats = {"train": _write_split(out, "train", train_docs, tok), "val": _write_split(out, "val", val_docs, tok)}
    rt = [r["roundtrip"] for r in results if r["roundtrip"] is not None]
    stats.update(
        {
            "format": config.fmt,
            "structures_in": len(results),
            "structures_used": len(seen_ids),
            "structures_per_source": dict(per_source),
            "skipped": dict(skipped),
            "skipped_examples": {k: v[:5] for k, v in skipped_examples.items()},
            "roundtrip": {
                "matched": int(sum(rt)),
                "checked": len(rt),
                "rate": (sum(rt) / len(rt)) if rt else None,
                "protocol": f"{matcher_label(roundtrip_matcher(), CSP_MATCHER)}, random sample of the input structures",
            },
            "tokenizer_exact": {"documents": len(train_docs) + len(val_docs), "mismatches": 0},
            "vocab_size": len(tok),
            "wall_s": round(time.time() - t0, 1),
        }
    )
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    (out / "corpus_config.json").write_text(json.dumps(asdict(config), indent=2))
    return stats


@dataclass
class RoundTripResult:
    fmt: str
    matched: int = 0
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.matched / self.checked if self.checked else float("nan")


def _roundtrip_one(task: tuple[str, str, str]) -> tuple[str, bool, str]:
    import warnings

    warnings.filterwarnings("ignore")
    sid, cif, fmt = task
    try:
        s = read_cif(cif)
        ok = bool(roundtrip_matcher().fit(s, from_text(to_text(s, fmt), fmt)))
        return sid, ok, ""
    except Exception as exc:  # noqa: BLE001
        return sid, False, f"{type(exc).__name__}: {exc}"


def measure_roundtrip(cifs: list[tuple[str, str]], fmt: str, *, n_jobs: int = 2, progress: bool = True) -> RoundTripResult:
    """Round-trip match rate of a representation over ``(id, cif)`` pairs."""
    res = RoundTripResult(fmt)
    with progress_bar(enabled=progress) as bar, ProcessPoolExecutor(max_workers=n_jobs) as pool:
        job = bar.add_task(f"round trip ({fmt})", total=len(cifs))
        for sid, ok, err in pool.map(_roundtrip_one, [(i, c, fmt) for i, c in cifs], chunksize=16):
            res.checked += 1
            res.matched += ok
            if not ok:
                res.failures.append(f"{sid} {err}".strip())
            bar.advance(job)
    return res
