"""``python -m rlhf.serve --engine vllm`` through the official openai client: each request's preference is a LoRA
request on a vLLM engine the server starts in its own environment. Greedy answers equal the hf engine's under every
preference, alone and concurrently; streaming, stop strings and the policy's log-probs behave as on the hf engine;
adapters beyond ``vllm_adapters`` are unloaded and reloaded on demand. Skips with the reason without the vLLM
environment (``bash scripts/setup_vllm.sh``)."""
import json
import threading

import pytest
import torch

from tests.test_pareto import make_run
from tests.test_serve import _chat, _client, _free_port, _start, _text
from tests.test_vllm import needs_vllm

pytestmark = needs_vllm

PREFS = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run with a random adapter on a hidden-128 base (vLLM's LoRA kernels want it), and its two servers: the hf
    engine and the vllm engine (which starts vLLM itself), the latter holding at most 2 adapters."""
    from hhbench.fixtures import write_tiny_base
    from rlhf.serving.server import ServeConfig, build_app

    root = tmp_path_factory.mktemp("serve_vllm")
    write_tiny_base(root / "world" / "base", hidden=128)
    run = make_run(root / "world", root / "run", s=3.0)
    urls, servers = {}, []
    for engine in ("hf", "vllm"):
        port = _free_port()
        cfg = ServeConfig(run=str(run), port=port, engine=engine, max_batch_size=8, max_tokens_cap=32,
                          default_max_tokens=16, vllm_max_loras=2, vllm_adapters=2, vllm_kv_cache_gib=1)
        app = build_app(cfg)
        servers.append(_start(app, port))
        urls[engine] = (f"http://127.0.0.1:{port}", app)
    yield urls, run
    for srv, thread in servers:
        srv.should_exit = True
        thread.join(timeout=10)
    urls["vllm"][1].state.engine.batcher.close()


def test_greedy_answers_equal_the_hf_engines_alone_and_concurrently(runs):
    (hf, _), (vl, app) = runs[0]["hf"], runs[0]["vllm"]
    want = {json.dumps(p): _text(hf, p, max_tokens=24) for p in PREFS}
    assert len(set(want.values())) > 2, "lambda must change the answer, or the test proves nothing"
    assert {json.dumps(p): _text(vl, p, max_tokens=24) for p in PREFS} == want     # one at a time
    results = [None] * (2 * len(PREFS))

    def send(i):
        try:
            results[i] = _text(vl, PREFS[i % len(PREFS)], max_tokens=24)
        except Exception as err:  # noqa: BLE001 - the assertion below shows it
            results[i] = err

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [want[json.dumps(PREFS[i % len(PREFS)])] for i in range(len(results))]
    stats = app.state.engine.stats
    assert stats["max_rows"] > 1                                  # requests were at the engine together
    assert stats["adapters_unloaded"] >= 3 and app.state.engine.batcher.adapters.__len__() <= 2


def test_streaming_stop_strings_and_the_policys_logprobs(runs):
    (hf, _), (vl, _) = runs[0]["hf"], runs[0]["vllm"]
    whole = _chat(vl, [0.3, 0.7], max_tokens=20)
    chunks = list(_client(vl).chat.completions.create(
        model="run", messages=[{"role": "user", "content": "How do I bake bread?"}], max_tokens=20, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"preference": [0.3, 0.7]}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(chunks) > 3
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    full = whole.choices[0].message.content
    stop = next(full[i:i + 2] for i in range(len(full) // 2, len(full) - 2) if "\ufffd" not in full[i:i + 2])
    cut = _chat(vl, [0.3, 0.7], max_tokens=20, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    # log-probs: the policy's raw ones under the request's preference, as the hf engine reports them
    a, b = (_chat(u, [0.6, 0.4], max_tokens=6, logprobs=True, top_logprobs=3) for u in (vl, hf))
    ea, eb = a.choices[0].logprobs.content, b.choices[0].logprobs.content
    assert [e.token for e in ea] == [e.token for e in eb] and len(ea) == 6
    assert torch.allclose(torch.tensor([e.logprob for e in ea]), torch.tensor([e.logprob for e in eb]), atol=1e-4)
    for x, y in zip(ea, eb):
        assert [t.token for t in x.top_logprobs] == [t.token for t in y.top_logprobs]
        assert torch.allclose(torch.tensor([t.logprob for t in x.top_logprobs]),
                              torch.tensor([t.logprob for t in y.top_logprobs]), atol=1e-4)


def test_seeded_samples_reproduce_and_depend_on_the_preference(runs):
    vl, _ = runs[0]["vllm"]
    kw = dict(temperature=1.0, seed=11, max_tokens=16)
    first = _text(vl, [0.5, 0.5], **kw)
    assert _text(vl, [0.5, 0.5], **kw) == first
    assert _text(vl, [0.5, 0.5], temperature=1.0, seed=12, max_tokens=16) != first
