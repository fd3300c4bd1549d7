"""The small-language-model testbed: the language's sampler and exact likelihood against
enumeration, the model, the KL estimators against exact sums over a tiny vocabulary, the RL
objective's gradient against a case with a known answer, the controls and the caches."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from metrics.entk import entk
from testbeds import lm, runs
from testbeds.lm import Config, ContinueConfig, Language, RLConfig, SFTConfig
from testbeds.lm import rl as lm_rl

TINY_LANG = Language(n_topics=2, topic_words=2, style_words=2, function_words=2)  # V = 10
TINY = Config(
    language=TINY_LANG,
    context=12,
    d_model=16,
    n_heads=2,
    n_layers=1,
    d_mlp=32,
    steps=40,
    warmup_steps=5,
    batch_size=16,
    log_every=10,
    eval_sequences=64,
)
TINY_RL = RLConfig(
    base=TINY,
    steps=6,
    prompts_per_step=4,
    group_size=4,
    prompt_len=4,
    gen_len=4,
    log_every=3,
    probe_samples=1,
    lr=3e-3,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path / "cache"))


# ---- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: Language(n_topics=1), "n_topics"),
        (lambda: Language(style_leak=0.5), "style_leak"),
        (lambda: Language(p_positive=1.0), "p_positive"),
        (lambda: Config(d_model=30, n_heads=4), "n_heads"),
        (lambda: Config(steps=0), "steps"),
        (lambda: Config(checkpoints=(0, 10_000)), "checkpoints"),
        (lambda: RLConfig(reward="length"), "reward"),
        (lambda: RLConfig(group_size=1), "group_size"),
        (lambda: RLConfig(prompt_len=20, gen_len=8), "gen_len"),
        (lambda: RLConfig(beta=-1.0), "beta"),
        (lambda: SFTConfig(candidates=1), "candidates"),
        (lambda: SFTConfig(tolerance=0.0), "tolerance"),
        (lambda: ContinueConfig(rl="lm_rl"), "rl"),
    ],
)
def test_bad_config_names_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_presets_and_unknown_preset():
    assert isinstance(lm.preset("lm_pretrain"), Config)
    assert lm.preset("lm_rl", beta=0.2).beta == 0.2
    assert lm.preset("lm_pretrain").vocab_size == 48
    with pytest.raises(ValueError, match="preset must be one of"):
        lm.preset("gpt2")


# ---- the language -----------------------------------------------------------------------------
def test_token_classes_are_laid_out_class_by_class():
    lang = Language()
    assert lang.vocab_size == 48 and len(lang.class_names) == 7
    counts = torch.bincount(lang.token_class)
    assert counts.tolist() == [6, 6, 6, 6, 6, 6, 12]
    assert lang.class_tokens("positive").tolist() == list(range(24, 30))
    for slot in range(3):  # within its slot, every latent's emission is a distribution
        sums = lang.emission[:, lang.token_slot == slot].sum(1)
        assert torch.allclose(sums, torch.ones_like(sums))
    with pytest.raises(ValueError, match="class must be one of"):
        lang.class_tokens("verbs")


def _enumerate(lang: Language, length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(lang.vocab_size), repeat=length)))


def test_exact_likelihood_is_a_distribution_and_matches_the_chain_rule():
    every = _enumerate(TINY_LANG, 3)  # 1000 sequences
    logp = TINY_LANG.log_prob(every)
    assert math.isclose(logp.exp().sum().item(), 1.0, abs_tol=1e-12)
    # the Bayes-optimal next-token predictions are the conditionals of the joint
    nxt = TINY_LANG.next_token_log_probs(every)  # (n, 3, V)
    joint2 = torch.logsumexp(logp.view(-1, TINY_LANG.vocab_size), dim=1)  # log P(x1, x2)
    cond = logp - joint2.repeat_interleave(TINY_LANG.vocab_size)
    assert torch.allclose(nxt[:, 1].gather(1, every[:, 2:3])[:, 0], cond, atol=1e-10)


def test_sampler_follows_the_generator_statistics():
    lang = Language()
    n, L = 20_000, 6
    tokens, topic, style = lang.sample(n, L, torch.Generator().manual_seed(0))
    # latent frequencies
    for counts, p in ((torch.bincount(topic, minlength=4), 0.25), (torch.bincount(style), 0.5)):
        z = (counts / n - p) / math.sqrt(p * (1 - p) / n)
        assert z.abs().max() < 4, z
    # first-token marginal
    first = lang.first_token
    assert torch.allclose(first, (lang.prior[:, None] * lang._tables["first"]).sum(0))
    freq = torch.bincount(tokens[:, 0], minlength=lang.vocab_size) / n
    z = (freq - first) / (first * (1 - first) / n).sqrt()
    assert z.abs().max() < 4.5
    # slot transitions
    slots = lang.token_slot[tokens]
    prev, nxt = slots[:, :-1].flatten(), slots[:, 1:].flatten()
    for a in range(3):
        rows = nxt[prev == a]
        freq = torch.bincount(rows, minlength=3) / len(rows)
        p = lang.transition[a]
        assert ((freq - p) / (p * (1 - p) / len(rows)).sqrt()).abs().max() < 4.5
    # the topic slot emits its own topic with probability 1 − topic_leak
    is_topic = lang.token_class[tokens] < lang.n_topics
    own = lang.token_class[tokens] == topic[:, None]
    rate = (own & is_topic).sum() / is_topic.sum()
    se = math.sqrt(0.9 * 0.1 / is_topic.sum().item())
    assert abs(rate.item() - (1 - lang.topic_leak)) < 4 * se
    # balanced sampling has exactly the requested latents
    _, bt, bs = lang.sample_balanced(3, 4, torch.Generator().manual_seed(1))
    assert torch.bincount(bt * 2 + bs).tolist() == [3] * 8


def test_entropy_rate_matches_enumeration():
    L = 4
    every = _enumerate(TINY_LANG, L)
    logp = TINY_LANG.log_prob(every)
    H_L = -(logp.exp() * logp).sum().item()
    first = torch.logsumexp(logp.view(TINY_LANG.vocab_size, -1), dim=1)
    H_1 = -(first.exp() * first).sum().item()
    exact = (H_L - H_1) / (L - 1)
    estimate, se = TINY_LANG.entropy_rate(L, n=20_000)
    assert abs(estimate - exact) < 4 * se
    # longer contexts help; the asymptotic rate (latents known) is the floor
    assert TINY_LANG.asymptotic_entropy_rate() < TINY_LANG.entropy_rate(12, n=4000)[0] < exact
    with pytest.raises(ValueError, match="length"):
        TINY_LANG.entropy_rate(1)


def test_optimal_loss_is_the_exact_conditional_loss():
    tokens, _, _ = TINY_LANG.sample(50, 6, torch.Generator().manual_seed(2))
    nxt = TINY_LANG.next_token_log_probs(tokens)[:, :-1].gather(2, tokens[:, 1:, None])[..., 0]
    assert torch.allclose(lm.optimal_loss(TINY_LANG, tokens), -nxt.mean(1), atol=1e-12)


# ---- the model --------------------------------------------------------------------------------
def _tiny_model(seed: int, scale: float = 1.0, vocab: int = 10) -> lm.TinyLM:
    model = lm.TinyLM(vocab, 8, 8, 2, 1, 16).double()
    model.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.eval()


def test_model_is_causal_and_the_readout_is_a_distribution():
    model = _tiny_model(0, scale=20.0)
    x = torch.randint(0, 10, (5, 6), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 4:] = (y[:, 4:] + 1) % 10
    assert torch.allclose(model(x)[:, :4], model(y)[:, :4])
    assert not torch.allclose(model(x)[:, 4:], model(y)[:, 4:])
    logp = lm.LastTokenLogProbs(model)(x)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_incremental_decoding_matches_whole_forward_passes(monkeypatch):
    model = lm.TinyLM(10, 8, 8, 2, 2, 16).double()  # two blocks: caches per block
    model.reset_parameters(torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20.0)
    tokens = torch.randint(0, 10, (6, 8), generator=torch.Generator().manual_seed(2))
    caches: list = []
    with torch.no_grad():
        for length in (3, 4, 6, 7, 8):  # a prompt, then one or two new tokens per call
            fast = model.next_token_logits(tokens[:, :length], caches)
            torch.testing.assert_close(fast, model(tokens[:, :length])[:, -1], rtol=1e-12, atol=0)
        assert len(caches) == 2 and caches[0]["k"].shape == (6, 8, 8)
    with pytest.raises(ValueError, match="context"):
        model.next_token_logits(torch.zeros(1, 9, dtype=torch.long), [])

    prompts = tokens[:, :3]
    full = lm.sample_continuations(model, prompts, 5, torch.Generator().manual_seed(3), False)
    fast = lm.sample_continuations(model, prompts, 5, torch.Generator().manual_seed(3), True)
    assert torch.equal(full, fast) and full.shape == (6, 8)

    # by default only a model whose parameters are all trainable decodes incrementally
    calls = []
    original = model.next_token_logits
    monkeypatch.setattr(model, "next_token_logits", lambda *a: calls.append(1) or original(*a))
    lm.sample_continuations(model, prompts, 2, torch.Generator().manual_seed(3))
    assert len(calls) == 2
    model.unembed.weight.requires_grad_(False)
    lm.sample_continuations(model, prompts, 2, torch.Generator().manual_seed(3))
    assert len(calls) == 2


def _float32_model(trainable: bool) -> lm.TinyLM:
    """Two blocks in float32 (the runs' precision), weights scaled up so that attention is
    sharp; ``trainable`` decides which CPU kernels the projections use."""
    model = lm.TinyLM(12, 16, 16, 2, 2, 32)
    model.reset_parameters(torch.Generator().manual_seed(4))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(15.0)
    for p in model.parameters():
        p.requires_grad_(trainable)
    return model


def test_attention_formed_for_the_last_queries_only_has_their_bits():
    """``Block.mix`` with ``queries`` = m: the last m rows are bit for bit those of the whole
    pattern (float32; every row length below and at the 16 where the CPU softmax changes
    kernels), and the other rows are 0."""
    block = _float32_model(True).blocks[0]
    g = torch.Generator().manual_seed(8)
    for t in (1, 2, 7, 15, 16):
        q, k, v = (torch.randn(32, t, 2, 8, generator=g) * 4 for _ in range(3))
        whole = block.mix(q, k, v)
        for m in range(1, t + 1):
            part = block.mix(q, k, v, queries=m)
            assert torch.equal(part[:, t - m :], whole[:, t - m :])
            assert not part[:, : t - m].any()


@pytest.mark.parametrize("trainable", [True, False])
def test_the_last_logits_have_the_bits_of_the_whole_forward_pass(trainable):
    """``last_logits`` (the last block's attention formed for the last query only) equals
    ``model(tokens)[:, -1]`` bit for bit, whichever CPU kernels the weights use."""
    model = _float32_model(trainable)
    tokens = torch.randint(0, 12, (64, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for length in range(1, 17):
            whole = model(tokens[:, :length])[:, -1]
            assert torch.equal(model.last_logits(tokens[:, :length]), whole)


def test_the_probe_kl_reads_the_policys_log_probs_from_its_samples():
    """``sequence_kl`` scores the continuations with the log-probabilities the policy sampled
    them from (those of a whole forward pass up to float32 rounding) and the reference's."""
    policy, reference = _float32_model(True), _float32_model(False)
    with torch.no_grad():
        reference.unembed.weight.mul_(0.5)
    prompts = torch.randint(0, 12, (32, 6), generator=torch.Generator().manual_seed(6))
    seq, logits = lm_rl._sample(policy, prompts, 8, torch.Generator().manual_seed(7))
    sampled = torch.log_softmax(torch.stack(logits, dim=1), dim=-1)
    with torch.no_grad():
        whole = lm.continuation_log_probs(policy, seq, 6)
        q = lm.continuation_log_probs(reference, seq, 6)
    torch.testing.assert_close(sampled, whole, rtol=1e-5, atol=1e-5)
    per_seq = lm.next_token_kl(sampled.double(), q.double()).sum(-1)
    g = torch.Generator().manual_seed(7)
    estimate, se = lm.sequence_kl(policy, reference, prompts, 8, 1, g)
    assert estimate == per_seq.mean().item() and estimate > 0.1
    assert se == (per_seq.std() / math.sqrt(len(per_seq))).item()


def test_entk_of_the_last_token_readout_matches_brute_force():
    model = lm.LastTokenLogProbs(_tiny_model(1, scale=10.0))
    x = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(1))
    K = entk(model, x, output="trace")
    params = dict(model.named_parameters())

    def f(p, xi):
        return torch.func.functional_call(model, p, (xi[None],))[0]

    J = torch.stack(
        [
            torch.cat([j.reshape(10, -1) for j in torch.func.jacrev(f)(params, xi).values()], 1)
            for xi in x
        ]
    )  # (N, V, P)
    reference = torch.einsum("arp,brp->ab", J, J) / 10
    assert torch.allclose(K, reference, rtol=1e-9, atol=1e-12)


# ---- KL estimators against exact sums ---------------------------------------------------------
def _continuation_log_prob(model, prompts, conts):
    seq = torch.cat([prompts, conts], dim=1)
    lp = lm.continuation_log_probs(model, seq, prompts.shape[1])
    return lm.token_log_probs(lp, seq, prompts.shape[1]).sum(-1)


def _exact_sequence_kl(policy, reference, prompts, gen_len, vocab):
    conts = torch.tensor(list(itertools.product(range(vocab), repeat=gen_len)))
    total = 0.0
    for x in prompts:
        xs = x[None].expand(len(conts), -1)
        with torch.no_grad():
            p = _continuation_log_prob(policy, xs, conts)
            q = _continuation_log_prob(reference, xs, conts)
        assert math.isclose(p.exp().sum().item(), 1.0, abs_tol=1e-10)
        total += (p.exp() * (p - q)).sum().item()
    return total / len(prompts)


def test_sequence_kl_estimator_against_exact_enumeration():
    vocab, gen_len = 3, 3
    policy, reference = _tiny_model(2, 25.0, vocab), _tiny_model(3, 25.0, vocab)
    prompts = torch.tensor([[0, 1], [2, 2]])
    exact = _exact_sequence_kl(policy, reference, prompts, gen_len, vocab)
    assert exact > 0.1  # a non-trivial case
    estimate, se = lm.sequence_kl(
        policy, reference, prompts, gen_len, 4000, torch.Generator().manual_seed(0)
    )
    assert abs(estimate - exact) < 4 * se and se < 0.05 * exact
    # the summed next-token KL along the prefix has the sequence KL as its exact expectation
    conts = torch.tensor(list(itertools.product(range(vocab), repeat=gen_len)))
    total = 0.0
    for x in prompts:
        seq = torch.cat([x[None].expand(len(conts), -1), conts], 1)
        with torch.no_grad():
            p = lm.continuation_log_probs(policy, seq, 2)
            q = lm.continuation_log_probs(reference, seq, 2)
        weight = lm.token_log_probs(p, seq, 2).sum(-1).exp()
        total += (weight * lm.next_token_kl(p, q).sum(-1)).sum().item()
    assert math.isclose(total / len(prompts), exact, rel_tol=1e-9)
    # identical models: zero
    zero, _ = lm.sequence_kl(policy, policy, prompts, gen_len, 10, torch.Generator())
    assert abs(zero) < 1e-12


# ---- the RL objective's gradient --------------------------------------------------------------
def test_policy_gradient_is_unbiased_for_the_kl_regularised_objective():
    """Two-token policy π(y1) π(y2 | y1) over V = 3 with logits θ; reward = fraction of tokens
    equal to 0. The exact expectation of the surrogate's gradient over every group of G = 2
    samples (81 pairs of continuations) equals −∇J, J = E_π[r] − β KL(π‖ρ), to round-off."""
    V, beta = 3, 0.3
    g = torch.Generator().manual_seed(0)
    theta1 = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    theta2 = torch.randn(V, V, generator=g, dtype=torch.float64, requires_grad=True)
    rho1 = torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64), 0)
    rho2 = torch.log_softmax(torch.randn(V, V, generator=g, dtype=torch.float64), 1)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=2)))  # (9, 2)
    reward = (seqs == 0).double().mean(1)

    def token_logps(t1, t2):
        return torch.stack(
            [
                torch.log_softmax(t1, 0)[seqs[:, 0]],
                torch.log_softmax(t2, 1)[seqs[:, 0], seqs[:, 1]],
            ],
            1,
        )  # (9, 2)

    ref = torch.stack([rho1[seqs[:, 0]], rho2[seqs[:, 0], seqs[:, 1]]], 1)
    logp = token_logps(theta1, theta2)
    prob = logp.sum(1).exp()
    J = (prob * reward).sum() - beta * (prob * (logp.sum(1) - ref.sum(1))).sum()
    exact = torch.autograd.grad(-J, (theta1, theta2))

    pairs = torch.tensor(list(itertools.product(range(9), repeat=2)))  # (81, 2) sample indices
    weights = prob.detach()[pairs].prod(1)  # P(pair)
    logp = token_logps(theta1, theta2)
    expected = [torch.zeros_like(theta1), torch.zeros_like(theta2)]
    for (i, j), w in zip(pairs.tolist(), weights, strict=True):
        idx = torch.tensor([i, j])
        loss, _ = lm.policy_gradient_loss(logp[idx][None], ref[idx][None], reward[idx][None], beta)
        grads = torch.autograd.grad(loss, (theta1, theta2), retain_graph=True)
        expected = [e + w * gr for e, gr in zip(expected, grads, strict=True)]
    for e, x in zip(expected, exact, strict=True):
        assert torch.allclose(e, x, atol=1e-12), (e, x)


def test_policy_gradient_loss_validates_shapes():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="rewards"):
        lm.policy_gradient_loss(x, x, torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="G must be"):
        lm.policy_gradient_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), torch.zeros(2, 1), 0.1)
    with pytest.raises(ValueError, match="log_probs"):
        lm.policy_gradient_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), 0.1)


# ---- controls ---------------------------------------------------------------------------------
def test_random_perturbation_has_the_update_norm_per_tensor():
    a, b = _tiny_model(4), _tiny_model(5)
    out = lm.random_perturbation(a, b, torch.Generator().manual_seed(0))
    again = lm.random_perturbation(a, b, torch.Generator().manual_seed(0))
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name, p in out.named_parameters():
        delta, target = p - pa[name], pb[name] - pa[name]
        assert math.isclose(delta.norm().item(), target.norm().item(), rel_tol=1e-9)
        if target.norm() > 0:
            cos = (delta * target).sum() / (delta.norm() * target.norm())
            assert abs(cos.item()) < 0.9
        assert torch.equal(p, dict(again.named_parameters())[name])


def test_trait_battery_values_and_reward_by_enumeration():
    lang = Language()
    model = lm.TinyLM(lang.vocab_size, 24, 16, 2, 1, 32)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20.0)
    battery = lm.trait_battery(lang)
    values = battery(model)
    assert values.shape == (14,) and len(battery.names) == 14 == len(battery.factors)
    assert set(battery.factors) == set(lm.FACTORS)
    assert math.isclose(values[:7].sum().item(), 1.0, rel_tol=1e-5)  # class frequencies
    # reward: explicit loop over one prompt's first token
    rewarded = lm.reward_tokens(lang, "positive_style")
    total = 0.0
    prompts = battery.prompts.tokens[:3]
    with torch.no_grad():
        for x in prompts:
            p1 = torch.softmax(model(x[None])[0, -1].double(), 0)
            m2 = 0.0
            for v in range(lang.vocab_size):
                p2 = torch.softmax(
                    model(torch.cat([x, torch.tensor([v])])[None])[0, -1].double(), 0
                )
                m2 += p1[v] * p2[rewarded].sum()
            total += 0.5 * (p1[rewarded].sum() + m2)
    sub = lm.TraitBattery(
        battery.names,
        battery.factors,
        lm.Prompts(prompts, battery.prompts.topic[:3], battery.prompts.style[:3]),
        lang,
        rewarded,
    )
    assert math.isclose(sub(model)[7].item(), (total / 3).item(), rel_tol=1e-4)
    # marker traits are log-masses of the factor value's tokens on its own prompts
    logp = torch.log_softmax(model(battery.prompts.tokens)[:, -1], -1)
    mask = battery.prompts.topic == 1
    expected = torch.logsumexp(logp[mask][:, lang.class_tokens("topic1")], 1).mean()
    assert math.isclose(
        values[battery.names.index("marker_topic1")].item(), expected.item(), rel_tol=1e-5
    )


# ---- training stages --------------------------------------------------------------------------
def test_pretraining_is_deterministic_and_logs_the_gap():
    a = lm.train(TINY, seed=0, cache=False)
    b = lm.train(TINY, seed=0, cache=False)
    for step in a.steps:
        for name, t in a.checkpoints[step].items():
            assert torch.equal(t, b.checkpoints[step][name])
    assert {"loss", "optimal", "gap", "gap_se"} <= set(a.log.columns)
    assert a.log.gap.iloc[-1] < a.log.gap.iloc[0]
    assert (a.log.loss - a.log.optimal - a.log.gap).abs().max() < 1e-9
    with pytest.raises(ValueError, match="testbeds.lm.Config"):
        lm.train(TINY_RL, seed=0)


def test_rl_sft_and_continue_runs():
    rl = lm.train_rl(TINY_RL, seed=0)
    assert list(rl.log.step) == list(range(TINY_RL.steps + 1))
    assert rl.log.probe_kl.notna().sum() == 3 and rl.log.probe_kl.iloc[0] == 0.0
    assert rl.log.reward.notna().sum() == TINY_RL.steps
    kl_final = rl.log.probe_kl.dropna().iloc[-1]
    assert kl_final > 0
    before = lm.train(TINY, seed=0).final_model()
    assert math.isclose(lm.probe_kl(rl.final_model(), before, TINY_RL)[0], kl_final, rel_tol=1e-6)
    sft = lm.train_sft(SFTConfig(rl=TINY_RL, candidates=4, lr=1e-3, check_every=1), seed=0)
    last = sft.log.iloc[-1]
    assert last.target_kl == kl_final
    assert math.isclose(
        lm.probe_kl(sft.final_model(), before, TINY_RL)[0], last.final_kl, rel_tol=1e-6
    )
    assert bool(last.matched) == (abs(last.final_kl - kl_final) <= 0.1 * kl_final)
    cont = lm.train_continue(ContinueConfig(rl=TINY_RL), seed=0)
    assert cont.steps == list(TINY_RL.checkpoint_steps)
    assert lm.train_rl(TINY_RL, seed=0).from_cache


def test_replicates_sample_their_own_prompts_from_the_same_pretrained_model():
    first = lm.train_rl(TINY_RL, seed=0)
    again = lm.train_rl(TINY_RL.replace(replicate=1), seed=0)
    other = lm.train_rl(TINY_RL.replace(replicate=2), seed=0)
    start = first.checkpoints[0]
    for run in (again, other):  # one pretrained starting point …
        assert all(torch.equal(run.checkpoints[0][k], v) for k, v in start.items())
    finals = [r.checkpoints[r.final_step]["unembed.weight"] for r in (first, again, other)]
    assert not torch.equal(finals[0], finals[1]) and not torch.equal(finals[1], finals[2])
    assert lm.train_rl(TINY_RL.replace(replicate=1), seed=0).from_cache  # … reproducible
    with pytest.raises(ValueError, match="replicate must be a non-negative int"):
        TINY_RL.replace(replicate=-1)
    sft = [
        lm.train_sft(SFTConfig(rl=TINY_RL.replace(replicate=r), candidates=4, lr=1e-3), seed=0)
        for r in (0, 1)
    ]
    assert sft[1].log.target_kl.iloc[-1] == again.log.probe_kl.dropna().iloc[-1]
    assert not torch.equal(*(s.checkpoints[s.final_step]["unembed.weight"] for s in sft))


def test_interrupted_rl_resumes_to_the_same_run(monkeypatch):
    reference = lm.train_rl(TINY_RL, seed=1, cache=False)
    monkeypatch.setattr(runs, "PARTIAL_SAVE_SECONDS", 0.0)
    real_save = runs.PartialSaver.maybe_save

    def save_then_stop(self, make_state):
        real_save(self, make_state)
        if make_state()["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs.PartialSaver, "maybe_save", save_then_stop)
    lm.train(TINY, seed=1)  # the base run finishes before the interruption
    with pytest.raises(KeyboardInterrupt):
        lm.train_rl(TINY_RL, seed=1)
    monkeypatch.setattr(runs.PartialSaver, "maybe_save", real_save)
    resumed = lm.train_rl(TINY_RL, seed=1)
    for step in reference.steps:
        for name, t in reference.checkpoints[step].items():
            assert torch.equal(resumed.checkpoints[step][name], t), (step, name)
    assert reference.log.fillna(-1).equals(resumed.log[reference.log.columns].fillna(-1))


def test_loss_helpers():
    model = _tiny_model(6).float()
    tokens = torch.randint(0, 10, (3, 7), generator=torch.Generator().manual_seed(0))
    logits = model(tokens[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, 10), tokens[:, 1:].reshape(-1), reduction="none")
    assert torch.allclose(lm.next_token_loss(model, tokens), expected.view(3, 6).mean(1))
