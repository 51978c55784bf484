"""A compact GRPO (group relative policy optimisation) for tiny causal LMs on CPU.

TRL is not a dependency of this project (and its GRPO trainer targets accelerate/GPU setups), so this is
a small, tested implementation of the same objective (Shao et al., 2024, DeepSeekMath; TRL's defaults
where the paper leaves a choice):

- per step, ``prompts_per_step`` training-split problems; for each, ``group_size`` completions sampled
  from the current policy (temperature ``temperature``);
- exact reward (``problems.AnswerFormat.reward``, on the text the tokenizer decodes); group-relative
  advantage ``A = (r - mean_g r) / (std_g r + eps)`` (unbiased std, as TRL); a group whose rewards are all
  equal has A = 0 and contributes only the KL term;
- clipped surrogate ``min(rho A, clip(rho, 1-e, 1+e) A)`` per completion token, with rho the ratio to the
  sampling policy (``ppo_epochs`` updates per batch; with 1 it is REINFORCE with a group baseline);
- a KL penalty to the frozen base, k3 estimator ``exp(q - p) - (q - p) - 1`` (p = policy, q = reference
  log-prob of the sampled token), weight ``beta``;
- loss = mean over completions of (mean over that completion's tokens), as in the GRPO paper.
"""

from __future__ import annotations

import torch

from reasoning_embed.foundry.problems import AnswerFormat
from reasoning_embed.foundry.sampling import completion_logprobs, decode


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``rewards`` [P, G] -> advantages [P, G]: (r - group mean) / (group std (unbiased) + eps)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): exp(q - p) - (q - p) - 1 (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp, old_logp, ref_logp, adv, mask, clip_eps: float = 0.2, beta: float = 0.04):
    """Clipped GRPO objective (to minimise). ``adv`` [B]; the others [B, T]; ``mask`` 1 on completion tokens."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    kl = k3_kl(logp, ref_logp)
    per_token = -(surrogate - beta * kl)
    m = mask.float()
    per_seq = (per_token * m).sum(1) / m.sum(1).clamp_min(1)
    mean_kl = ((kl * m).sum(1) / m.sum(1).clamp_min(1)).mean()
    return per_seq.mean(), mean_kl


def grpo_train(policy, reference, tok, sampler, cfg: dict, seed: int, progress=None, after_step=None) -> dict:
    """Run ``cfg['steps']`` GRPO optimizer steps (x ``ppo_epochs``); returns counts and a reward trace.
    ``after_step()`` runs after every optimizer step (``foundry.lexical.HeldChannel``)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    P, G = cfg["prompts_per_step"], cfg["group_size"]
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    trace, tokens_trained, tokens_seen, opt_steps = [], 0, 0, 0
    reward = AnswerFormat.for_tokenizer(tok).reward
    for step in range(cfg["steps"]):
        batch = [next(sampler) for _ in range(P)]
        prompts = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in batch for _ in range(G)]
        policy.eval()
        comp, mask = decode(policy, prompts, tok.eos_token_id, tok.pad_token_id, cfg["max_new_tokens"],
                            greedy=False, temperature=cfg["temperature"], generator=g)
        texts = [tok.decode(c[m.bool()].tolist(), skip_special_tokens=True) for c, m in zip(comp, mask)]
        rewards = torch.tensor([reward(t, p.answer) for t, p in zip(texts, (p for p in batch for _ in range(G)))])
        adv = group_advantages(rewards.view(P, G), cfg["eps"]).view(-1)
        with torch.no_grad():
            old_logp = completion_logprobs(policy, prompts, comp, mask, tok.pad_token_id)
            ref_logp = completion_logprobs(reference, prompts, comp, mask, tok.pad_token_id)
        policy.train()
        for _ in range(cfg["ppo_epochs"]):
            logp = completion_logprobs(policy, prompts, comp, mask, tok.pad_token_id)
            loss, kl = grpo_loss(logp, old_logp, ref_logp, adv, mask, cfg["clip_eps"], cfg["beta"])
            kl = kl.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            if after_step is not None:
                after_step()
            opt_steps += 1
        tokens_trained += int(mask.sum())
        tokens_seen += int(mask.sum()) + sum(len(p) for p in prompts)
        trace.append({"step": step, "reward": float(rewards.mean()), "kl": kl.item()})
        if progress is not None:
            progress.update(1)
            recent = sum(t["reward"] for t in trace[-10:]) / len(trace[-10:])
            progress.set_postfix(stage="rlvr", reward=f"{recent:.2f}", kl=f"{kl.item():.3f}", refresh=False)
    policy.eval()
    return {"steps": cfg["steps"], "optimizer_steps": opt_steps, "completion_tokens": tokens_trained,
            "tokens_processed": tokens_seen, "completions": cfg["steps"] * P * G,
            "reward_first10": sum(t["reward"] for t in trace[:10]) / max(1, len(trace[:10])),
            "reward_last10": sum(t["reward"] for t in trace[-10:]) / max(1, len(trace[-10:])),
            "trace": trace}
