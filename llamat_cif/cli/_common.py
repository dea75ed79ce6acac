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


def fail(message: str, code: int = 1) -> None:
    """Print an error in red and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise SystemExit(code)
