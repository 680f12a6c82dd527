"""Batched generation and response log-probabilities, shared by the warm start and the PPO trainer.

Both work on prompt *embeddings* (left-padded, soft tokens already in place; see ``bridge.py``), so
the same functions serve prompts with and without the bridge. Responses are right-padded after the
prompt; ``sequence_logprobs`` is the one place log π(response | prompt) is computed, so the log-probs a
rollout reports and the ones a PPO update recomputes agree exactly at the first epoch.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Generated(NamedTuple):
    """B sampled responses of at most T tokens.

    response_ids:  (B, T) long  — generated ids, ``pad_id`` after the end of each response
    response_mask: (B, T) bool  — True on response tokens (the end-of-turn token included)
    logprobs:      (B, T) float — log π(token | prompt, earlier tokens), 0 where masked (None: not scored)
    texts:         list[str]    — the decoded responses (special tokens removed), prompt not included
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]


def response_mask(ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """(B, T) bool: True up to and including the first end-of-sequence token of each row."""
    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= ids == e
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first eos
    return ~after


def expand_groups(group_size: int, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, *rows: list
                  ) -> tuple:
    """Each prompt repeated ``group_size`` times in consecutive rows (``repeat_interleave``), the layout
    :func:`prompt_cache` and ``generate(..., group_size=G)`` expect: returns (embeddings, mask, *each list in
    ``rows`` with its entries repeated alike), so one prompt encoding serves its G samples."""
    G = group_size
    return (prompt_embeds.repeat_interleave(G, 0), prompt_mask.repeat_interleave(G, 0),
            *([r for r in row for _ in range(G)] for row in rows))


def prompt_cache(model, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, group_size: int):
    """Encode each distinct prompt once and share it with its group: ``prompt_embeds`` (B, P, H) hold
    B / ``group_size`` prompts, each repeated ``group_size`` times in consecutive rows (``repeat_interleave``).
    Returns (the KV cache of all P prompt positions expanded to B rows, the (B, V) logits at the last prompt
    position). Differentiable: gradients reach the prompt (bridge, store, LoRA) through the shared cache."""
    G = group_size
    B = prompt_embeds.shape[0]
    if G < 1 or B % G:
        raise ValueError(f"a batch of whole groups expected: {B} rows are not a multiple of group size {G}")
    pe, pm = prompt_embeds[::G], prompt_mask[::G].long()
    pos = (pm.cumsum(1) - 1).clamp(min=0)
    out = model(inputs_embeds=pe, attention_mask=pm, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = out[cache_arg()]
    cache.batch_repeat_interleave(G)
    return cache, out.logits[:, -1].repeat_interleave(G, 0)


@functools.lru_cache(maxsize=None)
def cache_arg() -> str:
    """The name transformers gives the KV cache (``cache`` from 5.x, ``past_key_values`` before)."""
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def sequence_logprobs(model, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                      response_mask: torch.Tensor, temperature: float = 1.0, group_size: int = 1) -> torch.Tensor:
    """log π(y_t | prompt, y_<t) for every response token: (B, T), 0 where ``response_mask`` is False.

    prompt_embeds (B, P, H) left-padded with prompt_mask (B, P); response_ids (B, T) right-padded.
    Position ids count real tokens only, so left padding does not shift the positions.
    ``group_size`` G > 1: rows come in groups of G identical prompts (:func:`prompt_cache`); each prompt is
    encoded once and only the responses run per row — the same function, with ~1/G of the prompt's compute.
    """
    T = response_ids.shape[1]
    resp = model.get_input_embeddings()(response_ids).to(prompt_embeds.dtype)
    mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    if group_size > 1:  # METHOD: one prompt encoding per group, its KV cache shared by the G responses
        cache, first = prompt_cache(model, prompt_embeds, prompt_mask, group_size)
        P = prompt_embeds.shape[1]
        parts = [first[:, None]]
        if T > 1:  # response tokens 0..T-2 predict tokens 1..T-1
            out = model(inputs_embeds=resp[:, :T - 1], attention_mask=mask[:, :P + T - 1],
                        position_ids=pos[:, P:P + T - 1], use_cache=True, **{cache_arg(): cache})
            parts.append(out.logits)
        logits = torch.cat(parts, 1).float()
    else:
        x = torch.cat([prompt_embeds, resp], dim=1)
        # logits only where they predict a response token: the last prompt position and the response
        out = model(inputs_embeds=x, attention_mask=mask, position_ids=pos, logits_to_keep=T + 1, use_cache=False)
        logits = out.logits[:, :T].float()
    if temperature != 1.0:
        logits = logits / temperature
    lp = torch.gather(F.log_softmax(logits, dim=-1), 2, response_ids.unsqueeze(-1)).squeeze(-1)
    return lp * response_mask.to(lp.dtype)


def response_nll(model, prompt_embeds, prompt_mask, response_ids, response_mask) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood over response tokens only (the SFT loss) and the token count."""
    lp = sequence_logprobs(model, prompt_embeds, prompt_mask, response_ids, response_mask)
    n = int(response_mask.sum())
    return -lp.sum() / max(n, 1), n


def sampling_config(tok, *, max_new_tokens: int, temperature: float, top_p: float, do_sample: bool):
    """A generation config with nothing but what we ask for: every other logits processor that would change
    the sampling distribution (repetition penalty, no-repeat n-grams, top-k, suppressed or forced tokens,
    typical/epsilon/eta cutoffs, a minimum length — whatever the model's own ``generation_config`` carries)
    is at its neutral default. So PPO samples from exactly the distribution :func:`sequence_logprobs`
    scores (with ``top_p < 1`` the nucleus truncation is the one, stated, difference)."""
    from transformers import GenerationConfig

    eos = tok.eos_token_id
    if do_sample and temperature > 0:
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                                top_k=0, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                            eos_token_id=eos)


@torch.no_grad()
def generate(model, tok, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int = 48,
             temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True, score: bool = True,
             group_size: int = 1) -> Generated:
    """Sample (or greedily decode) responses to a left-padded batch of prompt embeddings.

    Seeded through torch's global generator (``seed_everything``). ``temperature`` and ``top_p`` shape
    sampling (:func:`sampling_config`: nothing else does); the returned log-probs are under the policy at
    ``temperature`` (before top-p truncation), recomputed with :func:`sequence_logprobs` so PPO's old and
    new log-probs are the same function. ``score=False`` skips that pass (``logprobs`` is then None): the
    PPO trainer scores the samples itself, in the pass that also reads the value head. ``group_size`` G > 1:
    rows come in groups of G copies of one prompt (``repeat_interleave``); each prompt but its last position
    is encoded once and its KV cache shared by the group's G samples (:func:`prompt_cache`).
    """
    eos = tok.eos_token_id
    config = sampling_config(tok, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             do_sample=do_sample)
    shared = {}
    if group_size > 1 and prompt_embeds.shape[1] > 1:  # generate() runs the last prompt position itself
        shared[cache_arg()], _ = prompt_cache(model, prompt_embeds[:, :-1], prompt_mask[:, :-1], group_size)
    out = model.generate(inputs_embeds=prompt_embeds, attention_mask=prompt_mask, generation_config=config, **shared)
    ids = out if isinstance(out, torch.Tensor) else out.sequences
    if ids.shape[1] == 0:  # nothing generated (max_new_tokens 0)
        ids = torch.full((prompt_embeds.shape[0], 1), tok.pad_token_id, dtype=torch.long, device=prompt_embeds.device)
    mask = response_mask(ids, {eos})
    ids = ids.masked_fill(~mask, tok.pad_token_id)
    lp = sequence_logprobs(model, prompt_embeds, prompt_mask, ids, mask,
                           temperature=temperature if do_sample and temperature > 0 else 1.0,
                           group_size=group_size) if score else None
    texts = [tok.decode(row[m].tolist(), skip_special_tokens=True).strip() for row, m in zip(ids, mask)]
    return Generated(ids, mask, lp, texts)
