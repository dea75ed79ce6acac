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
    f = click.option("--steer-contact-ratio", type=float, default=None,
                     help="Constrained runs: coordinates are drawn among tokens that keep this wider "
                          "contact ratio whenever the model's nucleus holds one [default: calibrated, "
                          "0.81: the 5th percentile of MP-20 train; 0 = off].")(f)
    return click.option("--min-contact-ratio", type=float, default=None,
                        help="Constrained runs: every atom pair at least this x its covalent-radius sum "
                             "[default: calibrated, 0.68: >= 99.9 % of MP-20 train pass; 0 = off].")(f)


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
