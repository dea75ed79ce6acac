"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import click
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Data folder (default: $LLAMAT_CIF_DATA, else ~/.cache/llamat-cif/data).",
)
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")


def sampling_options(f):
    """``--temperature``, ``--top-p``, ``--top-k``; unset temperature / top-p take the model's
    ``generation_config.json`` (``llamat_cif.sampling.config.recommended_sampling``)."""
    f = click.option("--top-k", type=int, default=0, show_default=True, help="0 = off.")(f)
    f = click.option("--top-p", type=float, default=None,
                     help="Nucleus (top-p) cut [default: the model's generation_config.json; "
                          "llamat-cif-small: 0.9; else 1.0].")(f)
    return click.option("--temperature", type=float, default=None,
                        help="Sampling temperature [default: the model's generation_config.json; "
                             "llamat-cif-small: 0.7; else 1.0].")(f)


def physics_options(f):
    """``--min-contact-ratio``, ``--steer-contact-ratio`` and ``--volume-window`` (physical geometry
    in constrained decoding)."""
    f = click.option("--volume-window", default="auto", show_default=True, metavar="auto|off|LO,HI",
                     help="Constrained runs: volume per atom within LO..HI x the composition-based "
                          "prediction (auto: calibrated on MP-20 train, >= 99.5 % inside).")(f)
    f = click.option("--steer-volume-window", default="off", show_default=True, metavar="auto|off|LO,HI",
                     help="Constrained runs: the last cell length prefers a volume per atom within LO..HI x "
                          "the prediction when the model's tokens allow (auto: the central 90 % of MP-20 "
                          "train).")(f)
    f = click.option("--steer-anion-distance", default="auto", show_default=True,
                     type=click.Choice(["auto", "off"], case_sensitive=False),
                     help="Constrained runs: an anion site (O, F, S, N, Cl, Se, Br, I) is drawn first among "
                          "tokens that also keep a distance to atoms of its own element (auto: per anion, "
                          "the 5th percentile of MP-20 train, O-O 2.39 Å).")(f)
    f = click.option("--steer-cation-distance", default="off", show_default=True,
                     type=click.Choice(["auto", "off"], case_sensitive=False),
                     help="Constrained runs: the same for every other element with a calibration (metals, "
                          "metalloids, C, H ...; auto: per element, the 5th percentile of MP-20 train's "
                          "smallest same-element distance).")(f)
    f = click.option("--steer-contact-floor", type=float, default=None,
                     help="Constrained runs: where no token keeps the steer ratio, coordinates are drawn "
                          "among tokens that keep this ratio before the hard rule alone decides "
                          "[default: 0.7, the short-contact threshold the benchmark reports; 0 = off].")(f)
    f = click.option("--steer-contact-ratio", type=float, default=None,
                     help="Constrained runs: coordinates are drawn among tokens that keep this wider "
                          "contact ratio whenever some token does (within the top-p nucleus first, else from the "
                          "whole tempered distribution) [default: calibrated, "
                          "0.81: the 5th percentile of MP-20 train; 0 = off].")(f)
    return click.option("--min-contact-ratio", type=float, default=None,
                        help="Constrained runs: every atom pair at least this x its covalent-radius sum "
                             "[default: calibrated, 0.68: >= 99.9 % of MP-20 train pass; 0 = off].")(f)


def _apply(f, decorators):
    """Apply click decorators so the options show in the order listed."""
    for d in reversed(decorators):
        f = d(f)
    return f


_GENERATION = [
    click.option("--model", default="default", show_default=True,
                 help="Shipped model name ('default' = llamat-cif-small) or a local model/adapter folder."),
    click.option("--formula", default=None, help="Reduced formula every sample must have, e.g. LiFePO4."),
    click.option("--spacegroup", type=int, default=None, help="Space-group number every sample must declare."),
    click.option("--targets", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="CSV with target_formula[, target_spacegroup]: one sample per row (overrides -n)."),
    sampling_options,
    click.option("--batch-size", type=int, default=32, show_default=True, help="Sequences decoded together."),
    click.option("--constrained/--unconstrained", default=True, show_default=True,
                 help="Grammar-constrained decoding (parsable text, requested composition, min distance)."),
    click.option("--min-distance", type=float, default=0.5, show_default=True,
                 help="Å; the constraint refuses sites closer than this (0 = off)."),
    physics_options,
    click.option("--dead-end-redraws", type=int, default=2, show_default=True,
                 help="Constrained runs: a document whose look-ahead met a dead end (no admissible "
                      "token; the model's choice let through) is drawn again with a derived seed, up to "
                      "this many times (0 = keep it)."),
    click.option("--redraw-below-floor/--keep-below-floor", default=True, show_default=True,
                 help="Constrained runs: a finished crystal with a pair closer than the steering floor "
                      "(--steer-contact-floor, 0.7 x the covalent sum) is drawn again too, within "
                      "--dead-end-redraws."),
    click.option("--charge-balanced", is_flag=True, default=False,
                 help="Constrained runs: a formula the model chooses must be SMACT charge-balanced "
                      "(CDVAE compositional validity). Off by default, so validity measures the model."),
    click.option("--max-primitive-atoms", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Constrained CIF runs: a formula the model chooses has at most this many atoms per "
                      "primitive cell (written atoms / lattice points of the declared space group; MP-20's "
                      "domain is <= 20). A requested formula is never capped. 0 = off."),
    click.option("--max-new-tokens", type=int, default=1000, show_default=True, help="Tokens per document."),
    click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)."),
    click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads of the generator."),
    click.option("--decoder", type=click.Choice(["jump", "lean", "transformers"]),  # sampling.config.DECODERS
                 default="jump", show_default=True,
                 help="Decode loop: jump (constrained runs: text the grammar fixes is fed at once and the "
                      "model is asked only where it has a choice; the same distribution as lean, other "
                      "draws; unconstrained runs decode as lean), lean (plain LLaMA models; the same tokens "
                      "as transformers' generate() without its per-step overhead; other models fall back) "
                      "or transformers (generate())."),
]
#: keyword names of :func:`generation_options` (the fields of ``SampleConfig`` they set)
GENERATION_NAMES = ("model", "formula", "spacegroup", "targets", "temperature", "top_p", "top_k", "batch_size",
                    "constrained", "min_distance", "min_contact_ratio", "steer_contact_ratio", "steer_contact_floor",
                    "steer_volume_window", "steer_anion_distance", "steer_cation_distance", "volume_window", "charge_balanced", "dead_end_redraws",
                    "redraw_below_floor",
                    "max_primitive_atoms", "max_new_tokens", "device",
                    "threads", "decoder")


def generation_options(f):
    """The generation settings of ``generate`` and ``screen`` (all of ``SampleConfig`` but ``-n``,
    ``--out``, ``--seed`` and ``--shard``, which each command declares itself)."""
    return _apply(f, _GENERATION)


def sample_config(opts: dict, **run):
    """Pop :func:`generation_options`' values out of a command's keyword arguments into a
    ``SampleConfig`` (``run``: ``n``, ``out_dir``, ``seed``, ...).

    Raises:
        ValueError: settings ``SampleConfig`` refuses.
    """
    from llamat_cif.sampling import SampleConfig

    gen = {k: opts.pop(k) for k in GENERATION_NAMES}
    gen["min_distance"] = gen["min_distance"] or None  # 0 turns the floor off
    return SampleConfig(**gen, **run)


_RELAX = [
    click.option("--potential", default="chgnet", show_default=True,
                 help="'chgnet', 'sevennet-0' / 'sevennet-mf-0' / 'sevennet-l3i5' (extra [sevenn]), a CHGNet "
                      "checkpoint, or a matgl folder / name under $LLAMAT_CIF_MODELS/matgl. Several, comma-"
                      "separated ('chgnet,sevennet-0'): relax with the first, score the relaxed cell with "
                      "each (agreement columns e_hull:<name>, e_hull_spread, disagree)."),
    click.option("--disagree-above", type=click.FloatRange(min=0), default=0.1, show_default=True,
                 help="Agreement mode: flag a row when the potentials' E_hull differ by more (eV/atom)."),
    click.option("--hull", "hull_path", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="User hull: PhaseDiagram JSON or a JSON list of entries (default: MP-20 reference hull)."),
    click.option("--fmax", type=float, default=0.1, show_default=True, help="FIRE force threshold, eV/Å."),
    click.option("--max-steps", type=int, default=500, show_default=True, help="FIRE steps per structure."),
    click.option("--time-limit", type=float, default=300.0, show_default=True,
                 help="CPU seconds per structure (a safety net; --max-steps bounds a relaxation, so a busy "
                      "machine does not change verdicts). Wall and CPU time are both recorded."),
    click.option("--rescale-volume", is_flag=True,
                 help="Scale each structure isotropically to its composition-predicted volume before "
                      "relaxing (llamat_cif.physics.rescale_to_predicted); recorded in the protocol."),
    click.option("--cell", type=click.Choice(["primitive", "as-given"]), default="primitive", show_default=True,
                 help="Relax and score the primitive cell (spglib, symprec 0.1 Å) when it has fewer sites, or "
                      "the cell as given. n_sites_input / n_sites record both site counts."),
]
RELAX_NAMES = ("potential", "disagree_above", "hull_path", "fmax", "max_steps", "time_limit", "rescale_volume",
               "cell")


def relax_options(f):
    """The relaxation and scoring settings of ``stability`` and ``screen``."""
    return _apply(f, _RELAX)


def relax_settings(opts: dict) -> dict:
    """Pop :func:`relax_options`' values out of a command's keyword arguments: ``potential``,
    ``hull``, ``disagreement`` and ``relax`` (a ``RelaxConfig``), the fields ``StabilityConfig``
    and ``ScreenConfig`` share."""
    from llamat_cif.stability.relax import RelaxConfig

    o = {k: opts.pop(k) for k in RELAX_NAMES}
    relax = RelaxConfig(fmax=o["fmax"], max_steps=o["max_steps"], time_limit_s=o["time_limit"],
                        rescale_volume=o["rescale_volume"], primitive=o["cell"] == "primitive")
    return {"potential": o["potential"], "hull": o["hull_path"], "disagreement": o["disagree_above"],
            "relax": relax}


json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print the summary as one JSON object on stdout (tables, progress and messages go to stderr).")


def json_mode(enabled: bool) -> None:
    """With ``--json``: everything rich prints (our tables, the library's progress bars) goes to
    stderr, so stdout holds only the JSON object."""
    if not enabled:
        return
    import rich

    console.stderr = True
    rich.reconfigure(stderr=True)

    def restore() -> None:  # the command may run inside a longer-lived process (tests, notebooks)
        console.stderr = False
        rich.reconfigure()

    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(restore)


def emit_json(obj) -> None:
    """The summary on stdout as one line of JSON."""
    import json

    click.echo(json.dumps(obj, default=str))


def fail(message: str, code: int = 1) -> None:
    """Print an error in red and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise SystemExit(code)
