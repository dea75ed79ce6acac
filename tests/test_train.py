"""Training loop: data streams, schedule, exact resume, learning on real CIFs, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_data

from llamat_cif.train.checkpoints import latest_checkpoint, read_log
from llamat_cif.train.config import TrainConfig, config_from_dict
from llamat_cif.train.loop import lr_at
from llamat_cif.train.recipes import train_from_corpus, train_supervised
from llamat_cif.train.streams import (
    IGNORE_INDEX,
    MixedStream,
    PackedStream,
    SupervisedStream,
    process_indices,
)

torch.set_num_threads(1)  # tiny models: threads cost more than they give on a shared 2-core box


def char_tokenizer(texts: list[str]):
    """A character-level PreTrainedTokenizerFast with the corpus contract's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = sorted({c for t in texts for c in t})
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def write_corpus(folder: Path, train_docs: list[str], val_docs: list[str]) -> Path:
    """A corpus folder in the layout of `llamat-cif corpus build`."""
    from llamat_cif.train.streams import tokenize_documents

    folder.mkdir(parents=True, exist_ok=True)
    tok = char_tokenizer(train_docs + val_docs)
    tok.save_pretrained(folder / "tokenizer")
    for split, docs in (("train", train_docs), ("val", val_docs)):
        tokens, offsets = tokenize_documents(docs, tok)
        assert tokens.dtype == np.uint16
        np.save(folder / f"{split}.tokens.npy", tokens)
        np.save(folder / f"{split}.offsets.npy", offsets.astype(np.int64))
    with (folder / "documents.train.jsonl").open("w") as fh:
        for d in train_docs:
            fh.write(json.dumps({"text": d}) + "\n")
    (folder / "stats.json").write_text(json.dumps({"n_train": len(train_docs)}))
    return folder


TOY_DOCS = [f"{a} {b} {a}{b}\n" * 3 for a in ("Na", "K", "Li", "Cs") for b in ("Cl", "Br", "F", "I")]


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), TOY_DOCS * 4, TOY_DOCS[:4])


def tiny_config(out: Path, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), max_steps=8, batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=2,
                eval_every=4, eval_batches=2, save_every=100, log_every=1, block_size=64,
                precision="fp32", save_dtype="fp32")
    base.update(kw)
    return TrainConfig(**base)


def test_packed_stream_covers_each_token_once_per_epoch():
    docs = [np.arange(s, s + n) for s, n in ((0, 7), (100, 3), (200, 12), (300, 5))]
    tokens = np.concatenate(docs).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    stream = PackedStream(tokens, offsets, 9, seed=3)
    assert stream.epoch_size() == 27 // 9
    for epoch in range(2):
        seen = np.concatenate([stream[epoch * 3 + i]["input_ids"] for i in range(3)])
        assert sorted(seen.tolist()) == sorted(tokens.tolist())  # total 27 = 3 full blocks
        # documents stay contiguous inside the epoch stream
        flat = stream._epoch(epoch)[0].tolist()
        for d in docs:
            i = flat.index(int(d[0]))
            assert flat[i:i + len(d)] == d.tolist()
    # a new epoch packs differently, and the same index always gives the same block
    assert any(not np.array_equal(stream[i]["input_ids"], stream[3 + i]["input_ids"]) for i in range(3))
    assert np.array_equal(PackedStream(tokens, offsets, 9, seed=3)[4]["input_ids"], stream[4]["input_ids"])
    # validation keeps corpus order and the short tail block: every held-out token is scored
    val = PackedStream(tokens, offsets, 10, shuffle=False, keep_tail=True)
    assert val.epoch_size() == 3 and len(val[2]["input_ids"]) == 7
    assert np.concatenate([val[i]["input_ids"] for i in range(3)]).tolist() == tokens.tolist()


def test_mixed_stream_fraction_and_determinism():
    a = PackedStream(np.zeros(100, np.uint16), np.array([0, 100]), 10)
    b = PackedStream(np.ones(100, np.uint16), np.array([0, 100]), 10)
    mix = MixedStream([a, b], [0.97, 0.03], seed=0)
    from_b = [int(mix[k]["input_ids"][0]) for k in range(4000)]
    frac = sum(from_b) / len(from_b)
    assert 0.02 < frac < 0.04, frac
    assert from_b[:50] == [int(MixedStream([a, b], [0.97, 0.03], seed=0)[k]["input_ids"][0]) for k in range(50)]


def test_supervised_stream_masks_prompt(toy_corpus):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_corpus / "tokenizer")
    s = SupervisedStream([("Na Cl ", "NaCl"), ("K F ", "KF")], tok, 64, shuffle=False)
    ex = s[0]
    assert ex["input_ids"][0] == tok.bos_token_id and ex["input_ids"][-1] == tok.eos_token_id
    scored = ex["input_ids"][ex["labels"] != IGNORE_INDEX]
    assert tok.decode(scored[:-1]) .replace(" ", "") == "NaCl"  # completion (+eos) only
    assert (ex["labels"][:7] == IGNORE_INDEX).all()  # <s> + "Na Cl " is masked
    short = SupervisedStream([("Na Cl ", "NaCl")], tok, 8)
    assert short.n_truncated == 1 and len(short[0]["input_ids"]) == 8


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(out_dir="x", max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_process_indices_partition_the_stream():
    cfg = TrainConfig(out_dir="x", batch_size=3, grad_accum=2)
    both = np.concatenate([process_indices(0, 4, cfg, r, 2) for r in range(2)])
    assert sorted(both.tolist()) == list(range(4 * 2 * 2 * 3))
    # resuming at step 2 reads exactly the tail of the uninterrupted run
    assert np.array_equal(process_indices(2, 4, cfg, 1, 2), process_indices(0, 4, cfg, 1, 2)[12:])


def test_resume_is_exact(toy_corpus, tmp_path):
    """2N steps straight == N steps, stop, resume N more (weights and losses identical)."""
    from transformers import AutoModelForCausalLM

    straight = train_from_corpus(toy_corpus, tiny_config(tmp_path / "a"), model_config="tiny",
                                 progress=False)
    cut = train_from_corpus(toy_corpus, tiny_config(tmp_path / "b"), model_config="tiny",
                            stop_after=4, progress=False)
    assert cut.final_dir is None and latest_checkpoint(tmp_path / "b").name == "step_0000004"
    resumed = train_from_corpus(toy_corpus, tiny_config(tmp_path / "b"), model_config="tiny",
                                resume=True, progress=False)
    assert resumed.step == straight.step == 8
    assert resumed.train_loss == straight.train_loss
    assert resumed.val_loss == straight.val_loss
    wa = AutoModelForCausalLM.from_pretrained(straight.final_dir).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(resumed.final_dir).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log_a = [r for r in read_log(tmp_path / "a") if "loss" in r]
    log_b = [r for r in read_log(tmp_path / "b") if "loss" in r]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    cfg = json.loads((tmp_path / "b" / "train_config.json").read_text())
    assert cfg["resumed_from"].endswith("step_0000004") and cfg["config"]["max_steps"] == 8
    assert config_from_dict(cfg["config"]) == tiny_config(tmp_path / "b")  # the run can be repeated


def test_resume_refuses_changed_settings(toy_corpus, tmp_path):
    train_from_corpus(toy_corpus, tiny_config(tmp_path, max_steps=4), model_config="tiny",
                      stop_after=2, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train_from_corpus(toy_corpus, tiny_config(tmp_path, max_steps=4, batch_size=2),
                          model_config="tiny", resume=True, progress=False)


def test_final_model_loads_and_holds_tokenizer(toy_corpus, tmp_path):
    from llamat_cif.model import load_generator

    res = train_from_corpus(toy_corpus, tiny_config(tmp_path, max_steps=3, save_dtype="bf16"),
                            model_config="tiny", progress=False)
    model, tok = load_generator(res.final_dir, device="cpu")
    assert tok.bos_token == "<s>" and tok.pad_token == "<pad>"
    assert next(model.parameters()).dtype == torch.float32  # loaded as fp32 on CPU from bf16 files
    out = model.generate(torch.tensor([[tok.bos_token_id]]), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 6)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["tokens_seen"] == 3 * 2 * 4 * 64


def test_supervised_learns_completion(toy_corpus, tmp_path):
    """A from-scratch tiny model learns 'A B -> AB' concatenation well enough to lower its loss."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_corpus / "tokenizer")
    pairs = [(f"{a} {b} = ", f"{a}{b}") for a in ("Na", "K", "Li", "Cs") for b in ("Cl", "Br", "F", "I")]
    res = train_supervised(pairs, tiny_config(tmp_path, max_steps=30, lr=1e-2, eval_every=30),
                           tokenizer=tok, model_config="tiny", val_pairs=pairs[:4], progress=False)
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])


@requires_data
def test_loss_decreases_on_real_cifs(tmp_path):
    """Real MP-20 CIFs, char-level: 40 steps of the tiny model cut the val loss well below uniform."""
    from llamat_cif.data import load_split

    cifs = load_split("mp20", "train", limit=60)["cif"].tolist()
    corpus = write_corpus(tmp_path / "corpus", cifs[:50], cifs[50:])
    cfg = tiny_config(tmp_path / "run", max_steps=40, lr=5e-3, warmup_steps=4, eval_every=40,
                      block_size=128, grad_accum=1, log_every=1)
    res = train_from_corpus(corpus, cfg, model_config="tiny", progress=False)
    losses = [r["loss"] for r in res.history if "loss" in r]
    vocab = json.loads((corpus / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert losses[0] > 0.9 * np.log(len(vocab))  # starts near uniform
    assert res.val_loss < 0.6 * losses[0]  # learned the CIF syntax, measured on held-out CIFs


def test_text_mix_is_recorded(toy_corpus, tmp_path):
    text_dir = tmp_path / "text"
    text_dir.mkdir()
    (text_dir / "a.txt").write_text("Na and Cl make salt. " * 20)
    res = train_from_corpus(toy_corpus, tiny_config(tmp_path / "run", max_steps=2), model_config="tiny",
                            text_dir=text_dir, text_fraction=0.5, progress=False)
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert cfg["data"]["text"]["fraction"] == 0.5 and cfg["data"]["text"]["files"] == 1
    assert res.final_dir is not None


def test_cli_train_corpus(toy_corpus, tmp_path):
    from click.testing import CliRunner

    from llamat_cif.cli.train import train

    out = tmp_path / "cli"
    r = CliRunner().invoke(train, ["--corpus", str(toy_corpus), "--config", "tiny", "--max-steps", "3",
                                   "--batch-size", "2", "--block-size", "64", "--precision", "fp32",
                                   "--out", str(out), "--seed", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (out / "final" / "config.json").is_file() and (out / "final" / "tokenizer.json").is_file()
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["config"]["seed"] == 1 and cfg["config"]["max_steps"] == 3
    # the final folder carries the run's provenance, so the sampler knows the representation
    assert json.loads((out / "final" / "train_config.json").read_text()) == cfg
    r = CliRunner().invoke(train, ["--corpus", str(tmp_path / "nope"), "--out", str(out)])
    assert r.exit_code != 0 and "tokenizer" in r.output


def test_continued_training_prints_no_library_bars(toy_corpus, tmp_path):
    """Continuing the shipped model with a checkpoint save: transformers' "Loading weights" /
    "Writing model shards" bars and accelerate's tied-weights warning on every save stay out of the
    output (the command draws its own progress)."""
    import os
    import subprocess
    import sys

    from llamat_cif.model import resolve_model_path

    out = tmp_path / "cont"
    r = subprocess.run([sys.executable, "-m", "llamat_cif", "train", "--corpus", str(toy_corpus),
                        "--base-model", str(resolve_model_path("default")), "--max-steps", "2",
                        "--batch-size", "2", "--block-size", "64", "--warmup-steps", "1",
                        "--save-every", "1", "--precision", "fp32", "--out", str(out), "--seed", "0"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "final" / "model.safetensors").is_file() and list((out / "checkpoints").iterdir())
    text = r.stdout + r.stderr
    for flood in ("Loading weights", "Writing model shards", "Removed shared tensor"):
        assert flood not in text, text[-2000:]


@pytest.mark.slow
def test_two_process_ddp_resume_is_exact(toy_corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo DDP through accelerate): 6 steps == 3 + resume 3."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    def run(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "llamat_cif", "train",
               "--corpus", str(toy_corpus), "--config", "tiny", "--max-steps", "6", "--batch-size", "2",
               "--block-size", "64", "--precision", "fp32", "--save-dtype", "fp32", "--log-every", "1",
               "--out", str(out), "--no-progress", *extra]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    run(tmp_path / "a")
    run(tmp_path / "b", "--stop-after", "3")
    run(tmp_path / "b", "--resume")
    ckpt = latest_checkpoint(tmp_path / "b")
    assert (ckpt / "random_states_1.pkl").is_file()  # really two ranks
    assert [r for r in read_log(tmp_path / "a") if "loss" in r][0]["tokens"] == 2 * 2 * 64
    wa = load_file(tmp_path / "a" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_corpus_training_runs_without_pymatgen(toy_corpus, tmp_path):
    """The GPU training machine has no pymatgen: `python -m llamat_cif train --corpus` must not need it."""
    import subprocess
    import sys

    out = tmp_path / "nopmg"
    code = (
        "import sys, runpy; sys.modules['pymatgen'] = None; "  # any `import pymatgen` now fails
        f"sys.argv = ['llamat_cif', 'train', '--corpus', {str(toy_corpus)!r}, '--config', 'tiny', "
        f"'--max-steps', '1', '--batch-size', '2', '--block-size', '32', '--out', {str(out)!r}, '--no-progress']; "
        "runpy.run_module('llamat_cif', run_name='__main__')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "final" / "model.safetensors").is_file()


class _SignalAt(PackedStream):
    """A packed stream that sends this process SIGINT when item ``at`` is read (like a Ctrl-C)."""

    def __init__(self, base: PackedStream, at: int) -> None:
        self.__dict__.update(base.__dict__)
        self.at = at

    def __getitem__(self, k):
        if k == self.at:
            import signal

            signal.raise_signal(signal.SIGINT)
        return super().__getitem__(k)


def test_ctrl_c_checkpoints_and_resumes_exactly(toy_corpus, tmp_path):
    from transformers import AutoTokenizer

    from llamat_cif.model import prepare_model
    from llamat_cif.train.loop import run_training
    from llamat_cif.train.streams import load_corpus_arrays

    tok = AutoTokenizer.from_pretrained(toy_corpus / "tokenizer")
    cfg_a, cfg_b = tiny_config(tmp_path / "a"), tiny_config(tmp_path / "b")
    base = PackedStream(*load_corpus_arrays(toy_corpus, "train"), 64, seed=cfg_a.seed)

    def run(cfg, data, **kw):
        model = prepare_model(tok, model_config="tiny", seed=cfg.seed, block_size=64)
        return run_training(cfg, model=model, tokenizer=tok, train_data=data, progress=False, **kw)

    straight = run(cfg_a, base)
    # item 20 is read in step 3 (8 items per step): the step finishes, then the run stops
    cut = run(cfg_b, _SignalAt(base, 20))
    assert cut.stopped == "SIGINT" and cut.step == 3 and cut.final_dir is None
    assert latest_checkpoint(tmp_path / "b").name == "step_0000003"
    resumed = run(cfg_b, base, resume=True)
    assert resumed.stopped is None and resumed.train_loss == straight.train_loss
    timed = run(tiny_config(tmp_path / "c"), base, time_limit_s=0.0)
    assert timed.stopped == "time limit" and timed.step == 1
