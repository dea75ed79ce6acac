"""``llamat-cif corpus``: build tokenized training corpora and measure round trips."""

from __future__ import annotations

import json

import click
from rich.table import Table

from llamat_cif.cli._common import console, data_dir_option, fail, seed_option


@click.group()
def corpus() -> None:
    """Turn crystal datasets into tokenized training corpora."""


@corpus.command()
@click.option("--dataset", default="mp20", show_default=True, help="Main dataset (see `data list`).")
@click.option("--split", default="train", show_default=True)
@click.option("--extra", multiple=True, help="More sources as DATASET:SPLIT (repeatable), e.g. mpts52:val.")
@click.option("--holdout", multiple=True, default=("mp20:test",), show_default=True,
              help="DATASET:SPLIT never trained on: dropped by material_id and by StructureMatcher.")
@click.option("--format", "fmt", type=click.Choice(["cif", "llamat"]), default="cif", show_default=True)
@click.option("--header", default="formula,spacegroup", show_default=True,
              help="Conditioning header keys (comma list of formula, spacegroup, e_hull, band_gap; '' for none).")
@click.option("--translations", type=int, default=0, show_default=True,
              help="Extra randomly translated copies per structure (augmentation; llamat format).")
@click.option("--permute/--no-permute", default=False, show_default=True,
              help="Shuffle site order in augmented copies (llamat format).")
@click.option("--val-fraction", type=float, default=0.02, show_default=True)
@click.option("--roundtrip-sample", type=int, default=500, show_default=True,
              help="Structures re-parsed and matched to report the round-trip rate.")
@click.option("--limit", type=int, default=None, help="Use only the first N rows of each source.")
@click.option("--jobs", type=int, default=2, show_default=True, help="Worker processes.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@seed_option
@data_dir_option
def build(dataset, split, extra, holdout, fmt, header, translations, permute, val_fraction,
          roundtrip_sample, limit, jobs, out_dir, seed, data_dir) -> None:
    """Build documents, deduplicate against held-out data, tokenize, write arrays + stats.json."""
    from llamat_cif.corpus import CorpusConfig, build_corpus
    from llamat_cif.data import DataError

    cfg = CorpusConfig(
        out_dir=out_dir, sources=(f"{dataset}:{split}", *extra), holdout=tuple(h for h in holdout if h),
        fmt=fmt, header=tuple(k for k in header.split(",") if k), translations=translations,
        permute=permute, val_fraction=val_fraction, roundtrip_sample=roundtrip_sample, limit=limit,
        seed=seed, n_jobs=jobs, data_dir=data_dir,
    )
    try:
        stats = build_corpus(cfg)
    except DataError as exc:
        fail(str(exc))
    t = Table(title=f"corpus {out_dir} ({fmt})")
    t.add_column("")
    t.add_column("train")
    t.add_column("val")
    t.add_row("documents", f"{stats['train']['documents']:,}", f"{stats['val']['documents']:,}")
    t.add_row("tokens", f"{stats['train']['tokens']:,}", f"{stats['val']['tokens']:,}")
    t.add_row("median doc tokens", str(stats["train"]["doc_tokens_percentiles"].get("p50")),
              str(stats["val"]["doc_tokens_percentiles"].get("p50")))
    console.print(t)
    rt = stats["roundtrip"]
    console.print(f"structures used {stats['structures_used']:,} / {stats['structures_in']:,}; "
                  f"round trip {rt['matched']}/{rt['checked']} matched; skipped: {json.dumps(stats['skipped'])}")
    console.print(f"wall time {stats['wall_s']} s; stats in {out_dir}/stats.json")


@corpus.command()
@click.option("--dataset", default="mp20", show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--format", "fmts", multiple=True, default=("cif", "llamat"), show_default=True)
@click.option("--limit", type=int, default=None)
@click.option("--jobs", type=int, default=2, show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write results as JSON.")
@data_dir_option
def roundtrip(dataset, split, fmts, limit, jobs, out_file, data_dir) -> None:
    """Measure text -> Structure round trips with StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)."""
    from llamat_cif.corpus import measure_roundtrip, roundtrip_matcher
    from llamat_cif.data import load_split
    from llamat_cif.protocol import CSP_MATCHER, matcher_label

    df = load_split(dataset, split, data_dir=data_dir, limit=limit)
    pairs = list(zip(df["id"], df["cif"], strict=True))
    results = {}
    for fmt in fmts:
        r = measure_roundtrip(pairs, fmt, n_jobs=jobs)
        results[fmt] = {"matched": r.matched, "checked": r.checked, "rate": r.rate, "failures": r.failures}
        console.print(f"{fmt}: {r.matched}/{r.checked} = {r.rate:.4f} ({dataset}/{split})")
    if out_file:
        with open(out_file, "w") as fh:
            json.dump({"dataset": dataset, "split": split, "protocol": matcher_label(roundtrip_matcher(), CSP_MATCHER),
                       "results": results}, fh, indent=2)
