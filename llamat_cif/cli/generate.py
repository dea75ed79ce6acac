"""``llamat-cif generate``: sample crystal structures from a generator model."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from llamat_cif.cli._common import console, fail, generation_options, sample_config, seed_option


@click.command()
@click.option("-n", "n", type=int, default=10, show_default=True, help="Number of structures.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/generate", show_default=True)
@generation_options
@click.option("--shard", default=None, metavar="I/K",
              help="Draw only batches b with b % K == I (parts in OUT/samples.parts/, beside the other "
                   "shards'), so K processes share one seeded run; a later run without --shard merges them "
                   "into OUT/samples.parquet and fills any gaps.")
@seed_option
def generate(n, out_dir, shard, seed, **opts) -> None:
    """Sample structures into OUT/samples.parquet and OUT/cifs/ (resumes an interrupted run)."""
    from llamat_cif.model import ModelLoadError
    from llamat_cif.sampling import generate as run
    from llamat_cif.sampling.config import parse_shard

    try:
        shard_ik = parse_shard(shard)
    except ValueError as exc:
        fail(str(exc))
    try:
        cfg = sample_config(opts, n=n, out_dir=out_dir, seed=seed, shard=shard_ik)
        df = run(cfg)
    except (ValueError, ModelLoadError) as exc:
        fail(str(exc))
    tag = f".shard{shard_ik[0]}of{shard_ik[1]}" if shard_ik else ""
    summary = json.loads((Path(out_dir) / f"sample_summary{tag}.json").read_text())
    t = Table(title=f"generate -> {out_dir}")
    t.add_column("attempted")
    t.add_column("decoded to a structure")
    t.add_column("with error")
    t.add_column("structures/s (this session)")
    t.add_row(str(summary["attempted"]), f"{summary['decoded']} / {summary['attempted']}",
              str(summary["with_error"]), str(summary["this_session"]["structures_per_s"]))
    console.print(t)
    where = (f"{out_dir}/samples.parts/ (shard {shard_ik[0]}/{shard_ik[1]}; run without --shard to merge)"
             if shard_ik else f"{out_dir}/samples.parquet")
    console.print(f"samples: {where} ({len(df)} rows); CIFs in {out_dir}/cifs/")
