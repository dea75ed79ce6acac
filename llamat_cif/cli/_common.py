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
    ``generation_config.json`` (``llamat_cif.sample.recommended_sampling``)."""
    f = click.option("--top-k", type=int, default=0, show_default=True, help="0 = off.")(f)
    f = click.option("--top-p", type=float, default=None,
                     help="Nucleus (top-p) cut [default: the model's generation_config.json; "
                          "llamat-cif-small: 0.9; else 1.0].")(f)
    return click.option("--temperature", type=float, default=None,
                        help="Sampling temperature [default: the model's generation_config.json; "
                             "llamat-cif-small: 0.7; else 1.0].")(f)


def fail(message: str, code: int = 1) -> None:
    """Print an error in red and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise SystemExit(code)
