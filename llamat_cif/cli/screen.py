"""``llamat-cif screen``: generate, validate, deduplicate, relax, E_hull, S.U.N., funnel table."""

from __future__ import annotations

import os

import click

from llamat_cif.cli._common import (
    console,
    data_dir_option,
    emit_json,
    fail,
    generation_options,
    json_mode,
    json_option,
    relax_options,
    relax_settings,
    sample_config,
    seed_option,
)
from llamat_cif.stability.relax import quiet_warnings


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-n", "n", type=int, default=20, show_default=True, help="Samples to generate.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder (rerun with the same folder to resume).")
@generation_options
@relax_options
@click.option("--relax-filter", type=click.Choice(["valid", "structural", "parsed"]), default="valid",
              show_default=True, help="Which samples are relaxed: CDVAE-valid, structurally valid, or all parsed.")
@click.option("--workers", type=click.IntRange(min=0), default=0,
              help="Processes for validation/relaxation [default: 0 = auto: one per CPU core, at most one per "
                   "8 structures, at most 8; 1 on a GPU]. Rows do not depend on it.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: generation, validation and relaxation as Ray tasks (pip install -e '.[ray]'); same "
                   "files and rows as local, for the same seed.")
@click.option("--address", default=None,
              help="With --executor ray: 'auto' or HOST:PORT of a running cluster (ray start --head); "
                   "default: start Ray on this machine.")
@click.option("--ray-cpus", type=click.IntRange(min=1), default=None,
              help="With --executor ray and no --address: CPUs of the Ray instance started here (default: all).")
@click.option("--progress/--no-progress", default=True)
@seed_option
@json_option
@data_dir_option
def screen(n, out_dir, relax_filter, workers, executor, address, ray_cpus, progress, seed, as_json, data_dir,
           **opts) -> None:
    """Generate N crystals and screen them down to stable, unique, novel candidates.

    Stages: generate -> validate -> deduplicate -> relax (FIRE) -> E_hull (MP-20 reference hull)
    -> S.U.N. -> funnel. Each stage streams into --out; rerunning resumes (with either executor).
    The generation options are those of `generate`, the relaxation options those of `stability`.

    \b
    On Ray:  ray start --head --num-cpus 8        (then `ray start --address HEAD:6379` on workers)
             llamat-cif screen -n 10000 --out runs/big --executor ray --address auto
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_warnings()
    json_mode(as_json)
    from llamat_cif.executors.ray_executor import RayUnavailable, executor_from_options
    from llamat_cif.model import ModelLoadError
    from llamat_cif.screen import ScreenConfig, ScreenError, run_screen
    from llamat_cif.stability import HullError, PotentialError, StabilityResumeError

    if executor == "local" and ray_cpus is not None:
        fail("--ray-cpus applies to --executor ray")
    if address is not None and ray_cpus is not None:
        fail("--ray-cpus sizes a Ray instance started here; a cluster at --address has its own")
    try:
        runner = executor_from_options(executor, address, ray_cpus)
    except ValueError as exc:
        fail(str(exc))
        return
    try:
        cfg = ScreenConfig(sample=sample_config(opts, n=n, out_dir=out_dir, seed=seed), **relax_settings(opts),
                           relax_filter=relax_filter, n_workers=workers)
        if runner is not None:
            runner.start()
            console.print(f"[bold]executor[/]: {runner.describe()}")
        try:
            funnel = run_screen(cfg, data_dir=data_dir, progress=progress, executor=runner,
                                on_stage=lambda stage, msg: console.print(f"[bold]{stage}[/]: {msg}"))
        finally:
            if runner is not None:
                runner.shutdown()
    except (PotentialError, HullError, ScreenError, StabilityResumeError, ModelLoadError, ValueError,
            OSError, RayUnavailable) as exc:
        fail(str(exc))
    print_funnel(funnel)
    console.print(f"results in {out_dir}: samples.parquet, validity.parquet, stability.parquet, sun.json, funnel.json")
    if as_json:
        emit_json(funnel)


def print_funnel(funnel: dict) -> None:
    """The funnel as a rich table (counts and share of all generated)."""
    from rich.table import Table

    t = Table(title=f"screening funnel (share of {funnel['stages'][0]['denominator']} generated)")
    t.add_column("stage")
    t.add_column("count", justify="right")
    t.add_column("share", justify="right")
    for s in funnel["stages"]:
        share = f"{100 * s['rate']:.1f}%" if s["rate"] is not None else "-"
        t.add_row(s["stage"], str(s["numerator"]), share)
    m = funnel["msun"]
    t.add_row("M.S.U.N. (metastable, unique, novel)", str(m["numerator"]),
              f"{100 * m['rate']:.1f}%" if m["rate"] is not None else "-")
    console.print(t)
    if funnel.get("novelty_reference"):
        console.print(f"novelty vs {funnel['novelty_reference']}")
