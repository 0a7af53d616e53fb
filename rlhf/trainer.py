"""The Panacea PPO loop. It orchestrates and owns no math: each phase calls one stage module.

    lambda (preference.py) -> rollout (rollout.py) -> scores (B, D) (scoring.py) -> rewards (B, T, D) and GAE
    (advantages.py) -> aggregated clipped loss (losses.py + aggregation.py) -> DeepSpeed steps (engine.py)
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from rlhf import checkpoint, engine
from rlhf.advantages import gae, kl_rewards, reward_to_go, token_rewards, whiten
from rlhf.aggregation import get_aggregator
from rlhf.batch import Experience, Rollout
from rlhf.config import to_dict
from rlhf.critic import build_critic, save_critic
from rlhf.data import DataError, ensure_pad_token, format_prompt, load_rows, require_columns
from rlhf.generation import make_backend
from rlhf.losses import masked_mean, policy_loss, value_loss
from rlhf.ppo_config import PPOConfig
from rlhf.preference import sample_preference
from rlhf.rollout import generate_rollout, position_ids_from_mask, response_logprobs
from rlhf.scoring import RunningMeanStd, Scorer
from rlhf.svd_lora import apply_svd_lora, count_parameters, save_adapter, set_preference
from rlhf.tracking import Tracker
from rlhf.runs import write_run_info

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteScoresError(RuntimeError):
    """Too many consecutive batches had NaN/inf scores; the run stops without writing a checkpoint."""


class PromptStream:
    """This rank's prompts, step by step: a seeded permutation per epoch, rank-strided, resumable."""

    def __init__(self, texts: list[str], raw: list[str], batch: int, seed: int, rank: int, world: int) -> None:
        if len(texts) < batch * world:
            raise DataError(f"{len(texts)} prompts are fewer than one step needs (rollout_batch_size {batch} x "
                            f"{world} processes); add prompts or lower rollout_batch_size")
        self.texts, self.raw, self.batch, self.seed, self.rank, self.world = texts, raw, batch, seed, rank, world
        self.epoch, self.pos = 0, 0

    def next(self) -> tuple[list[str], list[str]]:
        if self.pos + self.batch * self.world > len(self.texts):
            self.epoch, self.pos = self.epoch + 1, 0
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.texts))
        start = self.pos + self.rank * self.batch
        idx = order[start:start + self.batch]
        self.pos += self.batch * self.world
        return [self.texts[i] for i in idx], [self.raw[i] for i in idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]


def resolve_configs(cfg: PPOConfig, world: int, hidden_size: Optional[int]) -> tuple[dict, dict]:
    """DeepSpeed configs of actor and critic (they differ only in learning rate)."""
    common = dict(micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
                  weight_decay=cfg.ppo.weight_decay, precision=cfg.precision, max_grad_norm=cfg.ppo.max_grad_norm,
                  hidden_size=hidden_size, world=world)
    return (engine.resolve_ds_config(cfg.ds_config, lr=cfg.ppo.actor_lr, **common),
            engine.resolve_ds_config(cfg.ds_config, lr=cfg.ppo.critic_lr, **common))


def dry_run(cfg: PPOConfig) -> dict[str, Any]:
    """Validate everything that can be validated without a model; return the batch arithmetic."""
    world = cfg.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    actor_ds, critic_ds = resolve_configs(cfg, world, hidden_size=4096)
    engine.check_ds_config(actor_ds, world)
    engine.check_ds_config(critic_ds, world)
    get_aggregator(cfg.aggregation)
    info = {"world_size": world, "objectives": list(cfg.objective_names), "aggregation": cfg.aggregation,
            "zero_stage": engine.zero_stage(actor_ds), "precision": cfg.precision,
            "prompts_per_step": cfg.rollout_batch_size * world,
            "optimizer_steps_per_ppo_step": cfg.ppo.ppo_epochs * (cfg.rollout_batch_size // cfg.mini_batch_size),
            "train_batch_size": actor_ds["train_batch_size"], "grad_accum": cfg.grad_accum,
            "total_prompts": cfg.total_steps * cfg.rollout_batch_size * world}
    return info


class PPOTrainer:
    def __init__(self, cfg: PPOConfig) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, get_scheduler

        self.cfg = cfg
        engine.init_distributed()
        self.rank, self.world = engine.rank(), engine.world_size()
        if cfg.world_size is not None and cfg.world_size != self.world:
            raise ValueError(f"config world_size={cfg.world_size} but the launcher started {self.world} processes")
        random.seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        torch.manual_seed(cfg.seed + self.rank)
        self.out = Path(cfg.output_dir)
        self.aggregator = get_aggregator(cfg.aggregation)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.actor_model)
        ensure_pad_token(self.tokenizer, "policy tokenizer")
        self.prompts = self._load_prompts()  # data errors surface before any model is loaded
        hidden = getattr(AutoConfig.from_pretrained(cfg.actor_model).get_text_config(), "hidden_size", None)
        actor_ds, critic_ds = resolve_configs(cfg, self.world, hidden)
        if cfg.generation.merge_adapter and engine.zero_stage(actor_ds) == 3:
            raise ValueError("generation.merge_adapter needs ZeRO stage 0-2: under ZeRO-3 no rank holds full weights")
        if cfg.generation.backend != "hf" and engine.zero_stage(actor_ds) == 3:
            raise ValueError(f"generation.backend {cfg.generation.backend!r} needs ZeRO stage 0-2 (ZeRO-3's parameter "
                             f"hooks break compiled graphs); use generation.backend hf")
        self.generator = make_backend(cfg.generation.backend, cfg.generation.compile_backend)
        dtype = DTYPES[cfg.precision]
        self.scorer = Scorer(cfg.objectives, dtype=dtype, ds_config=actor_ds)
        with engine.zero3_init(actor_ds):
            actor = AutoModelForCausalLM.from_pretrained(cfg.actor_model, dtype=dtype)
            critic = build_critic(cfg.critic_model or cfg.actor_model, len(cfg.objectives), cfg.adapter, dtype)
        apply_svd_lora(actor, cfg.adapter)
        actor.eval(), critic.eval()  # dropout off: log-prob ratios must compare like with like
        self.trainable, self.total = count_parameters(actor)

        def sched(opt: torch.optim.Optimizer) -> Any:
            return get_scheduler(cfg.ppo.lr_scheduler, opt, num_warmup_steps=cfg.ppo.warmup_steps,
                                 num_training_steps=cfg.total_steps * cfg.ppo.ppo_epochs *
                                 (cfg.rollout_batch_size // cfg.mini_batch_size))

        self.actor = engine.initialize(actor, actor_ds, sched)
        self.critic = engine.initialize(critic, critic_ds, sched)
        self.synced_gpus = engine.zero_stage(actor_ds) == 3 and self.world > 1
        self.ptx = self._load_ptx()
        self.norm = RunningMeanStd(len(cfg.objectives))
        self.ideal = torch.tensor(cfg.tche_ideal) if cfg.tche_ideal is not None else None
        self.step, self.bad_in_row, self.bad_total = 0, 0, 0
        if cfg.resume_from:
            self._resume()
        self.tracker = Tracker(cfg.wandb, to_dict(cfg), str(self.out), active=engine.is_main())

    # ------------------------------------------------------------------ setup helpers
    def _load_prompts(self) -> PromptStream:
        c = self.cfg.prompts
        rows = load_rows(c.path, c.split, c.max_samples)
        require_columns(rows, [c.prompt_column], c.path, hint="set prompts.prompt_column to the prompt column")
        raw = [str(p) for p in rows[c.prompt_column]]
        texts = [format_prompt(self.tokenizer, p, c.prompt_template) for p in raw]
        return PromptStream(texts, raw, self.cfg.rollout_batch_size, self.cfg.seed, self.rank, self.world)

    def _load_ptx(self) -> Optional[list[str]]:
        if self.cfg.ptx.path is None:
            return None
        rows = load_rows(self.cfg.ptx.path)
        require_columns(rows, [self.cfg.ptx.text_column], self.cfg.ptx.path, hint="set ptx.text_column")
        return [str(t) for t in rows[self.cfg.ptx.text_column]]

    def _resume(self) -> None:
        path, _ = checkpoint.resolve_compatible(self.cfg.resume_from, self.out / "checkpoints", to_dict(self.cfg))
        state = checkpoint.load(path, {"actor": self.actor, "critic": self.critic})
        self.step, self.bad_in_row, self.bad_total = state["step"], state["bad_in_row"], state["bad_total"]
        self.prompts.load_state_dict(state["prompts"])
        self.norm.load_state_dict(state["normalizer"])
        self.ideal = torch.tensor(state["ideal"]) if state["ideal"] is not None else None
        if engine.is_main():  # metrics after the checkpoint will be logged again
            metrics = self.out / "metrics.jsonl"
            if metrics.is_file():
                keep = [l for l in metrics.read_text().splitlines() if l and json.loads(l)["step"] <= self.step]
                metrics.write_text("".join(l + "\n" for l in keep))
            print(f"[ppo] resumed from {path} at step {self.step}", flush=True)

    # ------------------------------------------------------------------ phases
    def _rollout(self, lam: torch.Tensor) -> Rollout:
        texts, raw = self.prompts.next()
        g = self.cfg.generation
        return generate_rollout(self.actor.module, self.tokenizer, texts, raw, lam,
                                max_prompt_length=self.cfg.prompts.max_prompt_length,
                                max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                                synced_gpus=self.synced_gpus, merge=g.merge_adapter, backend=self.generator)

    def _values(self, model: Any, rollout: Rollout, lam: torch.Tensor) -> torch.Tensor:
        """(B, T, D) values at the positions that generate each response token."""
        set_preference(self.critic.module, lam)
        mask = rollout.attention_mask
        values = model(rollout.sequences, mask, position_ids_from_mask(mask))                  # (B, L, D)
        return values[:, rollout.prompt_length - 1:-1]                                         # (B, T, D)

    def _experience(self, rollout: Rollout, scores: torch.Tensor) -> Experience:
        p = self.cfg.ppo
        mask = rollout.response_mask.float()                                                   # (B, T)
        with torch.no_grad():
            values = self._values(self.critic.module, rollout, rollout.preference) * mask.unsqueeze(-1)
        rewards = token_rewards(scores.to(values), rollout.response_mask)                      # (B, T, D)
        kl, kl_reward = kl_rewards(rollout.old_logprobs, rollout.ref_logprobs, p.kl_coef, mask)  # (B, T) each
        advantages, returns = gae(rewards, values, mask, p.gamma, p.gae_lambda)                # (B, T, D) each
        if p.whiten_advantages:
            advantages = whiten(advantages, mask)
        kl_adv = reward_to_go(kl_reward, mask, p.gamma)                                        # (B, T)
        return Experience(rollout=rollout, scores=scores, values=values, advantages=advantages,
                          returns=returns, kl_advantages=kl_adv, kl=kl)

    def _ptx_loss(self) -> torch.Tensor:
        texts = random.sample(self.ptx, min(self.cfg.micro_batch_size, len(self.ptx)))
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.cfg.ptx.max_length).to(engine.device())
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return self.actor(**enc, labels=labels, use_cache=False).loss

    def _update(self, exp: Experience) -> dict[str, float]:
        cfg, p = self.cfg, self.cfg.ppo
        stats: dict[str, list] = {k: [] for k in ("policy_loss", "clipfrac", "approx_kl", "entropy", "surrogate",
                                                   "value_loss", "ptx_loss")}
        train_actor = self.step >= p.critic_warmup_steps
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step)
        for _ in range(p.ppo_epochs):
            order = torch.randperm(cfg.rollout_batch_size, generator=gen)
            for start in range(0, cfg.rollout_batch_size, cfg.micro_batch_size):
                mb = exp.select(order[start:start + cfg.micro_batch_size]).trimmed()  # drop all-pad columns
                r, mask = mb.rollout, mb.rollout.response_mask.float()                         # mask (b, T)
                if train_actor:
                    set_preference(self.actor.module, r.preference)
                    logprobs, entropy = response_logprobs(self.actor, r.sequences, r.attention_mask,
                                                          r.response_mask.shape[1],
                                                          cfg.generation.temperature, with_entropy=True)
                    loss, s = policy_loss(logprobs, r.old_logprobs, mb.advantages, mb.kl_advantages, mask,
                                          r.preference, self.aggregator, p.clip_ratio, self.ideal, cfg.stche_mu)
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
                    stats["surrogate"].append(s["surrogate"].cpu())
                values = self._values(self.critic, r, r.preference)                             # (b, T, D)
                vloss = value_loss(values, mb.values, mb.returns, mask, p.value_clip)           # (D,)
                self.critic.backward(vloss.sum())
                self.critic.step()
                stats["value_loss"].append(vloss.detach().cpu())
        out: dict[str, Any] = {k: float(np.mean(v)) for k, v in stats.items()
                               if v and not torch.is_tensor(v[0])}
        out["value_loss"] = torch.stack(stats["value_loss"]).mean(0)                          # (D,)
        if stats["surrogate"]:
            out["surrogate"] = torch.stack(stats["surrogate"]).mean(0)                         # (D,)
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
        cfg = self.cfg
        D = len(cfg.objectives)
        lam = sample_preference(cfg.preference, D, cfg.seed, self.step + self.bad_total, self.rank,
                                cfg.rollout_batch_size)                                        # (D,) or (B, D)
        t0 = time.perf_counter()
        rollout = self._rollout(lam)
        t1 = time.perf_counter()
        raw = self.scorer.raw(rollout.prompts, rollout.responses)                              # (B, D)
        bad = engine.all_reduce_sum(torch.tensor([float((~torch.isfinite(raw)).any())], device=engine.device()))
        if bad.item() > 0:
            return self._skip_bad_batch(raw)
        self.bad_in_row = 0
        scores = raw
        if any(o.normalize for o in cfg.objectives):
            self.norm.update(raw)
            normed = self.norm.normalize(raw)
            use = torch.tensor([o.normalize for o in cfg.objectives])
            scores = torch.where(use, normed, raw)
        scores = scores.clamp(-cfg.ppo.score_clip, cfg.ppo.score_clip).to(engine.device())    # (B, D)
        exp = self._experience(rollout, scores)
        t2 = time.perf_counter()
        upd = self._update(exp)
        self.generator.after_update(self.actor.module)  # a backend with its own weight copy syncs here
        t3 = time.perf_counter()
        if self.aggregator.name != "ls" and cfg.tche_ideal is None and "surrogate" in upd:
            surrogate = self._mean_over_ranks({"s": upd["surrogate"]})["s"].float()
            self.ideal = surrogate if self.ideal is None else torch.maximum(self.ideal, surrogate)
        self.step += 1
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            self._log_samples(exp)
        return self._metrics(exp, raw, upd, (t1 - t0, t2 - t1, t3 - t2))

    def _skip_bad_batch(self, raw: torch.Tensor) -> None:
        self.bad_in_row += 1
        self.bad_total += 1
        warnings.warn(f"step {self.step}: NaN/inf scores from a score model ({self.bad_in_row} batch(es) in a row, "
                      f"{self.bad_total} in total); batch skipped")
        if self.bad_in_row >= self.cfg.max_bad_batches:
            raise NonFiniteScoresError(
                f"{self.bad_in_row} consecutive batches had NaN/inf scores (max_bad_batches="
                f"{self.cfg.max_bad_batches}); stopping without a checkpoint. Check the score models: "
                f"{[o.model for o in self.cfg.objectives]}")
        return None

    def _metrics(self, exp: Experience, raw: torch.Tensor, upd: dict[str, Any],
                 times: tuple[float, float, float]) -> dict[str, Any]:
        r = exp.rollout
        mask = r.response_mask.float()
        lengths = mask.sum(-1)                                                                   # (B,)
        first = exp.returns[:, 0].float()                                                        # (B, D)
        lam = r.preference.float().reshape(-1, raw.shape[1]).mean(0)                             # (D,)
        local = {"score": raw.float().mean(0), "return": first.mean(0).cpu(), "lambda": lam.cpu(),
                 "value_loss": upd["value_loss"].float(), "kl": exp.kl.sum(-1).mean().cpu().reshape(1),
                 "length": lengths.mean().cpu().reshape(1), "tokens": lengths.sum().cpu().reshape(1)}
        for k in ("policy_loss", "clipfrac", "approx_kl", "entropy", "ptx_loss"):
            if k in upd:
                local[k] = torch.tensor([upd[k]])
        g = self._mean_over_ranks(local)
        m: dict[str, Any] = {"step": self.step}
        for i, name in enumerate(self.cfg.objective_names):
            m[f"train/score/{name}"] = g["score"][i].item()
            m[f"train/return/{name}"] = g["return"][i].item()
            m[f"train/value_loss/{name}"] = g["value_loss"][i].item()
            m[f"train/lambda/{name}"] = g["lambda"][i].item()
            if self.ideal is not None:
                m[f"train/ideal/{name}"] = float(self.ideal[i])
        for k in ("policy_loss", "clipfrac", "approx_kl", "entropy", "ptx_loss"):
            if k in g:
                m[f"train/{k}"] = g[k].item()
        m["train/kl"] = g["kl"].item()
        m["train/response_length"] = g["length"].item()
        m["train/bad_batches"] = self.bad_total
        m["time/generate"], m["time/score"], m["time/update"] = times
        m["perf/generate_tokens_per_s"] = g["tokens"].item() * self.world / max(times[0], 1e-9)
        return m

    # ------------------------------------------------------------------ persistence
    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "bad_in_row": self.bad_in_row, "bad_total": self.bad_total,
                "prompts": self.prompts.state_dict(), "normalizer": self.norm.state_dict(),
                "ideal": None if self.ideal is None else self.ideal.tolist(), "config": to_dict(self.cfg)}

    def save_checkpoint(self) -> Path:
        return checkpoint.save(self.out / "checkpoints", self.step, {"actor": self.actor, "critic": self.critic},
                               self._trainer_state(), self.cfg.keep_last)

    def save_final(self) -> Path:
        """``output_dir/policy``: adapter + tokenizer + run config (what evaluate.py and merging read)."""
        actor_state = engine.full_state_dict(self.actor, only_trainable=True)
        critic_state = engine.full_state_dict(self.critic, only_trainable=True)
        final = self.out / "policy"
        if engine.is_main():
            tmp = self.out / ".policy.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_adapter(self.actor.module, tmp, state_dict=actor_state)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "ppo_config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            write_run_info(tmp, trainer="ppo", base_model=self.cfg.actor_model, objectives=self.cfg.objectives,
                           preference=self.cfg.preference, eval_scorers=self.cfg.eval_scorers, step=self.step,
                           prompts_path=self.cfg.prompts.path)
            save_critic(self.critic.module, tmp / "critic", state=critic_state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        engine.barrier()
        return final

    def _log(self, m: dict[str, Any]) -> None:
        self.tracker.log({k: v for k, v in m.items() if k != "step"}, self.step)
        if engine.is_main():
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(m) + "\n")

    def _log_samples(self, exp: Experience) -> None:
        r = exp.rollout
        lam = r.preference.reshape(-1, exp.scores.shape[1]).expand(len(r.prompts), -1)
        rows = [[self.step, [round(x, 3) for x in lam[i].tolist()], r.prompts[i], r.responses[i],
                 [round(x, 3) for x in exp.scores[i].tolist()]] for i in range(min(4, len(r.prompts)))]
        self.tracker.table("samples", ["step", "lambda", "prompt", "response", "scores"], rows, self.step)

    def train(self) -> Path:
        from tqdm import tqdm

        cfg = self.cfg
        if engine.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            print(f"[ppo] {len(cfg.objectives)} objectives {list(cfg.objective_names)}, aggregation={cfg.aggregation}, "
                  f"world size {self.world}, actor trainable {self.trainable:,} of {self.total:,} params", flush=True)
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not engine.is_main(), desc="ppo",
                   dynamic_ncols=True)
        while self.step < cfg.total_steps:
            m = self.train_step()
            if m is None:
                continue
            bar.update(1)
            if self.step % cfg.log_every == 0:
                self._log(m)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in m.items() if k.startswith("train/score")})
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.total_steps:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        final = self.save_final()
        self.tracker.finish()
        if engine.is_main():
            print(f"[ppo] done: {final}", flush=True)
        return final
