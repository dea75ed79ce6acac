"""``llamat-cif data``: list, verify and fetch the crystal datasets."""

from __future__ import annotations

import click
from rich.table import Table

from llamat_cif import data as D
from llamat_cif.cli._common import console, data_dir_option, fail
from llamat_cif.paths import data_dir as resolve_data_dir


@click.group()
def data() -> None:
    """List, verify and fetch the crystal datasets the toolkit knows."""


@data.command("list")
@data_dir_option
def list_(data_dir: str | None) -> None:
    """Show each dataset, its splits, row counts and whether its files are present."""
    root = resolve_data_dir(data_dir)
    table = Table(title=f"datasets in {root}")
    for col in ("dataset", "split", "present", "rows (available)", "rows (full split)", "files / note"):
        table.add_column(col)
    for ds in D.REGISTRY.values():
        for sp_name in ds.splits:
            st = D.split_status(ds.name, sp_name, data_dir)
            colour = {"full": "green", "available subset": "yellow", "partial": "red", "missing": "red"}[st.source]
            files = ", ".join(f"{p.parent.name}/{p.name}" for p in st.files) or "; ".join(st.missing)
            if st.note:
                files += f"\n[dim]{st.note}[/]"
            table.add_row(
                ds.name, sp_name, f"[{colour}]{st.source}[/]",
                f"{st.expected_rows:,}" if st.expected_rows and st.files else "-",
                f"{st.full_rows:,}" if st.full_rows else "-", files,
            )
    console.print(table)


@data.command()
@data_dir_option
def verify(data_dir: str | None) -> None:
    """Check the data files against their SHA-256 checksums (exit 1 on any mismatch)."""
    results = D.verify(data_dir)
    root = resolve_data_dir(data_dir)
    table = Table(title=f"checksums in {root}")
    table.add_column("file")
    table.add_column("status")
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        if r.status == "missing" and r.expected is None:
            continue
        colour = {"ok": "green", "mismatch": "bold red", "missing": "yellow", "unchecked": "dim"}[r.status]
        table.add_row(str(r.path.relative_to(root)) if r.path.is_relative_to(root) else str(r.path), f"[{colour}]{r.status}[/]")
    console.print(table)
    console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if counts.get("mismatch"):
        fail(f"{counts['mismatch']} file(s) do not match their checksum")


@data.command()
@click.argument("name")
@data_dir_option
def fetch(name: str, data_dir: str | None) -> None:
    """Download the public CSVs of dataset NAME (fails at once when offline)."""
    try:
        paths = D.fetch(name, data_dir)
    except D.DataError as exc:
        fail(str(exc))
    for p in paths:
        console.print(f"[green]ok[/] {p}")
