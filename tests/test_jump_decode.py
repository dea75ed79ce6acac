"""The jump decoder: forced text fed at once, packed passes, the grammar's documents."""

import json

import pytest
import torch

from llamat_cif.model import load_generator
from llamat_cif.sampling import SampleConfig
from llamat_cif.sampling.lean import LeanLlama


@pytest.fixture(scope="module")
def shipped():
    model, tokenizer = load_generator("llamat-cif-small")
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def sampler(shipped, tmp_path_factory):
    from llamat_cif.sampling.sample import BatchSampler

    model, tok = shipped
    return BatchSampler(SampleConfig(n=8, out_dir=str(tmp_path_factory.mktemp("jump")), batch_size=8, seed=0,
                                     temperature=0.7, top_p=0.9), model=model, tokenizer=tok)


def test_packed_passes_give_the_full_forward_logits():
    """Rows of a random model fed in ragged chunks (1, 3, 7 ... tokens per pass, each row its own
    schedule, a row dropped half way) give, after each pass, the logits the full forward pass of the
    row's prefix gives at its last token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=256, tie_word_embeddings=False)).eval()
    seqs = [torch.randint(3, 40, (n,)).tolist() for n in (40, 25, 33)]
    schedules = [[1, 3, 7, 1, 1, 9, 2, 16], [5, 1, 1, 4, 14], [2, 2, 8, 1, 20]]
    lean = LeanLlama(model)
    lean.start_packed(3, 80)
    done = [0, 0, 0]
    rows = [0, 1, 2]
    starts = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        for step in range(5):
            if step == 3:  # drop row 1 (its cache row) and go on with the others
                keep = torch.tensor([0, 2])
                lean.keep_packed(keep)
                starts, rows = starts[keep], [0, 2]
            feeds = []
            for r in rows:
                n = schedules[r][step]
                feeds.append(seqs[r][done[r]:done[r] + n])
            logits = lean.forward_packed(feeds, starts)
            for k, r in enumerate(rows):
                done[r] += len(feeds[k])
                want = model(torch.tensor([seqs[r][:done[r]]])).logits[0, -1]
                assert torch.allclose(logits[k], want, atol=1e-4), (step, r)
            starts = starts + torch.tensor([len(f) for f in feeds])


def _draw(sampler, decoder, size, seed, **kw):
    from llamat_cif.sampling.sample import draw_batch

    kw = {"temperature": 0.7, "top_p": 0.9, **kw}
    ids = draw_batch(sampler.model, sampler.tokenizer, size=size, seed=seed, conditions=[sampler.cond] * size,
                     grammar=sampler.grammar, vocab=sampler.vocab, decoder=decoder, **kw)
    pad = sampler.tokenizer.pad_token_id
    return [[t for t in row.tolist() if t != pad] for row in ids]


def test_greedy_jump_writes_the_step_by_step_documents(sampler):
    """With no randomness the two loops must agree: forced tokens are the only ones the mask leaves,
    and the model is asked the same questions at the choices (token for token, 4 documents)."""
    jump = _draw(sampler, "jump", 4, (3, 0), temperature=0.0)
    step = _draw(sampler, "lean", 4, (3, 0), temperature=0.0)
    assert jump == step
    assert all(doc[-1] == sampler.tokenizer.eos_token_id for doc in jump)


def test_every_jump_document_walks_its_grammar(sampler):
    """Eight sampled documents (ragged: they end at different lengths, so rows leave the batch):
    replayed through a fresh decoder of the same grammar, every token is one the grammar allowed,
    each ends with the end token and decodes to a crystal; the same seed draws the same documents."""
    from llamat_cif.sampling.engine import Decoder, Stats
    from llamat_cif.sampling.sample import decode_sample

    docs = _draw(sampler, "jump", 8, (5, 1))
    assert docs == _draw(sampler, "jump", 8, (5, 1))
    assert len({len(d) for d in docs}) > 1
    for doc in docs:
        d = Decoder(sampler.grammar(sampler.vocab, sampler.cond, Stats()), sampler.vocab, Stats())
        for t in doc:
            assert not d.done and t in d.allowed()
            d.advance(t)
        assert d.done and doc[-1] == sampler.tokenizer.eos_token_id
        row = decode_sample(doc, sampler.tokenizer)
        assert row["error"] == "" and row["cif"]


def test_a_document_stops_at_the_token_budget(sampler):
    """A budget shorter than any crystal: every row stops at exactly that many tokens, without an end
    token, as the step-by-step loop does."""
    docs = _draw(sampler, "jump", 3, (1, 0), max_new_tokens=60)
    assert [len(d) for d in docs] == [60, 60, 60]
    assert all(sampler.tokenizer.eos_token_id not in d for d in docs)
    greedy = _draw(sampler, "jump", 3, (1, 0), max_new_tokens=60, temperature=0.0)
    assert greedy == _draw(sampler, "lean", 3, (1, 0), max_new_tokens=60, temperature=0.0)


def test_resuming_across_decoders_follows_the_draws(tmp_path):
    """lean and transformers draw the same tokens, jump other ones: a constrained run resumes across
    the first two only; unconstrained runs draw the same way under all three. A run written before
    the jump decoder (decoder "lean", or none) reads as step-by-step."""
    from dataclasses import asdict

    from llamat_cif.sampling.rows import check_resume

    def saved(**kw):
        cfg = SampleConfig(n=4, out_dir=str(tmp_path), **kw)
        (tmp_path / "sample_config.json").write_text(json.dumps(asdict(cfg)))
        return cfg

    saved(decoder="lean")
    check_resume(tmp_path, SampleConfig(n=4, out_dir=str(tmp_path), decoder="transformers"))
    with pytest.raises(ValueError, match="decoder"):
        check_resume(tmp_path, SampleConfig(n=4, out_dir=str(tmp_path)))  # the default: jump
    saved(decoder="lean", constrained=False)
    check_resume(tmp_path, SampleConfig(n=4, out_dir=str(tmp_path), constrained=False))
    old = asdict(SampleConfig(n=4, out_dir=str(tmp_path)))
    del old["decoder"]
    (tmp_path / "sample_config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="decoder"):
        check_resume(tmp_path, SampleConfig(n=4, out_dir=str(tmp_path)))
    check_resume(tmp_path, SampleConfig(n=4, out_dir=str(tmp_path), decoder="lean"))


def test_the_model_is_asked_the_step_by_step_question_at_every_choice(sampler, monkeypatch):
    """At each choice of six sampled documents (rows of different lengths, some fed several forced
    tokens in one pass, finished rows dropped), the logits the jump loop hands to the grammar are
    the full forward pass's logits after the document's prefix: the draws follow the step-by-step
    loop's distribution."""
    import collections

    from llamat_cif.sampling import engine, jump, lean
    from llamat_cif.sampling.processor import GrammarLogitsProcessor

    written: collections.Counter = collections.Counter()
    advance = engine.Decoder.advance

    def counted(self, tid):
        if not self.done:
            written[id(self)] += 1
        return advance(self, tid)

    monkeypatch.setattr(engine.Decoder, "advance", counted)
    tok, model = sampler.tokenizer, sampler.model
    decoders = [engine.Decoder(sampler.grammar(sampler.vocab, sampler.cond, engine.Stats()), sampler.vocab,
                               engine.Stats()) for _ in range(6)]
    proc = GrammarLogitsProcessor(decoders, 1, tok.pad_token_id, temperature=0.7, top_p=0.9)
    asked = collections.defaultdict(list)

    def restrict(scores, rows):
        for s, (d, _) in zip(scores, rows, strict=True):
            asked[id(d)].append((written[id(d)], s.clone()))
        return proc.restrict(scores, rows)

    torch.manual_seed(7)
    out = jump.sample_constrained(lean.LeanLlama(model), decoders, [tok.bos_token_id], max_new_tokens=1000,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                  restrict=restrict, temperature=0.7, top_p=0.9)
    for d, row in zip(decoders, out, strict=True):
        doc = [t for t in row.tolist() if t != tok.pad_token_id]
        with torch.no_grad():
            full = model(torch.tensor([[tok.bos_token_id, *doc]])).logits[0]
        assert len(asked[id(d)]) > 20
        for pos, logits in asked[id(d)]:
            assert torch.allclose(logits, full[pos].float(), atol=1e-3), pos


def test_parts_of_a_step_by_step_run_are_kept_and_a_jump_run_keeps_its_own(tmp_path):
    """The parts' manifest names the draws only for jump runs: a step-by-step run's manifest is the
    one written before the jump decoder existed (its parts resume), and jump parts are not mixed
    into a step-by-step run."""
    from llamat_cif.sampling.rows import RESUME_KEYS, _manifest

    lean = SampleConfig(n=4, out_dir=str(tmp_path), decoder="lean")
    assert set(_manifest(lean)) == set(RESUME_KEYS)
    jump = SampleConfig(n=4, out_dir=str(tmp_path))
    assert _manifest(jump) == {**_manifest(lean), "draws": "jump"}
    assert _manifest(SampleConfig(n=4, out_dir=str(tmp_path), constrained=False)) == _manifest(
        SampleConfig(n=4, out_dir=str(tmp_path), constrained=False, decoder="lean"))
