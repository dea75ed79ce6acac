"""LoRA end to end on a tiny LLaMA checkpoint built here, and the instruction task mix it trains on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llamat_cif.instructions import (
    MASK,
    TASKS,
    build_task_mix,
    generation_prompt,
    make_example,
    mask_element,
    split_examples,
)
from llamat_cif.model import build_model, load_generator
from llamat_cif.train.checkpoints import latest_checkpoint
from llamat_cif.train.config import lora_defaults
from llamat_cif.train.recipes import train_supervised

torch.set_num_threads(1)


def char_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for t in texts for c in t})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def pairs(nacl, perovskite, diamond):
    records = [("nacl", nacl, {"e_above_hull": 0.0, "band_gap": 5.0}), ("sto", perovskite, {}),
               ("c", diamond, {"e_above_hull": 0.1})]
    mix = build_task_mix(records, fmt="llamat", seed=0, weights={t: 1.0 for t in TASKS})
    return [(e.prompt, e.completion) for e in mix.examples]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, pairs):
    """A tiny from-scratch LLaMA checkpoint, saved like any Hugging Face model."""
    folder = tmp_path_factory.mktemp("base")
    tok = char_tokenizer([p + c for p, c in pairs])
    model = build_model("tiny", len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _cfg(out, **kw):
    base = dict(max_steps=6, batch_size=2, grad_accum=1, block_size=512, eval_every=6, eval_batches=1,
                log_every=1, lr=5e-3, warmup_steps=1, precision="fp32", merge=True)
    base.update(kw)
    return lora_defaults(str(out), **base)


def test_lora_train_save_reload_merge_sample(base_dir, pairs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    res = train_supervised(pairs, _cfg(tmp_path), base_model=base_dir, val_pairs=pairs[:2], progress=False)
    assert res.final_dir is not None and res.merged_dir is not None
    assert 0 < res.trainable_params < 0.1 * res.params  # only the adapter trains

    adapter_cfg = json.loads((res.final_dir / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["lora_alpha"] == 32
    assert sorted(adapter_cfg["target_modules"]) == ["q_proj", "v_proj"]
    assert adapter_cfg["base_model_name_or_path"] == str(base_dir.resolve())
    assert not (res.final_dir / "model.safetensors").exists()  # adapter only, not a full copy

    adapted, tok = load_generator(res.final_dir, device="cpu")
    assert isinstance(adapted, PeftModel)
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it trained
    # the base checkpoint itself is untouched
    after = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    merged, tok2 = load_generator(res.merged_dir, device="cpu")
    assert not isinstance(merged, PeftModel) and tok2.get_vocab() == tok.get_vocab()
    ids = tok(generation_prompt(fmt="llamat"), return_tensors="pt", add_special_tokens=False).input_ids
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)
    with torch.no_grad():
        la, lm = adapted(ids).logits, merged(ids).logits
        lb = AutoModelForCausalLM.from_pretrained(base_dir)(ids).logits
    assert torch.allclose(la, lm, atol=1e-4)  # merging folds the adapter in exactly
    assert not torch.allclose(la, lb, atol=1e-4)  # and the adapter changed the model
    out_a = adapted.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    out_m = merged.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out_a.shape == (1, ids.shape[1] + 8) or out_a[0, -1] == tok.eos_token_id
    assert torch.equal(out_a, out_m)


def test_lora_resume_is_exact(base_dir, pairs, tmp_path):
    """LoRA dropout draws from the RNG: resuming must restore it."""
    a = train_supervised(pairs, _cfg(tmp_path / "a", merge=False), base_model=base_dir, progress=False)
    train_supervised(pairs, _cfg(tmp_path / "b", merge=False), base_model=base_dir, stop_after=3,
                     progress=False)
    assert latest_checkpoint(tmp_path / "b").name == "step_0000003"
    b = train_supervised(pairs, _cfg(tmp_path / "b", merge=False), base_model=base_dir, resume=True,
                         progress=False)
    assert a.train_loss == b.train_loss
    from safetensors.torch import load_file

    wa = load_file(a.final_dir / "adapter_model.safetensors")
    wb = load_file(b.final_dir / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_merge_without_lora_is_refused(tmp_path):
    from llamat_cif.train.config import TrainConfig

    with pytest.raises(ValueError, match="merge"):
        TrainConfig(out_dir=str(tmp_path), merge=True)


def test_cli_instructions_needs_base_model(tmp_path):
    from click.testing import CliRunner

    from llamat_cif.cli.train import train

    r = CliRunner().invoke(train, ["--instructions", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--base-model" in r.output
    r = CliRunner().invoke(train, ["--instructions", "--base-model", str(tmp_path / "nope"),
                                   "--out", str(tmp_path / "o"), "--limit", "1"])
    assert r.exit_code != 0 and "never downloaded" in " ".join(r.output.split())


# ------------------------------------------------------------------------ instruction task mix


_WRITTEN: dict = {}


def _answer(task, structure, fmt="cif", props=None, seed=0):
    # writing and re-parsing a crystal is the slow part: once per structure and format
    from llamat_cif.cif import from_text, to_text

    key = (id(structure), fmt)
    if key not in _WRITTEN:
        text = to_text(structure, fmt)
        _WRITTEN[key] = (text, from_text(text, fmt))
    text, written = _WRITTEN[key]
    return make_example(task, structure, props or {}, sid="x", fmt=fmt, rng=np.random.default_rng(seed),
                        text=text, written=written)


def test_reading_answers_rock_salt(nacl):
    # canonical CIF writes the conventional cell: 4 Na + 4 Cl, a = 5.64 Å
    assert _answer("atom_count", nacl).completion == "8"
    assert _answer("formula", nacl).completion == "NaCl"
    assert _answer("spacegroup", nacl).completion == "Fm-3m (225)"
    assert _answer("volume", nacl).completion == f"{5.64 ** 3:.2f}"
    assert _answer("lattice", nacl).completion.startswith("a = 5.640, b = 5.640, c = 5.640, alpha = 90.00")
    # the LLaMat format writes one element line per atom of its (Niggli-reduced) cell
    ex = _answer("atom_count", nacl, fmt="llamat")
    crystal = ex.prompt.split("### Crystal\n")[1].split("### Answer")[0].splitlines()
    assert ex.completion == str(sum(line in ("Na", "Cl") for line in crystal))
    assert _answer("spacegroup", nacl, fmt="llamat").completion == "Fm-3m (225)"


def test_site_element_matches_the_queried_site(perovskite):
    from llamat_cif.cif import from_text

    answers = set()
    for seed in range(8):
        ex = _answer("site_element", perovskite, seed=seed)
        xyz = np.array([float(v) for v in ex.prompt.split("coordinates (")[1].split(")")[0].split(",")])
        text = ex.prompt.split("### Crystal\n")[1].split("### Answer")[0]
        written = from_text(text, "cif")
        # the queried point is an atom of the written cell (usually a symmetry copy, not a CIF row)
        dist = [np.linalg.norm(((st.frac_coords - xyz) + 0.5) % 1 - 0.5) for st in written]
        assert min(dist) < 1e-3
        assert ex.completion == written[int(np.argmin(dist))].specie.symbol
        answers.add(ex.completion)
    assert answers <= {"Sr", "Ti", "O"} and "O" in answers


def test_infill_masks_elements_but_not_lattice_letters():
    from pymatgen.core import Lattice, Structure

    from llamat_cif.cif import to_text

    lif = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.03), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    text = to_text(lif, "cif")
    masked = mask_element(text, "F", "cif")
    assert "Fm-3m" in masked and "'Li4 [MASK]4'" in masked and "data_Li[MASK]" in masked
    site_rows = [ln for ln in masked.splitlines() if ln.startswith(MASK)]
    assert len(site_rows) == 1 and site_rows[0].split()[1] == f"{MASK}1"
    assert "Li Li0" in masked  # the other element is intact
    with pytest.raises(ValueError, match="does not occur"):
        mask_element(text, "Na", "cif")
    ex = make_example("infill", lif, {}, sid="lif", rng=np.random.default_rng(0))
    assert ex.completion in ("Li", "F") and MASK in ex.prompt


def test_infill_skips_single_element(diamond):
    assert _answer("infill", diamond) is None


def test_conditional_prompt_uses_properties(nacl):
    prompts = [_answer("conditional", nacl, props={"e_above_hull": 0.012, "band_gap": 4.97}, seed=s).prompt
               for s in range(12)]
    assert any("0.012 eV/atom" in p for p in prompts) and any("4.97 eV" in p for p in prompts)
    assert any("formula is NaCl" in p for p in prompts)
    assert any(("space group is 225" in p) or ("space group is Fm-3m" in p) for p in prompts)
    assert all("eV/atom" not in _answer("conditional", nacl, seed=s).prompt for s in range(5))


def test_task_mix_survives_bad_records(nacl):
    from pymatgen.core import Lattice, Structure

    overlapping = Structure(Lattice.cubic(3.0), ["Na", "Na"], [[0, 0, 0], [0, 0, 0]])
    mix = build_task_mix([("ok", nacl, {}), ("none", None, {"error": "bad cif"}), ("bad", overlapping, {})],
                         seed=1)
    assert mix.n_structures == 3
    assert {sid for sid, _ in mix.skipped} == {"none", "bad"}
    assert {e.id for e in mix.examples} == {"ok"}
    assert mix.counts()["generate"] == 1 and mix.counts()["conditional"] == 1


def test_task_mix_same_with_workers(nacl, perovskite):
    records = [("a", nacl, {"band_gap": 1.0}), ("b", perovskite, {}), ("c", nacl, {})]
    one = build_task_mix(records, fmt="llamat", seed=3)
    two = build_task_mix(records, fmt="llamat", seed=3, n_jobs=2)
    assert one.examples == two.examples and one.n_structures == two.n_structures == 3
    assert build_task_mix(records, fmt="llamat", seed=4).examples != one.examples


def test_split_by_structure():
    from llamat_cif.instructions import InstructionExample

    examples = [InstructionExample(str(i % 12), t, "p", "c") for i in range(36) for t in ("generate", "volume")]
    train, val = split_examples(examples, val_fraction=0.25, seed=0)
    assert train and val and not ({e.id for e in train} & {e.id for e in val})
    assert len({e.id for e in val}) == 3 and len(train) + len(val) == len(examples)
