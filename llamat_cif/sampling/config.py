"""Sampling settings: :class:`SampleConfig` and the functions that check and resolve its values.

``None`` / ``"auto"`` settings are resolved here (calibrated physics of :mod:`llamat_cif.physics`,
temperature and top-p from the model folder's ``generation_config.json``, the representation from
its ``train_config.json``), and the user's inputs are read (formula, shard, targets CSV), each
refusing nonsense with a one-line ``ValueError`` before any work is done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llamat_cif.protocol import CDVAE_MIN_DISTANCE

#: the decode loops :class:`SampleConfig` ``decoder`` names: "lean" and "transformers" draw the same
#: tokens; "jump" draws constrained documents from the same distribution with other draws
DECODERS = ("jump", "lean", "transformers")


@dataclass(frozen=True)
class SampleConfig:
    """One sampling run (written to ``out_dir/sample_config.json``)."""

    n: int
    out_dir: str
    model: str = "default"
    formula: str | None = None  # reduced formula the samples must have, e.g. "LiFePO4"
    spacegroup: int | None = None  # space-group number the samples must declare
    temperature: float | None = None  # None: the model's generation_config.json, else 1.0
    top_p: float | None = None  # None: the model's generation_config.json, else 1.0
    top_k: int = 0
    batch_size: int = 32
    seed: int = 0
    constrained: bool = True
    min_distance: float | None = CDVAE_MIN_DISTANCE  # Å; constraint on site placement (None: off)
    # physics in decoding (llamat_cif.physics): every pair at least f x its covalent-radius sum;
    # None: the calibrated f (>= 99.9 % of MP-20 train pass), 0: off
    min_contact_ratio: float | None = None
    # steering: coordinates prefer tokens that keep this wider contact ratio when some token does
    # (nucleus first, else the whole tempered distribution); None: calibrated (5th pct. of MP-20 train), 0: off
    steer_contact_ratio: float | None = None
    # steering, second tier: where no token keeps the steer ratio, prefer tokens that keep this one
    # before the hard rule alone decides; None: the benchmark's short-contact threshold (0.7), 0: off
    steer_contact_floor: float | None = None
    # volume per atom within [lo, hi] x the composition-based prediction: "auto" (calibrated on
    # MP-20 train, >= 99.5 % inside), "off", or "LO,HI"
    volume_window: str = "auto"
    # steering: the last cell length prefers a volume ratio in this range when the model's tokens
    # allow: "auto" (the central 90 % of MP-20 train), "off" (default: on 48 seed-0 samples it
    # tightened volumes but cost 3x sampling time and more short contacts), or "LO,HI"
    steer_volume_window: str = "off"
    # steering: an anion site (O, F, S, N, Cl, Se, Br, I) prefers tokens that keep this distance to
    # atoms of its own element: "auto" (per anion, the 5th percentile of MP-20 train's smallest
    # same-element distance), "off". On 300 seed-0 samples (100 relaxed) it doubled the oxides'
    # metastable share (14/38 vs 18/93 of the 1,000-sample run's relaxed) at unchanged validity
    steer_anion_distance: str = "auto"
    # the same for every other element with a calibration (metals, metalloids, C, H ...: the 5th
    # percentile of MP-20 train's smallest same-element distance per element): "auto" or "off"
    steer_cation_distance: str = "off"
    charge_balanced: bool = False  # constraint: a self-chosen formula must be SMACT-valid
    # constraint (CIF grammar): a self-chosen formula has at most this many atoms per primitive cell
    # (written atoms / lattice points of the declared group); MP-20's domain is <= 20, while the
    # shipped model also saw MPTS-52's larger cells. 0 (default): off -- on 300 seed-0 samples a cap
    # of 20 moved the mass to 12-20-atom cells and did not raise the metastable share (45/100
    # relaxed vs 46 %), see benchmarks/physics/ablation.md
    max_primitive_atoms: int = 0
    # constrained runs: a document whose look-ahead ran out of budget and hit a dead end (a fallback:
    # no admissible token, the model's choice let through) is drawn again with a derived seed, up to
    # this many times (0: keep every first draw)
    dead_end_redraws: int = 2
    # constrained runs: a finished document whose crystal holds a pair closer than the steering floor
    # (steer_contact_floor, 0.7 x the covalent sum: the benchmark's short-contact threshold) is drawn
    # again the same way, within the same dead_end_redraws budget; the hard rule (min_contact_ratio)
    # stays the calibrated admissibility test, this only retries what the floor tier could not keep
    redraw_below_floor: bool = True
    max_new_tokens: int = 1000
    device: str | None = None
    fmt: str | None = None  # representation; None: from the model's training corpus (cif default)
    threads: int | None = 1  # CPU threads for torch; 1 is fastest for small models on a busy machine
    # "jump": constrained runs of plain LLaMA models through llamat_cif.sampling.jump (text the grammar
    # fixes fed at once; same distribution, other draws), unconstrained ones as "lean"; "lean": plain
    # LLaMA models through llamat_cif.sampling.lean (the same tokens as transformers' generate(),
    # without its per-step overhead); other models fall back to "transformers": generate()
    decoder: str = "jump"
    targets: str | None = None  # CSV with target_formula[, target_spacegroup]: one sample per row (n = rows)
    shard: tuple[int, int] | None = None  # (i, k): draw only batches b with b % k == i

    def __post_init__(self) -> None:
        check_sampling_args(n=self.n, batch_size=self.batch_size, temperature=self.temperature,
                            top_p=self.top_p, top_k=self.top_k, threads=self.threads,
                            min_distance=self.min_distance, formula=self.formula, spacegroup=self.spacegroup,
                            max_new_tokens=self.max_new_tokens, device=self.device)
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.max_primitive_atoms < 0:
            raise ValueError(f"max primitive atoms must be >= 0 (0 = off), got {self.max_primitive_atoms}")


def check_sampling_args(*, n: int = 1, batch_size: int = 1, temperature: float | None = None,
                        top_p: float | None = None, top_k: int = 0, threads: int | None = None,
                        min_distance: float | None = None, formula: str | None = None,
                        spacegroup: int | None = None, max_new_tokens: int = 1, device: str | None = None) -> None:
    """Refuse impossible sampling settings with a one-line ``ValueError`` before any work is done
    (and before a run folder is claimed)."""
    import re

    problems = []
    if n < 1:
        problems.append(f"n must be >= 1, got {n}")
    if batch_size < 1:
        problems.append(f"batch size must be >= 1, got {batch_size}")
    if temperature is not None and not temperature >= 0:
        problems.append(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top-p must be in (0, 1], got {top_p}")
    if top_k < 0:
        problems.append(f"top-k must be >= 0, got {top_k}")
    if threads is not None and threads < 1:
        problems.append(f"threads must be >= 1, got {threads}")
    if min_distance is not None and not min_distance >= 0:
        problems.append(f"min distance must be >= 0 Å, got {min_distance}")
    if formula is not None and not str(formula).strip():
        problems.append("formula is empty (leave it out for unconditional samples)")
    if spacegroup is not None and not 1 <= spacegroup <= 230:
        problems.append(f"space group must be 1..230, got {spacegroup}")
    if max_new_tokens < 1:
        problems.append(f"max new tokens must be >= 1, got {max_new_tokens}")
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        problems.append(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    if problems:
        raise ValueError("; ".join(problems))


def resolve_steer(steer_contact_ratio: float | None, contact_ratio: float) -> float:
    """The steering ratio a run uses (calibrated for ``None``; 0 when the contact rule is off)."""
    from llamat_cif.physics import steer_ratio_default

    if not contact_ratio:
        return 0.0
    g = steer_ratio_default() if steer_contact_ratio is None else float(steer_contact_ratio)
    if g < 0 or g >= 1.5:
        raise ValueError(f"steer contact ratio must be in [0, 1.5), got {g}")
    return g if g > contact_ratio else 0.0


def resolve_steer_floor(steer_contact_floor: float | None, contact_ratio: float, steer: float) -> float:
    """The second steering tier a run uses: ``None`` gives the short-contact threshold the
    benchmark reports (:data:`llamat_cif.physics.SHORT_CONTACT_RATIO`, 0.7); 0 when it does not lie
    strictly between the hard rule and the steer ratio (it would change nothing)."""
    from llamat_cif.physics import SHORT_CONTACT_RATIO

    if not contact_ratio:
        return 0.0
    g = SHORT_CONTACT_RATIO if steer_contact_floor is None else float(steer_contact_floor)
    if g < 0 or g >= 1.5:
        raise ValueError(f"steer contact floor must be in [0, 1.5), got {g}")
    return g if contact_ratio < g < (steer or 1.5) else 0.0


def resolve_physics(min_contact_ratio: float | None, volume_window: str | None) -> tuple[float, str]:
    """The contact ratio and volume window a run uses, as recorded in ``sample_config.json``:
    ``(f, "lo,hi" or "off")`` with the calibrated values of :mod:`llamat_cif.physics` for
    ``None`` / ``"auto"``."""
    from llamat_cif.physics import contact_ratio_default, volume_window_default

    f = contact_ratio_default() if min_contact_ratio is None else float(min_contact_ratio)
    if f < 0 or f >= 1.5:
        raise ValueError(f"min contact ratio must be in [0, 1.5), got {f}")
    return f, _window_text(volume_window, volume_window_default, "volume window")


def resolve_volume_steer(steer_volume_window: str | None, volume_window: str) -> str:
    """The volume steering range a run uses (``"lo,hi"`` or ``"off"``; off with the window off)."""
    from llamat_cif.physics import volume_steer_default

    if volume_window == "off":
        return "off"
    return _window_text(steer_volume_window, volume_steer_default, "steer volume window")


def _window_text(text: str | None, default, name: str) -> str:
    """``auto`` (``default()``), ``off`` or ``LO,HI`` -> ``"lo,hi"`` / ``"off"``, clear error otherwise."""
    win = (text or "auto").strip().lower()
    if win in ("off", "none", "0"):
        return "off"
    if win == "auto":
        lo, hi = default()
    else:
        try:
            lo, hi = (float(x) for x in win.split(","))
        except ValueError:
            raise ValueError(f"{name} must be auto, off or LO,HI (e.g. 0.7,2.0), got {text!r}") from None
        if not 0 < lo < hi:
            raise ValueError(f"{name} needs 0 < LO < HI, got {text!r}")
    return f"{lo:g},{hi:g}"


def resolve_anion_steer(text: str | None, contact_ratio: float, name: str = "steer anion distance") -> str:
    """``"auto"`` / ``"off"`` as recorded in ``sample_config.json`` (off with the contact rule off);
    the same for ``--steer-cation-distance`` (``name``)."""
    t = (text or "off").strip().lower()
    if t not in ("auto", "off"):
        raise ValueError(f"{name} must be auto or off, got {text!r}")
    return t if contact_ratio else "off"


def same_element_table(resolved: str, cations: str = "off") -> dict[str, float] | None:
    """The per-element same-element steering distances of resolved anion and cation settings
    (``None`` when both are off)."""
    from llamat_cif.physics import anion_steer_default, cation_steer_default

    table = {**(anion_steer_default() if resolved == "auto" else {}),
             **(cation_steer_default() if cations == "auto" else {})}
    return table or None


def window_tuple(volume_window: str) -> tuple[float, float] | None:
    """``"lo,hi"`` -> ``(lo, hi)``; ``"off"`` -> ``None`` (a resolved :func:`resolve_physics` value)."""
    if volume_window == "off":
        return None
    lo, hi = (float(x) for x in volume_window.split(","))
    return lo, hi


def recommended_sampling(model) -> tuple[float, float]:
    """``(temperature, top_p)`` from a loaded model's ``generation_config`` (1.0 each when unset)."""
    gc = getattr(model, "generation_config", None)
    temperature = getattr(gc, "temperature", None)
    top_p = getattr(gc, "top_p", None)
    return (1.0 if temperature is None else float(temperature)), (1.0 if top_p is None else float(top_p))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/k"`` -> ``(i, k)`` with ``0 <= i < k`` (``None`` passes through)."""
    if text is None or text == "":
        return None
    try:
        i, k = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like I/K (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < k:
        raise ValueError(f"shard I/K needs 0 <= I < K, got {text!r}")
    return i, k


def parse_formula(formula: str) -> dict[str, float]:
    """Reduced composition of a formula string (clear error on nonsense)."""
    from pymatgen.core import Composition

    try:
        comp = Composition(formula)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot read formula {formula!r}: {exc}") from exc
    if len(comp) == 0:
        raise ValueError(f"empty formula {formula!r}")
    if not comp.valid:  # pymatgen reads unknown symbols as dummy species
        raise ValueError(f"formula {formula!r} has unknown element symbols")
    red = comp.reduced_composition
    return {el.symbol: amt for el, amt in red.items()}


def model_format(model_dir: Path) -> str:
    """Representation a model was trained on, ``cif`` by default.

    Read from the ``train_config.json`` in the model folder, or, for a ``final/`` or ``merged/``
    folder saved before that file was copied into it, from the training run folder above it.
    """
    model_dir = Path(model_dir)
    candidates = [model_dir / "train_config.json"]
    if model_dir.name in ("final", "merged"):
        candidates.append(model_dir.parent / "train_config.json")
    for cfg in candidates:
        if cfg.is_file():
            info = json.loads(cfg.read_text())
            for section in ("data", "describe"):
                fmt = ((info.get(section) or {}).get("corpus_stats") or {}).get("format")
                if fmt in ("cif", "llamat"):
                    return fmt
    return "cif"


def read_targets(path: str) -> list[tuple[str | None, int | None]]:
    """``(formula, space group)`` per row of a ``--targets`` CSV."""
    import pandas as pd

    tdf = pd.read_csv(path, keep_default_na=False)
    if "target_formula" not in tdf.columns and "target_spacegroup" not in tdf.columns:
        raise ValueError(f"{path}: needs a target_formula and/or target_spacegroup column")
    return [(str(r.get("target_formula") or "") or None,
             int(r["target_spacegroup"]) if str(r.get("target_spacegroup", "")).strip() else None)
            for r in tdf.to_dict("records")]
