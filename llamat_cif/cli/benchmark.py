"""``llamat-cif benchmark``: generation metrics and a report for a run folder."""

from __future__ import annotations

import click

from llamat_cif.cli._common import console, data_dir_option, fail, seed_option


@click.command()
@click.option("--samples", "samples", required=True, type=click.Path(exists=True, file_okay=False),
              help="Run folder with samples.csv (and validity.parquet / stability.parquet when present).")
@click.option("--reference", default="mp20-test", show_default=True,
              help="Reference set <dataset>-<split>; mp20-test = MP-20 test, available subset (n=7342).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder for metrics.json, report.md, figures/ (default: the run folder).")
@seed_option
@click.option("--max-samples", type=int, default=None,
              help="Use a seeded random subset of at most this many samples.")
@click.option("--struct-cutoff", type=float, default=None,
              help="Coverage structure-fingerprint cutoff (default: CDVAE's for the dataset, MP-20 0.4).")
@click.option("--comp-cutoff", type=float, default=None,
              help="Coverage composition-fingerprint cutoff (default: CDVAE's, MP-20 10).")
@click.option("--fingerprint-scope", type=click.Choice(["valid", "parsed"]), default="valid",
              show_default=True,
              help="Fingerprint valid samples only, or every parsed one (adds CDVAE's denominator).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes for fingerprinting (CrystalNN, ~0.3 s per structure per core).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Fingerprint cache (default: $LLAMAT_CIF_CACHE/fingerprints or ~/.cache/llamat-cif/fingerprints).")
@click.option("--reference-limit", type=int, default=None, help="Use only the first N reference structures.")
@click.option("--no-figures", is_flag=True, help="Skip report.md and the PNG figures.")
@click.option("--novelty/--no-novelty", default=True, show_default=True,
              help="Uniqueness and novelty (vs the reference dataset's train split) of the valid samples "
                   "as generated (StructureMatcher within each formula).")
@data_dir_option
def benchmark(samples: str, reference: str, out: str | None, seed: int, max_samples: int | None,
              struct_cutoff: float | None, comp_cutoff: float | None, fingerprint_scope: str,
              workers: int, cache_dir: str | None, reference_limit: int | None, no_figures: bool,
              novelty: bool, data_dir: str | None) -> None:
    """Validity, coverage (overall and per element), uniqueness/novelty, property distances, CSP and S.U.N.

    \b
    Example:
      llamat-cif benchmark --samples runs/default --reference mp20-test --out runs/default/bench
    """
    from rich.table import Table

    from llamat_cif.benchmarks.run import BenchmarkConfig, run_benchmark
    from llamat_cif.data import DataError

    cfg = BenchmarkConfig(samples=samples, out=out, reference=reference, seed=seed,
                          max_samples=max_samples, struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff,
                          fingerprint_scope=fingerprint_scope, workers=workers, data_dir=data_dir,
                          cache_dir=cache_dir, reference_limit=reference_limit, figures=not no_figures,
                          novelty=novelty)
    try:
        result = run_benchmark(cfg)
    except (FileNotFoundError, ValueError, DataError) as exc:
        fail(str(exc))
        return
    table = Table(title=f"benchmark vs {result['reference']['description']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("count / denominator")
    for name, m in result["metrics"].items():
        v = m["value"]
        val = "n/a" if v is None else f"{v:.4f}"
        if m["numerator"] is not None and m["denominator"] is not None:
            cnt = f"{m['numerator']}/{m['denominator']} {m['denominator_name']}"
        else:
            cnt = ", ".join(f"{k} {n}" for k, n in m["counts"].items()) + (f" [{m['unit']}]" if m["unit"] else "")
        table.add_row(name, val, cnt)
    console.print(table)
    where = out or samples
    console.print(f"wrote {where}/metrics.json" + ("" if no_figures else f", {where}/report.md, {where}/figures/")
                  + f" in {result['protocol']['wall_time_s']} s")
