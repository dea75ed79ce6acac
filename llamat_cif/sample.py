"""Batched, seeded, conditional, grammar-constrained crystal generation.

:func:`generate` samples ``n`` documents from a generator model in batches (KV cache, left padding),
decodes each into a ``Structure``, and appends the batch to ``out_dir/samples.csv`` (plus one CIF per
structure in ``out_dir/cifs/``) as soon as it is done. Batch ``k`` is always drawn with seed
``(seed, k)``, so an interrupted run resumes with the batches it lacks and writes exactly the rows an
uninterrupted one would, with no duplicates and no gaps (a batch cut off mid-write is drawn again).

``shard=(i, k)`` draws only the batches ``b`` with ``b % k == i`` into
``out_dir/samples.shard{i}of{k}.csv``, so ``k`` processes (or GPUs) can share one seeded run; a later
run without a shard on the same ``out_dir`` takes the shards' complete batches, draws any that are
missing and writes the whole table, identical to a single-process run.

With ``constrained=True`` (default) a logits processor walks every sequence through the document
grammar of :mod:`llamat_cif.grammar`: only text that parses can be written, the composition follows
the requested (or self-declared) formula, sites closer than ``min_distance`` (CDVAE's 0.5 Å) or than
``min_contact_ratio`` x their covalent-radius sum are refused, and the cell volume stays within the
``volume_window`` around the composition-based prediction (both calibrated on MP-20 train by
default, :mod:`llamat_cif.physics`).
``constrained=False`` samples the bare model (to measure what the constraint adds).

Temperature and top-p left as ``None`` take the values the model folder recommends in its
``generation_config.json`` (the shipped ``llamat-cif-small`` recommends T 0.7, top-p 0.9, the
setting its acceptance numbers were measured at), else 1.0; the values used are written to
``sample_config.json``.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from llamat_cif.protocol import CDVAE_MIN_DISTANCE

SAMPLE_COLUMNS = ["id", "text", "fmt", "cif", "error", "target_formula", "target_spacegroup", "seed",
                  "batch", "n_tokens", "constrained"]


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
    # steering: coordinates prefer tokens that keep this wider contact ratio when the nucleus holds
    # one; None: calibrated (5th percentile of MP-20 train), 0: off
    steer_contact_ratio: float | None = None
    # volume per atom within [lo, hi] x the composition-based prediction: "auto" (calibrated on
    # MP-20 train, >= 99.5 % inside), "off", or "LO,HI"
    volume_window: str = "auto"
    # steering: the last cell length prefers a volume ratio in this range when the model's tokens
    # allow: "auto" (the central 90 % of MP-20 train), "off" (default: on 48 seed-0 samples it
    # tightened volumes but cost 3x sampling time and more short contacts), or "LO,HI"
    steer_volume_window: str = "off"
    charge_balanced: bool = False  # constraint: a self-chosen formula must be SMACT-valid
    max_new_tokens: int = 1000
    device: str | None = None
    fmt: str | None = None  # representation; None: from the model's training corpus (cif default)
    threads: int | None = 1  # CPU threads for torch; 1 is fastest for small models on a busy machine
    targets: str | None = None  # CSV with target_formula[, target_spacegroup]: one sample per row (n = rows)
    shard: tuple[int, int] | None = None  # (i, k): draw only batches b with b % k == i

    def __post_init__(self) -> None:
        check_sampling_args(n=self.n, batch_size=self.batch_size, temperature=self.temperature,
                            top_p=self.top_p, top_k=self.top_k, threads=self.threads,
                            min_distance=self.min_distance, formula=self.formula, spacegroup=self.spacegroup,
                            max_new_tokens=self.max_new_tokens, device=self.device)


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


class GrammarLogitsProcessor:
    """``transformers`` logits processor that masks every token the grammar does not allow.

    Syntax and ranges are cheap and are applied as a mask. The look-ahead checks (distances,
    orbit sizes, room for the rest of the composition) are expensive, so where a field has them the
    processor samples the token itself from the model's distribution over the syntactically allowed
    tokens (temperature, top-k, top-p as configured), checks only the sampled token, and on a veto
    removes it and samples again: this draws from the model's distribution restricted to the tokens
    that pass, without checking the others. The chosen token is then the only one left unmasked.
    """

    def __init__(self, decoders: list, prompt_len: int, pad_id: int, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0) -> None:
        self.decoders = decoders
        self.seen = prompt_len
        self.pad_id = pad_id
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        import torch

        if input_ids.shape[1] > self.seen:  # the token chosen at the previous step
            for d, t in zip(self.decoders, input_ids[:, -1].tolist(), strict=True):
                d.advance(t)
            self.seen = input_ids.shape[1]
        mask = torch.full_like(scores, float("-inf"))
        for i, d in enumerate(self.decoders):
            if d.done:
                mask[i, self.pad_id] = 0.0  # finished: transformers pads the row anyway
                continue
            allowed = d.allowed()
            if d.needs_check() and len(allowed) > 1:
                mask[i, self._pick(d, allowed, scores[i])] = 0.0
            else:
                mask[i, allowed] = 0.0
        return scores + mask

    def _pick(self, d, allowed: list[int], row) -> int:
        import torch

        logits = row[allowed].float()
        order = torch.argsort(logits, descending=True).tolist()
        if self.temperature > 0:
            probs = torch.softmax(logits / self.temperature, -1)
            full = probs.clone()
            if self.top_k:
                probs[order[self.top_k:]] = 0.0
            if self.top_p < 1.0:
                cum = torch.cumsum(probs[order], 0)
                cut = int(torch.searchsorted(cum, torch.tensor(self.top_p)).item()) + 1
                probs[order[cut:]] = 0.0
            # steering first: a token that keeps the wider contact margin, from the nucleus, else
            # from the whole (tempered) distribution; then a nucleus token that passes the hard rule
            tries = [(True, probs), (True, full), (False, probs)] if d.can_steer() else [(False, probs)]
            for strict, dist in tries:
                p = dist.clone()
                while float(p.sum()) > 0:
                    j = int(torch.multinomial(p, 1).item())
                    if d.check(allowed[j], strict=strict):
                        return allowed[j]
                    p[j] = 0.0
        elif d.can_steer():
            for j in order:  # greedy: the best token that keeps the margin, if any
                if d.check(allowed[j], strict=True):
                    return allowed[j]
        for j in order:  # greedy, or nothing in the nucleus passes: the model's next best
            if d.check(allowed[j]):
                return allowed[j]
        d.stats.fallbacks += 1  # no admissible token: let the model's choice through (counted)
        return allowed[order[0]]


def draw_batch(model, tokenizer, *, size: int, seed: tuple[int, ...], prompt: str = "",
               conditions: list | None = None, grammar=None, vocab=None, stats=None,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               max_new_tokens: int = 1000):
    """Draw one seeded batch of ``size`` documents; returns the new token ids (``size x T``, padded
    with the pad id after a document's end).

    The torch generator is seeded from ``seed`` (e.g. ``(run seed, batch index)``), so the same
    call draws the same documents. With ``conditions`` (one
    :class:`~llamat_cif.grammar.Conditions` per row) every row is walked through ``grammar``
    (:class:`GrammarLogitsProcessor`); without, the bare model samples after ``prompt``. Used by
    :func:`generate` and by the alignment rounds of :mod:`llamat_cif.align`, which need the exact
    tokens drawn.
    """
    import torch

    from llamat_cif.grammar import Decoder

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    torch.manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
    enc = tokenizer([tokenizer.bos_token + prompt] * size, return_tensors="pt",
                    add_special_tokens=False, padding=True).to(device)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  use_cache=True)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k or None)
    if conditions is not None:
        decoders = [Decoder(grammar(vocab, c, stats), vocab, stats) for c in conditions]
        kwargs["logits_processor"] = [GrammarLogitsProcessor(
            decoders, enc["input_ids"].shape[1], tokenizer.pad_token_id,
            temperature=temperature, top_k=top_k, top_p=top_p)]
    with torch.no_grad():
        gen = model.generate(**enc, **kwargs)
    return gen[:, enc["input_ids"].shape[1]:]


def decode_sample(ids: list[int], tokenizer, *, prompt: str = "", fmt: str = "cif",
                  max_new_tokens: int = 1000) -> dict:
    """``{"text", "cif", "error"}`` of one drawn document (``ids``: its new tokens, padding removed).

    Never raises: a document without an end token, or one that does not decode to a structure, keeps
    its text and gets an ``error`` (``cif`` empty when it does not decode). Shared by
    :func:`generate` and the alignment rounds of :mod:`llamat_cif.align`.
    """
    from llamat_cif.cif import CrystalTextError, from_text, structure_to_cif

    text = prompt + tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    row = {"text": text, "cif": "", "error": ""}
    if tokenizer.eos_token_id not in ids:
        row["error"] = f"no end of structure within {max_new_tokens} tokens"
    try:
        row["cif"] = structure_to_cif(from_text(text, fmt))
    except (CrystalTextError, ValueError) as exc:
        row["error"] = (row["error"] + "; " if row["error"] else "") + str(exc)[:500]
    except Exception as exc:  # noqa: BLE001 - a bad sample never stops the run
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
    return row


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


def _prompt(cfg: SampleConfig, fmt: str, formula: dict | None) -> str:
    """Header text for an unconstrained conditional prompt (constrained runs force it instead)."""
    from pymatgen.core import Composition

    lines = ""
    if formula:
        lines += f"# formula: {Composition(formula).formula}\n"
    if cfg.spacegroup:
        lines += f"# spacegroup: {cfg.spacegroup}\n"
    return lines


def _sound_row(r: dict) -> bool:
    """A whole row: every column present (a row cut off by a crash or a full disk lacks its last
    fields, or ends inside one) and the integer and boolean fields well formed."""
    if None in r or any(r.get(c) is None for c in SAMPLE_COLUMNS):
        return False
    return (r["batch"].strip().isdigit() and r["n_tokens"].strip().isdigit()
            and r["constrained"] in ("True", "False") and r["id"].startswith("s"))


def _read_rows(path: Path) -> list[dict]:
    """The sound rows of a samples file (a torn or malformed row is left out, so its batch is
    drawn again)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if _sound_row(r)]


def _complete_batches(rows: list[dict], n: int, batch_size: int) -> dict[int, list[dict]]:
    """Rows grouped by batch, keeping only batches with all their rows (a batch cut off while it was
    being written, or one sized for another ``n``, is drawn again)."""
    groups: dict[int, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(int(r["batch"]), {})[r["id"]] = r
    size = {b: min(batch_size, n - b * batch_size) for b in groups}
    return {b: sorted(g.values(), key=lambda r: r["id"]) for b, g in groups.items() if len(g) == size[b] > 0}


def _write_rows(path: Path, batches: dict[int, list[dict]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SAMPLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for b in sorted(batches):
            writer.writerows(batches[b])
    tmp.replace(path)


def _shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("samples.shard*of*.csv"))


def _check_resume(out: Path, cfg: SampleConfig) -> None:
    saved = out / "sample_config.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        keys = ("model", "formula", "spacegroup", "temperature", "top_p", "top_k", "batch_size", "seed",
                "constrained", "min_distance", "charge_balanced", "fmt", "max_new_tokens",
                "min_contact_ratio", "volume_window", "steer_contact_ratio", "steer_volume_window")
        default = {f.name: f.default for f in fields(SampleConfig)}  # keys added since the run began
        # runs from before physics decoding were drawn without it
        default.update(min_contact_ratio=0.0, volume_window="off", steer_contact_ratio=0.0,
                       steer_volume_window="off")
        diff = {k: (old.get(k, default[k]), asdict(cfg).get(k)) for k in keys
                if old.get(k, default[k]) != asdict(cfg).get(k)}
        if diff:
            raise ValueError(f"{out} holds a run with other settings {diff}; use a new --out to start afresh")


def read_targets(path: str) -> list[tuple[str | None, int | None]]:
    """``(formula, space group)`` per row of a ``--targets`` CSV."""
    import pandas as pd

    tdf = pd.read_csv(path, keep_default_na=False)
    if "target_formula" not in tdf.columns and "target_spacegroup" not in tdf.columns:
        raise ValueError(f"{path}: needs a target_formula and/or target_spacegroup column")
    return [(str(r.get("target_formula") or "") or None,
             int(r["target_spacegroup"]) if str(r.get("target_spacegroup", "")).strip() else None)
            for r in tdf.to_dict("records")]


class BatchSampler:
    """A loaded generator set up for one run: :meth:`rows` draws batch ``b`` with seed ``(seed, b)``.

    What :func:`generate` builds once (model, tokenizer, grammar, conditions, resolved settings),
    so that any process holding one (the local run, a Ray worker) draws exactly the same rows for a
    batch index.

    Attributes:
        cfg: the settings with every ``None`` resolved (format, temperature, top-p, physics).
        stats: constraint interventions summed over the batches drawn here.
    """

    def __init__(self, cfg: SampleConfig, *, model=None, tokenizer=None,
                 targets: list[tuple[str | None, int | None]] | None = None) -> None:
        import torch

        from llamat_cif.grammar import GRAMMARS, Conditions, Stats, Vocab, site_lines_for
        from llamat_cif.model import load_generator, resolve_model_path

        if cfg.threads:
            # Small models are launch-overhead bound on CPU; extra OpenMP threads only spin-wait
            # (measured here: 59 ms/step with 1 thread, 1.3 s/step with 2 on a loaded 2-core machine).
            torch.set_num_threads(cfg.threads)
        if model is None:
            model_dir = resolve_model_path(cfg.model)
            model, tokenizer = load_generator(str(model_dir), device=cfg.device)
            fmt = cfg.fmt or model_format(model_dir)
        else:
            fmt = cfg.fmt or "cif"
        rec_t, rec_p = recommended_sampling(model)
        contact_ratio, volume_window = resolve_physics(cfg.min_contact_ratio, cfg.volume_window)
        self.cfg = cfg = SampleConfig(**{
            **asdict(cfg), "fmt": fmt, "min_contact_ratio": contact_ratio, "volume_window": volume_window,
            "steer_contact_ratio": resolve_steer(cfg.steer_contact_ratio, contact_ratio),
            "steer_volume_window": resolve_volume_steer(cfg.steer_volume_window, volume_window),
            "temperature": rec_t if cfg.temperature is None else cfg.temperature,
            "top_p": rec_p if cfg.top_p is None else cfg.top_p})
        self.model, self.tokenizer, self.targets = model, tokenizer, targets
        self.device = next(model.parameters()).device
        model.eval()
        tokenizer.padding_side = "left"
        self.formula = parse_formula(cfg.formula) if cfg.formula else None
        self.vocab = Vocab(tokenizer) if cfg.constrained else None
        self.stats = Stats()
        self.max_lines = site_lines_for(cfg.max_new_tokens)
        self.physics = dict(contact_ratio=cfg.min_contact_ratio, volume_window=window_tuple(cfg.volume_window),
                            steer_ratio=cfg.steer_contact_ratio, volume_steer=window_tuple(cfg.steer_volume_window))
        self.cond = Conditions(formula=self.formula, spacegroup=cfg.spacegroup, min_distance=cfg.min_distance,
                               charge_balanced=cfg.charge_balanced, max_lines=self.max_lines, **self.physics)
        self.grammar = GRAMMARS[fmt]
        self.prompt = "" if cfg.constrained else _prompt(cfg, fmt, self.formula)

    def rows(self, b: int) -> list[dict]:
        """The ``samples.csv`` rows of batch ``b`` (drawn with seed ``(cfg.seed, b)``)."""
        from llamat_cif.grammar import Conditions

        cfg, targets = self.cfg, self.targets
        start = b * cfg.batch_size
        size = min(cfg.batch_size, cfg.n - start)
        row_targets = [targets[start + i] if targets else (cfg.formula, cfg.spacegroup) for i in range(size)]
        if targets and not cfg.constrained:
            raise ValueError("--targets needs constrained decoding (prompts per row are not batched)")
        conds = None
        if cfg.constrained:
            conds = [self.cond if not targets else
                     Conditions(formula=parse_formula(f) if f else None, spacegroup=g,
                                min_distance=cfg.min_distance, charge_balanced=cfg.charge_balanced,
                                max_lines=self.max_lines, **self.physics)
                     for f, g in row_targets]
        new = draw_batch(self.model, self.tokenizer, size=size, seed=(cfg.seed, b), prompt=self.prompt,
                         conditions=conds, grammar=self.grammar, vocab=self.vocab, stats=self.stats,
                         temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                         max_new_tokens=cfg.max_new_tokens)
        rows = []
        for i in range(size):
            ids = [t for t in new[i].tolist() if t != self.tokenizer.pad_token_id]
            rows.append({"id": f"s{start + i:06d}", "fmt": cfg.fmt,
                         **decode_sample(ids, self.tokenizer, prompt=self.prompt, fmt=cfg.fmt,
                                         max_new_tokens=cfg.max_new_tokens),
                         "target_formula": row_targets[i][0] or "", "target_spacegroup": row_targets[i][1] or "",
                         "seed": cfg.seed, "batch": b, "n_tokens": len(ids), "constrained": cfg.constrained})
        return rows


def generate(cfg: SampleConfig, *, progress: bool = True, model=None, tokenizer=None, executor=None):
    """Sample ``cfg.n`` structures into ``cfg.out_dir`` (resumable); returns the samples table.

    Args:
        cfg: the run settings.
        progress: show a rich progress bar.
        model, tokenizer: an already loaded generator (else ``load_generator(cfg.model)``).
        executor: a :class:`llamat_cif.executors.RayExecutor` to draw the batches on a Ray cluster
            (each worker holds the model; batch ``b`` still uses seed ``(seed, b)``, so the rows are
            those of a local run); None draws them here.
    """
    import pandas as pd
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    targets: list[tuple[str | None, int | None]] | None = None
    if cfg.targets:
        targets = read_targets(cfg.targets)
        cfg = SampleConfig(**{**asdict(cfg), "n": len(targets)})
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cifs").mkdir(exist_ok=True)
    sampler = None
    if executor is None:
        sampler = BatchSampler(cfg, model=model, tokenizer=tokenizer, targets=targets)
        cfg = sampler.cfg
    else:
        cfg = executor.resolve_sampling(cfg, targets)
    shard = parse_shard("/".join(map(str, cfg.shard))) if cfg.shard else None
    _check_resume(out, cfg)
    (out / "sample_config.json").write_text(json.dumps({**asdict(cfg), "shard": None}, indent=2))
    n_batches = -(-cfg.n // cfg.batch_size)
    tag = f".shard{shard[0]}of{shard[1]}" if shard else ""
    samples = out / f"samples{tag}.csv"
    rows_before = _read_rows(samples)
    have = _complete_batches(rows_before, cfg.n, cfg.batch_size)
    merged = 0
    if shard is None:  # take complete batches drawn by shards of this run
        for path in _shard_files(out):
            for b, rows in _complete_batches(_read_rows(path), cfg.n, cfg.batch_size).items():
                if b not in have:
                    have[b] = rows
                    merged += len(rows)
    have = {b: rows for b, rows in have.items() if b < n_batches}
    if merged or rows_before or (samples.is_file() and samples.stat().st_size > 0):
        # rewritten whole before appending: partial batches and a torn last line (a crash or a
        # full disk mid-write) go, the shards' rows come in, and new rows start on a clean line
        _write_rows(samples, have)
    todo = [b for b in range(n_batches) if b not in have and (shard is None or b % shard[1] == shard[0])]
    mine = [b for b in range(n_batches) if shard is None or b % shard[1] == shard[0]]
    total = sum(min(cfg.batch_size, cfg.n - b * cfg.batch_size) for b in mine)
    done = total - sum(min(cfg.batch_size, cfg.n - b * cfg.batch_size) for b in todo)
    stats: dict[str, int] = {}
    if sampler is not None:
        device = str(sampler.device)
        batches = ((b, sampler.rows(b)) for b in todo)
    else:
        device = executor.describe()
        batches = executor.sample_batches(cfg, todo, targets, stats)
    t0 = time.time()
    new_rows = 0
    tokens_out = 0
    write_header = not samples.is_file() or samples.stat().st_size == 0
    cols = [TextColumn("[bold]generate"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*cols, disable=not progress) as bar, open(samples, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SAMPLE_COLUMNS)
        if write_header:
            writer.writeheader()
            fh.flush()
        task = bar.add_task("gen", total=total, completed=done, note="")
        for _b, rows in batches:
            for row in rows:
                tokens_out += int(row["n_tokens"])
                if row["cif"]:
                    (out / "cifs" / f"{row['id']}.cif").write_text(row["cif"])
            writer.writerows(rows)
            fh.flush()
            new_rows += len(rows)
            el = time.time() - t0
            bar.update(task, advance=len(rows), note=f"{new_rows / el:.2f} structures/s, {tokens_out / el:.0f} tok/s")
    if sampler is not None:
        stats = asdict(sampler.stats)
    wall = time.time() - t0
    df = pd.read_csv(samples, keep_default_na=False)
    if not df["id"].is_monotonic_increasing:  # batches merged from shards, then gaps drawn
        _write_rows(samples, _complete_batches(_read_rows(samples), cfg.n, cfg.batch_size))
        df = pd.read_csv(samples, keep_default_na=False)
    summary = {
        "attempted": int(len(df)),
        "decoded": int((df["cif"] != "").sum()),
        "with_error": int((df["error"] != "").sum()),
        "this_session": {"new_rows": new_rows, "wall_s": round(wall, 2), "tokens": tokens_out,
                         "structures_per_s": round(new_rows / wall, 3) if wall else None,
                         "tokens_per_s": round(tokens_out / wall, 1) if wall else None,
                         "constraint_fallbacks": stats.get("fallbacks", 0),
                         "lookahead_vetoes": stats.get("distance_vetoes", 0),
                         "lookahead_optimistic": stats.get("optimistic", 0),
                         "volume_window_widened": stats.get("window_widened", 0)},
        "device": device,
        "config": asdict(cfg),
    }
    if shard is None:
        for path in sorted(out.glob("sample_summary.shard*of*.json")):
            summary.setdefault("shards", {})[path.stem.split(".")[-1]] = json.loads(path.read_text())["this_session"]
    (out / f"sample_summary{tag}.json").write_text(json.dumps(summary, indent=2))
    return df
