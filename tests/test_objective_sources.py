"""Objectives from any source: a Python function and a reward server (a local HTTP server on 127.0.0.1), in PPO,
in evaluation and in the in-training front; a failing server stops a run with the documented error and loses
nothing; a run with a function objective resumes exactly."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from hhbench.fixtures import write_ppo_config as make_config
from rlhf.core.config import ConfigError, load_config
from rlhf.scoring.objectives import (OBJECTIVES, FunctionObjective, FunctionSource, SourceError, UrlObjective,
                                     UrlSource, extra_scorer, load_function)
from rlhf.scoring.scorer import Scorer
from rlhf.training.ppo_config import PPOConfig
from tests.helpers import run_ppo_cli, untimed_metrics

ROOT = Path(__file__).resolve().parents[1]
HERE = "tests.test_objective_sources"


# ---------------------------------------------------------------- functions the tests name by 'module:function'

def words(prompts, responses, **columns):
    return [float(len(r.split())) for r in responses]


def echo_words(prompts, responses, echo):
    """Word counts; refuses a batch whose ``echo`` column (a copy of the prompt) is not aligned with its prompts."""
    assert len(echo) == len(prompts), (len(echo), len(prompts))
    for p, e in zip(prompts, echo):
        assert p == e, f"column misaligned: prompt {p!r} got echo {e!r}"
    return np.array([len(r.split()) for r in responses], float)


def takes_one(responses):
    return [0.0] * len(responses)


def one_short(prompts, responses):
    return [0.0] * (len(responses) - 1)


def not_numbers(prompts, responses):
    return ["high"] * len(responses)


def nan_scores(prompts, responses):
    return [float("nan")] * len(responses)


# ---------------------------------------------------------------- a reward server

class Server:
    """A reward server on 127.0.0.1: POST /reward -> {"rewards": word counts}; POST /extra -> [[w, -w], ...].
    ``mode`` switches it to failing: "500", "404", "slow" (sleeps ``delay`` s), "short" (one reward too few);
    ``fail_after``: requests answered normally before ``mode`` applies; ``recover_after``: the request count after
    which it answers normally again."""

    def __init__(self) -> None:
        self.mode, self.fail_after, self.recover_after, self.delay, self.requests = "ok", 0, None, 2.0, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, body))
                n = len(server.requests)
                failing = server.mode != "ok" and n > server.fail_after and (server.recover_after is None or
                                                                            n <= server.recover_after)
                if failing and server.mode == "slow":
                    time.sleep(server.delay)
                if failing and server.mode in ("500", "404"):
                    return self._send(int(server.mode), {"error": "down"})
                w = [len(r.split()) for r in body["responses"]]
                if failing and server.mode == "short":
                    w = w[:-1]
                self._send(200, {"rewards": w} if self.path == "/reward" else [[x, -x] for x in w])

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def set(self, mode="ok", fail_after=0, recover_after=None):
        self.mode, self.fail_after, self.recover_after, self.requests = mode, fail_after, recover_after, []


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


@pytest.fixture
def echo_prompts(world, tmp_path):
    """The world's prompts with an ``echo`` column (a copy of each prompt) that ``echo_words`` checks."""
    rows = [json.loads(l) for l in (world / "prompts.jsonl").read_text().splitlines()]
    path = tmp_path / "echo_prompts.jsonl"
    path.write_text("".join(json.dumps({**r, "echo": r["prompt"]}) + "\n" for r in rows))
    return path


def sources_config(world, out, server, prompts, **over):
    """Two objectives with no score model: a function (reads the ``echo`` column) and a reward server (a cost)."""
    return make_config(world, out, objectives=[
        {"name": "length", "function": f"{HERE}:echo_words"},
        {"name": "remote", "url": f"{server.url}/reward", "kind": "cost", "retries": 1, "backoff_s": 0.01,
         "timeout_s": 5}], prompts={"path": str(prompts)}, **over)


# ---------------------------------------------------------------- the sources alone

def test_function_source_gets_the_columns_it_names_and_is_refused_naming_the_objective():
    seen = {}

    def named(prompts, responses, ref):
        seen["named"] = ref
        return [1.0] * len(responses)

    cols = {"ref": ["a", "b"], "other": [1, 2]}
    assert FunctionSource(named, "x").score(["p", "q"], ["r", "s"], cols).tolist() == [1.0, 1.0]
    assert seen["named"] == ["a", "b"]  # only the column it names: 'other' is not passed
    got = FunctionSource(lambda p, r, **kw: [float(len(kw))] * len(r), "x").score(["p"], ["r"], cols)
    assert got.tolist() == [2.0]  # **kwargs: every column
    who = "objective 'len' (m:f)"
    with pytest.raises(SourceError, match=r"objective 'len' \(m:f\) returned shape \(1,\) for 2 responses"):
        FunctionSource(one_short, who).score(["p", "q"], ["r", "s"])
    with pytest.raises(SourceError, match=r"objective 'len' \(m:f\) returned something that is not numbers"):
        FunctionSource(not_numbers, who).score(["p"], ["r"])
    with pytest.raises(SourceError, match=r"raised ZeroDivisionError"):
        FunctionSource(lambda p, r: 1 / 0, who).score(["p"], ["r"])
    assert torch.isnan(FunctionSource(nan_scores, who).score(["p"], ["r"])).all()  # NaN passes: the guard counts it


def test_load_function_refuses_what_cannot_be_called_as_a_reward():
    with pytest.raises(SourceError, match=r"f: cannot import 'tests.no_such_module:f' \(ModuleNotFoundError"):
        load_function("tests.no_such_module:f", "f")
    with pytest.raises(SourceError, match=r"cannot import '.*:missing' \(AttributeError"):
        load_function(f"{HERE}:missing", "f")
    with pytest.raises(SourceError, match=r"is not callable"):
        load_function(f"{HERE}:HERE", "f")
    with pytest.raises(SourceError, match=r"cannot be called as fn\(prompts, responses, \*\*columns\)"):
        load_function(f"{HERE}:takes_one", "f")
    with pytest.raises(SourceError, match=r"must be written 'package.module:function'"):
        load_function("words", "f")
    with pytest.raises(ConfigError, match=r"'objectives\[0\].function': must be written 'package.module:function'"):
        OBJECTIVES.parse({"name": "c", "function": "words"}, "objectives[0]")


def test_url_source_batches_and_sends_the_documented_request(server):
    src = UrlSource(UrlObjective(name="r", url=f"{server.url}/reward", batch_size=2), "objective 'r'")
    got = src.score(["p1", [{"role": "user", "content": "p2"}], "p3"], ["a b", "c", "d e f"], {"ref": [1, 2, 3]})
    assert got.tolist() == [2.0, 1.0, 3.0]
    assert [len(b["responses"]) for _, b in server.requests] == [2, 1]  # batched by batch_size
    path, body = server.requests[0]
    assert set(body) == {"query", "prompts", "responses", "columns"} and body["columns"] == {"ref": [1, 2]}
    assert body["query"][0].endswith("a b") and "p1" in body["query"][0]  # OpenRLHF's query: prompt + response
    assert body["prompts"][1] == [{"role": "user", "content": "p2"}]  # a chat is sent as its messages


def test_url_source_retries_5xx_then_succeeds_and_does_not_retry_4xx(server):
    cfg = UrlObjective(name="r", url=f"{server.url}/reward", retries=2, backoff_s=0.01)
    server.set("500", fail_after=0)
    with pytest.raises(SourceError, match=rf"objective 'r': {server.url}/reward failed 3 times; the last: HTTP 500"):
        UrlSource(cfg, "objective 'r'").score(["p"], ["a"])
    assert len(server.requests) == 3
    server.set("500", recover_after=2)
    assert UrlSource(cfg, "objective 'r'").score(["p"], ["a b"]).tolist() == [2.0]
    assert len(server.requests) == 3  # two 500s, then the answer
    server.set("404")
    with pytest.raises(SourceError, match=r"refused the request with HTTP 404"):
        UrlSource(cfg, "objective 'r'").score(["p"], ["a"])
    assert len(server.requests) == 1  # a 4xx is our mistake: retrying cannot help


def test_url_source_times_out_and_refuses_the_wrong_length_naming_the_url(server):
    cfg = UrlObjective(name="r", url=f"{server.url}/reward", retries=1, backoff_s=0.01, timeout_s=0.3)
    server.set("slow")
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match=rf"{server.url}/reward failed 2 times; the last: no answer within 0.3 s"):
        UrlSource(cfg, "objective 'r'").score(["p"], ["a"])
    assert time.perf_counter() - t0 < 1.9  # the timeout cut both tries short of the server's 2 s
    server.set("short")
    with pytest.raises(SourceError, match=rf"objective 'r' \({server.url}/reward\) returned shape \(1,\) for 2 "):
        UrlSource(cfg, "objective 'r'").score(["p", "q"], ["a", "b"])
    server.set("ok")  # a scalar per row where an extra scorer owes one per objective
    with pytest.raises(SourceError, match=r"extra scorer 'e' .*returned shape \(2,\) for 2 responses; it must "
                                          r"return \(2, 2\)"):
        extra_scorer("e", f"{server.url}/reward", 2).score(["p", "q"], ["a", "b"])


def test_scorer_negates_costs_of_every_source(server):
    scorer = Scorer([FunctionObjective(name="w", function=f"{HERE}:words"),
                     UrlObjective(name="u", url=f"{server.url}/reward", kind="cost")])
    assert scorer.raw(["p", "q"], ["a b c", "d"]).tolist() == [[3.0, -3.0], [1.0, -1.0]]


# ---------------------------------------------------------------- refused before any model loads

@pytest.mark.parametrize("objective,message", [
    ({"name": "length", "function": "tests.no_such_module:f"},
     r"objectives\[0\].function: cannot import 'tests.no_such_module:f'"),
    ({"name": "length", "function": f"{HERE}:takes_one"}, r"cannot be called as fn\(prompts, responses"),
    ({"name": "length", "function": f"{HERE}:one_short"},
     r"objective 'length' \(tests.test_objective_sources:one_short\) returned shape \(1,\) for 2 responses"),
    ({"name": "length", "url": "http://127.0.0.1:9/reward", "retries": 0},
     r"objectives\[0\].url \(objective 'length'\): http://127.0.0.1:9/reward failed 1 times; the last: ConnectError"),
])
def test_a_bad_source_is_refused_before_any_model_loads(world, tmp_path, no_model_loads, objective, message):
    from rlhf.training.ppo import PPOTrainer

    cfg = make_config(world, tmp_path / "run", objectives=[objective, {"name": "h", "model": str(world / "cm"),
                                                                       "kind": "cost"}])
    with pytest.raises(SourceError, match=message):
        PPOTrainer(load_config(PPOConfig, cfg))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_eval_scorer_is_refused_before_any_model_loads(world, tmp_path, no_model_loads, server):
    from rlhf.training.ppo import PPOTrainer

    front = {"every": 1, "prompts": str(world / "prompts.jsonl"), "grid": 0.5, "n_prompts": 2}
    cfg = make_config(world, tmp_path / "run", eval=front, eval_scorers={"oracle": f"{server.url}/reward"})
    with pytest.raises(SourceError, match=rf"extra scorer 'oracle' \({server.url}/reward\) returned shape \(2,\)"):
        PPOTrainer(load_config(PPOConfig, cfg))


# ---------------------------------------------------------------- in PPO, the in-training front and evaluation

def test_function_and_url_objectives_train_and_evaluate(world, tmp_path, server, echo_prompts):
    """PPO with a function objective (reading a dataset column) and a URL objective, the in-training front and
    evaluate.py scored by them and by a URL extra scorer: both scorers see the same responses, so their points agree
    exactly."""
    from rlhf.evaluation.evaluate import evaluate, parse_args
    from rlhf.training.ppo import PPOTrainer

    front = {"every": 2, "prompts": str(echo_prompts), "grid": 0.5, "n_prompts": 4, "max_new_tokens": 6,
             "max_prompt_length": 64}
    cfg = sources_config(world, tmp_path / "run", server, echo_prompts, eval=front,
                         eval_scorers={"remote": f"{server.url}/extra"}, advantage={"name": "group",
                                                                                   "group_size": 2})
    PPOTrainer(load_config(PPOConfig, cfg)).train()
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/score/length" in r]
    assert len(train) == 3
    for r in train:  # the cost is negated: the server's word count as a cost is minus the function's
        assert r["train/score/remote"] == pytest.approx(-r["train/score/length"])
    fronts = [r["eval/front"] for r in rows if "eval/front" in r]
    assert len(fronts) == 3 and all(f["points"] == f["extra_points"]["remote"] for f in fronts)
    bodies = [b for p, b in server.requests if p == "/reward"]
    assert bodies and all(b["columns"]["echo"] == b["prompts"] for b in bodies)  # each row's own columns

    result = evaluate(parse_args(["--run", str(tmp_path / "run"), "--prompts", str(echo_prompts), "--n_prompts", "4",
                                  "--grid", "0.5", "--max_new_tokens", "6", "--no_wandb", "--out",
                                  str(tmp_path / "eval"), "--scorer", f"again={server.url}/extra"]))
    assert result["points"] == result["extra_points"]["remote"] == result["extra_points"]["again"]
    assert np.allclose(np.asarray(result["points"])[:, 0], -np.asarray(result["points"])[:, 1])


def test_a_failing_server_stops_the_run_with_its_url_and_loses_nothing(world, tmp_path, server, echo_prompts):
    """The server answers the probe and step 1, then fails: the run stops with the documented error, step 1's
    checkpoint is whole, the directory is free, and a resume once the server is back finishes the run."""
    from rlhf.runtime import checkpoint
    from rlhf.training.ppo import PPOTrainer

    out = tmp_path / "run"
    cfg = sources_config(world, out, server, echo_prompts, save_every=1)
    server.set("500", fail_after=2)  # the preflight probe, step 1
    with pytest.raises(SourceError, match=rf"objective 'remote': {server.url}/reward failed 2 times; the last: HTTP "
                                          r"500.*the run stops here, its last checkpoint is whole"):
        PPOTrainer(load_config(PPOConfig, cfg)).train()
    assert checkpoint.resolve("latest", out / "checkpoints").name == "step_00000001"
    assert checkpoint.verify(out / "checkpoints" / "step_00000001") is None  # whole
    server.set("ok")
    PPOTrainer(load_config(PPOConfig, cfg, ["--resume_from", "latest"])).train()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/kl" in r] == [1, 2, 3]
    assert (out / "policy" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_sigkill_then_resume_is_exact_with_a_function_objective(world, tmp_path, echo_prompts):
    """Killed (SIGKILL) after its first checkpoint and resumed, a run scored by function objectives logs the same
    metrics as one that was never interrupted."""

    def run(out, extra=(), kill=False):
        run_ppo_cli(make_config(world, out, total_steps=4, save_every=2, prompts={"path": str(echo_prompts)},
                                objectives=[{"name": "length", "function": f"{HERE}:echo_words", "normalize": True},
                                            {"name": "short", "function": f"{HERE}:words", "kind": "cost"}]),
                    extra, kill)

    run(tmp_path / "full")
    run(tmp_path / "killed", kill=True)
    assert len(untimed_metrics(tmp_path / "killed")) < 4, "the kill came too late to test resumption"
    run(tmp_path / "killed", ["--resume_from", "latest"])
    assert untimed_metrics(tmp_path / "killed") == untimed_metrics(tmp_path / "full")
