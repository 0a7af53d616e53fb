import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.adapter.policy import write_run_info
from rlhf.adapter.svd_lora import PreferenceError, SVDLoRAConfig, apply_svd_lora, save_adapter, svd_lora_layers
from rlhf.algo.preference import PREFERENCES
from rlhf.evaluation.compare import compare
from rlhf.evaluation.evaluate import evaluate, parse_args
from rlhf.evaluation.pareto import FrontError, grid, hypervolume, inner_product, non_dominated, spacing, sparsity
from rlhf.scoring.objectives import ModelObjective
from tests.helpers import clean_env

ROOT = Path(__file__).resolve().parents[1]


def hv_inclusion_exclusion(points, ref):
    """Independent exact reference: union of boxes by inclusion-exclusion (small fronts only)."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            corner = np.min(np.array(subset), axis=0)
            total += (-1) ** (k + 1) * np.prod(np.maximum(corner - ref, 0))
    return total


def test_hypervolume_hand_worked():
    assert hypervolume(np.array([[1, 3], [2, 2], [3, 1]]), [0, 0]) == pytest.approx(6.0)
    assert hypervolume(np.array([[1, 2, 3]]), [0, 0, 0]) == pytest.approx(6.0)
    assert hypervolume(np.array([[2, 1, 1], [1, 2, 1]]), [0, 0, 0]) == pytest.approx(3.0)
    # a dominated point adds nothing
    assert hypervolume(np.array([[1, 3], [2, 2], [3, 1], [1, 1]]), [0, 0]) == pytest.approx(6.0)


@pytest.mark.parametrize("dim", [2, 3])
def test_hypervolume_matches_exact_reference_on_random_fronts(dim):
    rng = np.random.default_rng(dim)
    for _ in range(5):
        pts = rng.uniform(0.1, 1.0, size=(7, dim))
        ref = np.zeros(dim)
        assert hypervolume(pts, ref) == pytest.approx(hv_inclusion_exclusion(pts, ref), rel=1e-9)


def test_other_metrics_hand_worked():
    prefs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    pts = np.array([[3.0, 0.0], [2.0, 2.0], [0.0, 4.0]])
    assert inner_product(prefs, pts) == pytest.approx((3 + 2 + 4) / 3)
    # sorted by first objective: (0,4), (2,2), (3,0): squared steps 8 and 5 -> 13 / (2 * 2)
    assert sparsity(pts) == pytest.approx(13 / 4)
    # nearest-neighbour distances sqrt(8), sqrt(5), sqrt(5)
    nn = np.array([np.sqrt(5), np.sqrt(5), np.sqrt(8)])
    assert spacing(pts) == pytest.approx(np.std(nn))
    assert non_dominated(np.array([[1, 1], [2, 2], [3, 0]])).tolist() == [False, True, True]
    assert len(grid(2, 0.1)) == 11 and len(grid(3, 0.1)) == 66


def test_reference_not_dominated_names_the_points():
    with pytest.raises(FrontError, match=r"point 1 \[0.5, 2.0\] is below the reference by \[0.5, 0.0\]"):
        hypervolume(np.array([[2.0, 2.0], [0.5, 2.0]]), [1.0, 1.0])


# ---------------------------------------------------------------- evaluate on tiny runs

def make_run(world, path, fixed=None, seed=0, s=0.2):
    """A finished run directory with a random, non-zero adapter (so lambda matters unless ``s`` = 0)."""
    model = AutoModelForCausalLM.from_pretrained(world / "base")
    apply_svd_lora(model, SVDLoRAConfig(rank=4, pref_dim=2))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in svd_lora_layers(model):
            layer.lora_U.copy_(torch.randn(layer.lora_U.shape, generator=g) * 0.3)
            layer.lora_V.copy_(torch.randn(layer.lora_V.shape, generator=g) * 0.3)
            layer.lora_sigma.fill_(0.0 if s == 0 else 0.02)
            layer.lora_s.fill_(s)
    policy = Path(path) / "policy"
    save_adapter(model, policy)
    AutoTokenizer.from_pretrained(world / "base").save_pretrained(policy)
    objectives = [ModelObjective(name="helpful", model=str(world / "rm"), kind="reward"),
                  ModelObjective(name="harmless", model=str(world / "cm"), kind="cost")]
    pref = PREFERENCES.make("fixed", value=tuple(fixed)) if fixed else PREFERENCES.default_block()
    write_run_info(policy, trainer="ppo", base_model=str(world / "base"), objectives=objectives, preference=pref,
                   eval_scorers={"oracle": "hhbench.fixtures:length_oracle"}, step=1,
                   prompts_path=str(world / "prompts.jsonl"))
    return Path(path)


def run_eval(*argv):
    return evaluate(parse_args([*argv, "--no_wandb", "--n_prompts", "6", "--max_new_tokens", "6",
                                               "--batch_size", "3"]))


def test_evaluate_lays_prompts_out_with_the_configured_template(world, tmp_path, monkeypatch):
    """The prompt_template a training run's eval.yaml carries is the one evaluate.py generates from."""
    import rlhf.evaluation.evaluate as ev

    seen = []

    def recording(gen, runs, prefs, texts):
        seen.extend(texts)
        return ev.panacea_front(gen, runs, prefs, texts)

    monkeypatch.setitem(ev.METHODS, "panacea", recording)
    run = make_run(world, tmp_path / "panacea")
    run_eval("--run", str(run), "--grid", "0.5", "--greedy", "--out", str(tmp_path / "t"),
             "--prompt_template", "Question - {prompt} - Answer")
    assert len(seen) == 6 and all(t.startswith("Question - ") and t.endswith(" - Answer") for t in seen), seen[:2]


def test_evaluate_panacea_writes_front_and_batched_equals_one_at_a_time(world, tmp_path):
    run = make_run(world, tmp_path / "panacea")
    a = run_eval("--run", str(run), "--grid", "0.25", "--greedy", "--out", str(tmp_path / "a"), "--with_base")
    b = run_eval("--run", str(run), "--grid", "0.25", "--greedy", "--out", str(tmp_path / "b"), "--one_at_a_time")
    np.testing.assert_allclose(a["points"], b["points"], atol=1e-5)
    assert [s["response"] for s in a["samples"]] == [s["response"] for s in b["samples"]]
    data = json.loads((tmp_path / "a" / "pareto.json").read_text())
    for key in ("method", "objectives", "preferences", "points", "extra_points", "reference_point", "metrics",
                "n_prompts", "seed"):
        assert key in data, key
    assert data["objectives"] == ["helpful", "harmless"] and len(data["points"]) == 5 and data["n_prompts"] == 6
    assert set(data["metrics"]) == {"hypervolume", "inner_product", "sparsity", "spacing"}
    assert len(data["extra_points"]["oracle"]) == 5 and data["base_point"] is not None
    assert len({s["response"] for s in data["samples"]}) > 1, "lambda should change what the model says"
    assert (tmp_path / "a" / "pareto.png").stat().st_size > 10_000


def test_sampled_batched_front_equals_one_at_a_time_and_shares_noise_with_the_base(world, tmp_path):
    """Common random numbers: every preference (and the base model) samples a prompt with the same noise, so
    batched and one-at-a-time evaluation give the same responses, and a zero adapter's front is the base point."""
    run = make_run(world, tmp_path / "p")
    a = run_eval("--run", str(run), "--grid", "0.25", "--out", str(tmp_path / "a"), "--with_base")
    b = run_eval("--run", str(run), "--grid", "0.25", "--out", str(tmp_path / "b"), "--one_at_a_time")
    assert [s["response"] for s in a["samples"]] == [s["response"] for s in b["samples"]]
    np.testing.assert_allclose(a["points"], b["points"], atol=1e-5)
    zero = make_run(world, tmp_path / "z", s=0.0)          # s = 0: the adapter's preference path does nothing
    with_crn = run_eval("--run", str(zero), "--grid", "0.25", "--out", str(tmp_path / "z1"), "--with_base")
    np.testing.assert_allclose(with_crn["points"], [with_crn["base_point"]] * 5, atol=1e-5)
    stream = run_eval("--run", str(zero), "--grid", "0.25", "--out", str(tmp_path / "z2"), "--with_base",
                      "--noise", "per_batch")
    assert not np.allclose(stream["points"], [stream["base_point"]] * 5, atol=1e-5)


def test_evaluate_dps_and_rewarded_soups(world, tmp_path):
    rs = [make_run(world, tmp_path / "rs0", fixed=(1.0, 0.0), seed=1),
          make_run(world, tmp_path / "rs1", fixed=(0.0, 1.0), seed=2)]
    soup = run_eval("--method", "rs", "--run", str(rs[0]), "--run", str(rs[1]), "--grid", "0.5", "--greedy",
                    "--out", str(tmp_path / "rs"))
    alone = run_eval("--method", "dps", "--run", str(rs[0]), "--run", str(rs[1]), "--greedy",
                     "--out", str(tmp_path / "dps"))
    # the soup at lambda = (1, 0) is run 0 itself, at (0, 1) run 1 itself
    assert soup["preferences"][0] == [1.0, 0.0] and alone["preferences"] == [[1.0, 0.0], [0.0, 1.0]]
    assert soup["points"][0] == pytest.approx(alone["points"][0], abs=1e-5)
    assert soup["points"][-1] == pytest.approx(alone["points"][1], abs=1e-5)
    out = compare([str(tmp_path / "rs" / "pareto.json"), str(tmp_path / "dps" / "pareto.json")],
                  str(tmp_path / "cmp"), scorer="oracle")
    ref = out["reference_point"]
    assert set(out["methods"]) == {"rs", "dps"} and out["scorer"] == "oracle"
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["reference_point"] == ref and "| rs |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_evaluate_bad_input(world, tmp_path):
    run = make_run(world, tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="is not a finished run"):
        run_eval("--run", str(tmp_path))
    prefs = tmp_path / "prefs.json"
    prefs.write_text(json.dumps([[0.5, 0.5], [0.2, 0.3, 0.5]]))
    with pytest.raises(PreferenceError, match=r"preference #1 .*3 entries"):
        run_eval("--run", str(run), "--preferences", str(prefs))
    prefs.write_text(json.dumps([[0.7, 0.7]]))
    with pytest.raises(PreferenceError, match="sum to 1"):
        run_eval("--run", str(run), "--preferences", str(prefs))
    with pytest.raises(FrontError, match="not dominated"):
        run_eval("--run", str(run), "--grid", "0.5", "--reference-point", "100,100", "--out", str(tmp_path / "o"))
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"method": "a", "objectives": ["x", "y"], "preferences": [[1, 0]], "points": [[1, 1]]}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"method": "b", "objectives": ["x", "z"], "preferences": [[1, 0]], "points": [[1, 1]]}))
    with pytest.raises(FrontError, match="must share objective names"):
        compare([str(a), str(b)], str(tmp_path / "c"))


def test_cli_runs(world, tmp_path):
    run = make_run(world, tmp_path / "cli")
    proc = subprocess.run([sys.executable, "rlhf/evaluate.py", "--run", str(run), "--grid", "0.5", "--n_prompts", "3",
                           "--max_new_tokens", "4", "--no_wandb"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hypervolume=" in proc.stdout and (run / "eval" / "pareto.json").is_file()
    bad = subprocess.run([sys.executable, "rlhf/evaluate.py", "--run", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "is not a finished run" in bad.stderr


def test_rewarded_soups_pairs_runs_with_objectives_by_their_vertex(world, tmp_path):
    from rlhf.adapter.svd_lora import PreferenceError

    rs = [make_run(world, tmp_path / "rs0", fixed=(1.0, 0.0), seed=1),
          make_run(world, tmp_path / "rs1", fixed=(0.0, 1.0), seed=2)]
    ordered = run_eval("--method", "rs", "--run", str(rs[0]), "--run", str(rs[1]), "--grid", "0.5", "--greedy",
                       "--out", str(tmp_path / "a"))
    swapped = run_eval("--method", "rs", "--run", str(rs[1]), "--run", str(rs[0]), "--grid", "0.5", "--greedy",
                       "--out", str(tmp_path / "b"))
    np.testing.assert_allclose(swapped["points"], ordered["points"], atol=1e-6)   # not by position
    mid = make_run(world, tmp_path / "mid", fixed=(0.5, 0.5), seed=3)
    with pytest.raises(PreferenceError, match=r"each trained at a vertex.*has preference \[0.5, 0.5\]"):
        run_eval("--method", "rs", "--run", str(rs[0]), "--run", str(mid), "--grid", "0.5", "--out", str(tmp_path / "c"))
    with pytest.raises(PreferenceError, match="were both trained at vertex 0"):
        run_eval("--method", "rs", "--run", str(rs[0]), "--run", str(rs[0]), "--grid", "0.5", "--out", str(tmp_path / "d"))


def test_evaluation_device_and_dtype(world, tmp_path, monkeypatch):
    from rlhf.runtime.engine import EngineConfigError, placement

    assert placement(None, "auto") == (torch.device("cpu"), torch.float32)
    assert placement("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(EngineConfigError, match="no CUDA GPU is available; pass --device cpu"):
        placement("cuda", "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placement(None, "auto") == (torch.device("cuda"), torch.bfloat16)      # the GPU by default when present
    monkeypatch.undo()
    run = make_run(world, tmp_path / "r")
    out = run_eval("--run", str(run), "--grid", "0.5", "--dtype", "bf16", "--out", str(tmp_path / "e"))
    assert np.isfinite(out["points"]).all()
