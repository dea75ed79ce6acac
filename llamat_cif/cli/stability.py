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
    seed_option,
)
from llamat_cif.stability.relax import quiet_warnings


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder [INPUT itself when it is a run folder].")
@click.option("--potential", default="chgnet", show_default=True,
              help="'chgnet', 'sevennet-0' / 'sevennet-mf-0' / 'sevennet-l3i5' (extra [sevenn]), a CHGNet "
                   "checkpoint, or a matgl folder / name under $LLAMAT_CIF_MODELS/matgl. Several, comma-"
                   "separated (chgnet,sevennet-0): relax with the first, score the relaxed cell with each, "
                   "and flag rows where their E_hull differ by more than --disagree-above.")
@click.option("--disagree-above", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Agreement mode: flag a row when the potentials' E_hull differ by more (eV/atom).")
@click.option("--hull", "hull_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="User hull: PhaseDiagram JSON or a JSON list of entries (default: MP-20 reference hull).")
@click.option("--fmax", type=float, default=0.1, show_default=True, help="FIRE force threshold, eV/Å.")
@click.option("--max-steps", type=int, default=500, show_default=True, help="FIRE steps per structure.")
@click.option("--time-limit", type=float, default=300.0, show_default=True,
              help="CPU seconds per structure (a safety net; --max-steps bounds a relaxation, so a busy "
                   "machine does not change verdicts). Wall and CPU time are both recorded.")
@click.option("--rescale-volume", is_flag=True,
              help="Scale each structure isotropically to its composition-predicted volume before "
                   "relaxing (llamat_cif.physics.rescale_to_predicted); recorded in the protocol.")
@click.option("--cell", type=click.Choice(["primitive", "as-given"]), default="primitive", show_default=True,
              help="Relax and score the primitive cell (spglib, symprec 0.1 Å) when it has fewer sites, or "
                   "the cell as given. n_sites_input / n_sites record both site counts.")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes (CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads of a one-worker run (default: torch's); each of several workers uses 1.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Rows per append to the output.")
@click.option("--device", default=None, help="cpu / cuda (default: cuda when available).")
@click.option("--limit", type=int, default=None, help="Score only the first N structures.")
@click.option("--progress/--no-progress", default=True)
@seed_option
@json_option
@data_dir_option
def stability(input_path, out_dir, potential, disagree_above, hull_path, fmax, max_steps, time_limit, rescale_volume, cell,
              workers, threads, batch_size, device, limit, progress, seed, as_json, data_dir) -> None:
    """Relax INPUT's structures (FIRE + FrechetCellFilter) and compute E_hull.

    INPUT: a run folder with samples.csv (valid rows only when validity.parquet exists), a folder
    of .cif files (recursive), a .zip of them, one .cif file, a CSV/parquet with a `cif` column, or
    an ASE database / extended-XYZ file. Every structure becomes a row: one that cannot be read or
    that the validators' input checks refuse (cell parameters, size: at most 1000 sites) is an
    error row, not relaxed. A repeated id gets ~2, ~3... as in `validate`. Rows stream to
    OUT/stability.parquet after every batch; rerunning resumes (with the same settings: a
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
        RelaxConfig,
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
    cfg = StabilityConfig(potential=potential, hull=hull_path,
                          relax=RelaxConfig(fmax=fmax, max_steps=max_steps, time_limit_s=time_limit,
                                            rescale_volume=rescale_volume, primitive=cell == "primitive"),
                          n_workers=workers, batch_size=batch_size, device=device, threads=threads,
                          disagreement=disagree_above)
    console.print(f"{len(items)} structures -> {out / 'stability.parquet'} (potential {potential}, fmax {fmax}"
                  + (", rescaled to the predicted volume first)" if rescale_volume else ")"))
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
