"""Dataset registry: which crystal sets the toolkit knows, where their files are, how to load them.

Every set is a table of structures in CIF text (column ``cif``) plus properties, stored as
``<data_dir>/<folder>/<split>.csv[.gz]``. ``data_dir`` comes from :func:`llamat_cif.paths.data_dir`
(``$LLAMAT_CIF_DATA`` or ``--data-dir``).

MP-20 is special: the full CDVAE CSVs (``mp_20/{train,val,test}.csv``) are used when present, but a
common installation only has *pieces* of it (random 1000-row pilots and the binary+ternary rows of
val and test). The registry knows which pieces make up the **available** subsets:

* MP-20 test, available subset = ``mp_20_biternary/test`` ∪ ``mp_20_pilot/test`` (7,342 ids)
* MP-20 train, available subset = ``mp_20_pilot/train`` ∪ ``mp_20_pilot/val`` ∪ ``mp_20_biternary/val``
  (8,344 ids; it contains original *val* rows, so it is "train+val" of the original split)

and says so wherever it reports numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from llamat_cif.paths import data_dir as resolve_data_dir


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or cannot be fetched."""


@dataclass(frozen=True)
class Piece:
    """One CSV file holding (part of) a split."""

    path: str  # relative to the data dir, e.g. "mp_20_pilot/test.csv.gz"
    sha256: str | None = None
    rows: int | None = None
    url: str | None = None  # public source, for `data fetch`


@dataclass(frozen=True)
class Split:
    """A split of a dataset: either one full file, or the union of available pieces."""

    name: str
    full: Piece | None  # the complete split as published, if we know where to get it
    pieces: tuple[Piece, ...] = ()  # available parts, used when ``full`` is absent
    full_rows: int | None = None  # rows of the complete published split
    available_rows: int | None = None  # distinct ids in the union of ``pieces``
    note: str = ""


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    id_column: str | None  # column with a stable structure id (None: row index)
    splits: dict[str, Split] = field(default_factory=dict)
    property_columns: tuple[str, ...] = ()


_CDVAE = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
_DIFFCSP = "https://raw.githubusercontent.com/jiaor17/DiffCSP/main/data"

_MP20_COLUMNS = ("formation_energy_per_atom", "band_gap", "e_above_hull", "spacegroup.number")

REGISTRY: dict[str, Dataset] = {
    "mp20": Dataset(
        name="mp20",
        description="MP-20 (CDVAE): 45,229 Materials Project structures, <= 20 atoms, E_hull < 0.08 eV/atom",
        id_column="material_id",
        property_columns=_MP20_COLUMNS + ("pretty_formula",),
        splits={
            "train": Split(
                "train",
                full=Piece("mp_20/train.csv", url=f"{_CDVAE}/mp_20/train.csv"),
                pieces=(
                    Piece("mp_20_pilot/train.csv.gz", "a89a708d16d80401fe256d6742680f2e02ed5746f1a685cfea1b509754fe728e", 1000),
                    Piece("mp_20_pilot/val.csv.gz", "b03d4aeb363a7ec3018cea66e2e69fce3ca3b518c900531a03a1266d5d392eb6", 1000),
                    Piece("mp_20_biternary/val.csv.gz", "f0a1743241ade50592ce24dd3efc8b5e4d4d84c6a72e827c16699e83ce254f07", 7140),
                ),
                full_rows=27136,
                available_rows=8344,
                note="available subset = pilot train + pilot val + biternary val (original val rows included)",
            ),
            "val": Split(
                "val",
                full=Piece("mp_20/val.csv", url=f"{_CDVAE}/mp_20/val.csv"),
                pieces=(
                    Piece("mp_20_pilot/val.csv.gz", "b03d4aeb363a7ec3018cea66e2e69fce3ca3b518c900531a03a1266d5d392eb6", 1000),
                    Piece("mp_20_biternary/val.csv.gz", "f0a1743241ade50592ce24dd3efc8b5e4d4d84c6a72e827c16699e83ce254f07", 7140),
                ),
                full_rows=9047,
                available_rows=7344,
                note="available subset is folded into the available train subset; do not use it as held-out data",
            ),
            "test": Split(
                "test",
                full=Piece("mp_20/test.csv", url=f"{_CDVAE}/mp_20/test.csv"),
                pieces=(
                    Piece("mp_20_biternary/test.csv.gz", "e96144ffbad7fc61b0012456ead22d2c8f6993282a4fef584fbf906581086e02", 7118),
                    Piece("mp_20_pilot/test.csv.gz", "c0b5922164322338d0e282d4429b2dc8ab31ffa39d456d05e102b6ec88ea7262", 1000),
                ),
                full_rows=9046,
                available_rows=7342,
                note="available subset = biternary test + pilot test",
            ),
        },
    ),
    "mpts52": Dataset(
        name="mpts52",
        description="MPTS-52 (DiffCSP): time-split Materials Project structures up to 52 atoms",
        id_column="material_id",
        property_columns=("energy_above_hull", "formation_energy_per_atom", "year", "theoretical"),
        splits={
            "train": Split("train", full=Piece("mpts_52/train.csv", url=f"{_DIFFCSP}/mpts_52/train.csv"), full_rows=27380),
            "val": Split(
                "val",
                full=Piece("mpts_52/val.csv.gz", "af56fcaa2ed7f36e9ec0ce95ae409c73f4c909644153c3d441c76f87a4d1c11d", 5000, f"{_DIFFCSP}/mpts_52/val.csv"),
                full_rows=5000,
            ),
            "test": Split(
                "test",
                full=Piece("mpts_52/test.csv.gz", "5c082d8cd8b5398bb9971f076e2f459771e01b45b1a2d206f665bd99a1369feb", 8096, f"{_DIFFCSP}/mpts_52/test.csv"),
                full_rows=8096,
            ),
        },
    ),
    "perov5": Dataset(
        name="perov5",
        description="perov-5 (CDVAE): 18,928 cubic perovskites, 5 atoms",
        id_column="material_id",
        property_columns=("formula", "heat_all", "heat_ref", "dir_gap", "ind_gap"),
        splits={
            "train": Split("train", full=Piece("perov_5/train.csv", url=f"{_CDVAE}/perov_5/train.csv"), full_rows=11356),
            "val": Split(
                "val",
                full=Piece("perov_5/val.csv.gz", "0ccb294347573724b6236d7b7073acc810ac3ddc3f05c9e368d472cfaeb076bd", 3787, f"{_CDVAE}/perov_5/val.csv"),
                full_rows=3787,
            ),
            "test": Split(
                "test",
                full=Piece("perov_5/test.csv.gz", "30733e34225f6d6b75961a67ac79e2b465f5b33aeba6ed71933dc8621cfc86af", 3785, f"{_CDVAE}/perov_5/test.csv"),
                full_rows=3785,
            ),
        },
    ),
    "carbon24": Dataset(
        name="carbon24",
        description="carbon-24 (CDVAE): 10,153 carbon allotropes, 6-24 atoms",
        id_column="material_id",
        property_columns=("energy_per_atom",),
        splits={
            "train": Split("train", full=Piece("carbon_24/train.csv", url=f"{_CDVAE}/carbon_24/train.csv"), full_rows=6091),
            "val": Split(
                "val",
                full=Piece("carbon_24/val.csv.gz", "4f3565ee009585cd923b9ebdf9caac90a26e89a55bd6b002280be30e07d0837b", 2032, f"{_CDVAE}/carbon_24/val.csv"),
                full_rows=2032,
            ),
            "test": Split(
                "test",
                full=Piece("carbon_24/test.csv.gz", "b22821ed4cc0278483cae399a8c8a61b5d7e884a708c56aa257376e0d1ed24ee", 2030, f"{_CDVAE}/carbon_24/test.csv"),
                full_rows=2030,
            ),
        },
    ),
    "wbm": Dataset(
        name="wbm",
        description="WBM (Wang et al. 2021, as in Matbench Discovery): hypothetical structures; a 10,000-row sample",
        id_column=None,
        property_columns=("formation_energy_per_atom", "band_gap"),
        splits={
            "val": Split(
                "val",
                full=Piece("wbm/val.csv.gz", "5a2fe636cbac4759f600d0ecd1740289db9740eb90014f773dbe02cab9de0aa2", 10000),
                full_rows=10000,
                note="no public CSV in this layout; obtain from the WyckoffTransformer data folder",
            ),
        },
    ),
}

ALIASES = {"mp_20": "mp20", "mp-20": "mp20", "mpts_52": "mpts52", "mpts-52": "mpts52", "perov_5": "perov5",
           "perov-5": "perov5", "carbon_24": "carbon24", "carbon-24": "carbon24"}


def get_dataset(name: str) -> Dataset:
    """Look up a dataset by name (``mp20``, ``mpts52``, ``perov5``, ``carbon24``, ``wbm`` or aliases)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def _get_split(name: str, split: str) -> tuple[Dataset, Split]:
    ds = get_dataset(name)
    if split not in ds.splits:
        raise DataError(f"dataset {ds.name!r} has no split {split!r}; splits: {', '.join(ds.splits)}")
    return ds, ds.splits[split]


def _find(root: Path, rel: str) -> Path | None:
    """A piece may be stored gzipped or not; return whichever exists."""
    p = root / rel
    if p.exists():
        return p
    alt = root / (rel[:-3] if rel.endswith(".gz") else rel + ".gz")
    return alt if alt.exists() else None


@dataclass(frozen=True)
class SplitStatus:
    dataset: str
    split: str
    source: str  # "full", "available subset" or "missing"
    files: tuple[Path, ...]
    expected_rows: int | None
    full_rows: int | None
    missing: tuple[str, ...]
    note: str


def split_status(name: str, split: str, data_dir: str | Path | None = None) -> SplitStatus:
    """Which files of a split are present, and whether the full split or only pieces are used."""
    ds, sp = _get_split(name, split)
    root = resolve_data_dir(data_dir)
    if sp.full is not None and (p := _find(root, sp.full.path)):
        return SplitStatus(ds.name, split, "full", (p,), sp.full_rows, sp.full_rows, (), sp.note if not sp.pieces else "")
    if sp.pieces:
        found = [_find(root, pc.path) for pc in sp.pieces]
        missing = tuple(str(root / pc.path) for pc, f in zip(sp.pieces, found, strict=True) if f is None)
        files = tuple(f for f in found if f is not None)
        src = "available subset" if not missing else ("partial" if files else "missing")
        return SplitStatus(ds.name, split, src, files, sp.available_rows, sp.full_rows, missing, sp.note)
    expected = str(root / sp.full.path) if sp.full else "?"
    return SplitStatus(ds.name, split, "missing", (), sp.full_rows, sp.full_rows, (expected,), sp.note)


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Load a split as a table with columns ``id``, ``cif`` and the dataset's property columns.

    For MP-20 without the full CSVs, the available pieces are concatenated and deduplicated by
    ``material_id`` (first occurrence kept, pieces in registry order).

    Args:
        name: dataset name (see :data:`REGISTRY`).
        split: ``train``, ``val`` or ``test``.
        data_dir: overrides ``$LLAMAT_CIF_DATA``.
        limit: keep only the first ``limit`` rows (after deduplication).

    Raises:
        DataError: when no file of the split is present (the message names the expected paths).
    """
    ds, _ = _get_split(name, split)
    st = split_status(name, split, data_dir)
    if not st.files:
        raise DataError(
            f"{ds.name}/{split}: no data file found. Expected {' or '.join(st.missing)} "
            f"(data dir from --data-dir or ${'LLAMAT_CIF_DATA'}); `llamat-cif data fetch {ds.name}` "
            "downloads the public CSVs where there is internet."
        )
    frames = []
    for f in st.files:
        df = pd.read_csv(f)
        df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed") or c == ""], errors="ignore")
        df["source_file"] = f"{f.parent.name}/{f.name}"
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if ds.id_column and ds.id_column in df.columns:
        df = df.drop_duplicates(subset=ds.id_column, keep="first").reset_index(drop=True)
        df.insert(0, "id", df[ds.id_column].astype(str))
    else:
        df.insert(0, "id", [f"{ds.name}-{split}-{i}" for i in range(len(df))])
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    return df


def iter_structures(
    name: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> Iterator[tuple[str, object, dict]]:
    """Yield ``(id, pymatgen Structure, properties)`` for a split.

    Rows whose CIF pymatgen cannot read are yielded with ``None`` as structure and the error in
    ``properties["error"]`` rather than stopping the iteration.
    """
    from llamat_cif.cif import read_cif

    df = load_split(name, split, data_dir=data_dir, limit=limit)
    props_cols = [c for c in df.columns if c not in ("id", "cif")]
    for row in df.itertuples(index=False):
        rowd = row._asdict()
        props = {c: rowd[c] for c in props_cols if c in rowd}
        try:
            s = read_cif(rowd["cif"])
        except Exception as exc:  # noqa: BLE001 - a bad row must not stop the batch
            props["error"] = f"{type(exc).__name__}: {exc}"
            s = None
        yield rowd["id"], s, props


# ----------------------------------------------------------------------------------- checksums


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    status: str  # "ok", "mismatch", "missing", "unchecked"
    expected: str | None
    actual: str | None


def verify(data_dir: str | Path | None = None) -> list[VerifyResult]:
    """Check every known file against its recorded SHA-256.

    Checksums come from the registry; a ``SHA256SUMS`` file in the data dir (or its parent, paths
    relative to it) adds checksums for files the registry does not pin (e.g. hull tables).
    """
    root = resolve_data_dir(data_dir)
    expected: dict[Path, str | None] = {}
    for ds in REGISTRY.values():
        for sp in ds.splits.values():
            for pc in ((sp.full,) if sp.full else ()) + sp.pieces:
                p = root / pc.path
                if pc.sha256 or p.exists():
                    expected.setdefault(p, pc.sha256)
    for sums in (root / "SHA256SUMS", root.parent / "SHA256SUMS"):
        if sums.exists():
            for line in sums.read_text().splitlines():
                parts = line.split(maxsplit=1)
                if len(parts) != 2:
                    continue
                digest, rel = parts[0], parts[1].strip().lstrip("*")
                # paths may be relative to the sums file's folder or to its parent (a bundle root)
                for base in (sums.parent, sums.parent.parent):
                    p = (base / rel).resolve()
                    if p.is_relative_to(root) and p.exists():
                        expected[p] = digest
                        break
            break
    out = []
    for p, digest in sorted(expected.items()):
        if not p.exists():
            out.append(VerifyResult(p, "missing", digest, None))
            continue
        actual = sha256_file(p)
        status = "unchecked" if digest is None else ("ok" if actual == digest else "mismatch")
        out.append(VerifyResult(p, status, digest, actual))
    return out


# ----------------------------------------------------------------------------------- fetching


def _online(host: str = "raw.githubusercontent.com", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def fetch(name: str, data_dir: str | Path | None = None, *, timeout: float = 3.0) -> list[Path]:
    """Download the public CSVs of a dataset into the data dir.

    Fails at once (a 3 s connection probe) when offline, with a message listing where the files
    must be placed by hand.
    """
    ds = get_dataset(name)
    root = resolve_data_dir(data_dir)
    targets = [(sp.full, root / sp.full.path) for sp in ds.splits.values() if sp.full and sp.full.url]
    if not targets:
        raise DataError(f"{ds.name}: no public download location is known; place the files by hand.")
    where = "\n  ".join(str(t) for _, t in targets)
    if not _online(timeout=timeout):
        raise DataError(
            f"cannot reach the download host (offline?). Place the {ds.name} CSV files here by hand:\n  {where}\n"
            f"(or set $LLAMAT_CIF_DATA / --data-dir to a folder that has them)"
        )
    done = []
    for piece, target in targets:
        if target.exists() or _find(root, piece.path):
            done.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        try:
            with urllib.request.urlopen(piece.url, timeout=60) as resp, open(tmp, "wb") as fh:
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(f"download of {piece.url} failed ({exc}); place the file at {target}") from exc
        tmp.rename(target)
        done.append(target)
    return done


def open_text(path: Path):
    """Open a possibly gzipped text file."""
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)
