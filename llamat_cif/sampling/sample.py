"""Batched, seeded, conditional, grammar-constrained crystal generation.

:func:`generate` samples ``n`` documents from a generator model in batches (KV cache, left padding),
decodes each into a ``Structure``, and writes each batch, as soon as it is done, as one part of the
run store behind ``out_dir/samples.parquet`` (plus one CIF per structure in ``out_dir/cifs/``); the
finished run commits the parts into ``samples.parquet``. Batch ``k`` is always drawn with seed
``(seed, k)`` and a part appears only whole, so an interrupted run resumes with the batches it lacks
and writes exactly the rows an uninterrupted one would, with no duplicates and no gaps.

``shard=(i, k)`` draws only the batches ``b`` with ``b % k == i``, writing their parts beside the
other shards' (nothing is committed), so ``k`` processes (or GPUs) can share one seeded run; a later
run without a shard on the same ``out_dir`` takes the shards' batches, draws any that are missing
and commits the whole table, identical to a single-process run.

With ``constrained=True`` (default) a logits processor walks every sequence through the document
grammar of :mod:`llamat_cif.sampling.grammars`: only text that parses can be written, the composition follows
the requested (or self-declared) formula, sites closer than ``min_distance`` (CDVAE's 0.5 Å) or than
``min_contact_ratio`` x their covalent-radius sum are refused, and the cell volume stays within the
``volume_window`` around the composition-based prediction (both calibrated on MP-20 train by
default, :mod:`llamat_cif.physics`).
``constrained=False`` samples the bare model (to measure what the constraint adds).

Temperature and top-p left as ``None`` take the values the model folder recommends in its
``generation_config.json`` (the shipped ``llamat-cif-small`` recommends T 0.7, top-p 0.9, the
setting its acceptance numbers were measured at), else 1.0; the values used are written to
``sample_config.json``.

The settings and their resolution live in :mod:`llamat_cif.sampling.config`, the samples table and
its resume helpers in :mod:`llamat_cif.sampling.rows`, the logits processor in
:mod:`llamat_cif.sampling.processor`.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from llamat_cif.runs import write_json
from llamat_cif.sampling.config import (
    SampleConfig,
    model_format,
    parse_formula,
    parse_shard,
    read_targets,
    recommended_sampling,
    resolve_anion_steer,
    resolve_physics,
    resolve_steer,
    resolve_steer_floor,
    resolve_volume_steer,
    same_element_table,
    window_tuple,
)
from llamat_cif.sampling.rows import (
    batch_ids,
    check_resume,
    frame,
    read_samples,
    resume_batches,
    sample_store,
    typed,
)


def draw_batch(model, tokenizer, *, size: int, seed: tuple[int, ...], prompt: str = "",
               conditions: list | None = None, grammar=None, vocab=None, stats=None,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               max_new_tokens: int = 1000, redraws: int = 0, floor: float = 0.0, fmt: str = "cif",
               decoder: str = "jump"):
    """Draw one seeded batch of ``size`` documents; returns the new token ids (``size x T``, padded
    with the pad id after a document's end).

    ``redraws``: a constrained document whose grammar met a dead end (a fallback: the look-ahead had
    answered optimistically after its search budget ran out, and no admissible token was left) is
    drawn again with a seed derived from ``seed`` (``(*seed, redraws)``, extended the same way for
    a later redraw), up to ``redraws`` times; the others keep their first draw unchanged. Counted
    in ``stats`` (``redrawn``, ``dead_ends_kept``). With ``floor`` > 0, a constrained document
    whose crystal (read as ``fmt``) holds a pair closer than ``floor`` x its covalent-radius sum
    (:func:`llamat_cif.physics.min_contact_ratio`) is drawn again the same way, in the same budget
    (``below_floor_redrawn``, ``below_floor_kept``).

    The torch generator is seeded from ``seed`` (e.g. ``(run seed, batch index)``), so the same
    call draws the same documents. With ``conditions`` (one
    :class:`~llamat_cif.sampling.fields.Conditions` per row) every row is walked through
    ``grammar`` (:class:`~llamat_cif.sampling.processor.GrammarLogitsProcessor`); without, the bare
    model samples after ``prompt``. Used by :func:`generate` and by the alignment rounds of
    :mod:`llamat_cif.train.align`, which need the exact tokens drawn.

    ``decoder`` (:data:`~llamat_cif.sampling.config.DECODERS`): a plain LLaMA model is decoded by
    :func:`llamat_cif.sampling.jump.sample_constrained` when constrained with ``"jump"`` (the
    default: text the grammar fixes is fed at once, the model is asked only at choices; the same
    distribution, other draws), else by :func:`llamat_cif.sampling.lean.sample_tokens` (``"lean"``,
    and unconstrained ``"jump"``: the same tokens as ``model.generate()`` without its per-step
    overhead); ``"transformers"``, or a model the lean loops do not cover (``peft`` adapters, other
    architectures), goes through ``generate()``.
    """
    import torch

    from llamat_cif.sampling import jump, lean
    from llamat_cif.sampling.engine import Decoder
    from llamat_cif.sampling.processor import GrammarLogitsProcessor

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
    own: list = []
    if conditions is not None:
        from llamat_cif.sampling.engine import Stats

        own = [Stats() for _ in conditions]  # per document, so that a dead end is traced to its row
        decoders = [Decoder(grammar(vocab, c, st), vocab, st) for c, st in zip(conditions, own, strict=True)]
        kwargs["logits_processor"] = [GrammarLogitsProcessor(
            decoders, enc["input_ids"].shape[1], tokenizer.pad_token_id,
            temperature=temperature, top_k=top_k, top_p=top_p)]
    plain = decoder != "transformers" and lean.supports(model) and bool(enc["attention_mask"].all())
    with torch.no_grad():
        if plain and decoder == "jump" and conditions is not None:
            new = jump.sample_constrained(lean.LeanLlama(model), decoders, enc["input_ids"][0].tolist(),
                                          max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                          pad_token_id=tokenizer.pad_token_id,
                                          restrict=kwargs["logits_processor"][0].restrict,
                                          temperature=temperature, top_k=top_k, top_p=top_p)
        elif plain:
            # the same tokens as generate() (tests/test_lean_decode.py), without its per-step overhead
            gen = lean.sample_tokens(model, enc["input_ids"], max_new_tokens=max_new_tokens,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                     do_sample=temperature > 0, temperature=temperature, top_p=top_p,
                                     top_k=top_k, logits_processor=kwargs.get("logits_processor"))
            new = gen[:, enc["input_ids"].shape[1]:]
        else:
            gen = model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
    if stats is None:
        from llamat_cif.sampling.engine import Stats

        stats = Stats()  # counted and dropped: the caller did not ask
    for st in own:
        stats.add(st)
    dead = [i for i, st in enumerate(own) if st.fallbacks]
    low = [i for i, st in enumerate(own)
           if floor > 0 and not st.fallbacks and _below_floor(new[i], tokenizer, floor, fmt)]
    if not (dead or low) or redraws <= 0:
        stats.dead_ends_kept += len(dead)
        stats.below_floor_kept += len(low)
        return new
    stats.redrawn += len(dead)
    stats.below_floor_redrawn += len(low)
    dead = sorted(dead + low)
    again = draw_batch(model, tokenizer, size=len(dead), seed=(*seed, redraws), prompt=prompt,
                       conditions=[conditions[i] for i in dead], grammar=grammar, vocab=vocab, stats=stats,
                       temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                       redraws=redraws - 1, floor=floor, fmt=fmt, decoder=decoder)
    width = max(new.shape[1], again.shape[1])
    pad = tokenizer.pad_token_id
    new = torch.nn.functional.pad(new, (0, width - new.shape[1]), value=pad)
    new[dead] = torch.nn.functional.pad(again, (0, width - again.shape[1]), value=pad)
    return new


@functools.lru_cache(maxsize=256)
def _read(text: str, fmt: str):
    """``cif.from_text``, kept for the last documents: the below-floor check reads each constrained
    document and :func:`decode_sample` reads it again (~20 ms each). Callers must not change it."""
    from llamat_cif.cif import from_text

    return from_text(text, fmt)


def _below_floor(ids, tokenizer, floor: float, fmt: str) -> bool:
    """Whether one drawn document's crystal holds a pair closer than ``floor`` x its covalent-radius
    sum (a document that does not read as a crystal is left to the validators: False)."""
    from llamat_cif.physics import min_contact_ratio

    ids = [t for t in ids.tolist() if t != tokenizer.pad_token_id]
    try:
        structure = _read(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False), fmt)
        return min_contact_ratio(structure) < floor  # reads the structure, never changes it
    except Exception:  # noqa: BLE001 - unreadable text is the validators' verdict, not the sampler's
        return False


def decode_sample(ids: list[int], tokenizer, *, prompt: str = "", fmt: str = "cif",
                  max_new_tokens: int = 1000) -> dict:
    """``{"text", "cif", "error"}`` of one drawn document (``ids``: its new tokens, padding removed).

    Never raises: a document without an end token, or one that does not decode to a structure, keeps
    its text and gets an ``error`` (``cif`` empty when it does not decode). Shared by
    :func:`generate` and the alignment rounds of :mod:`llamat_cif.train.align`.
    """
    from llamat_cif.cif import CrystalTextError, structure_to_cif

    text = prompt + tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    row = {"text": text, "cif": "", "error": ""}
    if tokenizer.eos_token_id not in ids:
        row["error"] = f"no end of structure within {max_new_tokens} tokens"
    try:
        row["cif"] = structure_to_cif(_read(text, fmt).copy())
    except (CrystalTextError, ValueError) as exc:
        row["error"] = (row["error"] + "; " if row["error"] else "") + str(exc)[:500]
    except Exception as exc:  # noqa: BLE001 - a bad sample never stops the run
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
    return row


def _prompt(cfg: SampleConfig, fmt: str, formula: dict | None) -> str:
    """Header text for an unconstrained conditional prompt (constrained runs force it instead)."""
    from pymatgen.core import Composition

    lines = ""
    if formula:
        lines += f"# formula: {Composition(formula).formula}\n"
    if cfg.spacegroup:
        lines += f"# spacegroup: {cfg.spacegroup}\n"
    return lines


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

        from llamat_cif.model import load_generator, resolve_model_path
        from llamat_cif.sampling.engine import Stats, Vocab
        from llamat_cif.sampling.fields import Conditions, site_lines_for
        from llamat_cif.sampling.grammars import GRAMMARS

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
            "steer_contact_ratio": (steer := resolve_steer(cfg.steer_contact_ratio, contact_ratio)),
            "steer_contact_floor": resolve_steer_floor(cfg.steer_contact_floor, contact_ratio, steer),
            "steer_volume_window": resolve_volume_steer(cfg.steer_volume_window, volume_window),
            "steer_anion_distance": resolve_anion_steer(cfg.steer_anion_distance, contact_ratio),
            "steer_cation_distance": resolve_anion_steer(cfg.steer_cation_distance, contact_ratio,
                                                         "steer cation distance"),
            "temperature": rec_t if cfg.temperature is None else cfg.temperature,
            # the P1 (llamat) text has no space group to count lattice points with
            "max_primitive_atoms": cfg.max_primitive_atoms if fmt == "cif" else 0,
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
                            steer_ratio=cfg.steer_contact_ratio, steer_floor=cfg.steer_contact_floor,
                            volume_steer=window_tuple(cfg.steer_volume_window),
                            same_element_steer=same_element_table(cfg.steer_anion_distance, cfg.steer_cation_distance))
        self.limits = dict(charge_balanced=cfg.charge_balanced, max_lines=self.max_lines,
                           max_primitive_atoms=cfg.max_primitive_atoms)
        self.cond = Conditions(formula=self.formula, spacegroup=cfg.spacegroup, min_distance=cfg.min_distance,
                               **self.limits, **self.physics)
        self.grammar = GRAMMARS[fmt]
        self.prompt = "" if cfg.constrained else _prompt(cfg, fmt, self.formula)

    def conditions(self, formula: str | None, spacegroup: int | None):
        """The grammar's :class:`~llamat_cif.sampling.fields.Conditions` for one target (the run's
        limits and physics, this formula and space group)."""
        from llamat_cif.sampling.fields import Conditions

        return Conditions(formula=parse_formula(formula) if formula else None, spacegroup=spacegroup,
                          min_distance=self.cfg.min_distance, **self.limits, **self.physics)

    def draw(self, size: int, seed: tuple[int, ...], conds: list | None):
        """:func:`draw_batch` with the run's model, grammar and sampling settings."""
        cfg = self.cfg
        return draw_batch(self.model, self.tokenizer, size=size, seed=seed, prompt=self.prompt,
                          conditions=conds, grammar=self.grammar, vocab=self.vocab, stats=self.stats,
                          temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_new_tokens, redraws=cfg.dead_end_redraws if cfg.constrained else 0,
                          floor=cfg.steer_contact_floor if cfg.redraw_below_floor else 0.0, fmt=cfg.fmt,
                          decoder=cfg.decoder)

    def rows(self, b: int) -> list[dict]:
        """The sample rows of batch ``b`` (drawn with seed ``(cfg.seed, b)``)."""
        cfg, targets = self.cfg, self.targets
        start = b * cfg.batch_size
        size = min(cfg.batch_size, cfg.n - start)
        row_targets = [targets[start + i] if targets else (cfg.formula, cfg.spacegroup) for i in range(size)]
        if targets and not cfg.constrained:
            raise ValueError("--targets needs constrained decoding (prompts per row are not batched)")
        conds = None
        if cfg.constrained:
            conds = [self.cond if not targets else self.conditions(f, g) for f, g in row_targets]
        new = self.draw(size, (cfg.seed, b), conds)
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
    from llamat_cif.progress import progress_bar

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
    check_resume(out, cfg)
    write_json({**asdict(cfg), "shard": None}, out / "sample_config.json")  # shards read it as they start
    n_batches = -(-cfg.n // cfg.batch_size)
    tag = f".shard{shard[0]}of{shard[1]}" if shard else ""
    mine = [b for b in range(n_batches) if shard is None or b % shard[1] == shard[0]]
    store = sample_store(out, cfg)
    have = resume_batches(store, out, cfg.n, cfg.batch_size, mine, merge=shard is None)
    todo = [b for b in mine if b not in have]
    total = len(batch_ids(mine, cfg.n, cfg.batch_size))
    done = total - len(batch_ids(todo, cfg.n, cfg.batch_size))
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
    with progress_bar("generate", enabled=progress, fields=("note",)) as bar:
        task = bar.add_task("gen", total=total, completed=done, note="")
        for b, rows in batches:
            for row in rows:
                tokens_out += int(row["n_tokens"])
                if row["cif"]:
                    (out / "cifs" / f"{row['id']}.cif").write_text(row["cif"])
            store.write_part(frame(rows), k=b)  # part b appears whole: a kill loses only the batch in flight
            new_rows += len(rows)
            el = time.time() - t0
            bar.update(task, advance=len(rows), note=f"{new_rows / el:.2f} structures/s, {tokens_out / el:.0f} tok/s")
    if sampler is not None:
        stats = asdict(sampler.stats)
    wall = time.time() - t0
    if shard is None:
        df = read_samples(store.commit())
    else:  # this shard's batches; the parts stay for the run without a shard to commit
        df = typed(store.read())
        df = df[df["id"].isin(set(batch_ids(mine, cfg.n, cfg.batch_size)))].reset_index(drop=True)
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
                         "volume_window_widened": stats.get("window_widened", 0),
                         "dead_end_redraws": stats.get("redrawn", 0),
                         "dead_ends_kept": stats.get("dead_ends_kept", 0),
                         "below_floor_redrawn": stats.get("below_floor_redrawn", 0),
                         "below_floor_kept": stats.get("below_floor_kept", 0)},
        "device": device,
        "config": asdict(cfg),
    }
    if shard is None:
        for path in sorted(out.glob("sample_summary.shard*of*.json")):
            summary.setdefault("shards", {})[path.stem.split(".")[-1]] = json.loads(path.read_text())["this_session"]
    write_json(summary, out / f"sample_summary{tag}.json")
    return df


def generate_structures(cfg: SampleConfig, **kwargs):
    """Sample a run like :func:`generate` and return its crystals as pymatgen ``Structure`` objects.

    Args:
        cfg: the run settings (the run folder is still written, and resumed, as by :func:`generate`).
        **kwargs: passed to :func:`generate` (``progress``, ``model``, ``tokenizer``, ``executor``).

    Returns:
        One entry per sample, in sample order: the decoded ``Structure``, or ``None`` where the
        document did not decode (its row in ``samples.parquet`` says why).
    """
    from llamat_cif.cif import from_text

    df = generate(cfg, **kwargs)
    return [from_text(text, fmt) if str(cif).strip() else None
            for text, fmt, cif in zip(df["text"], df["fmt"], df["cif"], strict=True)]
