"""PPO math on hand-worked tensors and against naive references (CleanRL-style: fast version vs plain loop)."""
import pytest
import torch

from rlhf.algo.advantages import gae, kl_rewards, reward_to_go, token_rewards
from rlhf.algo.aggregation import AGGREGATIONS
from rlhf.algo.losses import clipped_surrogate, policy_loss, value_loss
from rlhf.algo.preference import PREFERENCES
from rlhf.core.config import ConfigError


def naive_gae(rewards, values, mask, gamma, lam):
    """Scalar reference: one sequence, one dimension, plain Python."""
    B, T = rewards.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv


def test_gae_vectorised_over_d_equals_per_dimension_loop():
    torch.manual_seed(0)
    B, T, D = 3, 6, 3
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 1 + [0] * 5]).float()
    rewards, values = torch.randn(B, T, D), torch.randn(B, T, D)
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.9)
    assert adv.shape == ret.shape == (B, T, D)
    for d in range(D):
        ref = naive_gae(rewards[..., d] * mask, values[..., d] * mask, mask, 0.99, 0.9)
        torch.testing.assert_close(adv[..., d], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ret[..., d], (ref + values[..., d]) * mask, atol=1e-5, rtol=1e-5)
    # D = 1 matches the scalar (B, T) path
    adv1, _ = gae(rewards[..., :1], values[..., :1], mask, 0.99, 0.9)
    adv_s, _ = gae(rewards[..., 0], values[..., 0], mask, 0.99, 0.9)
    torch.testing.assert_close(adv1[..., 0], adv_s)


def test_token_rewards_on_last_response_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    r = token_rewards(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), mask)
    assert r.shape == (2, 4, 2)
    assert r[0, 2].tolist() == [1.0, -2.0] and r[1, 0].tolist() == [3.0, 4.0]
    assert r.abs().sum().item() == 10.0


def test_kl_counted_once_for_every_aggregator():
    """With zero task advantages the objective is exactly the KL term, once, whatever D and lambda are."""
    B, T, D = 2, 3, 3
    mask = torch.ones(B, T)
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]], requires_grad=True)
    ref = torch.full((B, T), -1.5)
    kl, kl_r = kl_rewards(logp.detach(), ref, beta=0.1, response_mask=mask)
    kl_adv = reward_to_go(kl_r, mask, gamma=1.0)
    torch.testing.assert_close(kl_adv[0], torch.tensor([-0.15, -0.1, -0.05]))
    zero_adv = torch.zeros(B, T, D)
    lam = torch.tensor([0.2, 0.3, 0.5])
    for name in ("ls", "tche", "stche"):
        w = AGGREGATIONS.make(name).build().weights(lam, torch.tensor([0.3, -0.2, 0.1]))
        assert w.sum().item() == pytest.approx(1.0)
        loss, _ = policy_loss(logp, logp.detach(), zero_adv, kl_adv, mask, w, clip=0.2)
        torch.testing.assert_close(loss, -kl_adv.mean())


def test_ls_and_tche_hand_worked():
    losses = torch.tensor([1.0, 4.0])
    lam = torch.tensor([0.75, 0.25])
    assert AGGREGATIONS.make("ls").build().loss(losses, lam).item() == pytest.approx(0.75 + 1.0)
    assert AGGREGATIONS.make("tche").build().loss(losses, lam).item() == pytest.approx(1.0)            # max(0.75, 1.0)
    s = AGGREGATIONS.make("stche", mu=0.01).build().loss(losses, lam).item()
    assert 1.0 <= s <= 1.0 + 0.01 * 0.7
    # per-sample lambda: one value per row
    rows = AGGREGATIONS.make("tche").build().loss(torch.tensor([[1.0, 4.0], [2.0, 0.0]]), torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    assert rows.tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="unknown aggregation 'max'"):
        AGGREGATIONS.make("max")


def test_ls_policy_loss_uses_weighted_advantages():
    mask = torch.ones(1, 2)
    adv = torch.tensor([[[1.0, -2.0], [1.0, -2.0]]])                                   # (1, 2, 2)
    logp = torch.zeros(1, 2, requires_grad=True)
    lam = torch.tensor([0.5, 0.5])
    w = AGGREGATIONS.make("ls").build().weights(lam, torch.zeros(2))
    torch.testing.assert_close(w, lam)
    loss, _ = policy_loss(logp, torch.zeros(1, 2), adv, torch.zeros(1, 2), mask, w, 0.2)
    assert loss.item() == pytest.approx(0.5)                                             # -(0.5*1 + 0.5*-2)


def test_tche_gradient_goes_to_the_dimension_that_lags_most_relative_to_its_weight():
    """A hand-made batch: helpful is near its best (J = 0.8 of ideal 1.0), harmless lags (J = 0.1). With equal weights
    lambda_i (z_i - J_i) = (0.1, 0.45), so the whole push goes to harmless; with lambda = (0.9, 0.1) it is
    (0.18, 0.09) and helpful gets it. (Reading J as the surrogate, ~0 at the old policy, and z = 0 gave the opposite:
    max_i lambda_i (0 - J_i) picks the dimension with the smallest weight whenever the surrogates are positive.)"""
    mask = torch.ones(1, 3)
    adv = torch.tensor([[[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]]])                        # (1, 3, 2)
    ideal = AGGREGATIONS.make("tche", ideal=(1.0, 1.0)).build()
    J = torch.tensor([0.8, 0.1])
    for lam, lagging in ((torch.tensor([0.5, 0.5]), 1), (torch.tensor([0.9, 0.1]), 0)):
        w = ideal.weights(lam, J)
        assert w.tolist() == [float(i == lagging) for i in range(2)]
        logp = torch.zeros(1, 3, requires_grad=True)
        loss, _ = policy_loss(logp, torch.zeros(1, 3), adv, torch.zeros(1, 3), mask, w, clip=0.2)
        loss.backward()
        # d(-mean_t r_t A_t)/d logp_t = -A_t / T at ratio 1: exactly the lagging dimension's advantages
        torch.testing.assert_close(logp.grad, -adv[..., lagging] / 3)
    # smooth Tchebycheff: the weights lean the same way, and tend to the hard choice as mu -> 0
    w = AGGREGATIONS.make("stche", ideal=(1.0, 1.0), mu=0.1).build().weights(torch.tensor([0.5, 0.5]), J)
    assert w[1] > 0.9 and w.sum().item() == pytest.approx(1.0)


def test_running_ideal_point_dominates_every_J_seen_and_resumes():
    ideal = AGGREGATIONS.make("tche", ideal_margin=0.1).build()
    lam = torch.tensor([0.5, 0.5])
    ideal.weights(lam, torch.tensor([0.2, -0.3]))
    ideal.weights(lam, torch.tensor([-0.1, 0.4]))
    torch.testing.assert_close(ideal.ideal.value, torch.tensor([0.3, 0.5]))
    # the vertex trains its own objective whatever the values
    assert ideal.weights(torch.tensor([0.0, 1.0]), torch.tensor([-5.0, 0.4])).tolist() == [0.0, 1.0]
    again = AGGREGATIONS.make("tche", ideal_margin=0.1).build()
    again.load_state_dict(ideal.state_dict())
    torch.testing.assert_close(again.ideal.value, ideal.ideal.value)
    # per-sample preferences: one weight vector per row
    rows = ideal.weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 0.0]))
    assert rows.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_clipped_surrogate_and_value_loss_hand_worked():
    ratio = torch.tensor([0.5, 1.5, 1.1])
    adv = torch.tensor([1.0, 1.0, -1.0])
    torch.testing.assert_close(clipped_surrogate(ratio, adv, 0.2), torch.tensor([0.5, 1.2, -1.1]))
    values = torch.tensor([[[3.0, 0.0]]])
    old = torch.tensor([[[0.0, 0.0]]])
    returns = torch.tensor([[[2.0, 1.0]]])
    # dim 0: unclipped (3-2)^2 = 1, clipped (1-2)^2 = 1 -> 0.5; dim 1: (0-1)^2 = 1 -> 0.5
    torch.testing.assert_close(value_loss(values, old, returns, torch.ones(1, 1), clip=1.0), torch.tensor([0.5, 0.5]))
    values = torch.tensor([[[0.5, 0.0]]])
    torch.testing.assert_close(value_loss(values, old, returns, torch.ones(1, 1), clip=0.2),
                               torch.tensor([0.5 * 1.8 ** 2, 0.5]))


def test_preference_sampling():
    cfg = PREFERENCES.make("dirichlet", vertex_prob=0.5)
    a = cfg.build(3, seed=1).for_step(5, rank=0)
    b = cfg.build(3, seed=1).for_step(5, rank=1)
    assert torch.equal(a, b) and a.shape == (3,) and abs(a.sum().item() - 1) < 1e-6   # same lambda on every rank
    draws = torch.stack([cfg.build(2, 0).for_step(s) for s in range(400)])
    vertex_share = ((draws == 1.0).any(-1)).float().mean().item()
    assert 0.4 < vertex_share < 0.6 and (draws >= 0).all()
    per = PREFERENCES.make("dirichlet", per="sample").build(2, 0).for_step(0, rows=5)
    assert per.shape == (5, 2) and torch.allclose(per.sum(-1), torch.ones(5))
    fixed = PREFERENCES.make("fixed", value=(0.3, 0.7)).build(2, 0).for_step(0)
    torch.testing.assert_close(fixed, torch.tensor([0.3, 0.7]))
    with pytest.raises(ConfigError, match="sum to 1"):
        PREFERENCES.make("fixed", value=(0.3, 0.3))
    with pytest.raises(ConfigError, match=">= 0"):
        PREFERENCES.make("fixed", value=(1.5, -0.5))


def test_trimmed_micro_batch_drops_pad_columns_and_keeps_every_real_token():
    """The update trims all-pad columns per micro-batch; log-probs, values and the loss on real tokens must not move."""
    from hhbench.tiny import tiny_causal_lm
    from rlhf.core.batch import Experience, Rollout
    from rlhf.rollout.rollout import position_ids_from_mask, response_logprobs
    from rlhf.training.critic import ValueModel

    torch.manual_seed(0)
    B, P, T, D = 3, 5, 6, 2
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])          # 2 all-pad columns
    response_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])  # longest is 4
    attention = torch.cat([prompt_mask, response_mask], 1)                                    # (B, P+T)
    seqs = torch.randint(3, 200, (B, P + T)) * attention
    rnd = lambda *s: torch.randn(*s)  # noqa: E731
    exp = Experience(rollout=Rollout(seqs, attention, response_mask, rnd(B, T), rnd(B, T), torch.tensor([0.4, 0.6]),
                                     ("p",) * B, ("r",) * B),
                     scores=rnd(B, D), values=rnd(B, T, D), advantages=rnd(B, T, D), returns=rnd(B, T, D),
                     kl_advantages=rnd(B, T), kl=rnd(B, T), weights=torch.tensor([0.4, 0.6]).expand(B, D))
    small = exp.trimmed()
    assert small.rollout.sequences.shape == (B, 3 + 4) and small.advantages.shape == (B, 4, D)
    assert small.rollout.prompt_length == 3 and small.scores.shape == (B, D) and small.weights.shape == (B, D)
    model = tiny_causal_lm("llama", vocab_size=200).eval()
    critic = ValueModel(model.model, D).eval()
    with torch.no_grad():
        full_lp, _ = response_logprobs(model, seqs, attention, T, 1.0)                         # (B, T)
        lp, _ = response_logprobs(model, small.rollout.sequences, small.rollout.attention_mask, 4, 1.0)
        m = small.rollout.attention_mask
        v = critic(small.rollout.sequences, m, position_ids_from_mask(m))[:, 2:-1]            # (B, 4, D)
        full_v = critic(seqs, attention, position_ids_from_mask(attention))[:, P - 1:-1]     # (B, T, D)
    real = response_mask[:, :4].bool()
    torch.testing.assert_close(lp[real], full_lp[:, :4][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v[real], full_v[:, :4][real], atol=1e-5, rtol=1e-5)
    args = (0.2,)
    full_loss, _ = policy_loss(full_lp, exp.rollout.old_logprobs, exp.advantages, exp.kl_advantages,
                               response_mask.float(), exp.weights, *args)
    loss, _ = policy_loss(lp, small.rollout.old_logprobs, small.advantages, small.kl_advantages,
                          small.rollout.response_mask.float(), small.weights, *args)
    torch.testing.assert_close(loss, full_loss, atol=1e-5, rtol=1e-5)
    assert exp.select(torch.tensor([0, 2])).trimmed().rollout.sequences.shape == (2, 3 + 4)
