"""What defines a benchmark run: :class:`BenchmarkConfig`, written into ``metrics.json``.

The ``benchmark`` command maps its options onto it; :func:`llamat_cif.metrics.run.run_benchmark`
and its stages (:mod:`~llamat_cif.metrics.benchmark_coverage`,
:mod:`~llamat_cif.metrics.benchmark_stability`) read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamat_cif.protocol import E_HULL_METASTABLE, E_HULL_STABLE

#: benchmark protocols: ours (documented denominators) and CDVAE's compute_metrics.py on top
PROTOCOLS = ("llamat-cif", "cdvae")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines a benchmark run (written into ``metrics.json``).

    Attributes:
        samples: the structures to benchmark: a run folder, a registry split, a folder/zip of CIFs,
            a CSV/parquet with a ``cif`` column, an ASE database or trajectory
            (:func:`~llamat_cif.metrics.sources.load_structure_set`).
        out: output folder (default: the run folder; required for any other input).
        reference: the reference set, a registry split ``<dataset>-<split>`` (``mp20-test``: MP-20
            test, available subset) or any input ``samples`` accepts.
        train: the training set for novelty and S.U.N. (registry split or any input); None: the
            reference dataset's train split for a registry reference, else novelty is not assessed.
        seed: seeds the subsampling when ``max_samples`` cuts the set.
        max_samples: use at most this many samples (random subset, seeded); None: all.
        struct_cutoff, comp_cutoff: coverage cutoffs; None: CDVAE's for the reference dataset
            (MP-20's, 0.4 and 10, for a reference that is not a registry split).
        fingerprint_scope: ``"valid"`` fingerprints valid samples only (fast, the headline needs
            nothing else); ``"parsed"`` also the parsed-but-invalid ones (adds ``coverage_cdvae``).
        fingerprint_shortcut: average one CrystalNN site per group of symmetry-equivalent sites
            (2-5x faster; a named variant, up to 0.024 off CDVAE's every-site mean on generated
            samples); False: every site, as CDVAE.
        coverage: compute CrystalNN fingerprints and the CDVAE coverage metrics (overall and per
            element); False skips every fingerprint, of the samples and of the reference set.
        csp_ks: best-of-k budgets for formula-conditioned samples.
        metastable_threshold, stable_threshold: E_hull thresholds (eV/atom).
        workers: processes for fingerprinting and for the ``stability`` relaxations; 0: one per
            usable CPU core, at most 8 (resolved here, so the recorded config holds the number).
        data_dir, cache_dir: overrides of the data folder and fingerprint cache.
        reference_limit: use only the first N reference structures (tests, quick looks).
        figures: draw the PNG figures.
        novelty: uniqueness and novelty (vs the reference dataset's train split) of the valid
            samples as generated.
        stability: relax this many seeded-random valid samples (0: off) and report their funnel
            (relaxed, converged, metastable, stable, S.U.N., M.S.U.N.) over the chosen and
            scaled to all generated; ``workers`` processes relax them.
        rescale_volume: with ``stability``, scale each chosen structure to its
            composition-predicted volume before relaxing.
        geometry_reference_n: reference structures (seeded sample) in the geometry table.
        protocol: ``"llamat-cif"`` (our documented denominators, the default) or ``"cdvae"``:
            also CDVAE's ``compute_metrics.py`` numbers exactly (:mod:`llamat_cif.metrics.cdvae`:
            every generated crystal, invalid included; ``cdvae_n_samples`` valid crystals for the
            diversity and property distances), in ``metrics.json["cdvae"]``. Needs coverage and
            every-site fingerprints; fingerprints every parsed sample.
        cdvae_n_samples: valid crystals CDVAE draws for diversity and property distances (1,000;
            another number is a named deviation, recorded in the protocol).
    """

    samples: str
    out: str | None = None
    reference: str = "mp20-test"
    train: str | None = None
    seed: int = 0
    max_samples: int | None = None
    struct_cutoff: float | None = None
    comp_cutoff: float | None = None
    fingerprint_scope: str = "valid"
    fingerprint_shortcut: bool = False
    coverage: bool = True
    csp_ks: tuple[int, ...] = (1, 20)
    metastable_threshold: float = E_HULL_METASTABLE
    stable_threshold: float = E_HULL_STABLE
    workers: int = 1
    data_dir: str | None = None
    cache_dir: str | None = None
    reference_limit: int | None = None
    figures: bool = True
    novelty: bool = True
    stability: int = 0
    rescale_volume: bool = False
    geometry_reference_n: int = 500  # quartiles of 500 structures are stable to a few per cent
    protocol: str = "llamat-cif"
    cdvae_n_samples: int = 1000

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.protocol == "cdvae":
            if not self.coverage:
                raise ValueError("protocol cdvae needs the fingerprints: drop --no-coverage")
            if self.fingerprint_shortcut:
                raise ValueError("protocol cdvae fingerprints every site: drop --fingerprint-shortcut")
            if self.cdvae_n_samples < 2:
                raise ValueError("cdvae_n_samples must be at least 2 (diversity needs a pair)")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per CPU core), got {self.workers}")
        if self.workers == 0:
            from llamat_cif.stability.relax import AUTO_WORKERS_MAX, usable_cores

            object.__setattr__(self, "workers", min(usable_cores(), AUTO_WORKERS_MAX))


__all__ = ["PROTOCOLS", "BenchmarkConfig"]
