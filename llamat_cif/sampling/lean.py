"""A lean decode loop for LLaMA-family generators: the same weights, the same sampling, less Python.

``transformers``' ``generate()`` spends most of a small model's decode step outside matrix work: the
module tree, mask and cache bookkeeping, a KV cache that grows by concatenation, output objects and
stopping criteria. For the shipped 6.5M-parameter model on one CPU thread that overhead is several
times the arithmetic. :func:`sample_tokens` runs the forward pass of a ``LlamaForCausalLM`` as a flat
sequence of tensor operations over the model's own parameters (no copy; the checkpoint format stays
``transformers``'), with a key/value cache allocated once for the whole batch, and samples exactly
as ``generate()`` does: logits processors in order (ours first, then temperature, top-k, top-p, which
are ``transformers``' own warper classes), softmax, ``torch.multinomial``, finished rows padded.

Every operation is the one ``transformers`` runs (same functions, same shapes, same order), so the
logits, the random stream and therefore the sampled documents are the same as ``generate()``'s;
``tests/test_lean_decode.py`` checks token-for-token identity on the shipped model and on a random
tiny model. Finished rows stay in the matrix products, as in ``generate()``: dropping them would
change documents, because the CPU matrix kernels round differently for different row counts
(measured: an ``M x 256 @ 256 x 704`` product gives other last bits for ``M <= 10`` than the same
rows inside a batch of 32). Attention, computed row by row, is the cost that grows with the longest
document of a ragged batch; once a quarter of the attended rows have ended it runs for the
unfinished rows only (:meth:`LeanLlama.keep`).

For the jump decoder (:mod:`llamat_cif.sampling.jump`) :meth:`LeanLlama.forward_packed` appends a
different number of tokens to each row in one pass (rows at different positions; products over the
fed tokens only, attention under a per-row causal mask): the step logits of every fed prefix, not
``generate()``'s bits (``tests/test_jump_decode.py``).

:func:`supports` says which models qualify (a plain ``LlamaForCausalLM`` with default RoPE, SiLU, no
biases, every head its own key/value head, SDPA attention, in inference mode); anything else
(``peft`` adapters, other architectures) goes through ``generate()``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def supports(model: Any) -> bool:
    """Whether :func:`sample_tokens` reproduces ``model.generate()`` for ``model``."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return False
    if type(model) is not LlamaForCausalLM or model.training:
        return False
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    return (rope.get("rope_type", "default") == "default"
            and cfg.hidden_act == "silu"
            and not getattr(cfg, "attention_bias", False)
            and not getattr(cfg, "mlp_bias", False)
            and getattr(cfg, "pretraining_tp", 1) == 1
            and cfg.num_key_value_heads == cfg.num_attention_heads
            and getattr(cfg, "_attn_implementation", "sdpa") in ("sdpa", None))


class LeanLlama:
    """The decode-time forward of a ``LlamaForCausalLM`` over its own parameters.

    :meth:`start` allocates the key/value cache for ``batch`` rows of up to ``length`` tokens;
    :meth:`forward` appends ``ids`` (``batch x T``) at the next positions and returns the float32
    logits of the last one (``batch x vocab``).
    """

    def __init__(self, model: Any) -> None:
        cfg = model.config
        inner = model.model
        self.heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.embed = inner.embed_tokens.weight
        self.layers = [(
            lay.input_layernorm.weight, lay.input_layernorm.variance_epsilon,
            lay.self_attn.q_proj.weight, lay.self_attn.k_proj.weight, lay.self_attn.v_proj.weight,
            lay.self_attn.o_proj.weight,
            lay.post_attention_layernorm.weight, lay.post_attention_layernorm.variance_epsilon,
            lay.mlp.gate_proj.weight, lay.mlp.up_proj.weight, lay.mlp.down_proj.weight,
        ) for lay in inner.layers]
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.head = model.lm_head.weight
        self.inv_freq = inner.rotary_emb.inv_freq
        self.scaling = inner.rotary_emb.attention_scaling
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0
        self.rows: torch.Tensor | None = None  # the batch rows attention runs for (None: all)

    def start(self, batch: int, length: int) -> None:
        """A fresh cache for ``batch`` rows of at most ``length`` tokens."""
        shape = (batch, self.heads, length, self.head_dim)
        like = self.embed
        self.cache = [(torch.empty(shape, dtype=like.dtype, device=like.device),
                       torch.empty(shape, dtype=like.dtype, device=like.device)) for _ in self.layers]
        self.length = 0
        self.rows = None
        pos = torch.arange(length, device=like.device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq.to(device=like.device, dtype=torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * self.scaling).to(like.dtype)
        self.sin = (emb.sin() * self.scaling).to(like.dtype)

    @staticmethod
    def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x.to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def keep(self, rows: torch.Tensor) -> None:
        """Attend only for ``rows`` (indices into the batch) from now on: the other rows' cache is
        dropped and their attention output is zero (their tokens are padding, never read). Matrix
        products still run over the whole batch, so every kept row is computed exactly as before
        (products round differently for other row counts; attention does not, row by row)."""
        pos = rows if self.rows is None else torch.searchsorted(self.rows, rows)
        t = self.length
        kept = []
        for k, v in self.cache:
            k2, v2 = k.new_empty((len(rows), *k.shape[1:])), v.new_empty((len(rows), *v.shape[1:]))
            k2[:, :, :t], v2[:, :, :t] = k[pos, :, :t], v[pos, :, :t]  # only the positions written
            kept.append((k2, v2))
        self.cache, self.rows = kept, rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, width = ids.shape
        t0, t1 = self.length, self.length + width
        cos = self.cos[t0:t1][None, None]
        sin = self.sin[t0:t1][None, None]
        causal = width > 1
        rows = self.rows
        h = F.embedding(ids, self.embed)
        split = (batch, width, -1, self.head_dim)
        for (n1, e1, wq, wk, wv, wo, n2, e2, wg, wu, wd), (kc, vc) in zip(self.layers, self.cache, strict=True):
            x = self._rms(h, n1, e1)
            q = self._rotate(F.linear(x, wq).view(split).transpose(1, 2), cos, sin)
            k = self._rotate(F.linear(x, wk).view(split).transpose(1, 2), cos, sin)
            v = F.linear(x, wv).view(split).transpose(1, 2)
            if rows is not None:
                q, k, v = q[rows], k[rows], v[rows]
            kc[:, :, t0:t1], vc[:, :, t0:t1] = k, v
            a = F.scaled_dot_product_attention(q, kc[:, :, :t1], vc[:, :, :t1], dropout_p=0.0,
                                               scale=self.scale, is_causal=causal)
            if rows is not None:
                a = a.new_zeros((batch, *a.shape[1:])).index_copy_(0, rows, a)
            a = a.transpose(1, 2).contiguous().reshape(batch, width, -1).contiguous()
            h = h + F.linear(a, wo)
            x = self._rms(h, n2, e2)
            h = h + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
        self.length = t1
        h = self._rms(h[:, -1:], *self.norm)
        return F.linear(h, self.head)[:, -1].to(copy=True, dtype=torch.float32)


    # ------------------------------------------------------------------ packed (ragged) decoding
    def start_packed(self, batch: int, length: int) -> None:
        """:meth:`start` for :meth:`forward_packed`. The cache starts short and grows (doubling, up to
        ``length``) as the rows do, so dropping finished rows copies little; it is zeroed, because rows
        of different lengths share one attention call and a slot no row has written must not hold NaN
        (a mask does not clear NaN)."""
        self.start(batch, length)
        self.cache = [(k.new_zeros((*k.shape[:2], 128, k.shape[3])), v.new_zeros((*v.shape[:2], 128, v.shape[3])))
                      for k, v in self.cache]

    def _room(self, span: int) -> None:
        have = self.cache[0][0].shape[2]
        if span <= have:
            return
        size = min(max(2 * have, span), self.cos.shape[0])
        grown = []
        for k, v in self.cache:
            k2, v2 = k.new_zeros((*k.shape[:2], size, k.shape[3])), v.new_zeros((*v.shape[:2], size, v.shape[3]))
            k2[:, :, :have], v2[:, :, :have] = k, v
            grown.append((k2, v2))
        self.cache = grown

    def forward_packed(self, feeds: list[list[int]], starts: torch.Tensor) -> torch.Tensor:
        """Append ``feeds[i]`` (at least one token) to cache row ``i`` at positions ``starts[i]``,
        ``starts[i] + 1``, ...; returns the float32 logits after each row's last fed token
        (``rows x vocab``). Rows feed different numbers of tokens: the matrix products run over the
        fed tokens only (packed, no padding), attention over a padded ``rows x width`` block with a
        per-row causal mask over the row's own cache."""
        device = self.embed.device
        counts = torch.tensor([len(f) for f in feeds], device=device)
        rows = len(feeds)
        width = int(counts.max())
        row_of = torch.repeat_interleave(torch.arange(rows, device=device), counts)
        col_of = torch.cat([torch.arange(int(c), device=device) for c in counts.tolist()])
        pos = starts[row_of] + col_of  # each token's position in its row
        ids = torch.tensor([t for f in feeds for t in f], device=device)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # tokens x 1 x head_dim
        span = int((starts + counts).max())
        self._room(span)
        qpos = starts[:, None] + torch.arange(width, device=device)  # rows x width
        mask = (torch.arange(span, device=device)[None, None] <= qpos[:, :, None])[:, None]
        h = F.embedding(ids, self.embed)
        split = (len(ids), self.heads, self.head_dim)
        qp = h.new_zeros((rows, width, self.heads, self.head_dim))  # padding queries stay zero
        for (n1, e1, wq, wk, wv, wo, n2, e2, wg, wu, wd), (kc, vc) in zip(self.layers, self.cache, strict=True):
            x = self._rms(h, n1, e1)
            kc[row_of, :, pos] = self._rotate(F.linear(x, wk).view(split), cos, sin)
            vc[row_of, :, pos] = F.linear(x, wv).view(split)
            qp[row_of, col_of] = self._rotate(F.linear(x, wq).view(split), cos, sin)
            a = F.scaled_dot_product_attention(qp.transpose(1, 2), kc[:, :, :span], vc[:, :, :span],
                                               attn_mask=mask, dropout_p=0.0, scale=self.scale)
            a = a.transpose(1, 2)[row_of, col_of].reshape(len(ids), -1)
            h = h + F.linear(a, wo)
            x = self._rms(h, n2, e2)
            h = h + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
        last = torch.cumsum(counts, 0) - 1
        h = self._rms(h[last], *self.norm)
        return F.linear(h, self.head).to(copy=True, dtype=torch.float32)

    def keep_packed(self, rows: torch.Tensor) -> None:
        """Keep only cache ``rows`` (indices into the cache's rows), in that order."""
        self.cache = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cache]


def warpers(temperature: float | None, top_k: int | None, top_p: float | None) -> list:
    """``transformers``' own temperature, top-k and top-p warpers for these settings, in
    ``generate()``'s order (only those that change anything); shared by the decode loops."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out = []
    if temperature is not None and temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return out


def sample_tokens(model: Any, input_ids: torch.Tensor, *, max_new_tokens: int, eos_token_id: int,
                  pad_token_id: int, do_sample: bool = True, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float = 1.0, logits_processor: list | None = None,
                  lean: LeanLlama | None = None) -> torch.Tensor:
    """``model.generate(input_ids, ...)`` for an unpadded batch, through :class:`LeanLlama`.

    Returns the prompt and the new tokens (``batch x (prompt + new)``), like ``generate()``: a row
    that has written ``eos_token_id`` is padded with ``pad_token_id`` until the longest row ends or
    ``max_new_tokens`` are written. The processors run in ``generate()``'s order (``logits_processor``
    first, then temperature, top-k and top-p with ``transformers``' own warpers), and the token is
    drawn with the same softmax and ``torch.multinomial`` call, so the global torch random stream
    is consumed exactly as ``generate()`` consumes it.
    """
    processors = list(logits_processor or []) + (warpers(temperature, top_k, top_p) if do_sample else [])
    lean = lean or LeanLlama(model)
    batch, prompt = input_ids.shape
    total = prompt + max_new_tokens
    lean.start(batch, total)
    unfinished = torch.ones(batch, dtype=torch.long, device=input_ids.device)
    ids = input_ids
    with torch.no_grad():  # not inference_mode: callers may feed the ids to a training step
        logits = lean.forward(input_ids)
        for _ in range(total - prompt):
            scores = logits
            for p in processors:
                scores = p(ids, scores)
            if do_sample:
                nxt = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                nxt = torch.argmax(scores, dim=-1)
            nxt = nxt * unfinished + pad_token_id * (1 - unfinished)
            ids = torch.cat([ids, nxt[:, None]], dim=-1)
            unfinished = unfinished & (nxt != eos_token_id).long()
            if not bool(unfinished.any()) or ids.shape[1] >= total:
                break
            held = lean.rows if lean.rows is not None else torch.arange(batch, device=ids.device)
            still = held[unfinished[held].bool()]
            if 4 * len(still) <= 3 * len(held):  # a quarter of the attended rows have ended
                lean.keep(still)
            logits = lean.forward(nxt[:, None])
    return ids
