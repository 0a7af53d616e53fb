"""The critic-free group estimator (GRPO/RLOO-style vector advantages) on the PPO loop (issue 19)."""

import pytest
import torch

from rlhf.algo.advantages import group_advantages
from rlhf.core.config import ConfigError
from tests.test_ppo import load, make_config, metrics

GROUP = {"advantage": {"name": "group", "group_size": 4}, "rollout_batch_size": 8, "mini_batch_size": 8,
         "micro_batch_size": 4}


def test_group_advantages_hand_worked():
    scores = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 2.0], [5.0, 6.0]])         # (B=4, D=2), G = 2
    torch.testing.assert_close(group_advantages(scores, 2, "mean"),
                               torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, -2.0], [0.0, 2.0]]))
    # leave-one-out: s_j minus the other sample alone (G = 2)
    torch.testing.assert_close(group_advantages(scores, 2, "loo"),
                               torch.tensor([[-2.0, -2.0], [2.0, 2.0], [0.0, -4.0], [0.0, 4.0]]))
    # std (unbiased, per group and dimension): group 0 dim 0 has std sqrt(2); group 1 dim 0 has std 0 -> stays 0
    std = group_advantages(scores, 2, "mean", std_normalize=True)
    torch.testing.assert_close(std[:2, 0], torch.tensor([-1.0, 1.0]) / 2 ** 0.5, atol=1e-5, rtol=0)
    torch.testing.assert_close(std[2:, 0], torch.zeros(2))
    g3 = torch.tensor([[0.0], [3.0], [6.0]])                                          # G = 3: loo = s_j - mean(others)
    torch.testing.assert_close(group_advantages(g3, 3, "loo"), torch.tensor([[-4.5], [0.0], [4.5]]))
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(scores, 3)


def test_mean_baseline_advantages_average_zero_in_every_group():
    scores = torch.randn(24, 3, generator=torch.Generator().manual_seed(0)) * 5       # 6 groups of 4, D = 3
    for baseline in ("mean", "loo"):
        for std in (False, True):
            adv = group_advantages(scores, 4, baseline, std).view(6, 4, 3)
            torch.testing.assert_close(adv.mean(1), torch.zeros(6, 3), atol=1e-6, rtol=0)


def test_config_checks(world, tmp_path):
    path = make_config(world, tmp_path / "c", **GROUP)
    with pytest.raises(ConfigError, match=r"'advantage.group_size': must divide rollout_batch_size \(8"):
        load(path, "--advantage.group_size", "3")
    with pytest.raises(ConfigError, match="'advantage.group_size': must be >= 2"):
        load(path, "--advantage.group_size", "1")
    with pytest.raises(ConfigError, match="'critic_model': must be null: advantage estimator 'group' trains no critic"):
        load(path, "--critic_model", str(world / "base"))
    with pytest.raises(ConfigError, match="'advantage.name': unknown advantage estimator 'vtrace'; must be one of"):
        load(path, "--advantage.name", "vtrace")


@pytest.mark.parametrize("per", ["batch", "sample"])
def test_groups_share_prompt_and_lambda_and_no_critic_exists(world, tmp_path, monkeypatch, per):
    import rlhf.training.ppo as trainer_mod

    seen = []
    real = trainer_mod.generate_rollout

    def spy(actor, tok, texts, raw, lam, **kw):
        seen.append((list(raw), lam.clone()))
        return real(actor, tok, texts, raw, lam, **kw)

    monkeypatch.setattr(trainer_mod, "generate_rollout", spy)
    out = tmp_path / f"g_{per}"
    tr = trainer_mod.PPOTrainer(load(make_config(world, out, total_steps=2, save_every=1, preference={"per": per},
                                                 **GROUP)))
    assert tr.critic is None and set(tr.engines) == {"actor"}
    tr.train()
    for raw, lam in seen:
        assert len(raw) == 8 and len(set(raw[:4])) == 1 and len(set(raw[4:])) == 1      # two prompts x G = 4
        if per == "sample":
            assert lam.shape == (8, 2) and torch.equal(lam[:4], lam[:1].expand(4, 2))
            assert torch.equal(lam[4:], lam[4:5].expand(4, 2)) and not torch.equal(lam[0], lam[4])
        else:
            assert lam.shape == (2,)
    assert not (out / "policy" / "critic").exists()
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
    assert not list(ckpt.glob("critic*")) and list(ckpt.glob("actor*"))
    m = metrics(out)
    assert [r["step"] for r in m] == [1, 2] and not any(k.startswith("train/value_loss") for k in m[0])


def test_group_estimator_runs_with_three_objectives_and_tchebycheff(world, tmp_path):
    from rlhf.training.ppo import PPOTrainer

    objectives = [{"name": "helpful", "model": str(world / "rm"), "kind": "reward"},
                  {"name": "harmless", "model": str(world / "cm"), "kind": "cost"},
                  {"name": "again", "model": str(world / "rm"), "kind": "reward"}]
    PPOTrainer(load(make_config(world, tmp_path / "d3", objectives=objectives, adapter={"rank": 4, "pref_dim": 3},
                                total_steps=2, aggregation="tche", preference={"per": "sample"}, **GROUP))).train()
    m = metrics(tmp_path / "d3")
    assert {"train/weight/again", "train/ideal/again", "train/J/again"} <= set(m[-1])


def test_each_objective_rises_at_its_own_vertex(world, tmp_path, monkeypatch):
    """Two objectives that pull apart (long answers vs short ones), trained at the vertices only: the response
    length must follow lambda. It can fail: with the preference path inert the policy learns one compromise for
    every lambda (DESIGN.md §4)."""
    from hhbench.fixtures import write_eos_prone_base
    from rlhf.rollout.rollout import generate
    from rlhf.training.ppo import PPOTrainer

    actor = write_eos_prone_base(world, tmp_path / "eosy")
    cfg = load(make_config(world, tmp_path / "v", actor_model=str(actor), total_steps=20,
                           preference={"vertex_prob": 1.0}, generation={"max_new_tokens": 16},
                           ppo={"actor_lr": 5e-3, "kl_coef": 0.0},
                           **{**GROUP, "rollout_batch_size": 16, "mini_batch_size": 16, "micro_batch_size": 8}))
    tr = PPOTrainer(cfg)

    def lengths(p, r, columns=None):
        n = torch.tensor([float(len(tr.tokenizer(x)["input_ids"])) for x in r])
        return torch.stack([n, -n], dim=1)                                               # (B, 2): long vs short

    monkeypatch.setattr(tr.scorer, "raw", lengths)
    texts = tr.prompts.texts[:16] * 4

    def mean_length(lam):
        torch.manual_seed(0)
        _, _, _, mask = generate(tr.actor.module, tr.tokenizer, texts, torch.tensor(lam), max_prompt_length=64,
                                 max_new_tokens=16, temperature=1.0, top_p=1.0)
        return mask.sum(-1).float().mean().item()

    before = mean_length([1.0, 0.0])
    assert before == mean_length([0.0, 1.0]) and 4 < before < 15   # the adapter starts at zero; lengths vary
    tr.train()
    long, short = mean_length([1.0, 0.0]), mean_length([0.0, 1.0])
    assert long > before + 2 and short < before - 2, (before, long, short)


@pytest.mark.parametrize("estimator", ["gae", "group"])
def test_one_update_per_batch_skips_old_logprobs_without_changing_the_update(world, tmp_path, estimator):
    """ppo_epochs 1 over one mini-batch: pi_old is the update's own forward, so the rollout computes reference
    log-probs only; the adapter after the step equals the one the full old/ref pass gives."""
    from rlhf.training.ppo import PPOTrainer

    extra = GROUP if estimator == "group" else {}
    adapters, kls = [], []
    for single in (True, False):
        tr = PPOTrainer(load(make_config(world, tmp_path / f"{estimator}_{single}", total_steps=1, **extra)))
        assert tr.single_update
        tr.single_update = single
        m = tr.train_step()
        kls.append(m["train/kl"])
        adapters.append({n: p.detach().clone() for n, p in tr.actor.module.named_parameters() if "lora_" in n})
        tr.run.close()
    for name in adapters[0]:
        torch.testing.assert_close(adapters[0][name], adapters[1][name], atol=1e-6, rtol=1e-5)
    assert kls[0] == pytest.approx(kls[1], abs=1e-6)
