"""Bad inputs and faults, tried as a user would (issue 18): each case's message, whether it came before any model
weights loaded, and whether anything on disk was lost. Prints the Markdown table RESULTS.md carries.

    python benchmarks/bad_inputs.py [--out runs/bad_inputs]

Everything runs in this process on tiny random models (``hhbench/fixtures.py``); a case passes when it raises (or warns)
with its message, no weight file was read before the refusal (model loads are counted), and the files of the
finished runs it aimed at are byte-identical afterwards.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_world(root: Path) -> Path:
    """The tests' world (hhbench/fixtures.write_world) plus a causal LM with no score head, for the head check."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hhbench.fixtures import write_world

    write_world(root)
    AutoModelForCausalLM.from_pretrained(root / "base").save_pretrained(root / "causal_lm")
    AutoTokenizer.from_pretrained(root / "base").save_pretrained(root / "causal_lm")
    return root


def digest(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
            and ".lock" not in p.name}


class Battery:
    def __init__(self, root: Path) -> None:
        self.root, self.rows = root, []
        self.loads = 0

    def count_loads(self) -> None:
        """Every weight load (from_pretrained of a model class) bumps ``loads``."""
        import transformers

        for cls in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModel"):
            klass = getattr(transformers, cls)
            real = klass.from_pretrained.__func__

            def counted(c, *a, _real=real, **kw):
                self.loads += 1
                return _real(c, *a, **kw)

            klass.from_pretrained = classmethod(counted)

    def case(self, area: str, what: str, fn: Callable[[], Any], watch: tuple[Path, ...] = (),
             expect: str = "raise", runtime: bool = False) -> None:
        """``runtime``: a fault that can only show once models run (no 'before compute' to check)."""
        before = {p: digest(p) for p in watch if p.exists()}
        loads0 = self.loads
        message, ok = "", False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fn()
                warned = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
                message = ("(accepted) " + warned[-1]) if warned else "(accepted, no message)"
                ok = expect != "raise"
            except SystemExit as err:
                message, ok = str(err), expect == "raise"
            except Exception as err:  # the refusal under test
                message, ok = f"{type(err).__name__}: {err}", expect == "raise"
        lost = [str(p) for p, d in before.items() if not p.exists() or digest(p) != d]
        self.rows.append({"area": area, "input": what, "message": " ".join(message.split())[:230],
                          "before_compute": "n/a (runtime)" if runtime else ("yes" if self.loads == loads0 else "no"),
                          "nothing_lost": not lost, "as_expected": ok})

    def table(self) -> str:
        lines = ["| # | area | bad input or fault | message | before compute | nothing lost |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(self.rows, 1):
            msg = r["message"].replace("|", "\\\\|")
            flag = "" if r["as_expected"] else " **(unexpected)**"
            lines.append(f"| {i} | {r['area']} | {r['input']}{flag} | {msg} | {r['before_compute']} "
                         f"| {'yes' if r['nothing_lost'] else '**no**'} |")
        return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bad_inputs")
    args = ap.parse_args()
    import os

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    import yaml

    from hhbench.fixtures import write_ppo_config as make_config
    from rlhf.core.config import load_config
    from rlhf.evaluation.evaluate import evaluate, parse_args
    from rlhf.runtime.run import RunLock
    from rlhf.training.ppo import PPOTrainer, dry_run
    from rlhf.training.ppo_config import PPOConfig

    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    w = build_world(root / "world")
    b = Battery(root)
    t = root / "tmp"
    t.mkdir()

    def cfg(name: str, *over: str, **kw: Any):
        return load_config(PPOConfig, make_config(w, t / name, **kw), list(over))

    def yaml_file(name: str, text: bytes) -> Path:
        p = t / name
        p.write_bytes(text)
        return p

    # two finished runs that the data-loss cases aim at
    PPOTrainer(cfg("finished", total_steps=2, save_every=1)).train()
    from rlhf.training.reward import ScoreTrainConfig
    from rlhf.training.reward import train as train_rm

    rm_cfg = dict(model_name_or_path=str(w / "base"), output_dir=str(t / "rm_done"), max_steps=2,
                  micro_batch_size=8, precision="fp32", eval_every=100, wandb={"mode": "disabled"},
                  data={"path": str(w / "prompts.jsonl"), "schema": "pku_saferlhf", "max_length": 64})
    train_rm(load_config(ScoreTrainConfig, yaml_file("rm.yaml", yaml.safe_dump(rm_cfg).encode())))
    finished, rm_done = t / "finished", t / "rm_done"
    b.count_loads()

    # --- config values and files
    C = "config"
    b.case(C, "YAML syntax error", lambda: load_config(PPOConfig, yaml_file("a.yaml", b"ppo:\n  kl_coef: [0.1\n")))
    b.case(C, "config file not UTF-8", lambda: load_config(PPOConfig, yaml_file("b.yaml", b"actor_model: x # caf\xe9\n")))
    def yaml_1e3() -> None:
        path = make_config(w, t / "e")
        path.write_text(path.read_text().replace("actor_lr: 0.005", "actor_lr: 1e-3"))
        assert load_config(PPOConfig, path).ppo.actor_lr == 1e-3

    b.case(C, "`actor_lr: 1e-3` in YAML (a string to PyYAML)", yaml_1e3, expect="accept")
    b.case(C, "unknown key", lambda: cfg("c", "--ppo.lrr", "1"))
    b.case(C, "wrong type", lambda: cfg("c", "--total_steps", "abc"))
    b.case(C, "negative actor_lr (field named once)", lambda: cfg("c", "--ppo.actor_lr", "-1"))
    b.case(C, "negative max_grad_norm", lambda: cfg("c", "--ppo.max_grad_norm", "-1"))
    b.case(C, "negative weight_decay", lambda: cfg("c", "--ppo.weight_decay", "-0.1"))
    b.case(C, "negative warmup_steps", lambda: cfg("c", "--ppo.warmup_steps", "-3"))
    b.case(C, "objective max_length 0", lambda: cfg("c", "--objectives", "[{name: h, model: m, max_length: 0}]",
                                                     "--adapter.pref_dim", "1"))
    b.case(C, "adapter.pref_dim != number of objectives", lambda: cfg("c", "--adapter.pref_dim", "3"))
    b.case(C, "fixed preference off the simplex", lambda: cfg("c", "--preference.name", "fixed",
                                                               "--preference.value", "[0.5, 0.6]"))
    b.case(C, "micro_batch_size does not divide", lambda: cfg("c", "--micro_batch_size", "3"))
    b.case(C, "unknown aggregation", lambda: cfg("c", "--aggregation", "max"))
    b.case(C, "unknown generation backend", lambda: cfg("c", "--generation.backend", "vllm"))
    b.case(C, "merge_adapter under ZeRO-3 (--dry_run)", lambda: dry_run(cfg(
        "c", "--ds_config", "ds_configs/zero3.json", "--generation.merge_adapter", "true")))
    b.case(C, "compiled decode under ZeRO-3 (--dry_run)", lambda: dry_run(cfg(
        "c", "--ds_config", "ds_configs/zero3.json", "--generation.backend", "hf_static_compile")))
    b.case(C, "--overwrite with --resume_from", lambda: cfg("c", "--overwrite", "--resume_from", "latest"))
    b.case(C, "eval.every without eval.prompts", lambda: cfg("c", "--eval.every", "5"))
    b.case(C, "group_size does not divide the batch", lambda: cfg("c", "--advantage.name", "group",
                                                                   "--advantage.group_size", "3"))
    # --- paths, before anything is created or loaded
    P = "paths"
    for field, over in (("actor_model", {"actor_model": str(t / "no_actor")}),
                        ("tokenizer", {"tokenizer": str(t / "no_tok")}),
                        ("score model", {"objectives": [{"name": "h", "model": str(w / "rm")},
                                                        {"name": "c", "model": "./no_cm", "kind": "cost"}]}),
                        ("prompts file", {"prompts": {"path": str(t / "none.jsonl")}}),
                        ("ds_config", {"ds_config": str(t / "none.json")}),
                        ("ptx dataset", {"ptx": {"path": str(t / "none_ptx.jsonl"), "coef": 0.1}})):
        b.case(P, f"missing {field} (--dry_run)", lambda over=over: dry_run(cfg("p", **over)))
    b.case(P, "missing score model at trainer start", lambda: PPOTrainer(cfg("p", objectives=[
        {"name": "h", "model": str(w / "rm")}, {"name": "c", "model": str(t / "gone"), "kind": "cost"}])))
    # --- data
    D = "data"
    (t / "empty.jsonl").write_text("".join(json.dumps({"prompt": " "}) + "\n" for _ in range(8)))
    (t / "some_empty.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                                                ["How do I bake bread?", ""] * 8))
    (t / "latin1.jsonl").write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    (t / "null.jsonl").write_text(json.dumps({"prompt": "p", "chosen": None, "rejected": "b"}) + "\n")
    (t / "same.jsonl").write_text("".join(json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}) + "\n"
                                          for _ in range(4)))
    b.case(D, "prompt column missing", lambda: PPOTrainer(cfg("d", prompts={"prompt_column": "question"})))
    b.case(D, "every prompt empty", lambda: PPOTrainer(cfg("d", prompts={"path": str(t / "empty.jsonl")})))
    b.case(D, "some prompts empty", lambda: __import__("rlhf.data.datasets", fromlist=["x"]).prompt_column(
        __import__("rlhf.data.datasets", fromlist=["x"]).load_rows(str(t / "some_empty.jsonl")), "prompt", "f"),
        expect="accept")
    b.case(D, "data file not UTF-8", lambda: __import__("rlhf.data.datasets", fromlist=["x"]).load_rows(str(t / "latin1.jsonl")))
    from rlhf.data.datasets import load_rows
    from rlhf.data.pairs import build_pairs

    b.case(D, "null response in preference data", lambda: build_pairs(load_rows(str(t / "null.jsonl")), "generic",
                                                                      "reward", "null.jsonl"))
    b.case(D, "every pair identical", lambda: build_pairs(load_rows(str(t / "same.jsonl")), "generic", "reward",
                                                          "same.jsonl"))
    from hhbench.tiny import build_tokenizer

    build_tokenizer(vocab_size=1000).save_pretrained(t / "big_tok")
    b.case(D, "tokenizer larger than the embeddings", lambda: PPOTrainer(cfg("d", tokenizer=str(t / "big_tok"))))
    from rlhf.scoring.score_model import load_score_model

    b.case(D, "causal LM (num_labels=1) as score model", lambda: load_score_model(str(w / "causal_lm")),
           runtime=True)  # only the checkpoint's own tensors can show the missing head
    b.case(D, "max_prompt_length below the prompt layout", lambda: PPOTrainer(cfg("d", prompts={
        "max_prompt_length": 8})))
    from transformers import AutoTokenizer

    from rlhf.data.chat import format_prompt

    tok = AutoTokenizer.from_pretrained(w / "base")
    b.case(D, "chat prompt ending with an assistant turn", lambda: format_prompt(tok, [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]))
    # --- run directories and resume
    R = "run dir"
    b.case(R, "fresh PPO run into a finished run's output_dir", lambda: PPOTrainer(cfg("finished", total_steps=1)),
           watch=(finished,))
    b.case(R, "fresh reward-model run into a finished one", lambda: train_rm(load_config(
        ScoreTrainConfig, yaml_file("rm2.yaml", yaml.safe_dump(rm_cfg).encode()))), watch=(rm_done,))
    lock = RunLock(finished)
    lock.acquire()
    b.case(R, "a second process on a live run", lambda: PPOTrainer(cfg("finished", total_steps=3,
                                                                       resume_from="latest")), watch=(finished,))
    lock.release()
    b.case(R, "resume with a changed field", lambda: PPOTrainer(cfg("finished", "--ppo.kl_coef", "0.5",
                                                                    resume_from="latest")), watch=(finished,))
    fake = t / "fake"
    ck = fake / "checkpoints" / "step_00000002"
    ck.mkdir(parents=True)
    from rlhf.core.config import to_dict

    (ck / "trainer_state.json").write_text(json.dumps({"step": 2, "world_size": 4,
                                                       "config": to_dict(cfg("fake", resume_from="latest"))}))
    (fake / "checkpoints" / "latest").write_text(ck.name)
    b.case(R, "resume on another process count", lambda: PPOTrainer(cfg("fake", resume_from="latest")), watch=(fake,))
    b.case(R, "resume with no checkpoint", lambda: PPOTrainer(cfg("nothing", resume_from="latest")))
    torn = t / "torn"
    PPOTrainer(cfg("torn", total_steps=1, save_every=1)).train()
    (torn / "metrics.jsonl").write_text((torn / "metrics.jsonl").read_text() + '{"step": 2, "train/k')
    b.case(R, "torn last line in metrics.jsonl (kill mid-write)", lambda: PPOTrainer(cfg(
        "torn", total_steps=2, save_every=1, resume_from="latest")).train(), expect="accept", runtime=True)
    import rlhf.runtime.run as run_mod

    def full_disk() -> None:
        tr = PPOTrainer(cfg("disk", total_steps=3, save_every=1))
        tr.train_step()
        tr.save_checkpoint()
        real = run_mod.shutil.disk_usage
        run_mod.shutil.disk_usage = lambda p: collections.namedtuple("u", "total used free")(10**9, 10**9, 1000)
        try:
            tr.train_step()
            tr.save_checkpoint()
        finally:
            run_mod.shutil.disk_usage = real
            tr.run.close()

    b.case(R, "disk full at a checkpoint", full_disk, runtime=True)
    b.case(R, "--overwrite on a finished run (moved aside)", lambda: PPOTrainer(cfg(
        "finished", overwrite=True, total_steps=1)), expect="accept", runtime=True)
    # --- evaluation
    E = "evaluation"
    from rlhf.evaluation.compare import compare

    b.case(E, "--grid 0", lambda: parse_args(["--run", "x", "--grid", "0"]))
    b.case(E, "--n_prompts 0", lambda: parse_args(["--run", "x", "--n_prompts", "0"]))
    prefs = yaml_file("prefs.json", b"[[0.2, 0.3, 0.5]]")
    b.case(E, "preference of the wrong length", lambda: evaluate(parse_args(["--run", str(torn), "--preferences",
                                                                              str(prefs), "--no_wandb"])))
    b.case(E, "malformed preferences JSON", lambda: __import__("rlhf.evaluation.front", fromlist=["x"]).load_preferences(
        parse_args(["--run", "x", "--preferences", str(yaml_file("bad.json", b"[[0.5,"))]), 2))
    b.case(E, "a directory that is no finished run", lambda: evaluate(parse_args(["--run", str(t)])))
    nan_front = yaml_file("nan.json", json.dumps({"method": "a", "objectives": ["x", "y"], "preferences": [[1, 0]],
                                                   "points": [[float("nan"), 1.0]]}).encode())
    b.case(E, "compare_fronts with a NaN point", lambda: compare([str(nan_front)], str(t / "cmp")))
    other = yaml_file("other.json", json.dumps({"method": "b", "objectives": ["x", "z"], "preferences": [[1, 0]],
                                                "points": [[1.0, 1.0]]}).encode())
    ok_front = yaml_file("ok.json", json.dumps({"method": "a", "objectives": ["x", "y"], "preferences": [[1, 0]],
                                                "points": [[1.0, 1.0]]}).encode())
    b.case(E, "fronts with other objectives", lambda: compare([str(ok_front), str(other)], str(t / "cmp2")))
    from rlhf.evaluation.front import _FiniteMeans

    def nan_all() -> None:
        _FiniteMeans()(np.full((3, 2), np.nan), "oracle", [1.0, 0.0])

    b.case(E, "a scorer returning NaN everywhere", nan_all)

    def nan_some() -> None:
        m = _FiniteMeans()
        m(np.array([[1.0, 1.0], [np.nan, 1.0]]), "oracle", [1.0, 0.0])
        m.warn()

    b.case(E, "a scorer returning NaN for some responses", nan_some, expect="accept")
    from transformers import AutoModelForCausalLM

    from rlhf.adapter.svd_lora import SVDLoRAConfig, apply_svd_lora, load_adapter, save_adapter

    def other_base() -> None:
        model = apply_svd_lora(AutoModelForCausalLM.from_pretrained(w / "base"), SVDLoRAConfig(rank=2, pref_dim=2))
        save_adapter(model, t / "adapter")
        other_model = AutoModelForCausalLM.from_pretrained(w / "base")
        with torch.no_grad():
            for p in other_model.parameters():
                p.add_(0.01)
        load_adapter(other_model, t / "adapter")

    b.case(E, "adapter loaded onto other base weights of the same shapes", other_base, runtime=True)
    from rlhf.runtime.engine import placement

    b.case(E, "--device cuda on a machine without one", lambda: placement("cuda", "auto"))
    # --- W&B and the running PPO
    import os as _os

    from rlhf.runtime.tracking import WandbConfig, resolve_mode

    def no_key() -> None:
        saved = {k: _os.environ.pop(k, None) for k in ("WANDB_API_KEY", "WANDB_MODE")}
        _os.environ["NETRC"] = str(t / "no_netrc")
        try:
            assert resolve_mode(WandbConfig(mode="online")) == "offline"
        finally:
            _os.environ.update({k: v for k, v in saved.items() if v is not None})

    b.case("W&B", "mode online without an API key", no_key, expect="accept")

    def unreachable() -> None:
        saved = {k: _os.environ.get(k) for k in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE")}
        _os.environ.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
        _os.environ.pop("WANDB_MODE", None)
        try:
            assert resolve_mode(WandbConfig(mode="online")) == "offline"
        finally:
            for k, v in saved.items():
                _os.environ.pop(k, None) if v is None else _os.environ.__setitem__(k, v)

    b.case("W&B", "mode online, W&B unreachable", unreachable, expect="accept")

    def nan_scores() -> None:
        tr = PPOTrainer(cfg("nan", max_bad_batches=1))
        tr.scorer.raw = lambda p, r: torch.stack([torch.zeros(len(p)), torch.full((len(p),), float("nan"))], 1)
        tr.train()

    b.case("PPO", "a score model returning NaN", nan_scores, runtime=True)
    # --- serving
    from rlhf.serving.server import ServeConfig, parse_request

    names, scfg = ["helpful", "harmless"], ServeConfig(run="x", max_tokens_cap=32, default_max_tokens=16)
    msg = [{"role": "user", "content": "Hi"}]
    for what, body in (("preference of the wrong length", {"preference": [1.0]}),
                       ("negative preference", {"preference": [1.5, -0.5]}),
                       ("preference not summing to 1", {"preference": [0.5, 0.6]}),
                       ("NaN preference", {"preference": [float("nan"), 0.5]}),
                       ("unknown objective name", {"preference": {"helpful": 1.0, "funny": 0.0}}),
                       ("max_tokens above the cap", {"max_tokens": 1000}),
                       ("empty message list", {"messages": []})):
        b.case("serving", what, lambda body=body: parse_request({"messages": msg, **body}, names, scfg))
    print(b.table())
    (root / "bad_inputs.json").write_text(json.dumps(b.rows, indent=2))


if __name__ == "__main__":
    main()
