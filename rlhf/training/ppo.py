"""The Panacea PPO loop. It orchestrates and owns no math: each phase calls one stage module.

    lambda (preference.py) -> rollout (rollout.py) -> scores (B, D) (scoring.py) -> rewards (B, T, D) and GAE
    (advantages.py) -> aggregated clipped loss (losses.py + aggregation.py) -> DeepSpeed steps (engine.py)

The run itself (directory, lock, seeding, checkpoints, resume checks, metrics) is ``rlhf/runtime/run.py``'s.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from rlhf.adapter.policy import adapter_writer, base_fingerprint
from rlhf.adapter.svd_lora import apply_svd_lora, count_parameters, scoped_preference
from rlhf.algo.advantages import kl_rewards, reward_to_go, whiten
from rlhf.algo.losses import masked_mean, policy_loss, value_loss
from rlhf.core.batch import Experience, Rollout
from rlhf.core.config import to_dict
from rlhf.data.chat import check_tokenizer_fits, ensure_pad_token, fit_prompts, format_prompt, preflight_lengths
from rlhf.data.datasets import PromptStream, load_rows, other_columns, prompt_column, require_columns
from rlhf.evaluation.training import evaluate_and_log
from rlhf.rollout.rollout import generate_rollout, position_ids_from_mask, response_logprobs
from rlhf.runtime import engine
from rlhf.runtime.paths import check_config_paths
from rlhf.runtime.run import Run
from rlhf.scoring.scorer import FiniteGuard, ScoreProcessor, Scorer
from rlhf.training.critic import build_critic, save_critic
from rlhf.training.ppo_config import PPOConfig, check_runtime


def dry_run(cfg: PPOConfig) -> dict[str, Any]:
    """Validate everything that can be validated without a model; return the batch arithmetic."""
    check_config_paths(cfg)
    world = cfg.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    actor_ds, critic_ds = check_runtime(cfg, world, hidden_size=4096)
    engine.check_ds_config(actor_ds, world)
    engine.check_ds_config(critic_ds, world)
    info = {"world_size": world, "objectives": list(cfg.objective_names), "aggregation": cfg.aggregation.NAME,
            "zero_stage": engine.zero_stage(actor_ds), "precision": cfg.precision,
            "prompts_per_step": cfg.rollout_batch_size * world,
            "optimizer_steps_per_ppo_step": cfg.ppo.ppo_epochs * (cfg.rollout_batch_size // cfg.mini_batch_size),
            "train_batch_size": actor_ds["train_batch_size"], "grad_accum": cfg.grad_accum,
            "total_prompts": cfg.total_steps * cfg.rollout_batch_size * world}
    return info


class PPOTrainer:
    def __init__(self, cfg: PPOConfig) -> None:
        self.cfg = cfg
        # The run first: directory guard, lock, resume and process-count checks, seeds; before any model loads.
        self.run = Run(cfg, "ppo")
        self.rank, self.world, self.out = self.run.rank, self.run.world, self.run.dir
        with self.run.close_on_error():  # a failure below leaves the directory free for the next attempt
            self._setup(cfg)

    def _setup(self, cfg: PPOConfig) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.run.refuse_if_finished(cfg.total_steps, "total_steps")
        self.estimator = cfg.advantage.build(cfg.ppo.gamma)
        # One optimiser update per rollout batch: pi_old is that update's own forward (ratio 1), so the rollout
        # needs only reference log-probs (half the no-grad pass), as TRL's GRPO does with num_iterations = 1.
        self.single_update = cfg.ppo.ppo_epochs == 1 and cfg.mini_batch_size == cfg.rollout_batch_size
        self.G = cfg.advantage.samples_per_prompt              # samples per prompt (1 with GAE)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.actor_model)
        ensure_pad_token(self.tokenizer, "policy tokenizer")
        actor_config = AutoConfig.from_pretrained(cfg.actor_model)
        check_tokenizer_fits(self.tokenizer, actor_config, f"actor_model {cfg.actor_model!r}")
        self.prompts = self._load_prompts()  # data errors surface before any model is loaded
        preflight_lengths(actor_config, "actor_model", cfg.actor_model,
                          cfg.prompts.max_prompt_length + cfg.generation.max_new_tokens,
                          "prompts.max_prompt_length + generation.max_new_tokens")
        for i, o in enumerate(cfg.objectives):  # each source's own checks: lengths, templates, a probe call
            o.preflight(f"objectives[{i}]", self.prompts.raw, f"prompts of {cfg.prompts.path!r}", self.prompt_rows,
                        self.prompts.columns)
        cfg.check_eval_scorers(self.prompts.raw, self.prompts.columns)
        hidden = getattr(actor_config.get_text_config(), "hidden_size", None)
        actor_ds, critic_ds = check_runtime(cfg, self.world, hidden)
        self.generator = cfg.generation.backend.build()
        dtype = engine.DTYPES[cfg.precision]
        self.scorer = Scorer(cfg.objectives, dtype=dtype, ds_config=actor_ds)
        with engine.zero3_init(actor_ds):
            actor = AutoModelForCausalLM.from_pretrained(cfg.actor_model, dtype=dtype)
            critic = build_critic(cfg.critic_model or cfg.actor_model, len(cfg.objectives), cfg.adapter,
                                  dtype) if cfg.advantage.NEEDS_CRITIC else None
        apply_svd_lora(actor, cfg.adapter)
        actor.eval()  # dropout off: log-prob ratios must compare like with like
        self.trainable, self.total = count_parameters(actor)

        sched = cfg.ppo.scheduler(cfg.total_steps * cfg.ppo.ppo_epochs * (cfg.rollout_batch_size // cfg.mini_batch_size))
        self.actor = engine.initialize(actor, actor_ds, sched)
        # the critic-free estimator builds, steps, checkpoints and saves no critic (one backbone less in memory)
        self.critic = engine.initialize(critic.eval(), critic_ds, sched) if critic is not None else None
        self.synced_gpus = engine.zero_stage(actor_ds) == 3 and self.world > 1
        # the frozen bases' fingerprints, stamped on every saved adapter / critic: taken once (collective), W0 is fixed
        self.fingerprints = {name: base_fingerprint(e) for name, e in self.engines.items()}
        self.front = cfg.training_front(self.tokenizer, self.scorer, self.rank, self.world, self.synced_gpus)
        self.ptx = self._load_ptx()
        self.scores = ScoreProcessor(cfg.objectives, cfg.ppo.score_clip)
        self.aggregation = cfg.aggregation.build()
        self.sampler = cfg.preference.build(len(cfg.objectives), cfg.seed)
        self.guard = FiniteGuard(cfg.objectives, cfg.max_bad_batches)
        self.step = 0
        if self.run.resume_path is not None:
            self._load_state(self.run.load_checkpoint(self.engines))
        self.tracker = self.run.start_tracking()

    @property
    def engines(self) -> dict[str, Any]:
        return {"actor": self.actor, **({"critic": self.critic} if self.critic is not None else {})}

    # ------------------------------------------------------------------ setup helpers
    def _load_prompts(self) -> PromptStream:
        c = self.cfg.prompts
        rows = load_rows(c.path, c.split, c.max_samples)
        self.run.register_data("prompts.path", c.path, rows)  # a resume refuses a changed file
        require_columns(rows, [c.prompt_column], c.path, hint="set prompts.prompt_column to the prompt column")
        values, self.prompt_rows = prompt_column(rows, c.prompt_column, c.path)
        raw = fit_prompts(self.tokenizer, values, c.max_prompt_length, c.prompt_template, f"prompts of {c.path!r}",
                          self.prompt_rows)                                   # conversations the policy sees whole
        texts = [format_prompt(self.tokenizer, p, c.prompt_template) for p in raw]
        return PromptStream(texts, raw, self.cfg.rollout_batch_size // self.G, self.cfg.seed, self.rank, self.world,
                            other_columns(rows, c.prompt_column, self.prompt_rows))

    def _load_ptx(self) -> Optional[list[str]]:
        if self.cfg.ptx.path is None:
            return None
        rows = load_rows(self.cfg.ptx.path)
        require_columns(rows, [self.cfg.ptx.text_column], self.cfg.ptx.path, hint="set ptx.text_column")
        return [str(t) for t in rows[self.cfg.ptx.text_column]]

    # ------------------------------------------------------------------ phases
    def _preference(self) -> torch.Tensor:
        """(D,) shared by every rank, or (B, D) one per prompt (a group of G samples shares its prompt's); a skipped
        bad batch moves the draw on."""
        lam = self.sampler.for_step(self.step + self.guard.total, self.rank,
                                    self.cfg.rollout_batch_size // self.G)                      # (D,) or (B/G, D)
        return lam if lam.dim() == 1 else lam.repeat_interleave(self.G, dim=0)                  # groups never mix

    def _rollout(self, lam: torch.Tensor) -> Rollout:
        texts, raw, columns = self.prompts.next()                                              # B / G prompts
        texts, raw = [t for t in texts for _ in range(self.G)], [p for p in raw for _ in range(self.G)]
        columns = {k: [x for x in v for _ in range(self.G)] for k, v in columns.items()}
        g = self.cfg.generation
        return generate_rollout(self.actor.module, self.tokenizer, texts, raw, lam,
                                max_prompt_length=self.cfg.prompts.max_prompt_length,
                                max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                                synced_gpus=self.synced_gpus, merge=g.merge_adapter, backend=self.generator,
                                old_logprobs=not self.single_update, columns=columns)

    def _values(self, model: Any, rollout: Rollout) -> torch.Tensor:
        """(B, T, D) values at the positions that generate each response token; the caller scopes the rollout's
        lambda (around the backward too, for the critic's update)."""
        mask = rollout.attention_mask
        values = model(rollout.sequences, mask, position_ids_from_mask(mask))                  # (B, L, D)
        return values[:, rollout.prompt_length - 1:-1]                                         # (B, T, D)

    def _experience(self, rollout: Rollout, scores: torch.Tensor) -> Experience:
        p = self.cfg.ppo
        mask = rollout.response_mask.float()                                                   # (B, T)
        values = None
        if self.critic is not None:
            with torch.no_grad(), scoped_preference(self.critic.module, rollout.preference):
                values = self._values(self.critic.module, rollout) * mask.unsqueeze(-1)       # (B, T, D)
        kl = kl_adv = None  # with one update per batch, its forward gives pi_old and the KL terms (_actor_step)
        if rollout.old_logprobs is not None:
            kl, kl_reward = kl_rewards(rollout.old_logprobs, rollout.ref_logprobs, p.kl_coef, mask)  # (B, T) each
            kl_adv = reward_to_go(kl_reward, mask, p.gamma)                                    # (B, T)
        advantages, returns = self.estimator.estimate(scores.float(), values,
                                                      rollout.response_mask)                   # (B, T, D) each
        if p.whiten_advantages:
            advantages = whiten(advantages, mask)
        return Experience(rollout=rollout, scores=scores, values=values, advantages=advantages,
                          returns=returns, kl_advantages=kl_adv, kl=kl, weights=self._weights(rollout, scores))

    def _weights(self, rollout: Rollout, scores: torch.Tensor) -> torch.Tensor:
        """(B, D) aggregation weights: lambda for LS; for Tchebycheff the lagging dimension, from J = this batch's
        mean score (averaged over ranks, which share lambda) against the ideal point (aggregation.py)."""
        B, D = scores.shape
        lam = rollout.preference.reshape(-1, D).expand(B, D).float()                           # (B, D)
        if not self.aggregation.uses_ideal:
            return self.aggregation.weights(lam).to(scores.device)
        if rollout.preference.dim() == 1:  # one lambda on every rank: its value is the global batch mean
            J = self._mean_over_ranks({"J": scores.float().mean(0).cpu()})["J"].float()       # (D,)
        else:  # one lambda per prompt: its group's mean estimates it (with GAE, a group is one sample)
            J = scores.float().view(B // self.G, self.G, D).mean(1).repeat_interleave(self.G, 0)  # (B, D)
        seen = engine.all_reduce_max(J.reshape(-1, D).max(0).values.to(engine.device())).cpu()  # (D,) all ranks
        return self.aggregation.weights(lam, J.to(lam.device), seen).to(scores.device)         # (B, D)

    def _ptx_loss(self) -> torch.Tensor:
        texts = random.sample(self.ptx, min(self.cfg.micro_batch_size, len(self.ptx)))
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.cfg.ptx.max_length).to(engine.device())
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return self.actor(**enc, labels=labels, use_cache=False).loss

    def _actor_step(self, mb: Experience, stats: dict[str, list]) -> None:
        """One actor micro-batch: forward and backward both under the micro-batch's own lambda."""
        cfg, p = self.cfg, self.cfg.ppo
        r, mask = mb.rollout, mb.rollout.response_mask.float()                                 # mask (b, T)
        with scoped_preference(self.actor.module, r.preference):
            logprobs, entropy = response_logprobs(self.actor, r.sequences, r.attention_mask, r.response_mask.shape[1],
                                                  cfg.generation.temperature, with_entropy=True)
            old, kl_adv = r.old_logprobs, mb.kl_advantages
            if old is None:  # the single update on this batch: pi_old is this forward, the KL terms follow from it
                old = logprobs.detach()
                kl, kl_reward = kl_rewards(old, r.ref_logprobs, p.kl_coef, mask)                # (b, T) each
                kl_adv = reward_to_go(kl_reward, mask, p.gamma)                                # (b, T)
                stats["kl"] += kl.sum(-1).tolist()
            tis = None
            if r.sampler_logprobs is not None:  # another engine sampled: how far its numerics are from ours
                diff = (old - r.sampler_logprobs).abs() * mask                                 # (b, T)
                stats["logprob_diff_mean"].append((diff.sum() / mask.sum().clamp(min=1)).item())
                stats["logprob_diff_max"].append(diff.max().item())
                if p.tis_cap is not None:  # truncated importance sampling: E_sampler[w * grad] ~ E_old[grad]
                    tis = torch.exp(old - r.sampler_logprobs).clamp(max=p.tis_cap)            # (b, T)
            loss, s = policy_loss(logprobs, old, mb.advantages, kl_adv, mask, mb.weights, p.clip_ratio, tis)
            if self.ptx is not None:
                ptx = self._ptx_loss()
                loss = loss + cfg.ptx.coef * ptx
                stats["ptx_loss"].append(ptx.item())
            self.actor.backward(loss)
        self.actor.step()
        stats["policy_loss"].append(loss.item())
        stats["clipfrac"].append(s["clipfrac"].item())
        stats["approx_kl"].append(s["approx_kl"].item())
        stats["entropy"].append(masked_mean(entropy, mask).item())

    def _critic_step(self, mb: Experience, stats: dict[str, list]) -> None:
        r = mb.rollout
        with scoped_preference(self.critic.module, r.preference):
            values = self._values(self.critic, r)                                              # (b, T, D)
            vloss = value_loss(values, mb.values, mb.returns, r.response_mask.float(), self.cfg.ppo.value_clip)  # (D,)
            self.critic.backward(vloss.sum())
        self.critic.step()
        stats["value_loss"].append(vloss.detach().cpu())

    def _update(self, exp: Experience) -> dict[str, Any]:
        cfg, p = self.cfg, self.cfg.ppo
        stats: dict[str, list] = {k: [] for k in ("policy_loss", "clipfrac", "approx_kl", "entropy", "value_loss",
                                                   "ptx_loss", "kl", "logprob_diff_mean", "logprob_diff_max")}
        train_actor = self.step >= p.critic_warmup_steps
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step)
        tokens = 0
        for _ in range(p.ppo_epochs):
            order = torch.randperm(cfg.rollout_batch_size, generator=gen)
            for start in range(0, cfg.rollout_batch_size, cfg.micro_batch_size):
                mb = exp.select(order[start:start + cfg.micro_batch_size]).trimmed()  # drop all-pad columns
                tokens += int(mb.rollout.attention_mask.numel())
                if train_actor:
                    self._actor_step(mb, stats)
                if self.critic is not None:
                    self._critic_step(mb, stats)
        out: dict[str, Any] = {k: float(np.mean(v)) for k, v in stats.items()
                               if v and not torch.is_tensor(v[0])}
        if stats["logprob_diff_max"]:
            out["logprob_diff_max"] = float(max(stats["logprob_diff_max"]))
        if stats["value_loss"]:
            out["value_loss"] = torch.stack(stats["value_loss"]).mean(0)                      # (D,)
        out["tokens"] = tokens
        return out

    # ------------------------------------------------------------------ one step
    def _mean_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = sorted(values)
        flat = torch.cat([values[k].reshape(-1).double() for k in keys]).to(engine.device())
        flat = (engine.all_reduce_sum(flat) / self.world).cpu()
        out, i = {}, 0
        for k in keys:
            n = values[k].numel()
            out[k] = flat[i:i + n].reshape(values[k].shape)
            i += n
        return out

    def train_step(self) -> Optional[dict[str, Any]]:
        """preference -> rollout -> scores -> experience (advantages, aggregation weights) -> update; None for a
        skipped batch."""
        lam = self._preference()                                                               # (D,) or (B, D)
        t0 = time.perf_counter()
        rollout = self._rollout(lam)
        t1 = time.perf_counter()
        raw = self.scorer.raw(rollout.prompts, rollout.responses, rollout.columns)             # (B, D)
        if not self.guard.ok(raw, self.step):
            return None
        scores = self.scores(raw).to(engine.device())                                          # (B, D)
        exp = self._experience(rollout, scores)
        t2 = time.perf_counter()
        upd = self._update(exp)
        self.generator.after_update(self.actor.module)  # a backend with its own weight copy syncs here
        t3 = time.perf_counter()
        self.step += 1
        if self.cfg.sample_every and self.step % self.cfg.sample_every == 0:
            self._log_samples(exp)
        return self._metrics(exp, raw, upd, (t1 - t0, t2 - t1, t3 - t2))

    def _metrics(self, exp: Experience, raw: torch.Tensor, upd: dict[str, Any],
                 times: tuple[float, float, float]) -> dict[str, Any]:
        r = exp.rollout
        mask = r.response_mask.float()
        lengths = mask.sum(-1)                                                                   # (B,)
        lam = r.preference.float().reshape(-1, raw.shape[1]).mean(0)                             # (D,)
        local = {"score": raw.float().mean(0), "lambda": lam.cpu(),
                 "weight": exp.weights.float().mean(0).cpu(), "J": exp.scores.float().mean(0).cpu(),
                 "kl": torch.tensor([exp.kl.sum(-1).mean().item() if exp.kl is not None else upd.get("kl", 0.0)]),
                 "length": lengths.mean().cpu().reshape(1), "tokens": lengths.sum().cpu().reshape(1)}
        if exp.returns is not None:  # the critic's: its targets at the first response token, and its loss
            local["return"] = exp.returns[:, 0].float().mean(0).cpu()                            # (D,)
            local["value_loss"] = upd["value_loss"].float()                                      # (D,)
        for k in ("policy_loss", "clipfrac", "approx_kl", "entropy", "ptx_loss", "logprob_diff_mean"):
            if k in upd:
                local[k] = torch.tensor([upd[k]])
        g = self._mean_over_ranks(local)
        m: dict[str, Any] = {"step": self.step}
        ideal = self.aggregation.ideal.value if self.aggregation.ideal is not None else None       # (D,) or None
        for i, name in enumerate(self.cfg.objective_names):
            m[f"train/score/{name}"] = g["score"][i].item()
            for k in ("return", "value_loss"):
                if k in g:
                    m[f"train/{k}/{name}"] = g[k][i].item()
            m[f"train/lambda/{name}"] = g["lambda"][i].item()
            m[f"train/weight/{name}"] = g["weight"][i].item()
            if ideal is not None:
                m[f"train/ideal/{name}"] = float(ideal[i])
                m[f"train/J/{name}"] = g["J"][i].item()
        for k in ("policy_loss", "clipfrac", "approx_kl", "entropy", "ptx_loss"):
            if k in g:
                m[f"train/{k}"] = g[k].item()
        if "logprob_diff_mean" in g:  # trainer vs sampling engine, per token (the max over every rank's tokens)
            m["rollout/logprob_diff_mean"] = g["logprob_diff_mean"].item()
            m["rollout/logprob_diff_max"] = engine.all_reduce_max(
                torch.tensor([upd["logprob_diff_max"]], device=engine.device())).item()
        m["train/kl"] = g["kl"].item()
        m["train/response_length"] = g["length"].item()
        m["train/bad_batches"] = self.guard.total
        m["time/generate"], m["time/score"], m["time/update"] = times
        m["perf/generate_tokens_per_s"] = g["tokens"].item() * self.world / max(times[0], 1e-9)
        # tokens through the update (every epoch, prompt + response, padding trimmed): the base of its FLOP count
        m["perf/update_tokens"] = int(upd.get("tokens", 0)) * self.world
        if torch.cuda.is_available():
            m["perf/peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return m

    # ------------------------------------------------------------------ persistence
    def _trainer_state(self) -> dict[str, Any]:
        return {"guard": self.guard.state_dict(), "prompts": self.prompts.state_dict(),
                "normalizer": self.scores.state_dict(), "ideal": self.aggregation.state_dict(),
                "front": self.front.state_dict() if self.front is not None else None}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.guard.load_state_dict(state["guard"])
        self.prompts.load_state_dict(state["prompts"])
        self.scores.load_state_dict(state["normalizer"])
        self.aggregation.load_state_dict(state["ideal"])
        if self.front is not None:
            self.front.load_state_dict(state.get("front"))

    def _policy_writer(self, with_critic: bool) -> Any:
        """``write(dir)``: adapter + tokenizer + run config (what evaluate.py and merging read), and the critic.
        Gathers (collective under ZeRO-3) now; ``write`` runs on rank 0."""
        write_adapter = adapter_writer(self.actor, self.tokenizer, step=self.step, fingerprint=self.fingerprints["actor"],
                                       run_info=self.cfg.run_info("ppo", self.cfg.actor_model,
                                                                  prompts_path=self.cfg.prompts.path,
                                                                  prompt_template=self.cfg.prompts.prompt_template))
        with_critic = with_critic and self.critic is not None
        if with_critic:
            critic_state = engine.full_state_dict(self.critic, only_trainable=True)

        def write(tmp: Path) -> None:
            write_adapter(tmp)
            (tmp / "ppo_config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            if with_critic:
                save_critic(self.critic.module, tmp / "critic", state=critic_state,
                            fingerprint=self.fingerprints["critic"])

        return write

    def save_checkpoint(self) -> Path:
        """Engines, RNG and trainer state, plus the policy as evaluate.py reads it (and the in-training evaluation's
        settings as ``eval.yaml``), so ``evaluate.py --run CKPT --config CKPT/eval.yaml`` gives that step's front."""
        return self.run.save_checkpoint(self.step, self.engines, self._trainer_state(),
                                        policy=self._policy_writer(with_critic=False), front=self.front)

    def evaluate_front(self) -> Optional[dict[str, Any]]:
        """The front now (``eval``), logged to metrics.jsonl and W&B; None when the evaluation is off."""
        if self.front is None:
            return None
        return evaluate_and_log(self.front, self.actor.module, self.run, self.step)

    def save_final(self) -> Path:
        """``output_dir/policy``: adapter + tokenizer + run config (what evaluate.py and merging read) + critic."""
        return self.run.save_result(self._policy_writer(with_critic=True), subdir="policy")

    def _log_samples(self, exp: Experience) -> None:
        r = exp.rollout
        lam = r.preference.reshape(-1, exp.scores.shape[1]).expand(len(r.prompts), -1)
        rows = [[self.step, [round(x, 3) for x in lam[i].tolist()], str(r.prompts[i]), r.responses[i],
                 [round(x, 3) for x in exp.scores[i].tolist()]] for i in range(min(4, len(r.prompts)))]
        self.tracker.table("samples", ["step", "lambda", "prompt", "response", "scores"], rows, self.step)

    def train(self) -> Path:
        from tqdm import tqdm

        cfg = self.cfg
        if engine.is_main():
            print(f"[ppo] {len(cfg.objectives)} objectives {list(cfg.objective_names)}, aggregation="
                  f"{cfg.aggregation.NAME}, world size {self.world}, actor trainable {self.trainable:,} of "
                  f"{self.total:,} params", flush=True)
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not engine.is_main(), desc="ppo",
                   dynamic_ncols=True)
        try:
            if self.step == 0 and self.run.resume_path is None:
                self.evaluate_front()  # the starting front: every point is the base model's until the adapter moves
            while self.step < cfg.total_steps:
                reason = self.run.stop_requested()  # a signal, or the launcher gone: checkpoint and leave
                if reason:
                    self.save_checkpoint()
                    raise self.run.stopped(self.step, reason)
                m = self.train_step()
                if m is None:
                    continue
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    self.run.log(m, self.step)
                    bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in m.items()
                                     if k.startswith("train/score")})
                if self.front is not None and self.front.due(self.step, cfg.total_steps):  # before the checkpoint
                    self.evaluate_front()
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.total_steps:
                    self.save_checkpoint()
            bar.close()
            self.save_checkpoint()
            final = self.save_final()
            self.run.close(finished_step=self.step)
        finally:
            self.run.close()
        if engine.is_main():
            print(f"[ppo] done: {final}", flush=True)
        return final
