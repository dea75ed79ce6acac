"""SIE runner, prompts and finetuning end to end with a tiny LLaMA built in the test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llamat_cif.text_tasks.evaluate import (
    EvalConfig,
    evaluate,
    headline,
    read_predictions,
    score_rows,
)
from llamat_cif.text_tasks.finetune import sft_pairs
from llamat_cif.text_tasks.prompts import IM_END, build_prompt, completion_text, plain_prompt
from llamat_cif.text_tasks.tasks import TextExample, load_task

_TEXT = Path(os.environ.get("LLAMAT_CIF_DATA", "/nonexistent")) / "text"
pytestmark = pytest.mark.skipif(not (_TEXT / "doping_test.jsonl").is_file(), reason="needs $LLAMAT_CIF_DATA/text")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer LLaMA with a byte-level BPE tokenizer, saved to disk."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamat_cif.text_tasks.prompts import answer_text
    from llamat_cif.text_tasks.scratch import train_text_tokenizer

    exs = load_task("doping", "train", limit=20).examples
    tok = train_text_tokenizer([plain_prompt(e.system, e.question) + answer_text(e.answer) for e in exs],
                               vocab_size=400)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny_text_model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


EX = TextExample("doping", "test", 3, "You are a material scientist.", "Al-doped ZnO. Extract doping information.",
                 {"basemats": {"b0": "ZnO"}, "dopants": {"d0": "Al"}, "dopants2basemats": {"d0": ["b0"]}})


def test_plain_prompt_is_llamat_layout():
    assert build_prompt(EX) == (
        "<|im_start|>system\nYou are a material scientist.<|im_end|>\n"
        "<|im_start|>question\nAl-doped ZnO. Extract doping information.<|im_end|>\n"
        "<|im_start|>answer\n"
    )
    assert completion_text(EX) == json.dumps(EX.answer) + IM_END


def test_chat_template_used_when_present(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    prompt = build_prompt(EX, tok)
    assert prompt == "<s>[system]You are a material scientist.[user]Al-doped ZnO. Extract doping information.[assistant]"
    assert build_prompt(EX, tok, chat_template="never") == plain_prompt(EX.system, EX.question)
    assert completion_text(EX, tok).endswith("</s>")
    # the trainer adds BOS itself: the template's BOS text is stripped from training prompts
    (p, c), = sft_pairs([EX], tok)
    assert p.startswith("[system]") and c == json.dumps(EX.answer) + "</s>"


def test_score_rows_echo_gold_is_one_and_empty_is_zero():
    ts = load_task("doping", "test")
    exs = ts.examples[:40]
    echo = {e.id: {"id": e.id, "output": " Answer: " + json.dumps(e.answer) + IM_END + " trailing"} for e in exs}
    rec = score_rows(ts, exs, echo)
    assert rec["n_unparsable_outputs"] == 0
    assert all(v == 1.0 for v in headline(rec).values())
    empty = {e.id: {"id": e.id, "output": ""} for e in exs}
    rec = score_rows(ts, exs, empty)
    assert rec["n_unparsable_outputs"] == 40
    assert all(v == 0.0 for v in headline(rec).values())
    assert rec["strict"]["counts"]["n_unparsable"] == rec["strict"]["counts"]["n_annotated"] > 0


def test_eval_runs_saves_as_it_goes_and_resumes(tiny_dir, tmp_path):
    cfg = EvalConfig(tasks=("doping", "mof2"), model=str(tiny_dir), out_dir=str(tmp_path), limit=3,
                     batch_size=2, max_new_tokens=5, device="cpu")
    res = evaluate(cfg)
    for task in ("doping", "mof2"):
        rows = read_predictions(tmp_path / task / "predictions.jsonl")
        assert len(rows) == 3
        assert all(r["n_new_tokens"] <= 5 and r["error"] == "" for r in rows.values())
        rec = json.loads((tmp_path / task / "metrics.json").read_text())
        assert rec["n_evaluated"] == 3 and rec["generation"]["resumed_rows"] == 0
        n_bad = sum(1 for r in rows.values() if r["output"].strip() == "" or "{" not in r["output"])
        assert rec["n_unparsable_outputs"] >= n_bad
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline_strict"]) == {"doping", "mof2"}
    assert json.loads((tmp_path / "config.json").read_text())["is_peft_adapter"] is False
    # a second run finds every answer on disk and generates nothing
    again = evaluate(cfg)
    assert again["tasks"]["doping"]["generation"]["resumed_rows"] == 3
    assert again["tasks"]["doping"]["generation"]["seconds_this_call"] == 0.0
    assert len((tmp_path / "doping" / "predictions.jsonl").read_text().splitlines()) == 3
    assert headline(again["tasks"]["doping"]) == headline(res["tasks"]["doping"])


def test_eval_peft_adapter_folder(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    adapted = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    adapter = tmp_path / "adapter"
    adapted.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)
    res = evaluate(EvalConfig(tasks=("doping",), model=str(adapter), out_dir=str(tmp_path / "ev"), limit=2,
                              batch_size=2, max_new_tokens=3, device="cpu"))
    assert json.loads((tmp_path / "ev" / "config.json").read_text())["is_peft_adapter"] is True
    assert res["tasks"]["doping"]["n_evaluated"] == 2


def test_prompt_longer_than_context_is_an_error_row(tiny_dir, tmp_path):
    res = evaluate(EvalConfig(tasks=("doping",), model=str(tiny_dir), out_dir=str(tmp_path), limit=2,
                              max_new_tokens=5000, device="cpu"))
    rows = read_predictions(tmp_path / "doping" / "predictions.jsonl")
    assert all("exceeds context 4096" in r["error"] for r in rows.values())
    assert res["tasks"]["doping"]["n_unparsable_outputs"] == 2


def test_cli_train_from_scratch_then_eval(tmp_path):
    from click.testing import CliRunner

    from llamat_cif.cli import main

    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["text", "train", "--task", "doping", "--scratch-size", "tiny", "--limit", "12",
                                  "--max-steps", "2", "--batch-size", "4", "--vocab-size", "320",
                                  "--block-size", "512", "--lm-fraction", "0.5", "--val-fraction", "0.2",
                                  "--eval-every", "2", "--save-every", "2", "--no-progress", "--out", str(run)])
    assert r.exit_code == 0, r.output
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == 2 and summary["val_loss"] is not None
    cfg = json.loads((run / "train_config.json").read_text())
    rec = dict(cfg["data"]["text_tasks"]["doping"])
    assert Path(rec.pop("file")).resolve() == (_TEXT / "doping_train.jsonl").resolve()
    assert rec == {"examples": 12, "train": 10, "val": 2, "malformed": []}
    r = CliRunner().invoke(main, ["text", "eval", "--task", "doping", "--model", str(run / "final"), "--limit", "2",
                                  "--max-new-tokens", "4", "--no-progress", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert "basemats_f1" in r.output and "unparsable" in r.output
    assert len(read_predictions(tmp_path / "ev" / "doping" / "predictions.jsonl")) == 2


def test_cli_rejects_untrainable_task(tmp_path):
    from click.testing import CliRunner

    from llamat_cif.cli import main

    r = CliRunner().invoke(main, ["text", "train", "--task", "discomat", "--out", str(tmp_path)])
    assert r.exit_code != 0


def test_cli_lora_on_local_base_then_eval_adapter(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from llamat_cif.cli import main

    run = tmp_path / "lora"
    r = CliRunner().invoke(main, ["text", "train", "--task", "doping", "--base-model", str(tiny_dir), "--limit", "6",
                                  "--max-steps", "1", "--batch-size", "2", "--val-fraction", "0", "--no-progress",
                                  "--out", str(run)])
    assert r.exit_code == 0, r.output
    adapter = run / "final"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]).resolve() == tiny_dir.resolve() and cfg["r"] == 8
    tcfg = json.loads((run / "train_config.json").read_text())
    assert 0 < tcfg["resolved"]["trainable_params"] < tcfg["resolved"]["params"]
    r = CliRunner().invoke(main, ["text", "eval", "--task", "doping", "--model", str(adapter), "--limit", "2",
                                  "--max-new-tokens", "3", "--no-progress", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ev" / "config.json").read_text())["is_peft_adapter"] is True


def test_batched_generation_equals_one_by_one(tiny_dir):
    """Left padding must not change greedy answers (prompts of different lengths in one batch)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llamat_cif.text_tasks.evaluate import generate_batch

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    # a wide initialisation so that different prompts give different answers
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=4096, initializer_range=0.5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    prompts = [build_prompt(e) for e in load_task("doping", "test", limit=3).examples]
    assert len({len(tok(p)["input_ids"]) for p in prompts}) == 3
    batched = generate_batch(model, tok, prompts, max_new_tokens=6)
    single = [generate_batch(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert len({text for text, _ in batched}) > 1
