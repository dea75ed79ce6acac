"""``llamat-cif validate``: the validity suite on generated (or any) crystals."""

from __future__ import annotations

from pathlib import Path

import click

from llamat_cif.cli._common import console, emit_json, fail, json_mode, json_option


@click.command("validate")
@click.argument("input_path", metavar="INPUT")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (usually the run folder): gets validity.parquet and validity_summary.json.")
@click.option("--jobs", "n_jobs", type=int, default=2, show_default=True,
              help="Worker processes (each structure also gets a hard time limit there).")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True,
              help="Per-structure time limit in seconds.")
@click.option("--chunk-size", type=int, default=1000, show_default=True,
              help="Rows read, validated and written at a time (bounds memory).")
@click.option("--column", default=None, help="Text column of a table (default: text, else cif).")
@click.option("--fmt", type=click.Choice(["cif", "llamat"]), default=None,
              help="Force the text format (default: fmt column, else detected).")
@click.option("--targets", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Sidecar CSV/parquet: id, target_formula, target_spacegroup.")
@click.option("--limit", type=int, default=None, help="Validate only the first N structures.")
@click.option("--min-distance", type=float, default=0.5, show_default=True, help="CDVAE distance floor (Å).")
@click.option("--min-volume", type=float, default=0.1, show_default=True, help="CDVAE volume floor (Å^3).")
@click.option("--oxidation-states", default="cdvae", show_default=True,
              help="SMACT data: cdvae (SMACT 2.2.1 exactly, as CDVAE ran it), smact14 (today's SMACT copy of "
                   "the 2014 list: Ir -3, Zr electronegativity 1.33), icsd16, icsd24 (smact>=3 default), "
                   "pymatgen_sp, wiki.")
@click.option("--symprec", type=float, default=0.1, show_default=True, help="spglib tolerance (Å).")
@click.option("--bonds/--no-bonds", "check_bonds", default=True, show_default=True,
              help="CrystaLLM CrystalNN bond-length check (the slowest part).")
@click.option("--max-sites", type=int, default=1000, show_default=True,
              help="Refuse structures with more sites (before any neighbour list).")
@click.option("--keep-cif/--no-keep-cif", default=True, show_default=True,
              help="Store each parsed structure as CIF in the rows (for the stability stage).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Reuse finished chunks of an interrupted run with the same input and settings.")
@click.option("--protocol", type=click.Choice(["llamat-cif", "cdvae"]), default="llamat-cif", show_default=True,
              help="cdvae: also CDVAE's validity triple (comp_valid, struct_valid, valid over all texts, "
                   "'valid' requiring a CrystalNN fingerprint, as CDVAE's Crystal does); fingerprints the "
                   "valid structures (cached). Needs CDVAE's thresholds and --keep-cif.")
@json_option
def validate(input_path, out_dir, n_jobs, timeout_s, chunk_size, column, fmt, targets, limit, min_distance,
             min_volume, oxidation_states, symprec, check_bonds, max_sites, keep_cif, resume, protocol,
             as_json) -> None:
    """Check generated crystals: parse, structure, composition, self-consistency, conditions.

    \b
    INPUT is a folder of .cif files, a .zip of them, a CSV/parquet with a `cif` or `text`
    column, a run folder of `llamat-cif generate` (its samples.parquet, or an older run's
    samples.csv; RUN/samples.parquet works too), a file of concatenated CIFs, or DATASET:SPLIT
    (e.g. mp20:test).

    \b
    Writes OUT/validity.parquet (one row per structure) and OUT/validity_summary.json
    (counts, rates with named denominators, thresholds, versions). The summary is called
    validity_summary.json, not summary.json, so it can sit in a run folder beside the
    stability and benchmark summaries.
    """
    from llamat_cif.validators import run_validation
    from llamat_cif.validators.inputs import InputError

    json_mode(as_json)

    if protocol == "cdvae":
        from llamat_cif.validators.composition import resolve_oxidation_states

        try:
            oxidation_states = resolve_oxidation_states(oxidation_states)
        except ValueError as exc:
            fail(str(exc))
            return
        off = [f"{name} {got} (CDVAE: {want})" for name, got, want in (
            ("--min-distance", min_distance, 0.5), ("--min-volume", min_volume, 0.1),
            ("--oxidation-states", oxidation_states, "cdvae")) if got != want]
        if off:
            fail("--protocol cdvae uses CDVAE's thresholds; drop " + ", ".join(off))
            return
        if not keep_cif:
            fail("--protocol cdvae fingerprints the valid structures: drop --no-keep-cif")
            return
    try:
        summary = run_validation(
            input_path, out_dir, n_jobs=n_jobs, timeout_s=timeout_s, chunk_size=chunk_size, column=column, fmt=fmt,
            targets=targets, limit=limit, keep_cif=keep_cif, resume=resume, progress=True,
            min_distance=min_distance, min_volume=min_volume, oxidation_states=oxidation_states, symprec=symprec,
            check_bonds=check_bonds, max_sites=max_sites,
        )
    except (InputError, ValueError, TypeError) as exc:
        fail(str(exc))
        return
    if protocol == "cdvae":
        from llamat_cif.metrics.cdvae import add_cdvae_validity

        summary = add_cdvae_validity(out_dir, workers=max(1, n_jobs), show_progress=True)
    print_summary(summary, Path(out_dir))
    if as_json:
        emit_json(summary)


def _frac(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_summary(summary: dict, out_dir: Path) -> None:
    """The summary as a rich table: each count with its rate over n and over parsed."""
    from rich.table import Table

    n, parsed = summary["n"], summary["parsed"]

    def pct(num: int, den: int) -> str:
        return f"{100 * num / den:.1f}%" if den else "-"

    table = Table(title=f"validity ({n} structures)")
    table.add_column("check")
    table.add_column("count", justify="right")
    table.add_column("/ n", justify="right")
    table.add_column("/ parsed", justify="right")
    for key in ("parsed", "structurally_valid", "compositionally_valid", "valid"):
        table.add_row(key, str(summary[key]), pct(summary[key], n), pct(summary[key], parsed) if key != "parsed" else "")
    sc_ok, sc_n = summary["self_consistent"], summary["self_consistency_checked"]
    table.add_row("self_consistent", f"{sc_ok} of {sc_n} checked", pct(sc_ok, n), pct(sc_ok, parsed))
    if summary["condition_requested"]:
        ca_ok, ca_n = summary["condition_adherent"], summary["condition_requested"]
        table.add_row("condition_adherent", f"{ca_ok} of {ca_n} requested", pct(ca_ok, ca_n), "")
    table.add_row("timeouts", str(summary["timeouts"]), pct(summary["timeouts"], n), "")
    console.print(table)
    if "cdvae" in summary:
        c = summary["cdvae"]
        console.print("CDVAE protocol (over all texts; valid needs a CrystalNN fingerprint): " + ", ".join(
            f"{k} {c[k]['numerator']}/{c[k]['denominator']} ({_frac(c[k]['value'])})"
            for k in ("comp_valid", "struct_valid", "valid")))
    sps = summary.get("structures_per_s")
    console.print(f"oxidation states: {summary['protocol']['thresholds']['oxidation_states']}; "
                  f"wall {summary.get('wall_s')} s" + (f", {sps:.1f} structures/s" if sps else "")
                  + f"; rows: {out_dir / 'validity.parquet'}")
