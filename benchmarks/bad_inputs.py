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
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

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

    def case(self, area: str, what: str, fn: Callable[[], Any], match: Optional[str], watch: tuple[Path, ...] = (),
             expect: str = "raise", runtime: bool = False) -> None:
        """One bad input. ``match``: a regex the message of the check this row exists for must contain (a refusal's
        text, or for ``expect="accept"`` the warning it prints; None: accepted with no message). A row passes only
        with that message: some other error (a lock, a different check) is **unexpected**. ``runtime``: a fault
        that can only show once models run (no 'before compute' to check)."""
        before = {p: digest(p) for p in watch if p.exists()}
        loads0 = self.loads
        message, raised = "", False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fn()
                warned = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
                hit = [m for m in warned if match and re.search(match, m)]
                message = ("(accepted) " + (hit or warned)[-1]) if warned else "(accepted, no message)"
            except SystemExit as err:
                message, raised = str(err), True
            except Exception as err:  # the refusal under test
                message, raised = f"{type(err).__name__}: {err}", True
        if expect == "raise":
            ok = raised and match is not None and re.search(match, message) is not None
        else:
            ok = not raised and (match is None or re.search(match, message) is not None)
        lost = [str(p) for p, d in before.items() if not p.exists() or digest(p) != d]
        self.rows.append({"area": area, "input": what, "message": " ".join(message.split())[:230],
                          "before_compute": "n/a (runtime)" if runtime else ("yes" if self.loads == loads0 else "no"),
                          "nothing_lost": not lost, "as_expected": ok, "expected": match})

    def table(self) -> str:
        lines = ["| # | area | bad input or fault | message | before compute | nothing lost |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(self.rows, 1):
            msg = r["message"].replace("|", "\\\\|")
            flag = "" if r["as_expected"] else " **(unexpected)**"
            lines.append(f"| {i} | {r['area']} | {r['input']}{flag} | {msg} | {r['before_compute']} "
                         f"| {'yes' if r['nothing_lost'] else '**no**'} |")
        return "\n".join(lines)


def _try(fn: Callable[[], Any]) -> None:
    """Run ``fn`` and swallow its exception (the first of two attempts)."""
    try:
        fn()
    except Exception:
        pass


def one_column(prompts: Any, responses: Any) -> Any:
    """An extra scorer of one column (for a two-objective run: the wrong width)."""
    import numpy as np

    return np.array([[len(r.split())] for r in responses], float)


def one_objective(w: Path, out: Path, cfg: Callable[..., Any]) -> None:
    """D = 1 through every command: PPO (with its front), evaluate, compare, plot, export and a serving request."""
    import rlhf.compare_fronts as compare_cli
    import rlhf.evaluate as evaluate_cli
    import rlhf.export as export_cli
    import rlhf.plot_training as plot_cli
    from rlhf.serving.server import ServeConfig, parse_request
    from rlhf.training.ppo import PPOTrainer

    run = out / "run"
    out.mkdir(parents=True, exist_ok=True)
    PPOTrainer(cfg(str(run.relative_to(out.parent)), objectives=[{"name": "helpful", "model": str(w / "rm")}],
                   adapter={"rank": 4, "pref_dim": 1}, total_steps=2,
                   eval={"every": 1, "prompts": str(w / "prompts.jsonl"), "n_prompts": 4})).train()
    evaluate_cli.main(["--run", str(run), "--prompts", str(w / "prompts.jsonl"), "--n_prompts", "4", "--no_wandb"])
    compare_cli.main([str(run / "eval" / "pareto.json"), "--out", str(out / "cmp")])
    plot_cli.main([str(run)])
    export_cli.main(["--run", str(run), "--grid", "0.5", "--out", str(out / "grid")])
    parse_request({"messages": [{"role": "user", "content": "hi"}]}, ["helpful"], ServeConfig(run="x"))


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
    import os

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
    PPOTrainer(cfg("finished_again", total_steps=2, save_every=1)).train()  # aimed at by evaluation and export
    finished_again = t / "finished_again"
    b.count_loads()

    # --- config values and files
    C = "config"
    b.case(C, "YAML syntax error", lambda: load_config(PPOConfig, yaml_file("a.yaml", b"ppo:\n  kl_coef: [0.1\n")),
           r"a.yaml' line \d+, column \d+: YAML syntax error")
    b.case(C, "config file not UTF-8", lambda: load_config(PPOConfig, yaml_file("b.yaml", b"actor_model: x # caf\xe9\n")),
           r"b.yaml' line 1 is not UTF-8 \(byte 0xe9\); save it as UTF-8")

    def yaml_1e3() -> None:
        path = make_config(w, t / "e")
        path.write_text(path.read_text().replace("actor_lr: 0.005", "actor_lr: 1e-3"))
        assert load_config(PPOConfig, path).ppo.actor_lr == 1e-3

    b.case(C, "`actor_lr: 1e-3` in YAML (a string to PyYAML)", yaml_1e3, None, expect="accept")
    b.case(C, "unknown key", lambda: cfg("c", "--ppo.lrr", "1"), r"unknown config key\(s\) \['ppo.lrr'\]")
    b.case(C, "wrong type", lambda: cfg("c", "--total_steps", "abc"), r"'total_steps': expected an integer, got 'abc'")
    b.case(C, "negative actor_lr (field named once)", lambda: cfg("c", "--ppo.actor_lr", "-1"),
           r"config field 'ppo.actor_lr': actor_lr and critic_lr must be > 0")
    b.case(C, "negative max_grad_norm", lambda: cfg("c", "--ppo.max_grad_norm", "-1"), r"'ppo.max_grad_norm': must be > 0")
    b.case(C, "negative weight_decay", lambda: cfg("c", "--ppo.weight_decay", "-0.1"), r"'ppo.weight_decay': must be >= 0")
    b.case(C, "negative warmup_steps", lambda: cfg("c", "--ppo.warmup_steps", "-3"), r"'ppo.warmup_steps': must be >= 0")
    b.case(C, "objective max_length 0", lambda: cfg("c", "--objectives", "[{name: h, model: m, max_length: 0}]",
                                                     "--adapter.pref_dim", "1"),
           r"'objectives\[0\].max_length': must be >= 1 token or null")
    b.case(C, "adapter.pref_dim != number of objectives", lambda: cfg("c", "--adapter.pref_dim", "3"),
           r"'adapter.pref_dim': is 3 but 2 objectives are configured")
    b.case(C, "fixed preference off the simplex", lambda: cfg("c", "--preference.name", "fixed",
                                                               "--preference.value", "[0.5, 0.6]"),
           r"'preference.value': entries must sum to 1, got \[0.5, 0.6\]")
    b.case(C, "micro_batch_size does not divide", lambda: cfg("c", "--micro_batch_size", "3"),
           r"'micro_batch_size': must divide mini_batch_size \(4\), got 3")
    b.case(C, "unknown aggregation", lambda: cfg("c", "--aggregation", "max"),
           r"'aggregation.name': unknown aggregation 'max'; must be one of \['ls', 'stche', 'tche'\]")
    b.case(C, "unknown generation backend", lambda: cfg("c", "--generation.backend", "vllm2"),
           r"'generation.backend.name': unknown generation backend 'vllm2'")
    b.case(C, "merge_adapter under ZeRO-3 (--dry_run)", lambda: dry_run(cfg(
        "c", "--ds_config", "ds_configs/zero3.json", "--generation.merge_adapter", "true")),
        r"'generation.merge_adapter': needs ZeRO stage 0-2 \(ds_configs/zero3.json is stage 3")
    b.case(C, "compiled decode under ZeRO-3 (--dry_run)", lambda: dry_run(cfg(
        "c", "--ds_config", "ds_configs/zero3.json", "--generation.backend", "hf_static_compile")),
        r"'generation.backend': 'hf_static_compile' needs ZeRO stage 0-2 \(ds_configs/zero3.json is stage 3\)")
    b.case(C, "--overwrite with --resume_from", lambda: cfg("c", "--overwrite", "--resume_from", "latest"),
           r"'overwrite': cannot be combined with resume_from")
    b.case(C, "eval.every without eval.prompts", lambda: cfg("c", "--eval.every", "5"),
           r"'eval.prompts': is required when eval.every > 0")
    b.case(C, "group_size does not divide the batch", lambda: cfg("c", "--advantage", "group",
                                                                   "--advantage.group_size", "3"),
           r"'advantage.group_size': must divide rollout_batch_size \(4")
    # round 2: what reads two ways
    dup = make_config(w, t / "dup")
    dup.write_text(dup.read_text() + "seed: 3\n")
    b.case(C, "a key given twice in one YAML mapping", lambda: load_config(PPOConfig, dup),
           r"config key 'seed' appears twice in one mapping \(lines \d+ and \d+\); keep one")
    b.case(C, "`run_name: no` (YAML reads a boolean)", lambda: cfg("c", "--wandb.run_name", "no"),
           r"'wandb.run_name': expected a string, got the boolean False .*quote it")
    b.case(C, "a scalar given twice on the command line", lambda: cfg("c", "--seed", "1", "--seed", "2"),
           r"--seed given 2 times \(1, 2\): using the last, 2", expect="accept")
    b.case(C, "a field of another variant (group_size with gae)", lambda: cfg("c", "--advantage.group_size", "2"),
           r"unknown config key\(s\) \['advantage.group_size'\] for advantage estimator 'gae'")
    b.case(C, "mu with tche (stche's field)", lambda: cfg("c", "--aggregation", "tche", "--aggregation.mu", "0.5"),
           r"unknown config key\(s\) \['aggregation.mu'\] for aggregation 'tche'")
    b.case(C, "objectives that name no source of scores, in PPO", lambda: cfg("c", "--objectives", "[helpful, harmless]"),
           r"'objectives\[0\]': objective 'helpful' names no source of scores")
    # --- paths, before anything is created or loaded
    P = "paths"
    for field, over, msg in (
            ("actor_model", {"actor_model": str(t / "no_actor")}, r"'actor_model': no such directory"),
            ("tokenizer", {"tokenizer": str(t / "no_tok")}, r"'tokenizer': no such directory"),
            ("score model", {"objectives": [{"name": "h", "model": str(w / "rm")},
                                            {"name": "c", "model": "./no_cm", "kind": "cost"}]},
             r"'objectives\[1\].model': no such directory: './no_cm'"),
            ("prompts file", {"prompts": {"path": str(t / "none.jsonl")}}, r"'prompts.path': no such file or directory"),
            ("ds_config", {"ds_config": str(t / "none.json")}, r"'ds_config': no such file"),
            ("ptx dataset", {"ptx": {"path": str(t / "none_ptx.jsonl"), "coef": 0.1}}, r"'ptx.path': no such file")):
        b.case(P, f"missing {field} (--dry_run)", lambda over=over: dry_run(cfg("p", **over)), msg)
    b.case(P, "missing score model at trainer start", lambda: PPOTrainer(cfg("p", objectives=[
        {"name": "h", "model": str(w / "rm")}, {"name": "c", "model": str(t / "gone"), "kind": "cost"}])),
        r"'objectives\[1\].model': no such directory: '.*gone'")
    # --- data
    D = "data"
    (t / "empty.jsonl").write_text("".join(json.dumps({"prompt": " "}) + "\n" for _ in range(8)))
    (t / "some_empty.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                                                ["How do I bake bread?", ""] * 8))
    (t / "latin1.jsonl").write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    (t / "null.jsonl").write_text(json.dumps({"prompt": "p", "chosen": None, "rejected": "b"}) + "\n")
    (t / "same.jsonl").write_text("".join(json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}) + "\n"
                                          for _ in range(4)))
    from rlhf.data.datasets import load_rows, prompt_column
    from rlhf.data.pairs import build_pairs

    b.case(D, "prompt column missing", lambda: PPOTrainer(cfg("d", prompts={"prompt_column": "question"})),
           r"lacks column\(s\) \['question'\]; it has .* set prompts.prompt_column")
    b.case(D, "every prompt empty", lambda: PPOTrainer(cfg("d", prompts={"path": str(t / "empty.jsonl")})),
           r"every one of its 8 prompts in column 'prompt' is empty")
    b.case(D, "some prompts empty", lambda: prompt_column(load_rows(str(t / "some_empty.jsonl")), "prompt", "f"),
           r"dropped 8 of 16 empty prompts", expect="accept")
    b.case(D, "data file not UTF-8", lambda: load_rows(str(t / "latin1.jsonl")),
           r"latin1.jsonl' line 2 is not UTF-8 \(byte 0xe9")
    b.case(D, "null response in preference data", lambda: build_pairs(load_rows(str(t / "null.jsonl")), "generic",
                                                                      "reward", "null.jsonl"),
           r"row 0: column 'chosen' is null")
    b.case(D, "every pair identical", lambda: build_pairs(load_rows(str(t / "same.jsonl")), "generic", "reward",
                                                          "same.jsonl"),
           r"same.jsonl.*(identical|no usable)")
    from hhbench.tiny import build_tokenizer

    build_tokenizer(vocab_size=1000).save_pretrained(t / "big_tok")
    b.case(D, "tokenizer larger than the embeddings", lambda: PPOTrainer(cfg("d", tokenizer=str(t / "big_tok"))),
           r"its tokenizer has \d+ tokens but the model's embeddings hold \d+")
    from rlhf.scoring.score_model import load_score_model

    b.case(D, "causal LM as score model", lambda: load_score_model(str(w / "causal_lm")),
           r"is a LlamaForCausalLM, not a trained score model: it has no score head")
    b.case(D, "max_prompt_length below the prompt layout", lambda: PPOTrainer(cfg("d", prompts={
        "max_prompt_length": 8})), r"max_prompt_length 8 is shorter than the prompt layout itself")
    from transformers import AutoTokenizer

    from rlhf.data.chat import format_prompt

    tok = AutoTokenizer.from_pretrained(w / "base")
    b.case(D, "chat prompt ending with an assistant turn", lambda: format_prompt(tok, [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        r"a chat prompt must end with a user turn")
    # round 2: columns of other types and shapes, every kind of empty, torn lines, templates that refuse
    (t / "torn.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c\n')
    b.case(D, "a torn JSONL line", lambda: load_rows(str(t / "torn.jsonl")),
           r"torn.jsonl' line 3 is not valid JSON \(.*\): '\{\"prompt\": \"c'")
    (t / "listline.jsonl").write_text('{"prompt": "a"}\n["b"]\n')
    b.case(D, "a JSONL line that is a list", lambda: load_rows(str(t / "listline.jsonl")),
           r"line 2 is a JSON list, not an object of columns")
    for what, value, msg in (("numbers", 7, r"row 1: column 'prompt' holds a int"),
                             ("objects", {"text": "hi"}, r"row 1: column 'prompt' holds a dict"),
                             ("lists that are no chat", [1, 2], r"row 1: column 'prompt' holds a list that is not a chat")):
        f = t / f"odd_{len(what)}.jsonl"
        f.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": value}) + "\n")
        b.case(D, f"a prompt column holding {what}", lambda f=f: prompt_column(load_rows(str(f)), "prompt", "odd"),
               msg)
    (t / "kinds.jsonl").write_text("".join(json.dumps({"prompt": v}) + "\n" for v in
                                           [None, "", "  ", [], [{"role": "user", "content": " "}], "kept"]))
    b.case(D, "every kind of empty prompt (null, blank, [], blank chat)",
           lambda: prompt_column(load_rows(str(t / "kinds.jsonl")), "prompt", "kinds"),
           r"dropped 5 of 6 empty prompts .*rows \[0, 1, 2, 3, 4\]", expect="accept")
    from rlhf.training.sft import SFTData, SFTDataConfig

    b.case(D, "an SFT target that is a number", lambda: SFTData([{"prompt": "p", "response": 42}],
                                                                SFTDataConfig(path="d.jsonl"), tok, numbers=[5]),
           r"'d.jsonl' row 5, column 'response': a response must be a string, got a int")
    strict = AutoTokenizer.from_pretrained(w / "base")
    strict.chat_template = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]"
                            "['role'] %}{{ raise_exception('roles must alternate') }}{% endif %}{{ m['role'] }}: "
                            "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    strict.save_pretrained(t / "strict_tok")
    (t / "chats.jsonl").write_text("".join(json.dumps({"prompt": c}) + "\n" for c in
                                           [[{"role": "user", "content": "How do I bake bread?"}]] * 6 +
                                           [[{"role": "user", "content": "Hi"}, {"role": "user", "content": "x"}]]))
    b.case(D, "a chat the policy's template refuses (roles must alternate)", lambda: PPOTrainer(cfg(
        "d", tokenizer=str(t / "strict_tok"), prompts={"path": str(t / "chats.jsonl")})),
        r"chats.jsonl' row 6: the chat template of tokenizer '.*strict_tok' refused the conversation")
    shutil.copytree(w / "rm", t / "strict_rm")
    for f in (t / "strict_tok").iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special")):
            shutil.copy(f, t / "strict_rm" / f.name)
    (t / "alt.jsonl").write_text("".join(json.dumps({"prompt": c}) + "\n" for c in
                                         [[{"role": "user", "content": "How?"}]] * 6 +
                                         [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                           {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]]))
    b.case(D, "a chat a score model's template refuses", lambda: PPOTrainer(cfg(
        "d", prompts={"path": str(t / "alt.jsonl"), "max_prompt_length": 200},
        objectives=[{"name": "h", "model": str(t / "strict_rm")}, {"name": "c", "model": str(w / "cm"), "kind": "cost"}])),
        r"alt.jsonl' row 6, as objectives\[0\].model reads it: the chat template of tokenizer .* refused")
    b.case(D, "prompt + new tokens beyond the actor's positions", lambda: PPOTrainer(cfg(
        "d", prompts={"max_prompt_length": 200}, generation={"max_new_tokens": 100})),
        r"'prompts.max_prompt_length \+ generation.max_new_tokens': 300 tokens, but actor_model .* reads at most 256")
    b.case(D, "an objective's max_length beyond its score model", lambda: PPOTrainer(cfg("d", objectives=[
        {"name": "h", "model": str(w / "rm"), "max_length": 512}, {"name": "c", "model": str(w / "cm"), "kind": "cost"}])),
        r"'objectives\[0\].max_length': 512 tokens, but objectives\[0\].model .* reads at most 256")
    # --- run directories and resume
    R = "run dir"
    b.case(R, "fresh PPO run into a finished run's output_dir", lambda: PPOTrainer(cfg("finished", total_steps=1)),
           r"already holds a run .*--resume_from latest, or pass --overwrite", watch=(finished,))
    b.case(R, "fresh reward-model run into a finished one", lambda: train_rm(load_config(
        ScoreTrainConfig, yaml_file("rm2.yaml", yaml.safe_dump(rm_cfg).encode()))),
        r"already holds a run", watch=(rm_done,))
    lock = RunLock(finished)
    lock.acquire()
    b.case(R, "a second process on a live run", lambda: PPOTrainer(cfg("finished", total_steps=3,
                                                                       resume_from="latest")),
           r"is in use by pid \d+", watch=(finished,))
    lock.release()
    b.case(R, "resume with a changed field", lambda: PPOTrainer(cfg("finished", "--ppo.kl_coef", "0.5",
                                                                    resume_from="latest")),
           r"Fields that differ \(checkpoint -> now\): ppo.kl_coef: 0.02 -> 0.5", watch=(finished,))
    fake = t / "fake"
    ck = fake / "checkpoints" / "step_00000002"
    ck.mkdir(parents=True)
    from rlhf.core.config import to_dict

    (ck / "trainer_state.json").write_text(json.dumps({"step": 2, "world_size": 4,
                                                       "config": to_dict(cfg("fake", resume_from="latest"))}))
    (fake / "checkpoints" / "latest").write_text(ck.name)
    b.case(R, "resume on another process count", lambda: PPOTrainer(cfg("fake", resume_from="latest")),
           r"was written by 4 processes but 1 were launched", watch=(fake,))
    b.case(R, "resume with no checkpoint", lambda: PPOTrainer(cfg("nothing", resume_from="latest")),
           r"--resume_from latest: no checkpoint in .* \(nothing was saved yet\)")
    torn = t / "torn"
    PPOTrainer(cfg("torn", total_steps=1, save_every=1)).train()
    (torn / "metrics.jsonl").write_text((torn / "metrics.jsonl").read_text() + '{"step": 2, "train/k')
    b.case(R, "torn last line in metrics.jsonl (kill mid-write)", lambda: PPOTrainer(cfg(
        "torn", total_steps=2, save_every=1, resume_from="latest")).train(), r"dropped a torn last line",
        expect="accept", runtime=True)
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

    b.case(R, "disk full at a checkpoint", full_disk, r"no space left on .*: need ~[\d.]+ MB for a checkpoint",
           runtime=True)
    b.case(R, "--overwrite on a finished run (moved aside)", lambda: PPOTrainer(cfg(
        "finished", overwrite=True, total_steps=1)).run.close(), None, expect="accept", runtime=True)
    # round 2: broken files, processes, what changed under a resume
    run2 = t / "run2"
    PPOTrainer(cfg("run2", total_steps=2, save_every=1, keep_last=3)).train()
    ck2 = run2 / "checkpoints"

    def truncate(f: Path) -> None:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def fall_back() -> None:
        tr = PPOTrainer(cfg("run2", total_steps=3, save_every=1, keep_last=3, resume_from="latest"))
        tr.run.close()

    truncate(next((ck2 / "step_00000002").rglob("*.pt")))
    b.case(R, "latest checkpoint truncated: resume falls back to the previous", fall_back,
           r"step_00000002 is broken \(.*truncated.*\); resuming from .*step_00000001", expect="accept", runtime=True)
    b.case(R, "a truncated checkpoint named explicitly", lambda: PPOTrainer(cfg(
        "run2", total_steps=3, resume_from=str(ck2 / "step_00000002"))),
        r"step_00000002 cannot be resumed: .* has \d+ bytes, the manifest says \d+ \(truncated")
    zero = ck2 / "step_00000001" / "trainer_state.json"
    zero.write_bytes(b"\0" * zero.stat().st_size)
    b.case(R, "every checkpoint broken (one truncated, one zeroed)", lambda: PPOTrainer(cfg(
        "run2", total_steps=3, resume_from="latest")),
        r"no checkpoint in .* verifies: step_00000002: .*; step_00000001: trainer_state.json does not match its checksum")
    legacy = t / "legacy"
    PPOTrainer(cfg("legacy", total_steps=1, save_every=1)).train()
    lck = legacy / "checkpoints" / "step_00000001"
    (lck / "manifest.json").unlink()
    (lck / "trainer_state.json").write_text((lck / "trainer_state.json").read_text()[:30])
    b.case(R, "a torn trainer_state.json (checkpoint without manifest)", lambda: PPOTrainer(cfg(
        "legacy", total_steps=2, resume_from="latest")), r"trainer_state.json is not valid JSON \(truncated\?\)")
    PPOTrainer(cfg("done2", total_steps=1, save_every=1)).train()
    b.case(R, "a finished run given --resume_from latest", lambda: PPOTrainer(cfg(
        "done2", total_steps=1, resume_from="latest")),
        r"is at step 1 and total_steps gives 1 steps: the run is finished, there is nothing to resume")
    moving = t / "moving_prompts.jsonl"
    shutil.copy(w / "prompts.jsonl", moving)
    PPOTrainer(cfg("changed", total_steps=1, save_every=1, prompts={"path": str(moving)})).train()
    lines = moving.read_text().splitlines()
    moving.write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    b.case(R, "the prompts file changed at the same path, then resumed", lambda: PPOTrainer(cfg(
        "changed", total_steps=2, resume_from="latest", prompts={"path": str(moving)})),
        r"prompts.path '.*moving_prompts.jsonl' changed since checkpoint")
    def retry() -> None:  # the second attempt must meet the same data error, not the first attempt's lock
        _try(lambda: PPOTrainer(cfg("retry", prompts={"prompt_column": "question"})))
        PPOTrainer(cfg("retry", "--overwrite", prompts={"prompt_column": "question"}))

    b.case(R, "a trainer that failed to build, retried in the same process", retry,
           r"lacks column\(s\) \['question'\]")
    held = PPOTrainer(cfg("held", total_steps=1))
    b.case(R, "a second trainer on a run this same process holds", lambda: PPOTrainer(cfg("held", "--overwrite")),
           r"It is this very process: an earlier trainer built here still holds the run")
    held.run.close()
    here = Path.cwd()
    os.chdir(t / "held")
    try:
        b.case(R, "--overwrite --output_dir .", lambda: PPOTrainer(cfg(
            "dot", "--overwrite", "--output_dir", ".", "--ds_config", str(ROOT / "ds_configs" / "zero2.json"))),
            r"--overwrite with output_dir '\.': that is the current directory")
    finally:
        os.chdir(here)
    # --- evaluation
    E = "evaluation"
    from rlhf.evaluation.compare import compare

    b.case(E, "--grid 0", lambda: parse_args(["--run", "x", "--grid", "0"]), r"'grid': must divide 1")
    b.case(E, "--n_prompts 0", lambda: parse_args(["--run", "x", "--n_prompts", "0"]), r"'n_prompts': must be >= 1")
    prefs = yaml_file("prefs.json", b"[[0.2, 0.3, 0.5]]")
    b.case(E, "preference of the wrong length", lambda: evaluate(parse_args(["--run", str(torn), "--preferences",
                                                                              str(prefs), "--no_wandb"])),
           r"preference #0 \[0.2, 0.3, 0.5\]: preference has 3 entries but the adapter has pref_dim=2")
    b.case(E, "malformed preferences JSON", lambda: __import__("rlhf.evaluation.front", fromlist=["x"]).load_preferences(
        parse_args(["--run", "x", "--preferences", str(yaml_file("bad.json", b"[[0.5,"))]), 2),
        r"cannot read preferences file .*bad.json")
    b.case(E, "a directory that is no finished run", lambda: evaluate(parse_args(["--run", str(t)])),
           r"is not a finished run: .* lacks \['adapter_model.safetensors'")
    nan_front = yaml_file("nan.json", json.dumps({"method": "a", "objectives": ["x", "y"], "preferences": [[1, 0]],
                                                   "points": [[float("nan"), 1.0]]}).encode())
    b.case(E, "compare_fronts with a NaN point", lambda: compare([str(nan_front)], str(t / "cmp")),
           r"points \[0\] scored by the score models are NaN/inf")
    other = yaml_file("other.json", json.dumps({"method": "b", "objectives": ["x", "z"], "preferences": [[1, 0]],
                                                "points": [[1.0, 1.0]]}).encode())
    ok_front = yaml_file("ok.json", json.dumps({"method": "a", "objectives": ["x", "y"], "preferences": [[1, 0]],
                                                "points": [[1.0, 1.0]]}).encode())
    b.case(E, "fronts with other objectives", lambda: compare([str(ok_front), str(other)], str(t / "cmp2")),
           r"has objectives \['x', 'z'\] but .* has \['x', 'y'\]")
    from rlhf.evaluation.front import _FiniteMeans

    def nan_all() -> None:
        _FiniteMeans()(np.full((3, 2), np.nan), "oracle", [1.0, 0.0])

    b.case(E, "a scorer returning NaN everywhere", nan_all, r"scorer 'oracle' gave NaN/inf scores for every response")

    def nan_some() -> None:
        m = _FiniteMeans()
        m(np.array([[1.0, 1.0], [np.nan, 1.0]]), "oracle", [1.0, 0.0])
        m.warn()

    b.case(E, "a scorer returning NaN for some responses", nan_some, r"gave NaN/inf scores for 1 of 2", expect="accept")
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

    b.case(E, "adapter loaded onto other base weights of the same shapes", other_base,
           r"was trained on other base weights than this model's", runtime=True)
    from rlhf.runtime.engine import placement

    b.case(E, "--device cuda on a machine without one", lambda: placement("cuda", "auto"),
           r"no CUDA GPU is available; pass --device cpu")
    # round 2: outputs never land inside what was read; broken adapters named
    ck_eval = finished_again / "checkpoints" / "step_00000001"
    common = ["--prompts", str(w / "prompts.jsonl"), "--n_prompts", "4", "--grid", "0.5", "--max_new_tokens", "4",
              "--no_wandb"]
    b.case(E, "evaluate a checkpoint (default output beside it, not inside)", lambda: evaluate(parse_args(
        ["--run", str(ck_eval), *common])) and None, None, expect="accept", watch=(ck_eval,), runtime=True)
    b.case(E, "evaluate --out inside a checkpoint", lambda: evaluate(parse_args(
        ["--run", str(ck_eval), *common, "--out", str(ck_eval / "eval")])), r"is a checkpoint", watch=(ck_eval,))
    b.case(E, "evaluate --out inside the run's policy", lambda: evaluate(parse_args(
        ["--run", str(finished_again), *common, "--out", str(finished_again / "policy" / "eval")])),
        r"is a saved policy", watch=(finished_again / "policy",))
    from rlhf.serving.export import export

    b.case(E, "export --out the run's own policy", lambda: export(str(finished_again), str(finished_again / "policy"),
                                                                "peft", "0.5,0.5"),
           r"--out .*policy: .* is a saved policy", watch=(finished_again / "policy",))
    (t / "taken").mkdir()
    (t / "taken" / "mine.txt").write_text("mine")
    b.case(E, "export into an existing directory", lambda: export(str(finished_again), str(t / "taken"), "peft",
                                                                  "0.5,0.5"),
           r"--out .*taken already exists; pass --overwrite", watch=(t / "taken",))
    b.case(E, "export --preference 0.6,0.5 (before the model loads, in the user's numbers)", lambda: export(
        str(finished_again), str(t / "x1"), "peft", "0.6,0.5"), r"--preference '0.6,0.5' sums to 1.1")
    b.case(E, "export --preference a,b", lambda: export(str(finished_again), str(t / "x2"), "peft", "a,b"),
           r"--preference 'a,b': write 2 comma-separated numbers")
    broken = t / "broken"
    shutil.copytree(finished_again, broken, ignore=shutil.ignore_patterns(".lock"))
    wfile = broken / "policy" / "adapter_model.safetensors"
    wfile.write_bytes(wfile.read_bytes()[:-64])
    from rlhf.adapter.policy import load_run_model

    for what, fn in (("evaluate", lambda: evaluate(parse_args(["--run", str(broken), *common]))),
                     ("export", lambda: export(str(broken), str(t / "x3"), "peft", "0.5,0.5")),
                     ("serve (the run loader)", lambda: load_run_model(broken))):
        b.case(E, f"{what} on a truncated adapter", fn,
               r"adapter_model.safetensors: it has \d+ bytes but its header describes \d+ \(truncated")
    b.case(E, "an extra scorer of the wrong width", lambda: evaluate(parse_args(
        ["--run", str(finished_again), *common, "--out", str(t / "wide"),
         "--scorer", "words=benchmarks.bad_inputs:one_column"])),
        r"extra scorer 'words' returned shape \(2, 1\) for 2 responses")
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

    b.case("W&B", "mode online without an API key", no_key, r"no W&B API key is configured", expect="accept")

    def unreachable() -> None:
        saved = {k: _os.environ.get(k) for k in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE")}
        _os.environ.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
        _os.environ.pop("WANDB_MODE", None)
        try:
            assert resolve_mode(WandbConfig(mode="online")) == "offline"
        finally:
            for k, v in saved.items():
                _os.environ.pop(k, None) if v is None else _os.environ.__setitem__(k, v)

    b.case("W&B", "mode online, W&B unreachable", unreachable, r"is unreachable: logging offline", expect="accept")

    def nan_scores() -> None:
        tr = PPOTrainer(cfg("nan", max_bad_batches=1))
        tr.scorer.raw = lambda p, r: torch.stack([torch.zeros(len(p)), torch.full((len(p),), float("nan"))], 1)
        tr.train()

    b.case("PPO", "a score model returning NaN", nan_scores, r"consecutive batches had NaN/inf scores", runtime=True)
    # --- serving
    from rlhf.serving.server import ServeConfig, parse_request

    names, scfg = ["helpful", "harmless"], ServeConfig(run="x", max_tokens_cap=32, default_max_tokens=16)
    msg = [{"role": "user", "content": "Hi"}]
    for what, body, expected in (
            ("preference of the wrong length", {"preference": [1.0]}, r"preference: has 1 entries but this run has 2"),
            ("negative preference", {"preference": [1.5, -0.5]}, r"preference: entries must be >= 0"),
            ("preference not summing to 1", {"preference": [0.5, 0.6]}, r"preference: entries must sum to 1"),
            ("NaN preference", {"preference": [float("nan"), 0.5]}, r"preference: contains NaN or inf"),
            ("unknown objective name", {"preference": {"helpful": 1.0, "funny": 0.0}},
             r"preference: unknown objective\(s\) \['funny'\]"),
            ("max_tokens above the cap", {"max_tokens": 1000}, r"max_tokens: 1000 exceeds this server's cap 32"),
            ("empty message list", {"messages": []}, r"messages: must be a non-empty list")):
        b.case("serving", what, lambda body=body: parse_request({"messages": msg, **body}, names, scfg), expected)
    b.case("D = 1", "one objective through PPO, evaluate, compare, plot, export and serve",
           lambda: one_objective(w, t / "d1", cfg), None, expect="accept", runtime=True)
    print(b.table())
    (root / "bad_inputs.json").write_text(json.dumps(b.rows, indent=2))


if __name__ == "__main__":
    main()
