"""``llamat-cif stability``: relax structures with an ML potential and score E_hull."""

from __future__ import annotations

import json
import os

import click

from llamat_cif.cli._common import (
    console,
    data_dir_option,
    emit_json,
    fail,
    json_mode,
    json_option,
    relax_options,
    relax_settings,
    seed_option,
)
from llamat_cif.stability.relax import quiet_warnings


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder [INPUT itself when it is a run folder].")
@relax_options
@click.option("--workers", type=click.IntRange(min=0), default=0,
              help="Worker processes [default: 0 = auto: one per CPU core, at most one per 8 structures, "
                   "at most 8; 1 on a GPU]. Rows do not depend on it.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads of a one-worker run (default: 1 on CPU, torch's on GPU); each of several workers uses 1.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Rows per append to the output.")
@click.option("--device", default=None, help="cpu / cuda (default: cuda when available).")
@click.option("--limit", type=int, default=None, help="Score only the first N structures.")
@click.option("--progress/--no-progress", default=True)
@seed_option
@json_option
@data_dir_option
def stability(input_path, out_dir, workers, threads, batch_size, device, limit, progress, seed, as_json, data_dir,
              **opts) -> None:
    """Relax INPUT's structures (FIRE + FrechetCellFilter) and compute E_hull.

    INPUT: a run folder with samples.parquet or an older run's samples.csv (valid rows only when
    validity.parquet exists), a folder of .cif files (recursive), a .zip of them, one .cif file, a
    CSV/parquet with a `cif` column, or an ASE database / extended-XYZ file. Every structure becomes a row: one that cannot be read or
    that the validators' input checks refuse (cell parameters, size: at most 1000 sites) is an
    error row, not relaxed. A repeated id gets ~2, ~3... as in `validate`. Rows stream to
    OUT/stability.parts/ after every batch and are committed into OUT/stability.parquet at the end
    (also on Ctrl-C); rerunning resumes (with the same settings: a
    folder relaxed under other settings is refused). The relaxation is deterministic, --seed is
    recorded only.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_warnings()
    json_mode(as_json)
    from pathlib import Path

    from llamat_cif.stability import (
        HullError,
        PotentialError,
        StabilityConfig,
        StabilityResumeError,
        read_structures_input,
        run_stability,
    )

    try:
        items = read_structures_input(input_path)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if limit is not None:
        items = items.iloc[:limit]
    out = Path(out_dir) if out_dir else (Path(input_path) if Path(input_path).is_dir() else None)
    if out is None:
        fail("--out is required when INPUT is a file")
    settings = relax_settings(opts)
    cfg = StabilityConfig(**settings, n_workers=workers, batch_size=batch_size, device=device, threads=threads)
    relax = settings["relax"]
    console.print(f"{len(items)} structures -> {out / 'stability.parquet'} (potential {cfg.potential}, "
                  f"fmax {relax.fmax}" + (", rescaled to the predicted volume first)" if relax.rescale_volume else ")"))
    try:
        run_stability(items, out, cfg, data_dir=data_dir, progress=progress)
    except (PotentialError, HullError, StabilityResumeError, ValueError) as exc:
        fail(str(exc))
    summary = json.loads((out / "stability_summary.json").read_text())
    summary["seed"] = seed  # the relaxation is deterministic; the seed is recorded with the run
    (out / "stability_summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, seed)
    if as_json:
        emit_json(summary)


def _print_summary(summary: dict, seed: int) -> None:
    from rich.table import Table

    t = Table(title="stability")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("structures", str(summary["n_structures"]))
    t.add_row("errors", str(summary["n_errors"]))
    c = summary["converged"]
    t.add_row("converged / relaxed", f"{c['numerator']} / {c['denominator']}")
    for key, label in (("metastable", "E_hull < {thr} eV/atom"), ("stable", "E_hull <= {thr} eV/atom"),
                       ("metastable_converged", "E_hull < {thr} eV/atom, of converged"),
                       ("stable_converged", "E_hull <= {thr} eV/atom, of converged")):
        r = summary.get(key)
        if r is None:
            continue
        pct = f"{100 * r['rate']:.1f}%" if r["rate"] is not None else "-"
        t.add_row(label.format(thr=r["threshold_ev_atom"]), f"{r['numerator']} / {r['denominator']} ({pct})")
    if summary.get("n_unconverged_scored"):
        t.add_row("scored but unconverged (E_hull as the relaxation ended)", str(summary["n_unconverged_scored"]))
    if summary.get("median_e_hull") is not None:
        t.add_row("median E_hull (eV/atom)", f"{summary['median_e_hull']:.3f}")
    if summary.get("median_wall_s") is not None:
        t.add_row("median s / relaxation", f"{summary['median_wall_s']:.2f}")
    agreement = summary.get("agreement")
    if agreement:
        for name, a in agreement["potentials"].items():
            m = a["metastable"]
            t.add_row(f"metastable by {name} (single point on the relaxed cell)",
                      f"{m['numerator']} / {m['denominator']}")
            if a["median_abs_diff_ev_atom"] is not None:
                t.add_row(f"median |E_hull({name}) - E_hull({agreement['relaxed_with']})|",
                          f"{a['median_abs_diff_ev_atom']:.3f}")
        d, every = agreement.get("disagree"), agreement["metastable_by_every_potential"]
        if d:
            t.add_row(f"potentials disagree by > {agreement['threshold_ev_atom']} eV/atom",
                      f"{d['numerator']} / {d['denominator']}")
        t.add_row("metastable by every potential", f"{every['numerator']} / {every['denominator']}")
    console.print(t)
    p = summary["protocol"]
    console.print(f"potential {p['potential']} ({p['energy_scale']} scale, MP2020 applied: "
                  f"{p['mp2020_correction_applied']}); hull: {p['hull']}; seed {seed}")
    if p.get("relax", {}).get("rescale_volume"):
        console.print("each structure was rescaled to its composition-predicted volume before relaxing")
