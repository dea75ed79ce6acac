"""The lean decode loop draws exactly the tokens ``transformers``' ``generate()`` draws."""

import pytest
import torch

from llamat_cif.model import load_generator
from llamat_cif.sampling import lean


@pytest.fixture(scope="module")
def shipped():
    model, tokenizer = load_generator("llamat-cif-small")
    model.eval()
    return model, tokenizer


def _tiny(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _both(model, ids, seed, **kw):
    """(generate()'s tokens, the lean loop's tokens) for the same seed and settings."""
    top_k = kw.pop("top_k", 0)
    torch.manual_seed(seed)
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), top_k=top_k, **kw)
    torch.manual_seed(seed)
    got = lean.sample_tokens(model, ids, top_k=top_k, **kw)
    return ref, got


@pytest.mark.parametrize("top_k", [0, 20])
def test_the_shipped_model_draws_what_generate_draws(shipped, top_k):
    """Eight unconstrained documents at the shipped setting (T 0.7, top-p 0.9), with and without
    top-k: token for token the same, with rows that end at different lengths (padded on)."""
    model, tok = shipped
    ids = torch.full((8, 1), tok.bos_token_id)
    ref, got = _both(model, ids, 11, max_new_tokens=400, do_sample=True, temperature=0.7, top_p=0.9,
                     top_k=top_k, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert torch.equal(ref, got)
    ends = {int((row != tok.pad_token_id).sum()) for row in got}
    assert len(ends) > 1


def test_a_random_model_matches_when_sampling_and_greedy():
    model = _tiny(3)
    ids = torch.tensor([[1, 5, 7, 9]] * 5)
    for kw in (dict(do_sample=True, temperature=1.3, top_p=0.8), dict(do_sample=False)):
        ref, got = _both(model, ids, 4, max_new_tokens=60, eos_token_id=2, pad_token_id=0, **kw)
        assert torch.equal(ref, got), kw


def test_the_grammar_constrained_batch_is_the_same_either_way(shipped, tmp_path):
    """draw_batch with the grammar processor: the lean loop and generate() give the same
    constrained documents for a seed (the jump decoder draws other ones: test_jump_decode.py)."""
    from llamat_cif.sampling import SampleConfig
    from llamat_cif.sampling.sample import BatchSampler, draw_batch

    model, tok = shipped
    bs = BatchSampler(SampleConfig(n=3, out_dir=str(tmp_path), batch_size=3, seed=0, temperature=0.7,
                                   top_p=0.9), model=model, tokenizer=tok)
    runs = [draw_batch(model, tok, size=3, seed=(2, 0), conditions=[bs.cond] * 3, grammar=bs.grammar,
                       vocab=bs.vocab, temperature=0.7, top_p=0.9, decoder=name) for name in ("lean", "transformers")]
    assert torch.equal(runs[0], runs[1])
    assert all(tok.eos_token_id in row.tolist() for row in runs[0])
    # and unconstrained, through the same call with the run's settings (top-k 0: off in both)
    bare = [draw_batch(model, tok, size=8, seed=(0, 3), temperature=0.7, top_p=0.9, decoder=name)
            for name in ("jump", "lean", "transformers")]
    assert torch.equal(bare[0], bare[1]) and torch.equal(bare[1], bare[2])  # jump: unconstrained as lean


def test_models_it_does_not_cover_go_through_generate(shipped):
    model, _ = shipped
    assert lean.supports(model)
    model.train()
    try:
        assert not lean.supports(model)  # dropout would be on
    finally:
        model.eval()
    from transformers import LlamaConfig, LlamaForCausalLM

    gqa = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    assert not lean.supports(gqa.eval())
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(_tiny(0), LoraConfig(r=2, target_modules=["q_proj"]))
    assert not lean.supports(adapted)


def test_the_decoder_setting_is_checked_and_left_out_of_resume_keys():
    from llamat_cif.sampling import SampleConfig
    from llamat_cif.sampling.rows import RESUME_KEYS

    assert SampleConfig(n=1, out_dir="x").decoder == "jump"
    with pytest.raises(ValueError, match="decoder must be one of jump, lean, transformers"):
        SampleConfig(n=1, out_dir="x", decoder="onnx")
    # lean and transformers write the same rows: a run may resume with the other (rows.draws decides)
    assert "decoder" not in RESUME_KEYS


def test_the_cli_offers_exactly_the_decoders_the_config_knows():
    from llamat_cif.cli.generate import generate as command
    from llamat_cif.sampling.config import DECODERS

    (option,) = [p for p in command.params if p.name == "decoder"]
    assert tuple(option.type.choices) == DECODERS and option.default == "jump"
