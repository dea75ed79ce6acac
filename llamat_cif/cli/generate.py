"""``llamat-cif generate``: sample crystal structures from a generator model."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from llamat_cif.cli._common import console, fail, physics_options, sampling_options, seed_option


@click.command()
@click.option("-n", "n", type=int, default=10, show_default=True, help="Number of structures.")
@click.option("--model", default="default", show_default=True,
              help="Shipped model name ('default' = llamat-cif-small) or a local model/adapter folder.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/generate", show_default=True)
@click.option("--formula", default=None, help="Reduced formula every sample must have, e.g. LiFePO4.")
@click.option("--spacegroup", type=int, default=None, help="Space-group number every sample must declare.")
@click.option("--targets", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV with target_formula[, target_spacegroup]: one sample per row (overrides -n).")
@sampling_options
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--constrained/--unconstrained", default=True, show_default=True,
              help="Grammar-constrained decoding (parsable text, requested composition, min distance).")
@click.option("--min-distance", type=float, default=0.5, show_default=True,
              help="Å; the constraint refuses sites closer than this (0 = off).")
@physics_options
@click.option("--charge-balanced", is_flag=True, default=False,
              help="Constrained runs: a formula the model chooses must be SMACT charge-balanced "
                   "(CDVAE compositional validity). Off by default, so validity measures the model.")
@click.option("--max-new-tokens", type=int, default=1000, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--shard", default=None, metavar="I/K",
              help="Draw only batches b with b %% K == I (into OUT/samples.shardIofK.csv), so K processes "
                   "share one seeded run; a later run without --shard merges them and fills any gaps.")
@seed_option
def generate(n, model, out_dir, formula, spacegroup, targets, temperature, top_p, top_k, batch_size,
             constrained, min_distance, min_contact_ratio, steer_contact_ratio, steer_volume_window, volume_window, charge_balanced, max_new_tokens, device, threads, shard, seed) -> None:
    """Sample structures into OUT/samples.csv and OUT/cifs/ (resumes an interrupted run)."""
    from llamat_cif.model import ModelLoadError
    from llamat_cif.sampling import SampleConfig
    from llamat_cif.sampling import generate as run
    from llamat_cif.sampling.config import parse_shard

    try:
        shard_ik = parse_shard(shard)
    except ValueError as exc:
        fail(str(exc))
    try:
        cfg = SampleConfig(n=n, out_dir=out_dir, model=model, formula=formula, spacegroup=spacegroup,
                           temperature=temperature, top_p=top_p, top_k=top_k, batch_size=batch_size, seed=seed,
                           constrained=constrained, min_distance=min_distance or None,
                           min_contact_ratio=min_contact_ratio, steer_contact_ratio=steer_contact_ratio,
                           steer_volume_window=steer_volume_window, volume_window=volume_window,
                           charge_balanced=charge_balanced, max_new_tokens=max_new_tokens, device=device,
                           threads=threads, targets=targets, shard=shard_ik)
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
    console.print(f"samples: {out_dir}/samples{tag}.csv ({len(df)} rows); CIFs in {out_dir}/cifs/")
