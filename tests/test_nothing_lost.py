"""Nothing lost, nothing silent, round 2 (issue 28): each test holds one item of the issue and fails on the code
before it (the message of the check it exists for, never just "some error")."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.core.config import ConfigError, load_config
from rlhf.data.datasets import DataError, load_rows, prompt_column
from rlhf.runtime.checkpoint import ResumeError
from rlhf.runtime.run import RunDirError
from rlhf.training.ppo import PPOTrainer
from rlhf.training.ppo_config import PPOConfig
from tests.test_ppo import load, make_config, metrics


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """A finished PPO run with two checkpoints (steps 1 and 2) and its policy."""
    out = tmp_path_factory.mktemp("nl") / "run"
    PPOTrainer(load(make_config(world, out, total_steps=2, save_every=1, keep_last=3))).train()
    return out


def copy_run(finished, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(finished, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def cfg_for(world, out, *over, **kw):
    return load(make_config(world, out, **kw), *over)


# ---------------------------------------------------------------- lost or broken files

def test_evaluate_on_a_checkpoint_writes_beside_it_and_refuses_an_out_inside(world, finished, tmp_path):
    from rlhf.evaluation.evaluate import evaluate, parse_args
    from rlhf.evaluation.pareto import FrontError

    run = copy_run(finished, tmp_path)
    ckpt = run / "checkpoints" / "step_00000001"
    common = ["--prompts", str(world / "prompts.jsonl"), "--n_prompts", "4", "--grid", "0.5",
              "--max_new_tokens", "4", "--no_wandb"]
    assert parse_args(["--run", str(ckpt), *common]).out_dir == run / "eval" / "step_00000001"
    evaluate(parse_args(["--run", str(ckpt), *common]))
    assert (run / "eval" / "step_00000001" / "pareto.json").is_file() and not (ckpt / "eval").exists()
    for inside in (ckpt / "eval", run / "policy" / "eval", ckpt / "policy"):
        with pytest.raises(FrontError, match=r"is a (checkpoint|saved policy)"):
            evaluate(parse_args(["--run", str(ckpt), *common, "--out", str(inside)]))


def test_export_refuses_the_runs_policy_and_an_existing_directory_before_loading(world, finished, tmp_path,
                                                                                 no_model_loads):
    from rlhf.serving.export import ExportError, export

    run = copy_run(finished, tmp_path)
    before = (run / "policy" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ExportError, match=r"--out .*policy: .* is a saved policy"):
        export(str(run), str(run / "policy"), "peft", "0.5,0.5")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"--out .*taken already exists; pass --overwrite"):
        export(str(run), str(tmp_path / "taken"), "peft", "0.5,0.5")
    with pytest.raises(ExportError, match=r"--preference '0.6,0.5' sums to 1.1; the weights must sum to 1"):
        export(str(run), str(tmp_path / "new"), "peft", "0.6,0.5")
    with pytest.raises(ExportError, match=r"--preference '0.3,0.3,0.4' has 3 weights but the run has 2 objectives"):
        export(str(run), str(tmp_path / "new"), "peft", "0.3,0.3,0.4")
    assert (run / "policy" / "adapter_model.safetensors").read_bytes() == before


def test_export_overwrite_moves_the_old_directory_aside(world, finished, tmp_path):
    from rlhf.serving.export import export

    run = copy_run(finished, tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    export(str(run), str(tmp_path / "out"), "peft", "0.5,0.5", overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("out.replaced-")]
    assert len(aside) == 1 and (aside[0] / "mine.txt").read_text() == "keep me"
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_a_broken_checkpoint_is_never_loaded_latest_falls_back(world, finished, tmp_path):
    from rlhf.runtime.checkpoint import MANIFEST, verify

    run = copy_run(finished, tmp_path)
    ckpts = run / "checkpoints"
    newest, older = ckpts / "step_00000002", ckpts / "step_00000001"
    assert (newest / MANIFEST).is_file() and verify(newest) is None
    victim = next(p for p in sorted(newest.rglob("*.pt")))                      # a torch file: torch.load dies on it
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])        # truncated (a full disk, a copy)
    assert "truncated" in verify(newest)
    with pytest.warns(UserWarning, match=r"step_00000002 is broken \(.*truncated.*\); resuming from .*step_00000001"):
        tr = PPOTrainer(cfg_for(world, run, resume_from="latest", total_steps=3, save_every=1, keep_last=3))
    assert tr.run.resume_path == older and tr.step == 1
    tr.run.close()
    with pytest.raises(ResumeError, match=r"checkpoint .*step_00000002 cannot be resumed: .*pt has \d+ bytes, the manifest says \d+ \(truncated"):
        PPOTrainer(cfg_for(world, run, resume_from=str(newest), total_steps=3))
    zeroed = older / "trainer_state.json"
    zeroed.write_bytes(b"\0" * zeroed.stat().st_size)                             # same size, zeroed
    with pytest.raises(ResumeError, match=r"no checkpoint in .* verifies: step_00000002: .*; step_00000001: "
                                          r"trainer_state.json does not match its checksum"):
        PPOTrainer(cfg_for(world, run, resume_from="latest", total_steps=3))


def test_a_truncated_adapter_is_refused_naming_the_file_before_any_model_loads(world, finished, tmp_path,
                                                                              no_model_loads):
    from rlhf.adapter.policy import load_run_model
    from rlhf.adapter.svd_lora import AdapterFileError
    from rlhf.evaluation.evaluate import evaluate, parse_args
    from rlhf.serving.export import export

    run = copy_run(finished, tmp_path)
    weights = run / "policy" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    match = r"policy/adapter_model.safetensors: it has \d+ bytes but its header describes \d+ \(truncated"
    with pytest.raises(AdapterFileError, match=match):
        load_run_model(run)                                                        # what the server loads
    with pytest.raises(AdapterFileError, match=match):
        evaluate(parse_args(["--run", str(run), "--prompts", str(world / "prompts.jsonl"), "--no_wandb"]))
    with pytest.raises(AdapterFileError, match=match):
        export(str(run), str(tmp_path / "x"), "peft", "0.5,0.5")
    weights.write_bytes(b"\0" * 4096)
    with pytest.raises(AdapterFileError, match=r"header claims 0 bytes .* \(truncated or zeroed\)"):
        load_run_model(run)


def test_overwriting_a_checkpoint_step_renames_before_it_deletes(world, finished, tmp_path, monkeypatch):
    """A resumed run writing a step that exists: the old one goes only after the new one is in place."""
    import rlhf.runtime.checkpoint as ck

    run = copy_run(finished, tmp_path)
    events = []
    real_replace, real_rmtree = os.replace, shutil.rmtree
    monkeypatch.setattr(ck.os, "replace", lambda a, b: (events.append(("replace", Path(a).name, Path(b).name)),
                                                        real_replace(a, b))[1])
    monkeypatch.setattr(ck.shutil, "rmtree", lambda p, **kw: (events.append(("rmtree", Path(p).name)),
                                                             real_rmtree(p, **kw))[1])
    tr = PPOTrainer(cfg_for(world, run, resume_from=str(run / "checkpoints" / "step_00000001"), total_steps=2,
                            save_every=1, keep_last=3))
    tr.train()
    assert ("rmtree", "step_00000002") not in events                               # never deleted in place
    moved = events.index(("replace", "step_00000002", ".old-step_00000002"))
    assert events.index(("replace", ".tmp-step_00000002", "step_00000002")) > moved
    last_rm = max(i for i, e in enumerate(events) if e == ("rmtree", ".old-step_00000002"))
    assert last_rm > events.index(("replace", ".latest.tmp", "latest"))            # gone once the new one is latest


# ---------------------------------------------------------------- processes and locks

def test_a_trainer_that_fails_to_build_releases_its_run_in_the_same_process(world, tmp_path):
    out = tmp_path / "r"
    bad = cfg_for(world, out, prompts={"prompt_column": "question"})
    with pytest.raises(DataError, match=r"lacks column\(s\) \['question'\]"):
        PPOTrainer(bad)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['question'\]"):   # the same message, not the lock's
        PPOTrainer(cfg_for(world, out, "--overwrite", prompts={"prompt_column": "question"}))
    tr = PPOTrainer(cfg_for(world, out, "--overwrite", total_steps=1))
    with pytest.raises(RunDirError, match="It is this very process: an earlier trainer built here still holds"):
        PPOTrainer(cfg_for(world, out, "--overwrite"))
    tr.train()


def test_overwrite_refuses_the_current_directory_and_holds_the_old_run_while_moving_it(world, finished, tmp_path,
                                                                                     monkeypatch):
    import rlhf.runtime.run as run_mod

    zero2 = str(Path(__file__).resolve().parents[1] / "ds_configs" / "zero2.json")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "something").write_text("x")
    with pytest.raises(RunDirError, match=r"--overwrite with output_dir '\.': that is the current directory"):
        PPOTrainer(cfg_for(world, ".", "--overwrite", ds_config=zero2))
    run = copy_run(finished, tmp_path)
    real, seen = run_mod.move_aside, []

    def move_aside(directory):  # a resuming process racing the rename must find the old run still locked
        try:
            run_mod.RunLock(directory).acquire()
            seen.append("free")
        except RunDirError:
            seen.append("held")
        return real(directory)

    monkeypatch.setattr(run_mod, "move_aside", move_aside)
    PPOTrainer(cfg_for(world, run, "--overwrite", total_steps=1, ds_config=zero2)).run.close()
    assert seen == ["held"]


# ---------------------------------------------------------------- refused before compute

def test_context_lengths_are_refused_from_the_model_configs(world, tmp_path, no_model_loads):
    with pytest.raises(ConfigError, match=r"'prompts.max_prompt_length \+ generation.max_new_tokens': 300 tokens, but "
                                          r"actor_model .* reads at most 256 positions"):
        PPOTrainer(cfg_for(world, tmp_path / "a", prompts={"max_prompt_length": 200},
                           generation={"max_new_tokens": 100}))
    objectives = [{"name": "helpful", "model": str(world / "rm"), "max_length": 512},
                  {"name": "harmless", "model": str(world / "cm"), "kind": "cost"}]
    with pytest.raises(ConfigError, match=r"'objectives\[0\].max_length': 512 tokens, but objectives\[0\].model .* "
                                          r"reads at most 256 positions"):
        PPOTrainer(cfg_for(world, tmp_path / "b", objectives=objectives))


def _strict_template_tokenizer(world, path):
    """The tiny tokenizer with a chat template that refuses two user turns in a row."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world / "base")
    tok.chat_template = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]"
                         "['role'] %}{{ raise_exception('roles must alternate') }}{% endif %}{{ m['role'] }}: "
                         "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    tok.save_pretrained(path)
    return path


def test_chat_templates_render_every_prompt_before_training(world, tmp_path, no_model_loads):
    chats = [[{"role": "user", "content": "How do I bake bread?"}]] * 6 + \
            [[{"role": "user", "content": "Hi"}, {"role": "user", "content": "again"}]]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"prompt": c}) + "\n" for c in chats))
    tok = _strict_template_tokenizer(world, tmp_path / "tok")
    with pytest.raises(DataError, match=r"prompts of '.*chats.jsonl' row 6: the chat template of tokenizer "
                                        r"'.*tok' refused the conversation \(TemplateError: roles must alternate\)"):
        PPOTrainer(cfg_for(world, tmp_path / "a", tokenizer=str(tok), prompts={"path": str(tmp_path / "chats.jsonl")}))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # the score model's own tokenizer
        if (tok / f).is_file():
            shutil.copy(tok / f, tmp_path / f)
    rm = tmp_path / "rm"
    shutil.copytree(world / "rm", rm)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tok / f).is_file():
            shutil.copy(tok / f, rm / f)
    ok = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]] * 6 + \
         [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"},
           {"role": "user", "content": "d"}]]
    (tmp_path / "ok.jsonl").write_text("".join(json.dumps({"prompt": c + [{"role": "user", "content": "q"}]
                                                            if c[-1]["role"] == "assistant" else c}) + "\n" for c in ok))
    objectives = [{"name": "helpful", "model": str(rm)}, {"name": "harmless", "model": str(world / "cm"),
                                                          "kind": "cost"}]
    with pytest.raises(DataError, match=r"ok.jsonl' row 6, as objectives\[0\].model reads it: the chat template of "
                                        r"tokenizer .* refused"):
        PPOTrainer(cfg_for(world, tmp_path / "b", objectives=objectives, prompts={"path": str(tmp_path / "ok.jsonl"),
                                                                                  "max_prompt_length": 200}))


def test_resume_notices_a_changed_prompts_file_and_a_finished_run(world, finished, tmp_path, monkeypatch):
    run = copy_run(finished, tmp_path)
    with pytest.raises(ResumeError, match=r"step_00000002 is at step 2 and total_steps gives 2 steps: the run is "
                                          r"finished, there is nothing to resume. Raise total_steps"):
        PPOTrainer(cfg_for(world, run, resume_from="latest", total_steps=2))
    prompts = tmp_path / "prompts.jsonl"                                              # a run on its own copy
    shutil.copy(world / "prompts.jsonl", prompts)
    own = tmp_path / "own"
    PPOTrainer(cfg_for(world, own, total_steps=1, save_every=1, prompts={"path": str(prompts)})).train()
    saved = json.loads((own / "checkpoints" / "step_00000001" / "trainer_state.json").read_text())
    assert saved["data"]["prompts.path"].startswith("sha256:")
    import transformers

    for cls in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModel"):  # from here: no loads
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    lines = prompts.read_text().splitlines()
    prompts.write_text("\n".join(lines[1:] + lines[:1]) + "\n")                    # the same rows, another order
    with pytest.raises(ResumeError, match=r"prompts.path '.*prompts.jsonl' changed since checkpoint .*step_00000001 "
                                          r"was written .* Restore the file it trained on"):
        PPOTrainer(cfg_for(world, own, total_steps=2, resume_from="latest", prompts={"path": str(prompts)}))


def test_a_torn_jsonl_line_and_odd_prompt_cells_name_their_row(tmp_path):
    (tmp_path / "torn.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c\n')
    with pytest.raises(DataError, match=r"torn.jsonl' line 3 is not valid JSON \(.*\): '\{\"prompt\": \"c'"):
        load_rows(str(tmp_path / "torn.jsonl"))
    (tmp_path / "list.jsonl").write_text('{"prompt": "a"}\n["prompt", "b"]\n')
    with pytest.raises(DataError, match=r"line 2 is a JSON list, not an object of columns"):
        load_rows(str(tmp_path / "list.jsonl"))
    for value, what in ((7, "holds a int"), ({"text": "hi"}, "holds a dict"), ([1, 2], "holds a list that is not a chat")):
        (tmp_path / "odd.jsonl").write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": value}) + "\n")
        with pytest.raises(DataError, match=rf"row 1: column 'prompt' {what}"):
            prompt_column(load_rows(str(tmp_path / "odd.jsonl")), "prompt", "odd")
    empties = [None, "", "  ", [], [{"role": "user", "content": "  "}], "kept"]
    (tmp_path / "e.jsonl").write_text("".join(json.dumps({"prompt": v}) + "\n" for v in empties))
    with pytest.warns(UserWarning, match=r"dropped 5 of 6 empty prompts .* \(rows \[0, 1, 2, 3, 4\]\)"):
        values, rows = prompt_column(load_rows(str(tmp_path / "e.jsonl")), "prompt", "e")
    assert values == ["kept"] and rows == [5]


def test_a_response_that_is_not_text_is_refused_naming_row_and_column(world, tmp_path):
    from transformers import AutoTokenizer

    from rlhf.training.sft import SFTData, SFTDataConfig

    tok = AutoTokenizer.from_pretrained(world / "base")
    rows = [{"prompt": "p", "response": "a fine answer"}, {"prompt": "p", "response": 42}]
    with pytest.raises(DataError, match=r"'d.jsonl' row 9, column 'response': a response must be a string, got a "
                                        r"int: '42'"):
        SFTData(rows, SFTDataConfig(path="d.jsonl"), tok, numbers=[3, 9])


def test_yaml_and_command_lines_that_read_two_ways_are_refused_or_said(world, tmp_path):
    path = make_config(world, tmp_path / "a")
    text = path.read_text()
    (tmp_path / "dup.yaml").write_text(text + "seed: 3\n")                         # seed is already in the file
    with pytest.raises(ConfigError, match=r"dup.yaml': config key 'seed' appears twice in one mapping \(lines \d+ "
                                          r"and \d+\); keep one"):
        load_config(PPOConfig, tmp_path / "dup.yaml")
    with pytest.raises(ConfigError, match=r"'wandb.run_name': expected a string, got the boolean False \(YAML reads "
                                          r"yes/no/on/off/true/false as booleans\): quote it"):
        load(path, "--wandb.run_name", "no")
    with pytest.warns(UserWarning, match=r"--seed given 2 times \(1, 2\): using the last, 2"):
        assert load(path, "--seed", "1", "--seed", "2").seed == 2


# ---------------------------------------------------------------- wrong results

def test_the_in_training_reference_point_measures_the_front_from_step_0(world, tmp_path):
    """At step 0 every point is the base point: the reference must sit a measured distance below it (the responses'
    spread), not 5e-7 below, so that the curve counts what later fronts gain."""
    cfg = cfg_for(world, tmp_path / "r", total_steps=1, eval={"every": 1, "prompts": str(world / "prompts.jsonl"),
                                                              "n_prompts": 8, "grid": 0.5})
    tr = PPOTrainer(cfg)
    tr.train()
    first = next(r for r in metrics(tmp_path / "r") if "eval/front" in r and r["step"] == 0)
    base, ref = np.array(first["eval/front"]["base_point"]), np.array(first["eval/front"]["reference_point"])
    per_prompt = tr.front.base["score models"][0]                                              # (N, D)
    torch.testing.assert_close(torch.tensor(ref), torch.tensor(base - 0.5 * per_prompt.std(0)), atol=1e-6, rtol=0)
    assert (base - ref).min() > 0.01 and first["eval/score_models/hypervolume"] > 1e-4


def test_tchebycheff_moves_every_ranks_ideal_point_alike(monkeypatch):
    """Per-sample lambdas: each rank's batch means differ, so the ideal point must come from every rank's J (the max
    over ranks), or ranks diverge and the one saved ideal point resumes the others wrongly."""
    from rlhf.algo.aggregation import AGGREGATIONS

    J = {0: torch.tensor([[0.1, 0.9], [0.2, 0.3]]), 1: torch.tensor([[0.8, 0.0], [0.4, 0.2]])}
    seen = torch.stack([J[r].max(0).values for r in J]).max(0).values                      # what all_reduce_max gives
    ideal = {r: AGGREGATIONS.make("tche", ideal_margin=0.1).build() for r in J}
    for r in J:
        ideal[r].weights(torch.tensor([[0.5, 0.5], [0.5, 0.5]]), J[r], seen)
    torch.testing.assert_close(ideal[0].ideal.value, ideal[1].ideal.value)
    torch.testing.assert_close(ideal[0].ideal.value, torch.tensor([0.9, 1.0]))


def test_the_ppo_trainer_moves_its_ideal_point_with_every_ranks_scores(world, tmp_path, monkeypatch):
    """The trainer's wiring: with per-sample lambdas the ideal point is raised to the max of J over all ranks (here
    another rank, simulated by all_reduce_max, saw 5.0 on both objectives), so every rank holds the same z."""
    import rlhf.training.ppo as ppo_mod

    other_rank = torch.tensor([5.0, 5.0])
    monkeypatch.setattr(ppo_mod.engine, "all_reduce_max", lambda t: torch.maximum(t, other_rank.to(t)))
    cfg = cfg_for(world, tmp_path / "t", "--aggregation", "tche", "--aggregation.ideal_margin", "0.1",
                  total_steps=1, preference={"name": "dirichlet", "per": "sample"})
    tr = PPOTrainer(cfg)
    tr.train()
    torch.testing.assert_close(tr.aggregation.ideal.value, torch.tensor([5.1, 5.1]))


def word_count(prompts, responses):
    """A one-objective extra scorer: (N, 1) word counts."""
    return np.array([[len(r.split())] for r in responses], float)


def test_one_objective_goes_through_every_command(world, tmp_path, monkeypatch):
    """D = 1: train (with the in-training front), evaluate, compare, plot, export and serve."""
    import rlhf.compare_fronts as compare_cli
    import rlhf.evaluate as evaluate_cli
    import rlhf.export as export_cli
    import rlhf.plot_training as plot_cli
    from rlhf.serving.server import ServeConfig, parse_request

    out = tmp_path / "one"
    cfg = cfg_for(world, out, objectives=[{"name": "helpful", "model": str(world / "rm")}],
                  adapter={"rank": 4, "pref_dim": 1}, total_steps=2,
                  eval={"every": 1, "prompts": str(world / "prompts.jsonl"), "n_prompts": 4},
                  eval_scorers={"words": "tests.test_nothing_lost:word_count"})
    PPOTrainer(cfg).train()
    assert [r["step"] for r in metrics(out) if "eval/front" in r] == [0, 1, 2]
    evaluate_cli.main(["--run", str(out), "--prompts", str(world / "prompts.jsonl"), "--n_prompts", "4",
                       "--with_base", "--no_wandb"])
    record = json.loads((out / "eval" / "pareto.json").read_text())
    assert record["preferences"] == [[1.0]] and len(record["points"][0]) == 1 and record["metrics"]["hypervolume"] > 0
    compare_cli.main([str(out / "eval" / "pareto.json"), "--out", str(tmp_path / "cmp")])
    plot_cli.main([str(out)])
    assert (out / "training_fronts.png").is_file() and (tmp_path / "cmp" / "compare.png").is_file()
    export_cli.main(["--run", str(out), "--grid", "0.5", "--out", str(tmp_path / "grid")])
    assert json.loads((tmp_path / "grid" / "front.json").read_text())["adapters"][0]["preference"] == [1.0]
    export_cli.main(["--run", str(out), "--preference", "1", "--format", "merged", "--out", str(tmp_path / "m")])
    assert parse_request({"messages": [{"role": "user", "content": "hi"}]}, ["helpful"],
                         ServeConfig(run="x"))["preference"] == [1.0]


def test_an_extra_scorer_of_the_wrong_width_is_refused_naming_it(world, finished, tmp_path, no_model_loads):
    from rlhf.evaluation.evaluate import evaluate, parse_args
    from rlhf.scoring.objectives import SourceError

    with pytest.raises(SourceError, match=r"extra scorer 'words' returned shape \(2, 1\) for 2 responses; .* \(2, 2\)"):
        evaluate(parse_args(["--run", str(finished), "--prompts", str(world / "prompts.jsonl"), "--n_prompts", "4",
                             "--grid", "0.5", "--max_new_tokens", "4", "--no_wandb", "--out", str(tmp_path / "e"),
                             "--scorer", "words=tests.test_nothing_lost:word_count"]))
