"""``llamat-cif benchmark``: generation metrics and a report for one structure set, or a comparison of several."""

from __future__ import annotations

from pathlib import Path

import click

from llamat_cif.cli._common import (
    console,
    data_dir_option,
    emit_json,
    fail,
    json_mode,
    json_option,
    seed_option,
)


@click.command()
@click.option("--samples", "samples", required=True, multiple=True, metavar="[LABEL=]INPUT",
              help="Structures to benchmark: a run folder (samples.parquet or samples.csv, + its validity/stability "
                   "files), a "
                   "folder of .cif files (recursive), a .zip of them, a .cif file, a CSV/parquet with a 'cif' "
                   "column, an ASE database or extended-XYZ/trajectory file, or a registry split (mp20-train). "
                   "Repeat for a comparison report of several generators (LABEL= names each set).")
@click.option("--reference", default="mp20-test", show_default=True,
              help="Reference set: a registry split <dataset>-<split> (mp20-test = MP-20 test, available subset, "
                   "n=7342) or any input --samples takes. Its fingerprints are cached by content.")
@click.option("--train", default=None,
              help="Training set for novelty and S.U.N. (registry split or any input). Default: the train split "
                   "of a registry reference's dataset; none for another reference (novelty then not assessed).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder for metrics.json, report.md, figures/ (default: the run folder; required for "
                   "any other input and for a comparison, which writes OUT/<label>/ and OUT/comparison.md).")
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
@click.option("--fingerprint-shortcut", is_flag=True,
              help="Average one CrystalNN site per group of symmetry-equivalent sites: 2-5x faster "
                   "fingerprints, but a named variant (up to 0.024 off CDVAE's every-site mean on generated "
                   "samples); cached apart. Default: every site, as CDVAE.")
@click.option("--coverage/--no-coverage", default=True, show_default=True,
              help="CrystalNN fingerprints and CDVAE coverage (overall and per element) of the samples "
                   "against the reference. --no-coverage computes no fingerprint at all (the MP-20 test "
                   "reference alone takes ~15 min uncached on two cores) and leaves the coverage metrics "
                   "out; validity, uniqueness/novelty, property distances, CSP and --stability still run.")
@click.option("--workers", type=click.IntRange(min=0), default=0,
              help="Processes for fingerprinting (CrystalNN, ~0.3 s per structure per core) and for the "
                   "relaxations of --stability [default: 0 = auto: one per CPU core, at most 8, as "
                   "`stability` and `screen`]. Results do not depend on it.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Fingerprint cache (default: $LLAMAT_CIF_CACHE/fingerprints or ~/.cache/llamat-cif/fingerprints).")
@click.option("--reference-limit", type=int, default=None, help="Use only the first N reference structures.")
@click.option("--no-figures", is_flag=True, help="Skip report.md and the PNG figures.")
@click.option("--novelty/--no-novelty", default=True, show_default=True,
              help="Uniqueness and novelty (vs --train, default the reference dataset's train split) of the valid samples "
                   "as generated (StructureMatcher within each formula).")
@click.option("--stability", "stability_n", type=click.IntRange(min=0), default=0, show_default=True,
              help="Relax N valid samples (seeded random choice, --seed) with CHGNet and report relaxed, "
                   "converged, metastable, stable, S.U.N. and M.S.U.N. over the N chosen and scaled to all "
                   "generated, plus a geometry table; rows go to OUT/stability.parquet (a rerun resumes). "
                   "0: off.")
@click.option("--rescale-volume", is_flag=True,
              help="With --stability: scale each chosen structure to its composition-predicted volume "
                   "before relaxing.")
@click.option("--protocol", type=click.Choice(["llamat-cif", "cdvae"]), default="llamat-cif", show_default=True,
              help="cdvae: also CDVAE's compute_metrics.py numbers exactly (validity over all generated with "
                   "a fingerprint required for 'valid'; 1,000 seeded valid samples for comp/struct diversity "
                   "and the density / #elements distances; coverage over every generated crystal), in "
                   "metrics.json['cdvae']. Fingerprints every parsed sample.")
@click.option("--cdvae-samples", "cdvae_n_samples", type=click.IntRange(min=2), default=1000, show_default=True,
              help="With --protocol cdvae: valid crystals drawn (CDVAE: 1,000; another number is recorded "
                   "as a deviation).")
@json_option
@data_dir_option
def benchmark(samples: tuple[str, ...], reference: str, train: str | None, out: str | None, seed: int, max_samples: int | None,
              struct_cutoff: float | None, comp_cutoff: float | None, fingerprint_scope: str,
              fingerprint_shortcut: bool, coverage: bool, workers: int, cache_dir: str | None, reference_limit: int | None,
              no_figures: bool, novelty: bool, stability_n: int, rescale_volume: bool, protocol: str,
              cdvae_n_samples: int, as_json: bool, data_dir: str | None) -> None:
    """Validity, coverage (overall and per element), uniqueness/novelty, distributions, diversity, CSP, S.U.N.

    Beside CDVAE's metrics: Jensen-Shannon distances of space-group, crystal-system and element
    frequencies, W(volume per atom), element and space-group diversity (Vendi) and the HHI supply
    risk (LeMat-GenBench definitions). Several --samples write one comparison report.

    With --stability N, N valid samples are relaxed (CHGNet, FIRE fmax 0.1, E_hull on the MP-20
    reference hull) and their stability funnel is reported with both denominators. Give --out a
    folder of its own to keep the run folder's stability files (from `stability` / `screen`) apart.
    --no-coverage computes no fingerprint (samples or reference) and leaves the coverage metrics out.

    \b
    Example:
      llamat-cif benchmark --samples runs/default --reference mp20-test --out runs/default/bench
      llamat-cif benchmark --samples runs/default --out runs/default/bench --stability 300 --seed 0
      llamat-cif benchmark --samples runs/default --out runs/default/bench --no-coverage --stability 300
      llamat-cif benchmark --samples my_cifs/ --out bench/my_cifs
      llamat-cif benchmark --samples ours=runs/default --samples theirs=their_cifs/ --out bench/compare
    """
    from rich.table import Table

    from llamat_cif.data import DataError
    from llamat_cif.metrics.config import BenchmarkConfig
    from llamat_cif.metrics.run import run_benchmark

    json_mode(as_json)
    if rescale_volume and not stability_n:
        fail("--rescale-volume applies to the relaxations of --stability N; give --stability too")
    if protocol == "cdvae" and (not coverage or fingerprint_shortcut):
        fail("--protocol cdvae needs every-site fingerprints: drop --no-coverage / --fingerprint-shortcut")
    if protocol != "cdvae" and cdvae_n_samples != 1000:
        fail("--cdvae-samples applies to --protocol cdvae")
    if not coverage and (struct_cutoff is not None or comp_cutoff is not None or fingerprint_scope != "valid"
                         or fingerprint_shortcut):
        fail("--struct-cutoff, --comp-cutoff, --fingerprint-scope and --fingerprint-shortcut apply to coverage; "
             "drop them or --no-coverage")
    if stability_n:
        from llamat_cif.stability.relax import quiet_warnings

        quiet_warnings()  # as `llamat-cif stability` does: no per-CIF / per-step warning floods
    from llamat_cif.metrics.compare import ComparisonError, write_comparison
    from llamat_cif.metrics.sources import SourceError, iter_sources

    try:
        sets = list(iter_sources(samples))
    except SourceError as exc:
        fail(str(exc))
        return
    if len(sets) > 1 and not out:
        fail("a comparison of several --samples needs --out (each set goes to OUT/<label>/)")
    settings = dict(reference=reference, train=train, seed=seed, max_samples=max_samples,
                    struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff, fingerprint_scope=fingerprint_scope,
                    fingerprint_shortcut=fingerprint_shortcut, coverage=coverage, workers=workers, data_dir=data_dir, cache_dir=cache_dir,
                    reference_limit=reference_limit, figures=not no_figures, novelty=novelty,
                    stability=stability_n, rescale_volume=rescale_volume, protocol=protocol,
                    cdvae_n_samples=cdvae_n_samples)
    results = {}
    for label, src in sets:
        where = out if len(sets) == 1 else f"{out}/{label}"
        if len(sets) > 1:
            console.print(f"[bold]{label}[/]: {src}")
        try:
            results[label] = run_benchmark(BenchmarkConfig(samples=src, out=where, **settings))
        except (FileNotFoundError, ValueError, DataError) as exc:  # SourceError is a ValueError
            fail(f"{label}: {exc}" if len(sets) > 1 else str(exc))
            return
        except ImportError as exc:  # the potential's package (chgnet) for --stability
            fail(f"--stability needs the stability extras: {exc}")
            return
    if len(sets) > 1:
        try:
            summary = write_comparison(Path(out), [label for label, _ in sets], figures=not no_figures)
        except ComparisonError as exc:
            fail(str(exc))
            return
        _print_comparison(summary, [label for label, _ in sets])
        console.print(f"wrote {out}/comparison.md, {out}/comparison.csv"
                      + ("" if no_figures else f", {out}/figures/compare_*.png") + f" and {out}/<label>/")
        if as_json:
            emit_json({"comparison": summary, "sets": results})
        return
    result = results[sets[0][0]]
    table = Table(title=f"benchmark vs {result['reference']['description']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("count / denominator")
    for name, m in result["metrics"].items():
        v = m["value"]
        val = "n/a" if v is None else f"{v:.4f}"
        if m["numerator"] is not None and m["denominator"] is not None:
            cnt = f"{m['numerator']}/{m['denominator']} {m['denominator_name']}"
        elif m["denominator"] is not None:  # an estimate: no counted numerator
            cnt = f"of {m['denominator']} {m['denominator_name']}"
        else:
            cnt = ", ".join(f"{k} {n}" for k, n in m["counts"].items()) + (f" [{m['unit']}]" if m["unit"] else "")
        table.add_row(name, val, cnt)
    console.print(table)
    if "cdvae" in result:
        _print_cdvae(result["cdvae"])
    if "stability" in result:
        _print_geometry(result["stability"])
    where = out or sets[0][1]
    console.print(f"wrote {where}/metrics.json" + ("" if no_figures else f", {where}/report.md, {where}/figures/")
                  + f" in {result['protocol']['wall_time_s']} s")
    if as_json:
        emit_json(result)


def _print_cdvae(block: dict) -> None:
    """CDVAE's ``compute_metrics.py`` numbers (``--protocol cdvae``)."""
    from rich.table import Table

    p = block["protocol"]
    t = Table(title=f"CDVAE protocol ({p['n_samples']} valid samples, seed {p['seed']}; "
                    f"cutoffs {p['struct_cutoff']} / {p['comp_cutoff']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("count / denominator")
    for name, m in block["metrics"].items():
        val = "n/a" if m["value"] is None else f"{m['value']:.4f}"
        cnt = (f"{m['numerator']}/{m['denominator']} {m['denominator_name']}" if m["denominator"] is not None
               else ", ".join(f"{k} {n}" for k, n in m["counts"].items()))
        t.add_row(name, val, cnt)
    for name, why in block["not_computed"].items():
        t.add_row(name, "n/a", why)
    console.print(t)


def _print_geometry(section: dict) -> None:
    """The ``--stability`` geometry table: short contacts and volume per atom, chosen vs reference."""
    from rich.table import Table

    g = section["geometry"]
    t = Table(title=f"geometry ({g['short_contact_threshold']}); reference {g['reference']}")
    t.add_column("set")
    t.add_column("short contacts", justify="right")
    t.add_column("volume/atom Q1 / Q2 / Q3 (Å³)", justify="right")
    t.add_column("volume / predicted Q1 / Q2 / Q3", justify="right")
    for name, row in g["tables"].items():
        sc = row["short_contacts"]
        share = "" if sc["rate"] is None else f" ({100 * sc['rate']:.1f}%)"

        def q(x):
            return "n/a" if not x else " / ".join(f"{v:.3g}" for v in x)

        t.add_row(name, f"{sc['count']}/{sc['of']}{share}", q(row["volume_per_atom_quartiles"]),
                  q(row["volume_ratio_to_predicted_quartiles"]))
    console.print(t)


def _print_comparison(summary: dict, labels: list[str]) -> None:
    """The comparison table (headline metrics, one column per set)."""
    from rich.table import Table

    from llamat_cif.metrics.compare import HEADLINE, format_cell

    t = Table(title=f"comparison vs {summary['reference']['description']}")
    t.add_column("metric")
    for label in labels:
        t.add_column(label, justify="right")
    titles = dict(HEADLINE)
    for name, per_set in summary["table"].items():
        t.add_row(titles.get(name, name), *[format_cell(per_set.get(label)) for label in labels])
    console.print(t)
