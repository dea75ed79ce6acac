"""The main job: generate -> validate -> deduplicate -> relax -> E_hull -> S.U.N. -> funnel.

Every stage writes its output into the run folder and a rerun skips whatever is already there, so
an interrupted screen resumes where it stopped without losing or duplicating rows:

=============  =====================================  ==========================================
stage          output in ``out_dir``                  resume unit
=============  =====================================  ==========================================
generate       ``samples.parquet``                    batches (``llamat_cif.sampling.generate``)
validate       ``validity.parquet`` + summary         chunks (``llamat_cif.validators``)
deduplicate    ``dedup.csv``                          recomputed (deterministic, cheap)
relax + E_hull ``stability.parquet`` + summary        rows (parts per batch, ``llamat_cif.runs``)
S.U.N.         ``sun.parquet``, ``sun.json``          recomputed from the stability rows
funnel         ``funnel.json``                        recomputed
=============  =====================================  ==========================================

The resolved configuration is written to ``screen_config.json`` beside the results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from llamat_cif.protocol import E_HULL_METASTABLE, E_HULL_STABLE
from llamat_cif.sampling.config import SampleConfig
from llamat_cif.sampling.rows import read_samples, samples_file
from llamat_cif.stability.pipeline import StabilityConfig, run_stability
from llamat_cif.stability.relax import RelaxConfig, auto_workers
from llamat_cif.stability.summary import rate


@dataclass(frozen=True)
class ScreenConfig:
    """Settings of one screen run (written to ``screen_config.json``): the generation run it starts
    with, and what happens to its samples.

    Attributes:
        sample: the generation settings, exactly as ``llamat-cif generate`` takes them
            (:class:`llamat_cif.sampling.SampleConfig`: ``n``, ``out_dir``, model, seed, conditions,
            sampling, physical decoding, device); the screen's run folder is ``sample.out_dir``.
        potential: ML potential (``llamat_cif.stability.load_potential``; ``"a,b"``: agreement mode).
        relax: relaxer settings.
        hull: user hull file (None: MP-20 reference hull).
        n_workers: processes for validation and relaxation; 0: auto
            (:func:`llamat_cif.stability.relax.auto_workers`, for each stage's number of structures).
        relax_filter: which validated rows go on to relaxation: ``"valid"`` (structural and
            compositional, CDVAE), ``"structural"`` (charge balance not required: intermetallics
            and SMACT-unbalanced compounds are relaxed too) or ``"parsed"`` (everything that decoded).
        dedup_before_relax: relax one representative per group of matching structures.
        novelty_reference: training structures for novelty ("mp20" = MP-20 train, available subset).
        e_hull_stable / e_hull_metastable: thresholds, eV/atom.
        disagreement: agreement mode (several potentials): flag a row whose E_hull differ by more.

    Build one with :meth:`of`, which takes the fields of both (``ScreenConfig.of(n=200,
    out_dir="runs/s", seed=0, potential="chgnet")``).
    """

    sample: SampleConfig
    potential: str = "chgnet"
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    hull: str | None = None
    n_workers: int = 0
    relax_filter: str = "valid"
    dedup_before_relax: bool = True
    novelty_reference: str | None = "mp20"
    e_hull_stable: float = E_HULL_STABLE
    e_hull_metastable: float = E_HULL_METASTABLE
    disagreement: float = 0.1  # agreement mode: flag rows whose potentials' E_hull differ by more (eV/atom)

    def __post_init__(self) -> None:
        if self.sample.targets and not self.sample.constrained:
            raise ValueError("--targets needs constrained decoding (drop --unconstrained)")
        if self.n_workers < 0:
            raise ValueError(f"workers must be >= 0 (0: auto), got {self.n_workers}")
        if self.relax_filter not in ("valid", "structural", "parsed"):
            raise ValueError(f"relax filter must be valid, structural or parsed, got {self.relax_filter!r}")

    @classmethod
    def of(cls, **settings: Any) -> ScreenConfig:
        """A screen config from flat keywords: :class:`SampleConfig` fields go to ``sample``, the rest
        are the screen's own (an unknown name raises ``TypeError``)."""
        names = {f.name for f in fields(SampleConfig)}
        sample = SampleConfig(**{k: v for k, v in settings.items() if k in names})
        return cls(sample=sample, **{k: v for k, v in settings.items() if k not in names})

    # the generation settings the later stages read as well
    @property
    def n(self) -> int:
        return self.sample.n

    @property
    def out_dir(self) -> str:
        return self.sample.out_dir

    @property
    def model(self) -> str:
        return self.sample.model

    @property
    def device(self) -> str | None:
        return self.sample.device


Hook = Callable[[str, str], None]  # (stage, message)


class ScreenError(RuntimeError):
    """A stage cannot run (e.g. no generator and no samples)."""


def run_screen(config: ScreenConfig, *, data_dir: str | Path | None = None, progress: bool = True,
               on_stage: Hook | None = None, executor: Any = None) -> dict:
    """Run (or resume) every stage and return the funnel dict (also ``out_dir/funnel.json``).

    Args:
        config: the screen's settings.
        data_dir: data folder override (hull, training set).
        progress: rich progress bars.
        on_stage: called with ``(stage, message)`` after each stage.
        executor: a started :class:`llamat_cif.executors.RayExecutor` to run generation,
            validation and relaxation on Ray (same files, same rows as a local run; deduplication,
            S.U.N. and the funnel run here); None runs everything here.
    """
    from llamat_cif.model import resolve_model_path
    from llamat_cif.stability.agreement import potential_names
    from llamat_cif.stability.potentials import resolve_potential

    out = Path(config.out_dir)
    # refused before any work (and before the folder is claimed): a bad potential or model
    for name in potential_names(config.potential):
        resolve_potential(name)
    if samples_file(out) is None:
        resolve_model_path(config.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "screen_config.json").write_text(json.dumps(_config_dict(config), indent=2, default=str))
    say = on_stage or (lambda stage, msg: None)
    timings: dict[str, float] = {}

    t = time.time()
    samples = stage_generate(config, progress=progress, executor=executor)
    timings["generate"] = time.time() - t
    say("generate", f"{len(samples)} samples in {samples_file(out).name}")

    t = time.time()
    validity = stage_validate(config, data_dir=data_dir, progress=progress, executor=executor)
    timings["validate"] = time.time() - t
    n_valid = int(validity["valid"].fillna(False).astype(bool).sum())
    say("validate", f"{n_valid} / {len(validity)} valid; relaxing rows that pass: {config.relax_filter}")

    t = time.time()
    dedup = stage_dedup(config, samples, validity)
    timings["deduplicate"] = time.time() - t
    say("deduplicate", f"{int(dedup['unique'].sum())} unique of {len(dedup)} passing {config.relax_filter}")

    t = time.time()
    stab = stage_stability(config, samples, dedup, data_dir=data_dir, progress=progress, executor=executor)
    timings["relax_ehull"] = time.time() - t
    say("relax + E_hull", f"{len(stab)} rows in stability.parquet")

    t = time.time()
    sun = stage_sun(config, stab, n_generated=len(samples), data_dir=data_dir)
    timings["sun"] = time.time() - t

    funnel = build_funnel(config, samples, validity, dedup, stab, sun)
    funnel["wall_s_this_run"] = timings
    funnel["executor"] = executor.describe() if executor is not None else "local"
    (out / "funnel.json").write_text(json.dumps(funnel, indent=2, default=str))
    return funnel


def _config_dict(config: ScreenConfig) -> dict:
    d = asdict(config)
    d["relax"] = config.relax.protocol()
    return d


# ------------------------------------------------------------------------------------ stages


def stage_generate(config: ScreenConfig, *, progress: bool = True, executor: Any = None) -> pd.DataFrame:
    """Generate (or finish generating) the samples; skipped when the folder's committed table (or an
    older run's ``samples.csv``) already has ``n`` rows."""
    path = samples_file(config.out_dir)
    if path is not None and path.is_file():
        df = read_samples(path)
        if len(df) >= config.n:
            return df
    from llamat_cif.sampling import generate

    return generate(config.sample, progress=progress, executor=executor)


def stage_validate(config: ScreenConfig, *, data_dir: str | Path | None = None, progress: bool = True,
                   executor: Any = None) -> pd.DataFrame:
    """Validate the samples into ``validity.parquet`` (the validators resume by chunk)."""
    from llamat_cif.validators.run import run_validation

    out = Path(config.out_dir)
    jobs = config.n_workers or auto_workers(config.sample.n, "cpu")  # validation runs on the CPU
    run_validation(samples_file(out), out, n_jobs=jobs, keep_cif=True, resume=True,
                   progress=progress, executor=executor)
    v = pd.read_parquet(out / "validity.parquet")
    v["id"] = v["id"].astype(str)
    return v


def stage_dedup(config: ScreenConfig, samples: pd.DataFrame, validity: pd.DataFrame) -> pd.DataFrame:
    """Group passing structures that match each other; one representative per group is relaxed.

    Writes ``dedup.csv`` (``id, unique, duplicate_of``) over the rows passing ``config.relax_filter``.
    """
    from llamat_cif.cif import read_cif_or_none
    from llamat_cif.metrics.matching import unique_representatives

    valid = validity[passing(validity, config.relax_filter)]
    cifs = _valid_cifs(samples, valid)
    ids = list(cifs)
    if config.dedup_before_relax:
        rep = unique_representatives(ids, [read_cif_or_none(cifs[i]) for i in ids])
    else:
        rep = {i: i for i in ids}
    # explicit dtypes: with no valid rows an untyped empty column would break boolean indexing
    df = pd.DataFrame({"id": pd.Series(ids, dtype=object),
                       "unique": pd.Series([rep[i] == i for i in ids], dtype=bool),
                       "duplicate_of": pd.Series([None if rep[i] == i else rep[i] for i in ids], dtype=object)})
    df.to_csv(Path(config.out_dir) / "dedup.csv", index=False)
    return df


FILTER_COLUMNS = {"valid": "valid", "structural": "structurally_valid", "parsed": "parsed"}


def passing(validity: pd.DataFrame, relax_filter: str) -> pd.Series:
    """Boolean mask of validity rows that go on to relaxation under ``relax_filter``."""
    if relax_filter not in FILTER_COLUMNS:
        raise ScreenError(f"relax_filter must be one of {sorted(FILTER_COLUMNS)}, got {relax_filter!r}")
    return validity[FILTER_COLUMNS[relax_filter]].fillna(False).astype(bool)


def _valid_cifs(samples: pd.DataFrame, valid: pd.DataFrame) -> dict[str, str]:
    """CIF per valid id: the validator's parsed CIF, else the samples' ``cif`` column."""
    by_sample = dict(zip(samples["id"].astype(str), samples.get("cif", pd.Series([""] * len(samples))), strict=True))
    vcif = dict(zip(valid["id"], valid["cif"], strict=True)) if "cif" in valid.columns else {}
    out = {}
    for i in valid["id"]:
        c = vcif.get(i)
        out[i] = c if isinstance(c, str) and c.strip() else by_sample.get(i, "")
    return out


def stage_stability(config: ScreenConfig, samples: pd.DataFrame, dedup: pd.DataFrame, *,
                    data_dir: str | Path | None = None, progress: bool = True, executor: Any = None) -> pd.DataFrame:
    """Relax and score the unique valid structures into ``stability.parquet`` (resumes by row)."""
    out = Path(config.out_dir)
    validity = pd.read_parquet(out / "validity.parquet")
    validity["id"] = validity["id"].astype(str)
    cifs = _valid_cifs(samples, validity[validity["id"].isin(set(dedup["id"]))])
    todo = dedup.loc[dedup["unique"].astype(bool), "id"].tolist()
    items = pd.DataFrame({"id": todo, "cif": [cifs[i] for i in todo]})
    sc = StabilityConfig(potential=config.potential, hull=config.hull, relax=config.relax,
                         n_workers=config.n_workers, batch_size=1 if len(items) < 64 else 8, device=config.device,
                         e_hull_metastable=config.e_hull_metastable, disagreement=config.disagreement)
    return run_stability(items, out, sc, data_dir=data_dir, progress=progress, executor=executor)


def stage_sun(config: ScreenConfig, stab: pd.DataFrame, *, n_generated: int,
              data_dir: str | Path | None = None) -> pd.DataFrame:
    """Stable / unique / novel flags (``sun.parquet``) and rates over all generated (``sun.json``)."""
    from llamat_cif.metrics.sun import TrainingSet, load_chemical_systems, sun_summary, sun_table

    training = TrainingSet.mp20_train(data_dir) if config.novelty_reference == "mp20" else None
    try:
        systems = load_chemical_systems(data_dir)
    except FileNotFoundError:
        systems = None
    ok = stab[stab["error"].isna() | (stab["error"] == "")] if len(stab) else stab
    flags = sun_table(ok, training=training, chemical_systems=systems, e_hull_stable=config.e_hull_stable,
                      e_hull_metastable=config.e_hull_metastable) if len(ok) else pd.DataFrame(
        columns=["id", "unique", "novel", "stable", "metastable", "sun", "msun"])
    out = Path(config.out_dir)
    flags.to_parquet(out / "sun.parquet", index=False)
    summary = sun_summary(flags, n_generated=n_generated, training_name=training.name if training else None,
                          e_hull_stable=config.e_hull_stable, e_hull_metastable=config.e_hull_metastable)
    (out / "sun.json").write_text(json.dumps(summary, indent=2, default=str))
    return flags


# ------------------------------------------------------------------------------------ funnel


def build_funnel(config: ScreenConfig, samples: pd.DataFrame, validity: pd.DataFrame, dedup: pd.DataFrame,
                 stab: pd.DataFrame, sun: pd.DataFrame) -> dict:
    """Counts at each stage; every rate is over all generated samples."""
    n = len(samples)
    decoded = int((samples["cif"].astype(str).str.strip() != "").sum()) if "cif" in samples else 0
    ok = stab[stab["error"].isna() | (stab["error"] == "")] if len(stab) else stab

    def cnt(df: pd.DataFrame, col: str) -> int:
        return int(df[col].fillna(False).astype(bool).sum()) if len(df) and col in df else 0

    stages = [
        ("generated", n),
        ("decoded (parsed to a structure)", decoded),
        ("valid (structural + compositional)", cnt(validity, "valid")),
        (f"passing '{config.relax_filter}' and unique before relaxation", cnt(dedup, "unique")),
        ("relaxed without error", len(ok)),
        ("converged (FIRE, fmax)", cnt(ok, "converged")),
        (f"metastable (E_hull < {config.e_hull_metastable})", cnt(sun, "metastable")),
        (f"stable (E_hull <= {config.e_hull_stable})", cnt(sun, "stable")),
        ("stable & unique after relaxation", int((sun["stable"] & sun["unique"]).sum()) if len(sun) else 0),
        ("S.U.N. (stable, unique, novel)", cnt(sun, "sun")),
    ]
    return {
        "denominator_is": "all generated samples",
        "stages": [{"stage": s, **rate(c, n)} for s, c in stages],
        "msun": rate(cnt(sun, "msun"), n),
        "chemsys_novel": rate(cnt(sun, "chemsys_novel"), n),
        "novelty_reference": "MP-20 train, available subset (n=8344)" if config.novelty_reference == "mp20" else None,
        "config": _config_dict(config),
    }
