"""Structure sets from anywhere: what ``benchmark --samples`` and ``--reference`` accept.

A set is a table with one row per input structure: ``id`` (unique: a repeated id gets ``~2``,
``~3``... as in ``validate``, :class:`llamat_cif.validators.inputs.UniqueIds`), ``cif`` (CIF text, empty where the
input could not be read) and ``read_error`` (empty when it could), plus whatever extra columns
the input carries (``text``, ``target_formula``, DFT properties of a registry split...). Every
input structure becomes a row: an unreadable file, a frame ASE cannot convert, or a table cell
holding no text is a row with a named error, never a crashed benchmark.

Accepted inputs (:func:`load_structure_set`):

* a run folder of ``llamat-cif generate`` / ``screen`` (holds ``samples.parquet``, or ``samples.csv``
  from older versions; read by :func:`llamat_cif.sampling.rows.read_samples`);
* a registry split ``<dataset>-<split>`` (``mp20-test``, ``mp20-train``, ``perov5-test``...);
* a folder of ``.cif`` files, searched recursively (id: path below the folder, without ``.cif``);
* a ``.zip`` of ``.cif`` files; a single ``.cif`` file (several ``data_`` blocks: one row each);
* a CSV/TSV (optionally gzipped) or parquet table with a ``cif`` column, and
  ``id`` or ``material_id`` when present (else the row number);
* an ASE database (``.db``) or any trajectory/structure file ASE reads (extended XYZ, ``.traj``,
  POSCAR...), every frame a row (id: ``id`` / ``material_id`` in its info or key-value pairs, else
  ``<file stem>-<frame>``);
* in Python: a list of pymatgen ``Structure`` or ASE ``Atoms`` objects, or a ``DataFrame``.

Structures given as objects (ASE frames, pymatgen objects) are written as P1 CIF text by pymatgen's
``CifWriter`` (:func:`llamat_cif.cif.structure_to_cif`): CIF text is the currency of the metrics and of
the content-addressed fingerprint cache.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from llamat_cif.validators.inputs import UniqueIds

#: Bytes read from one file at most (a larger "CIF" is not a crystal a benchmark can use).
MAX_READ_BYTES = 4_000_000
TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".pq")


class SourceError(ValueError):
    """The input as a whole cannot be read as a structure set (one line, names the input)."""


@dataclass
class StructureSet:
    """Structures read from one input, one row per input structure.

    Attributes:
        table: ``id``, ``cif``, ``read_error`` (+ the input's extra columns), in input order.
        kind: ``run``, ``registry``, ``cif-folder``, ``zip``, ``cif-file``, ``table``, ``ase`` or
            ``objects``.
        name: how the input was named (path, registry name, or the label given in Python).
        description: one line for reports (kind, name, row count).
        run_dir: the run folder when ``kind == "run"`` (its validity/stability files are read).
        registry: ``(dataset, split)`` when ``kind == "registry"``.
    """

    table: pd.DataFrame
    kind: str
    name: str
    description: str
    run_dir: Path | None = None
    registry: tuple[str, str] | None = None

    @property
    def n_read_errors(self) -> int:
        return int(self.table["read_error"].astype(str).str.len().gt(0).sum())

    def content_key(self) -> str:
        """Hash of the ids and CIF texts in order (names caches derived from this set)."""
        return content_key(self.table["id"], self.table["cif"])


def content_key(ids, cifs, *, salt: str = "") -> str:
    """Hash of ids and CIF texts in order (length-prefixed, so ["ab", "c"] != ["a", "bc"]), plus a salt."""
    h = hashlib.sha256(salt.encode())
    for i, c in zip(map(str, ids), map(str, cifs), strict=True):
        for part in (i, c):
            b = part.encode()
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()[:24]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["id", "cif", "read_error"])
    for c in ("id", "cif", "read_error"):
        if c not in df.columns:
            df[c] = ""
    unique = UniqueIds()  # the validators' rule: a repeated id gets ~2, ~3...
    df["id"] = [unique(i) for i in df["id"].astype(str)]
    df["cif"] = df["cif"].map(lambda v: v if isinstance(v, str) else "")
    df["read_error"] = df["read_error"].map(lambda v: v if isinstance(v, str) else "")
    return df[["id", "cif", "read_error", *[c for c in df.columns if c not in ("id", "cif", "read_error")]]]


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}"[:300]


def _read_text_file(path: Path) -> tuple[str, str]:
    """``(text, error)`` of one file; never raises."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_READ_BYTES + 1)
    except OSError as exc:
        return "", f"unreadable file: {_one_line(exc)}"
    if len(data) > MAX_READ_BYTES:
        return "", f"file larger than {MAX_READ_BYTES} bytes"
    if b"\x00" in data:
        return "", "binary file (NUL bytes), not CIF text"
    if not data.strip():
        return "", "empty file"
    return data.decode("utf-8", errors="replace"), ""


def structure_cif(obj: Any) -> str:
    """P1 CIF text of a pymatgen ``Structure`` or an ASE ``Atoms`` (raises on anything else)."""
    from pymatgen.core import Structure

    if not isinstance(obj, Structure):
        from ase import Atoms

        if not isinstance(obj, Atoms):
            raise TypeError(f"not a pymatgen Structure or ASE Atoms: {type(obj).__name__}")
        if not obj.pbc.all() or obj.cell.rank < 3:
            raise ValueError("ASE Atoms without a 3-D periodic cell")
        from pymatgen.io.ase import AseAtomsAdaptor

        obj = AseAtomsAdaptor.get_structure(obj)
    from llamat_cif.cif import structure_to_cif

    return structure_to_cif(obj)


def _object_rows(objects: Sequence[Any], ids: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for i, obj in zip(ids, objects, strict=True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.append({"id": i, "cif": structure_cif(obj), "read_error": ""})
        except Exception as exc:  # noqa: BLE001 - one bad object is one error row
            rows.append({"id": i, "cif": "", "read_error": f"not convertible to a crystal: {_one_line(exc)}"})
    return rows


def _ase_id(info: dict[str, Any], fallback: str) -> str:
    for k in ("id", "material_id", "name"):
        v = info.get(k)
        if v is not None and str(v).strip():
            return str(v)
    return fallback


def _ase_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an ASE database (``.db``) or any file ``ase.io.read`` takes."""
    if path.suffix.lower() == ".db":
        from ase.db import connect

        try:
            db = connect(str(path))
            records = [(row.toatoms(), {**row.key_value_pairs}, f"{path.stem}-{row.id}") for row in db.select()]
        except Exception as exc:  # noqa: BLE001 - the file as a whole is not a database
            raise SourceError(f"{path}: not a readable ASE database ({_one_line(exc)})") from exc
    else:
        from ase.io import read

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frames = read(str(path), index=":")
        except Exception as exc:  # noqa: BLE001 - ASE raises many kinds for a foreign file
            raise SourceError(f"{path}: ASE cannot read it as structures ({_one_line(exc)})") from exc
        if not isinstance(frames, list):
            frames = [frames]
        records = [(a, dict(a.info), f"{path.stem}-{k}") for k, a in enumerate(frames)]
    if not records:
        raise SourceError(f"{path}: no structures in it")
    ids = [_ase_id(info, fb) for _, info, fb in records]
    return _object_rows([a for a, _, _ in records], ids)


def _table_rows(path: Path) -> pd.DataFrame:
    low = path.name.lower()
    try:
        if low.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        else:
            sep = "\t" if low.endswith((".tsv", ".tsv.gz")) else ","
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many kinds
        raise SourceError(f"{path}: not a readable table ({_one_line(exc)})") from exc
    return table_from_frame(df, name=str(path))


def table_from_frame(df: pd.DataFrame, *, name: str = "table") -> pd.DataFrame:
    """Rows of a table with a ``cif`` column and ``id`` / ``material_id`` when present."""
    if "cif" not in df.columns:
        raise SourceError(f"{name}: needs a 'cif' column of CIF text; has {', '.join(map(str, df.columns))}")
    out = df.copy()
    if "id" not in out.columns:
        out.insert(0, "id", out["material_id"] if "material_id" in out.columns
                   else [f"row{i:06d}" for i in range(len(out))])
    out["cif"] = out["cif"].map(lambda v: v if isinstance(v, str) else "")
    out["read_error"] = ["" if t.strip() else "empty 'cif' cell" for t in out["cif"]]
    return _frame(out.to_dict("records"))


def _cif_folder_rows(path: Path) -> list[dict[str, Any]]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".cif" and not p.is_dir())
    if not files:
        raise SourceError(f"{path}: a folder without samples (samples.parquet, samples.csv) and without .cif files")
    rows = []
    for p in files:
        text, err = _read_text_file(p)
        rows.append({"id": p.relative_to(path).with_suffix("").as_posix(), "cif": text, "read_error": err})
    return rows


def _zip_rows(path: Path) -> list[dict[str, Any]]:
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path}: not a readable zip file ({_one_line(exc)})") from exc
    rows = []
    with zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".cif") and not n.endswith("/")
                       and not n.startswith("__MACOSX/"))
        if not names:
            raise SourceError(f"{path}: no .cif files in the zip")
        for n in names:
            text, err = "", ""
            try:
                with zf.open(n) as fh:
                    data = fh.read(MAX_READ_BYTES + 1)
                if len(data) > MAX_READ_BYTES:
                    err = f"file larger than {MAX_READ_BYTES} bytes"
                elif not data.strip():
                    err = "empty file"
                else:
                    text = data.decode("utf-8", errors="replace")
            except Exception as exc:  # noqa: BLE001 - a corrupt member is one error row
                err = f"unreadable zip member: {_one_line(exc)}"
            rows.append({"id": Path(n).with_suffix("").as_posix(), "cif": text, "read_error": err})
    return rows


def _cif_file_rows(path: Path) -> list[dict[str, Any]]:
    text, err = _read_text_file(path)
    if err:
        return [{"id": path.stem, "cif": "", "read_error": err}]
    blocks = _split_blocks(text)
    if len(blocks) <= 1:
        return [{"id": path.stem, "cif": text, "read_error": ""}]
    return [{"id": f"{path.stem}-{k}", "cif": b, "read_error": ""} for k, b in enumerate(blocks)]


def _split_blocks(text: str) -> list[str]:
    """CIF ``data_`` blocks of a text (a comment preamble stays with the first block)."""
    blocks: list[list[str]] = []
    cur: list[str] = []
    seen = False
    for line in text.splitlines(keepends=True):
        if line.lstrip().lower().startswith("data_"):
            if seen:
                blocks.append(cur)
                cur = []
            seen = True
        cur.append(line)
    blocks.append(cur)
    return ["".join(b) for b in blocks if "".join(b).strip()]


def run_samples(run_dir: Path) -> pd.DataFrame:
    """The samples of a run folder (:func:`llamat_cif.sampling.rows.read_samples`: ``samples.parquet``
    or a legacy ``samples.csv``), with an ``id`` (row order when the table has none)."""
    from llamat_cif.sampling.rows import read_samples

    df = read_samples(run_dir)
    if "cif" not in df.columns:
        raise ValueError(f"{run_dir}: the samples have no 'cif' column (columns: {list(df.columns)})")
    if "id" not in df.columns:
        df.insert(0, "id", [f"s{i:06d}" for i in range(len(df))])
    return df


def registry_split(name: str) -> tuple[str, str] | None:
    """``(dataset, split)`` when ``name`` reads as a registry split (``mp20-test``), else None."""
    from llamat_cif.data import DataError, get_dataset

    dataset, sep, split = name.rpartition("-")
    if not sep or not dataset or "/" in name or os.sep in name:
        return None
    try:
        ds = get_dataset(dataset)
    except DataError:
        return None
    return (dataset, split) if split in ds.splits else None


def load_structure_set(
    source: Any,
    *,
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> StructureSet:
    """Read any accepted input (see the module docstring) into a :class:`StructureSet`.

    Args:
        source: a path, a registry name, a ``DataFrame``, or a sequence of pymatgen ``Structure``
            / ASE ``Atoms`` objects.
        data_dir: data folder for registry names (overrides ``$LLAMAT_CIF_DATA``).
        name: label for objects and frames given in Python (default ``"structures"``).

    Raises:
        SourceError: the input does not exist or, as a whole, holds no readable structure list
            (an unknown table layout, a file no reader takes). Single bad structures are rows.
    """
    if isinstance(source, pd.DataFrame):
        label = name or "table"
        table = table_from_frame(source, name=label)
        return StructureSet(table, "table", label, f"table {label} ({len(table)} rows)")
    if isinstance(source, Sequence) and not isinstance(source, str | bytes | os.PathLike):
        label = name or "structures"
        table = _frame(_object_rows(list(source), [f"{label}-{i}" for i in range(len(source))]))
        return StructureSet(table, "objects", label, f"{len(table)} structures given in Python ({label})")
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists():
        reg = registry_split(text)
        if reg is None:
            raise SourceError(f"{text}: no such file or folder, and not a registry split "
                              "(<dataset>-<split>, e.g. mp20-test)")
        from llamat_cif.data import load_split

        df = load_split(*reg, data_dir=data_dir)  # DataError (data missing) goes to the caller
        table = _frame(df.assign(read_error="").to_dict("records"))
        desc = ("MP-20 test, available subset" if reg == ("mp20", "test") else
                "MP-20 train, available subset" if reg == ("mp20", "train") else f"{reg[0]} {reg[1]}")
        return StructureSet(table, "registry", text, f"{desc} (n={len(table)})", registry=reg)
    low = path.name.lower()
    if path.is_dir():
        from llamat_cif.sampling.rows import samples_file

        if samples_file(path) is not None:
            df = run_samples(path)
            df["cif"] = df["cif"].astype(str)
            df["read_error"] = ""
            table = _frame(df.to_dict("records"))
            return StructureSet(table, "run", text, f"run folder {text} ({len(table)} samples)", run_dir=path)
        table = _frame(_cif_folder_rows(path))
        kind, desc = "cif-folder", f"folder of CIFs {text}"
    elif low.endswith(".zip"):
        table, kind, desc = _frame(_zip_rows(path)), "zip", f"zip of CIFs {text}"
    elif low.endswith(TABLE_SUFFIXES):
        table, kind, desc = _table_rows(path), "table", f"table {text}"
    elif low.endswith(".cif"):
        table, kind, desc = _frame(_cif_file_rows(path)), "cif-file", f"CIF file {text}"
    else:
        table, kind, desc = _frame(_ase_rows(path)), "ase", f"ASE-readable file {text}"
    n_err = int(table["read_error"].str.len().gt(0).sum())
    desc += f" ({len(table)} structures" + (f", {n_err} unreadable)" if n_err else ")")
    return StructureSet(table, kind, text, desc)


def describe_set(sset: StructureSet, n: int) -> str:
    """How results name a set of ``n`` structures (``"MP-20 test, available subset (n=7342)"``)."""
    if sset.registry == ("mp20", "test"):
        return f"MP-20 test, available subset (n={n})"
    if sset.registry:
        return f"{sset.name} (n={n})"
    return f"{sset.kind} {sset.name} (n={n})"


def iter_sources(values: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``(label, source)`` for ``--samples`` values: ``LABEL=PATH`` or a bare path/name.

    A bare value is labelled by its last path component (``runs/default`` -> ``default``); labels
    must be unique (they name the sub-folders of a comparison).

    Raises:
        SourceError: two values share a label.
    """
    seen: set[str] = set()
    for v in values:
        label, sep, src = v.partition("=")
        if not sep or not label or "/" in label or Path(v).exists():
            label, src = Path(v.rstrip("/")).name or v, v
        label = label.strip()
        if label in seen:
            raise SourceError(f"two --samples are labelled {label!r}: give LABEL=PATH to tell them apart")
        seen.add(label)
        yield label, src


__all__ = ["SourceError", "StructureSet", "describe_set", "iter_sources", "load_structure_set", "registry_split",
           "run_samples", "structure_cif", "table_from_frame"]
