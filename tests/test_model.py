"""Named model configs and load_generator: sizes, offline loading, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from llamat_cif import model as M
from llamat_cif.model import (
    MODEL_CONFIGS,
    ModelLoadError,
    build_model,
    count_parameters,
    load_generator,
)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *"abcdefgh \n0123456789"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tok = _tokenizer()
    m = build_model("tiny", len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=0, seed=0)
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("name", "lo", "hi"), [("tiny", 0, 0.5e6), ("small", 5e6, 10e6), ("base", 20e6, 30e6)])
def test_named_config_sizes(name, lo, hi):
    # a CIF vocabulary of a few hundred tokens
    m = build_model(name, 400, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    n = count_parameters(m)
    assert lo <= n <= hi, n
    assert m.config.max_position_embeddings == 1024
    if name == "small":
        assert 2 * n <= 24e6  # bf16 safetensors within the shipped-size budget


def test_build_model_seeded():
    a = build_model("tiny", 30, bos_token_id=1, eos_token_id=2, seed=5)
    b = build_model("tiny", 30, bos_token_id=1, eos_token_id=2, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(ValueError, match="tiny"):
        build_model("huge", 30, bos_token_id=1, eos_token_id=2)


def test_load_generator_from_path(tiny_dir):
    model, tok = load_generator(tiny_dir, device="cpu")
    assert not model.training and tok.bos_token_id == 1
    assert next(model.parameters()).dtype == torch.float32
    ref = build_model("tiny", len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=0, seed=0)
    assert torch.equal(model.model.embed_tokens.weight, ref.model.embed_tokens.weight)
    m16, _ = load_generator(str(tiny_dir), device="cpu", dtype="bf16")
    assert next(m16.parameters()).dtype == torch.bfloat16


def test_load_generator_shipped_name_and_default(tiny_dir, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / M.DEFAULT_MODEL)
    monkeypatch.setattr(M, "shipped_models_dir", lambda: tmp_path)
    assert M.shipped_models() == [M.DEFAULT_MODEL]
    model, _ = load_generator("default", device="cpu")
    assert model.config.hidden_size == MODEL_CONFIGS["tiny"].hidden_size
    assert M.resolve_model_path(M.DEFAULT_MODEL) == (tmp_path / M.DEFAULT_MODEL).resolve()


def test_load_generator_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "shipped_models_dir", lambda: tmp_path / "shipped")
    with pytest.raises(ModelLoadError, match=r"neither a local folder nor a known model name.*Shipped models: none"):
        load_generator("no-such-model")
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_generator(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither config.json"):
        load_generator(tmp_path / "empty")


def test_adapter_with_remote_base_fails_clearly(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "meta-llama/Llama-2-7b-hf", "peft_type": "LORA"}))
    with pytest.raises(ModelLoadError, match="not a local folder.*never downloaded"):
        load_generator(tmp_path)
