"""The ``transformers`` logits processor that walks every sequence of a batch through its grammar."""

from __future__ import annotations

from transformers import LogitsProcessor


class GrammarLogitsProcessor(LogitsProcessor):
    """``transformers`` logits processor that masks every token the grammar does not allow.

    Syntax and ranges are cheap and are applied as a mask. The look-ahead checks (distances,
    orbit sizes, room for the rest of the composition) are expensive, so where a field has them the
    processor samples the token itself from the model's distribution over the syntactically allowed
    tokens (temperature, top-k, top-p as configured), checks only the sampled token, and on a veto
    removes it and samples again: this draws from the model's distribution restricted to the tokens
    that pass, without checking the others. The chosen token is then the only one left unmasked.

    Args:
        decoders: one :class:`~llamat_cif.sampling.engine.Decoder` per row of the batch.
        prompt_len: length of the (left-padded) prompt; later tokens are fed to the decoders.
        pad_id: the token a finished row is padded with.
        temperature, top_k, top_p: the sampling settings of ``generate`` (the processor samples
            fields with look-ahead checks itself, from the same distribution).
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
        if input_ids.shape[1] > self.seen:  # the token chosen at the previous step
            for d, t in zip(self.decoders, input_ids[:, -1].tolist(), strict=True):
                d.advance(t)
            self.seen = input_ids.shape[1]
        return self.restrict(scores, [None if d.done else (d, d.allowed()) for d in self.decoders])

    def restrict(self, scores, rows: list):
        """``scores`` with every token masked that row ``i``'s grammar refuses now: ``rows[i]`` is
        ``(decoder, decoder.allowed())``, or None for a finished row (only the pad id is left). Where
        the field has look-ahead checks the token is drawn here (:meth:`_pick`) and is the only one
        left. Also used by :func:`llamat_cif.sampling.jump.sample_constrained`."""
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(rows):
            if row is None:
                mask[i, self.pad_id] = 0.0  # finished: transformers pads the row anyway
                continue
            d, allowed = row
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
            # steering first: a token that keeps the widest contact margin of the field's tiers,
            # from the nucleus, else from the whole (tempered) distribution, tier by tier; then a
            # nucleus token that passes the hard rule. A tier no token passed is not asked again at
            # the field's later digits (Decoder.live_tiers).
            tries = [(k, dist) for k in d.live_tiers() for dist in (probs, full)] + [(False, probs)]
            for strict, dist in tries:
                p = dist.clone()
                while float(p.sum()) > 0:
                    j = int(torch.multinomial(p, 1).item())
                    if d.check(allowed[j], strict=strict):
                        return allowed[j]
                    p[j] = 0.0
                if strict is not False and dist is full:
                    d.exhaust_tier(strict)
        else:
            for k in d.live_tiers():  # greedy: the best token that keeps a margin, widest first
                for j in order:
                    if d.check(allowed[j], strict=k):
                        return allowed[j]
                d.exhaust_tier(k)
        for j in order:  # greedy, or nothing in the nucleus passes: the model's next best
            if d.check(allowed[j]):
                return allowed[j]
        d.stats.fallbacks += 1  # no admissible token: let the model's choice through (counted)
        return allowed[order[0]]
