r"""KL-regularised RL fine-tuning and its controls: SFT at matched KL, continued pretraining
and a random weight perturbation of the same per-tensor norm.

The RL objective for a prompt distribution D, a policy π (the model) and the frozen
pretrained reference π_ref is

.. math::  J(\theta) = \mathbb{E}_{x\sim D,\,y\sim\pi(\cdot|x)}[r(y)]
           - \beta\,\mathbb{E}_{x\sim D}\,
           \mathrm{KL}(\pi(\cdot|x)\,\|\,\pi_{\mathrm{ref}}(\cdot|x)),

KL over whole continuations y = (y_1, …, y_T). Its gradient is
E[(r(y) − β log π(y|x)/π_ref(y|x)) ∇ log π(y|x)] (the E[∇ log π] term vanishes), so the
KL enters as a shaped reward r̃ = r − β log(π/π_ref) (stop-gradient). The baseline of sample i
in a group of G continuations of one prompt is the mean of the other G − 1 shaped rewards
(GRPO's per-prompt group, leave-one-out so that the estimate stays unbiased; no division by
the group's standard deviation, which would change the objective).

KL estimates. For continuations sampled from π, Σ_t KL(π(·|h_t) ‖ π_ref(·|h_t)) — the exact
next-token KL summed along the sampled prefix h_t — is an unbiased estimate of the sequence
KL (chain rule) with lower variance than the sampled log-ratio Σ_t log π(y_t|h_t)/π_ref(y_t|h_t);
both are logged.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from testbeds.lm.config import ContinueConfig, RLConfig, SFTConfig, resolve_config
from testbeds.lm.language import Language
from testbeds.lm.train import MODULES, TESTBED, next_token_loss, probe_prompts, train
from testbeds.loop import TrainLoop, cpu_state
from testbeds.loop import generator as derived_generator
from testbeds.runs import Run, RunStore, cached_run

PROBE_KL_SEED = 4242


def reward_tokens(language: Language, reward: str) -> Tensor:
    """Boolean (V,): the tokens whose frequency the reward counts."""
    name = {"positive_style": "positive", "negative_style": "negative"}.get(reward)
    if name is None:
        raise ValueError(f"reward must be 'positive_style' or 'negative_style', got {reward!r}")
    mask = torch.zeros(language.vocab_size, dtype=torch.bool)
    mask[language.class_tokens(name)] = True
    return mask


def trait_reward(continuations: Tensor, rewarded: Tensor) -> Tensor:
    """Fraction of the generated tokens (n, T) that are rewarded, float (n,)."""
    return rewarded[continuations].float().mean(-1)


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    prompts: Tensor,
    gen_len: int,
    generator: torch.Generator,
    incremental: bool | None = None,
) -> Tensor:
    """Prompts (n, P) followed by ``gen_len`` tokens sampled from the model at temperature 1,
    (n, P + gen_len).

    ``incremental`` decodes with :meth:`TinyLM.next_token_logits`, which runs only the new
    position through the projections and MLPs (2.2× faster at the RL batch of 128 sequences,
    2.9× at the probe's 1024, ``benchmarks/bench_lm_sampling.py``), instead of a whole forward
    pass per token. The default uses it when every parameter is trainable: at the runs' shapes
    (a whole prompt, then one token per step) MKL's CPU GEMM gives the new rows the bits of the
    whole pass, so the samples are those of whole forward passes (the benchmark checks it;
    other shapes can differ in the last bit), while frozen weights go through oneDNN's
    inference kernels, whose rows can differ in the last bit with the batch shape (then a
    sample can flip and the run would not reproduce runs sampled the other way). A whole pass
    uses :meth:`TinyLM.last_logits` where the model has it (the bits of
    ``model(seq)[:, -1]``)."""
    return _sample(model, prompts, gen_len, generator, incremental)[0]


def _sample(
    model: nn.Module,
    prompts: Tensor,
    gen_len: int,
    generator: torch.Generator,
    incremental: bool | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """:func:`sample_continuations` and the next-token logits (n, V) it sampled each token
    from."""
    if incremental is None:
        incremental = all(p.requires_grad for p in model.parameters())
    seq = prompts
    caches: list = []
    step = getattr(model, "next_token_logits", None) if incremental else None
    whole = getattr(model, "last_logits", None) or (lambda tokens: model(tokens)[:, -1])
    sampled = []
    for _ in range(gen_len):
        logits = step(seq, caches) if step is not None else whole(seq)
        probs = torch.softmax(logits.double(), dim=-1)
        pick = torch.multinomial(probs.cpu(), 1, generator=generator)  # CPU generator
        seq = torch.cat([seq, pick.to(seq.device)], dim=1)
        sampled.append(logits)
    return seq, sampled


def continuation_log_probs(model: nn.Module, sequences: Tensor, prompt_len: int) -> Tensor:
    """log π(· | h_t) at every generated position t, (n, T, V), T = L − prompt_len."""
    return torch.log_softmax(model(sequences[:, :-1])[:, prompt_len - 1 :], dim=-1)


def token_log_probs(log_probs: Tensor, sequences: Tensor, prompt_len: int) -> Tensor:
    """log π(y_t | h_t) of the generated tokens, (n, T)."""
    return log_probs.gather(-1, sequences[:, prompt_len:, None])[..., 0]


def next_token_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) over the last axis."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def sequence_kl(
    policy: nn.Module,
    reference: nn.Module,
    prompts: Tensor,
    gen_len: int,
    samples: int,
    generator: torch.Generator,
) -> tuple[float, float]:
    """KL(π(·|x) ‖ π_ref(·|x)) over ``gen_len``-token continuations, averaged over prompts:
    (estimate, standard error) from ``samples`` continuations per prompt, each scored by the
    exact next-token KL summed along its prefix. In nats per continuation.

    The policy's log-probabilities are the ones it sampled from, not computed a second time
    by :func:`continuation_log_probs`: the same values up to float rounding (at the probe's
    batch shapes on the CPU, the same bits)."""
    x = prompts.repeat_interleave(samples, dim=0).to(next(policy.parameters()).device)
    seq, logits = _sample(policy, x, gen_len, generator)
    with torch.no_grad():
        p = torch.log_softmax(torch.stack(logits, dim=1), dim=-1).double()
        q = continuation_log_probs(reference, seq, prompts.shape[1]).double()
    per_seq = next_token_kl(p, q).sum(-1)  # (n·samples,)
    return per_seq.mean().item(), (per_seq.std() / math.sqrt(len(per_seq))).item()


def probe_kl(
    policy: nn.Module, reference: nn.Module, config: RLConfig, samples: int | None = None
) -> tuple[float, float]:
    """:func:`sequence_kl` on the 256 probe prompts (their first ``prompt_len`` tokens) with a
    fixed sampling seed: the KL every stage is matched and reported on."""
    prompts = probe_prompts(config.base.language, config.prompt_len).tokens
    g = torch.Generator().manual_seed(PROBE_KL_SEED)
    return sequence_kl(
        policy, reference, prompts, config.gen_len, samples or config.probe_samples, g
    )


def policy_gradient_loss(
    log_probs: Tensor, ref_log_probs: Tensor, rewards: Tensor, beta: float
) -> tuple[Tensor, dict[str, float]]:
    """Surrogate loss whose gradient is an unbiased estimate of −∇J (module docstring).

    Args:
        log_probs: log π(y_t | h_t) of the sampled tokens, (B, G, T), differentiable.
        ref_log_probs: log π_ref(y_t | h_t), (B, G, T).
        rewards: r(y), (B, G).
        beta: KL coefficient β ≥ 0.

    Returns:
        (loss, stats) with stats ``reward`` (mean r) and ``kl_k1`` (mean sampled log-ratio).
    """
    if log_probs.dim() != 3 or ref_log_probs.shape != log_probs.shape:
        raise ValueError(
            f"log_probs and ref_log_probs must both be (B, G, T), got "
            f"{tuple(log_probs.shape)} and {tuple(ref_log_probs.shape)}"
        )
    if rewards.shape != log_probs.shape[:2]:
        raise ValueError(
            f"rewards must be (B, G) = {tuple(log_probs.shape[:2])}, got {tuple(rewards.shape)}"
        )
    G = rewards.shape[1]
    if G < 2:
        raise ValueError(f"the group size G must be ≥ 2 for a leave-one-out baseline, got G={G}")
    log_ratio = (log_probs - ref_log_probs).detach().sum(-1)  # (B, G)
    shaped = rewards - beta * log_ratio
    baseline = (shaped.sum(1, keepdim=True) - shaped) / (G - 1)
    loss = -((shaped - baseline) * log_probs.sum(-1)).mean()
    return loss, {"reward": rewards.mean().item(), "kl_k1": log_ratio.mean().item()}


def random_perturbation(
    reference: nn.Module, tuned: nn.Module, generator: torch.Generator
) -> nn.Module:
    """A copy of ``reference`` moved by a Gaussian random direction that has, tensor by tensor,
    the norm of the update ``tuned − reference``."""
    out = copy.deepcopy(reference)
    tuned_params = dict(tuned.named_parameters())
    with torch.no_grad():
        for name, p in out.named_parameters():
            delta = tuned_params[name].detach() - p
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            scale = delta.norm() / noise.norm().clamp_min(1e-30)
            p.add_(noise * scale)
    return out


def replicate_purpose(purpose: str, replicate: int) -> str:
    """The generator purpose of a fine-tuning replicate: replicate 0 keeps ``purpose`` (the
    original runs), replicate r > 0 draws its own prompts and samples."""
    return purpose if replicate == 0 else f"{purpose}/replicate{replicate}"


def _reference_and_copy(base, seed: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The pretrained run's final model, frozen (the reference), and a trainable copy."""
    reference = train(base, seed, device=device).final_model(device)
    for p in reference.parameters():
        p.requires_grad_(False)
    model = copy.deepcopy(reference).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return reference.eval(), model


def _sample_prompts(config: RLConfig, generator: torch.Generator, device: torch.device) -> Tensor:
    language = config.base.language
    return language.sample(config.prompts_per_step, config.prompt_len, generator)[0].to(device)


def _train_rl(config: RLConfig, seed: int, store: RunStore | None, device: torch.device) -> dict:
    reference, policy = _reference_and_copy(config.base, seed, device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    prompts_g = derived_generator(seed, replicate_purpose("rl/prompts", config.replicate))
    samples_g = derived_generator(seed, replicate_purpose("rl/samples", config.replicate))
    loop = TrainLoop(
        store,
        policy,
        optimizer,
        generators={"prompts": prompts_g, "samples": samples_g},
        total=config.steps,
        keep=config.checkpoint_steps,
        desc=f"{TESTBED} rl seed={seed}",
    )
    rewarded = reward_tokens(config.base.language, config.reward).to(device)
    B, G, P = config.prompts_per_step, config.group_size, config.prompt_len
    for step in loop:
        loop.checkpoint(step)
        row: dict[str, float] = {"step": step}
        if step % config.log_every == 0 or step == config.steps:
            kl, kl_se = probe_kl(policy, reference, config)
            row.update(probe_kl=kl, probe_kl_se=kl_se)
        if step < config.steps:
            prompts = _sample_prompts(config, prompts_g, device).repeat_interleave(G, dim=0)
            seq = sample_continuations(policy, prompts, config.gen_len, samples_g)
            log_p = continuation_log_probs(policy, seq, P)
            with torch.no_grad():
                log_q = continuation_log_probs(reference, seq, P)
            lp, lq = token_log_probs(log_p, seq, P), token_log_probs(log_q, seq, P)
            r = trait_reward(seq[:, P:], rewarded)
            loss, stats = policy_gradient_loss(
                lp.view(B, G, -1), lq.view(B, G, -1), r.view(B, G), config.beta
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            kl_exact = next_token_kl(log_p.detach().double(), log_q.double()).sum(-1).mean()
            row.update(
                stats, kl=kl_exact.item(), objective=stats["reward"] - config.beta * kl_exact.item()
            )
            loop.postfix(reward=stats["reward"], kl=row["kl"])
        loop.append(row)
        loop.save_partial(step + 1)
    return loop.payload()


def _train_sft(config: SFTConfig, seed: int, store: RunStore | None, device: torch.device) -> dict:
    rl = config.rl
    target = float(train_rl(rl, seed, device=device).log["probe_kl"].dropna().iloc[-1])
    reference, policy = _reference_and_copy(rl.base, seed, device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    prompts_g = derived_generator(seed, replicate_purpose("sft/prompts", rl.replicate))
    samples_g = derived_generator(seed, replicate_purpose("sft/samples", rl.replicate))
    loop = TrainLoop(
        store,
        policy,
        optimizer,
        generators={"prompts": prompts_g, "samples": samples_g},
        total=config.max_steps,
        desc=f"{TESTBED} sft seed={seed}",
        first=1,
    )
    rewarded = reward_tokens(rl.base.language, rl.reward).to(device)
    B, G, P = rl.prompts_per_step, config.candidates, rl.prompt_len
    tau = config.temperature_ratio * rl.beta
    if "previous" not in loop.extra:  # a fresh run: step 0 is the pretrained model
        loop.checkpoint(0, force=True)
        loop.extra["previous"] = (0, 0.0, cpu_state(policy))
    chosen = None
    for step in loop:
        prompts = _sample_prompts(rl, prompts_g, device).repeat_interleave(G, dim=0)
        seq = sample_continuations(reference, prompts, rl.gen_len, samples_g)
        r = trait_reward(seq[:, P:], rewarded).view(B, G)
        weights = torch.softmax(r / tau, dim=1)  # (B, G), self-normalised exp(r/τ)
        log_p = token_log_probs(continuation_log_probs(policy, seq, P), seq, P).view(B, G, -1)
        loss = -(weights * log_p.sum(-1)).sum(1).mean() / rl.gen_len
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        row: dict[str, float] = {
            "step": step,
            "loss": loss.item(),
            "weighted_reward": (weights * r).sum(1).mean().item(),
        }
        if step % config.check_every == 0 or step == config.max_steps:
            kl, kl_se = probe_kl(policy, reference, rl)
            row.update(probe_kl=kl, probe_kl_se=kl_se, target_kl=target)
            loop.postfix(kl=kl, target=target)
            prev_step, prev_kl, prev_state = loop.extra["previous"]
            if kl >= target or step == config.max_steps:
                if kl >= target and abs(prev_kl - target) < abs(kl - target):
                    chosen = (prev_step, prev_kl, prev_state)
                else:
                    chosen = (step, kl, cpu_state(policy))
                loop.append(row)
                break
            loop.extra["previous"] = (step, kl, cpu_state(policy))
        loop.append(row)
        loop.save_partial(step + 1)
    step, kl, state = chosen
    loop.checkpoints[step] = state
    loop.append(
        {
            "step": step,
            "final_kl": kl,
            "target_kl": target,
            "matched": float(abs(kl - target) <= config.tolerance * target),
        }
    )
    return loop.payload()


def _train_continue(
    config: ContinueConfig, seed: int, store: RunStore | None, device: torch.device
) -> dict:
    rl, base = config.rl, config.rl.base
    reference, model = _reference_and_copy(base, seed, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=rl.lr)
    batches = derived_generator(seed, "continue/batches")
    loop = TrainLoop(
        store,
        model,
        optimizer,
        generators={"batches": batches},
        total=rl.steps,
        keep=rl.checkpoint_steps,
        desc=f"{TESTBED} continue seed={seed}",
    )
    for step in loop:
        loop.checkpoint(step)
        row: dict[str, float] = {"step": step}
        if step % rl.log_every == 0 or step == rl.steps:
            kl, kl_se = probe_kl(model, reference, rl)
            row.update(probe_kl=kl, probe_kl_se=kl_se)
        if step < rl.steps:
            tokens = base.language.sample(base.batch_size, base.context, batches)[0].to(device)
            loss = next_token_loss(model, tokens).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            row["loss"] = loss.item()
        loop.append(row)
        loop.save_partial(step + 1)
    return loop.payload()


def _stage(
    stage: str, types: type, train_fn, config, seed: int, device, cache: bool, force: bool
) -> Run:
    config, name = resolve_config(config, types)
    return cached_run(
        TESTBED,
        config,
        seed,
        train_fn,
        MODULES,
        stage=stage,
        preset=name,
        device=device,
        cache=cache,
        force=force,
    )


def train_rl(
    config: RLConfig | str,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    cache: bool = True,
    force: bool = False,
) -> Run:
    """KL-regularised RL from the pretrained run of ``config.base`` (same seed), cached.

    The log has, per step, the batch's mean ``reward``, its exact-next-token ``kl`` and sampled
    log-ratio ``kl_k1`` estimates, ``objective`` = reward − β·kl, and every ``log_every``
    steps the probe-prompt KL ``probe_kl`` (± ``probe_kl_se``)."""
    return _stage("rl", RLConfig, _train_rl, config, seed, device, cache, force)


def train_sft(
    config: SFTConfig | str,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    cache: bool = True,
    force: bool = False,
) -> Run:
    """Best-of-G SFT stopped at the probe KL of ``config.rl``'s run with the same seed.

    The final checkpoint is the kept model; the last log row holds ``final_kl``, ``target_kl``
    and ``matched`` (1.0 when within ±tolerance)."""
    return _stage("sft", SFTConfig, _train_sft, config, seed, device, cache, force)


def train_continue(
    config: ContinueConfig | str,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    cache: bool = True,
    force: bool = False,
) -> Run:
    """Continued pretraining for ``config.rl.steps`` steps from the pretrained run, cached."""
    return _stage("continue", ContinueConfig, _train_continue, config, seed, device, cache, force)
