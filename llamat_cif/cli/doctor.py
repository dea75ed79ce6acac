"""``llamat-cif doctor``: what is installed, which device, which data and models are found."""

from __future__ import annotations

import os
import platform

import click
from rich.table import Table

from llamat_cif.cli._common import console, data_dir_option

PACKAGES = ("llamat-cif", "torch", "transformers", "tokenizers", "peft", "accelerate", "pymatgen",
            "smact", "chgnet", "matgl", "ase", "matminer", "pymatviz", "pandas", "click", "rich")


@click.command()
@data_dir_option
def doctor(data_dir: str | None) -> None:
    """Report package versions, the torch device, and the data and model paths found."""
    from llamat_cif import data as D
    from llamat_cif.paths import DATA_ENV, MODELS_ENV, models_dir, shipped_models_dir
    from llamat_cif.paths import data_dir as resolve_data_dir
    from llamat_cif.protocol import package_versions

    t = Table(title="packages")
    t.add_column("package")
    t.add_column("version")
    for p, v in package_versions(PACKAGES, missing="[dim]not installed[/]").items():
        t.add_row(p, v)
    console.print(t)
    console.print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPU cores")
    try:
        import torch

        dev = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
        console.print(f"torch device: [bold]{dev}[/], threads {torch.get_num_threads()}")
    except Exception as exc:  # noqa: BLE001
        console.print(f"[red]torch unavailable:[/] {exc}")
    root = resolve_data_dir(data_dir)
    console.print(f"data dir: {root} ({'$' + DATA_ENV + ' set' if os.environ.get(DATA_ENV) else 'default'}) "
                  f"{'[green]exists[/]' if root.is_dir() else '[red]missing[/]'}")
    n_present = sum(D.split_status(ds.name, sp, data_dir).source != "missing"
                    for ds in D.REGISTRY.values() for sp in ds.splits)
    n_total = sum(len(ds.splits) for ds in D.REGISTRY.values())
    console.print(f"dataset splits present: {n_present}/{n_total} (see `llamat-cif data list`)")
    mroot = models_dir()
    console.print(f"models dir: {mroot} ({'$' + MODELS_ENV + ' set' if os.environ.get(MODELS_ENV) else 'default'}) "
                  f"{'[green]exists[/]' if mroot.is_dir() else '[dim]missing[/]'}")
    shipped = sorted(p.name for p in shipped_models_dir().iterdir() if p.is_dir()) if shipped_models_dir().is_dir() else []
    console.print(f"shipped generator models: {', '.join(shipped) or '[red]none[/]'}")
