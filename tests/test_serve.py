"""Serving the whole front (issue 22): PEFT / merged export, the per-request-preference server, and its page."""
import json
import socket
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.adapter.svd_lora import SVDLoRAConfig, apply_svd_lora, save_adapter, scoped_preference, svd_lora_layers
from tests.test_pareto import make_run


def _adapted(arch, tmp_path, tokenizer):
    """A tiny base of each architecture (Llama: nn.Linear; GPT-2: Conv1D) with a random, non-zero adapter, saved as
    a run directory."""
    from hhbench.tiny import tiny_causal_lm
    from rlhf.adapter.policy import write_run_info
    from rlhf.scoring.objectives import ModelObjective

    base = tiny_causal_lm(arch, vocab_size=300)
    base.save_pretrained(tmp_path / f"{arch}_base")
    model = apply_svd_lora(AutoModelForCausalLM.from_pretrained(tmp_path / f"{arch}_base"),
                           SVDLoRAConfig(rank=3, pref_dim=2))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in svd_lora_layers(model):
            layer.lora_U.copy_(torch.randn(layer.lora_U.shape, generator=g) * 0.2)
            layer.lora_V.copy_(torch.randn(layer.lora_V.shape, generator=g) * 0.2)
            layer.lora_sigma.copy_(torch.randn(layer.lora_sigma.shape, generator=g) * 0.05)
            layer.lora_s.fill_(0.3)
    run = tmp_path / f"{arch}_run"
    save_adapter(model, run / "policy")
    tokenizer.save_pretrained(run / "policy")
    write_run_info(run / "policy", trainer="ppo", base_model=str(tmp_path / f"{arch}_base"),
                   objectives=[ModelObjective(name="a", model="m"), ModelObjective(name="b", model="m")],
                   preference=None, eval_scorers={}, step=1)
    return model.eval(), run


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_and_merged_exports_equal_the_panacea_model(arch, tmp_path, tokenizer, input_ids):
    from peft import PeftModel

    from rlhf.serving.export import export

    model, run = _adapted(arch, tmp_path, tokenizer)
    ids, mask = input_ids
    lam = [0.7, 0.3]
    with torch.no_grad(), scoped_preference(model, lam):
        want = model(input_ids=ids, attention_mask=mask).logits
    (out,) = export(str(run), str(tmp_path / "peft"), "peft", lam)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 3 + 2 and cfg["lora_alpha"] == 5 and cfg["fan_in_fan_out"] == (arch == "gpt2")
    assert (out / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tmp_path / f"{arch}_base")
    peft_model = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        got = peft_model(input_ids=ids, attention_mask=mask).logits
    assert (got - want).abs().max().item() < 1e-4
    (merged,) = export(str(run), str(tmp_path / "merged"), "merged", lam)
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        assert (plain(input_ids=ids, attention_mask=mask).logits - want).abs().max().item() < 1e-4
    grid = export(str(run), str(tmp_path / "grid"), "peft", None, 0.5)
    assert [p.name for p in grid] == ["lambda_1_0", "lambda_0.5_0.5", "lambda_0_1"]
    assert len(json.loads((tmp_path / "grid" / "front.json").read_text())["adapters"]) == 3
    with pytest.raises(ValueError, match="exactly one of --preference"):
        export(str(run), str(tmp_path / "x"), "peft")


# ---------------------------------------------------------------- the server

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(app, port):
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started:
        assert time.time() < deadline
        time.sleep(0.05)
    return srv, thread


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, request):
    world = request.getfixturevalue("world")
    root = tmp_path_factory.mktemp("serve")
    run = make_run(world, root / "run", s=3.0)
    (run / "eval").mkdir()
    (run / "eval" / "pareto.json").write_text(json.dumps({
        "objectives": ["helpful", "harmless"], "preferences": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
        "points": [[1.0, -1.0], [0.5, 0.5], [-1.0, 1.0]], "base_point": [0.0, 0.0],
        "source_note": "</script><script>window.pwned = 1</script>"}))
    return run


@pytest.fixture(scope="module")
def server(served_run):
    """A live server (uvicorn in a thread) on a tiny run with a random adapter, and its front for the page."""
    from rlhf.serving.server import ServeConfig, build_app

    port = _free_port()
    cfg = ServeConfig(run=str(served_run), port=port, max_batch_size=8, max_tokens_cap=32, default_max_tokens=16,
                      max_body_bytes=20_000, max_messages=8, max_prompt_length=96)
    app = build_app(cfg)
    srv, thread = _start(app, port)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=10)


def _client(url, key="none"):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)


def _chat(url, pref, content="How do I bake bread?", **kw):
    """Through the official openai client, as users will: the preference rides in extra_body."""
    kw = {"max_tokens": 12, "temperature": 0, **kw}
    return _client(url).chat.completions.create(model="run", messages=[{"role": "user", "content": content}],
                                                extra_body={"preference": pref}, **kw)


def _text(url, pref, **kw):
    return _chat(url, pref, **kw).choices[0].message.content


def test_models_endpoint_and_page_with_its_data_escaped(server):
    import httpx

    url, _ = server
    (m,) = _client(url).models.list().data
    assert m.id == "run" and m.objectives == ["helpful", "harmless"] and m.preference_dim == 2
    page = httpx.get(url + "/").text
    assert "<svg" in page and '"points": [[1.0, -1.0]' in page and "slider" in page
    front = page.split("const FRONT = ", 1)[1].split(";\n", 1)[0]
    assert "</script>" not in front and "<" not in front                    # nothing embedded can close the script


def test_concurrent_requests_joining_mid_decode_get_exactly_their_own_answer(server, monkeypatch):
    url, app = server
    batcher = app.state.engine.batcher
    real = batcher._forward

    def paced(*a):  # 10 ms a step, so that the staggered requests overlap whatever this machine's speed
        time.sleep(0.01)
        return real(*a)

    monkeypatch.setattr(batcher, "_forward", paced)
    prefs = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8], [0.35, 0.65]]
    alone = {json.dumps(p): _text(url, p, max_tokens=24) for p in prefs}             # one at a time
    assert len(set(alone.values())) > 1, "lambda must change the answer, or the test proves nothing"
    seeded_alone = _text(url, [0.5, 0.5], temperature=1.0, seed=7, max_tokens=24)
    before = dict(app.state.engine.stats)
    results = [None] * (len(prefs) + 1)

    def send(i):
        time.sleep(0.06 * i)  # staggered: later requests join a batch that is already decoding
        results[i] = (_text(url, prefs[i], max_tokens=24) if i < len(prefs)
                      else _text(url, [0.5, 0.5], temperature=1.0, seed=7, max_tokens=24))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = app.state.engine.stats
    assert stats["max_rows"] > 1 and stats["prefills"] - before["prefills"] > 1, "no request joined a running batch"
    for p, text in zip(prefs, results):
        assert text == alone[json.dumps(p)]
    assert results[-1] == seeded_alone                                                  # sampled: its own noise


def test_streaming_in_openai_chunks_equals_the_whole_answer(server):
    url, _ = server
    whole = _chat(url, [0.3, 0.7], max_tokens=20)
    chunks = list(_client(url).chat.completions.create(
        model="run", messages=[{"role": "user", "content": "How do I bake bread?"}], max_tokens=20, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"preference": [0.3, 0.7]}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant" and len(chunks) > 3
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_and_the_policys_logprobs(server, served_run):
    from rlhf.adapter.policy import load_run_model

    url, app = server
    full = _chat(url, [0.6, 0.4], max_tokens=24).choices[0].message.content
    assert len(full) > 8
    stop = next(full[i:i + 2] for i in range(len(full) // 2, len(full) - 2) if "\ufffd" not in full[i:i + 2])
    cut = _chat(url, [0.6, 0.4], max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in _client(url).chat.completions.create(
        model="run", messages=[{"role": "user", "content": "How do I bake bread?"}], max_tokens=24, temperature=0,
        stop=stop, stream=True, extra_body={"preference": [0.6, 0.4]}) if c.choices)
    assert streamed == cut.choices[0].message.content
    r = _chat(url, [0.6, 0.4], max_tokens=6, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens and all(len(e.top_logprobs) == 3 for e in entries)
    # the policy's own log-probs under the request's preference, from a plain forward over prompt + answer
    engine = app.state.engine
    prompt = engine.prompt_ids([{"role": "user", "content": "How do I bake bread?"}], 6)
    model, tok, _ = load_run_model(served_run)
    with torch.no_grad(), scoped_preference(model, [0.6, 0.4]):  # greedy: the tokens the server drew
        seq = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)[0].tolist()
        answer = seq[len(prompt):]
        logits = model(torch.tensor([seq])).logits[0, len(prompt) - 1:-1]
    want = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(answer)[:, None])[:, 0]
    got = torch.tensor([e.logprob for e in entries[:len(answer)]])
    assert (got - want).abs().max() < 1e-4
    assert entries[0].top_logprobs[0].logprob >= entries[0].logprob - 1e-6


@pytest.mark.parametrize("body,status,param,match", [
    ({"preference": [0.5, 0.3, 0.2]}, 400, "preference", "has 3 entries but this run has 2 objectives"),
    ({"preference": [1.5, -0.5]}, 400, "preference", "must be >= 0"),
    ({"preference": {"helpful": 0.5, "funny": 0.5}}, 400, "preference", r"unknown objective\(s\) \['funny'\]"),
    ({"max_tokens": 1000}, 400, "max_tokens", "exceeds this server's cap 32"),
    ({"messages": []}, 400, "messages", "must be a non-empty list"),
    ({"temperature": -1}, 400, "temperature", r"must be a number in \[0, 10\]"),
    ({"presence_penalty": 0.5}, 400, "presence_penalty", "is not implemented by this server"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format", "is not implemented"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", "is not implemented"),
    ({"logit_bias": {"5": 10}}, 400, "logit_bias", "is not implemented"),
    ({"frobnicate": 1}, 400, "frobnicate", "is not a parameter this server knows"),
    ({"n": 2}, 400, "n", "only n = 1"),
    ({"top_logprobs": 2}, 400, "top_logprobs", "needs logprobs: true"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "a list of up to 4"),
    ({"model": "gpt-4o"}, 404, "model", "this server serves one model, 'run'"),
    ({"messages": [{"role": "user", "content": "hi"}] * 9}, 400, "messages", "takes at most 8"),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, 400, "messages", r"takes at most 96 \(--max_prompt"),
])
def test_bad_requests_fail_alone_with_json_naming_the_field(server, body, status, param, match):
    import re

    import httpx

    url, _ = server
    full = {"model": "run", "messages": [{"role": "user", "content": "Hi?"}], "preference": [0.5, 0.5], **body}
    r = httpx.post(f"{url}/v1/chat/completions", json=full, timeout=60)
    assert r.status_code == status and r.json()["error"]["param"] == param, r.text
    assert re.search(match, r.json()["error"]["message"]), r.json()
    assert _chat(url, {"helpful": 0.25, "harmless": 0.75}).choices[0].message is not None


def test_a_bad_request_beside_good_ones_fails_alone(server):
    """A chat the layout rejects and an over-long prompt sent together with good requests: only they fail."""
    import httpx

    url, _ = server
    bad = [{"messages": [{"role": "assistant", "content": "I start"}, {"role": "assistant", "content": "x"},
                         {"role": "user", "content": "then?"}, {"role": "system", "content": "late"}]},
           {"messages": [{"role": "user", "content": "word " * 400}]}]
    good = [[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]]
    alone = [_text(url, p) for p in good]
    out = [None] * (len(bad) + len(good))

    def send(i):
        if i < len(bad):
            out[i] = httpx.post(f"{url}/v1/chat/completions", json={"model": "run", **bad[i], "max_tokens": 8},
                                timeout=120)
        else:
            out[i] = _text(url, good[i - len(bad)])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(out))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in out[:2]] == [400, 400] and all("error" in r.json() for r in out[:2])
    assert out[2:] == alone


def test_a_row_whose_decode_step_raises_fails_alone(server, monkeypatch):
    import httpx

    url, app = server
    batcher = app.state.engine.batcher
    real = batcher._forward

    def flaky(ids, mask, positions, lam, cache):  # any forward holding the poisoned preference raises
        if (lam - torch.tensor([0.123, 0.877])).abs().sum(-1).min() < 1e-6 and ids.shape[1] == 1:
            raise RuntimeError("poisoned row")
        return real(ids, mask, positions, lam, cache)

    monkeypatch.setattr(batcher, "_forward", flaky)
    good = [[0.9, 0.1], [0.1, 0.9]]
    alone = [_text(url, p) for p in good]
    out = [None] * 3

    def send(i):
        if i == 0:
            out[0] = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": "run", "messages": [{"role": "user", "content": "How do I bake bread?"}], "max_tokens": 12,
                "temperature": 0, "preference": [0.123, 0.877]})
        else:
            time.sleep(0.05)
            out[i] = _text(url, good[i - 1])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[0].status_code == 500 and "poisoned row" in out[0].json()["error"]["message"]
    assert out[1:] == alone and batcher.stats["retried_alone"] >= 1


def test_malformed_json_nan_and_the_gate(server):
    import httpx

    url, _ = server
    post = f"{url}/v1/chat/completions"
    r = httpx.post(post, content=b'{"messages": [', timeout=60, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(post, timeout=60, headers={"content-type": "application/json"},
                   content=b'{"messages": [{"role": "user", "content": "Hi"}], "preference": [NaN, 0.5]}')
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}]})
    r = httpx.post(post, content=body, headers={"content-type": "text/plain"}, timeout=60)   # a form any page can send
    assert r.status_code == 415 and r.json()["error"]["param"] == "content-type"
    r = httpx.post(post, content=body, headers={"content-type": "application/json", "host": "evil.example"})
    assert r.status_code == 421 and "is not served here" in r.json()["error"]["message"]       # DNS rebinding
    r = httpx.post(post, content=body, headers={"content-type": "application/json", "origin": "https://evil.example"})
    assert r.status_code == 403 and "origin" == r.json()["error"]["param"]
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    r = httpx.post(post, content=b'{"messages": "' + b"x" * 30_000 + b'"}', timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most 20000" in r.json()["error"]["message"]
    for r in (httpx.get(f"{url}/nowhere"), httpx.delete(f"{url}/v1/models")):                 # every error is JSON
        assert r.status_code in (404, 405) and "message" in r.json()["error"]


def test_a_client_that_goes_away_is_dropped_from_the_batch(server, monkeypatch):
    import httpx

    url, app = server
    batcher = app.state.engine.batcher
    real = batcher._forward

    def slow(*a):  # 50 ms a step: 32 tokens take longer than the client waits
        time.sleep(0.05)
        return real(*a)

    monkeypatch.setattr(batcher, "_forward", slow)
    steps = batcher.stats["steps"]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/chat/completions", timeout=0.3, json={
            "model": "run", "messages": [{"role": "user", "content": "Tell me everything"}], "max_tokens": 32,
            "temperature": 1.0, "preference": [0.5, 0.5]})
    deadline = time.time() + 10
    while batcher.rows and time.time() < deadline:
        time.sleep(0.05)
    assert not batcher.rows, "the abandoned request kept decoding"
    assert batcher.stats["steps"] - steps < 31, "it decoded to the end although its client had gone"
    assert _chat(url, [1.0, 0.0]).choices[0].finish_reason in ("stop", "length")


def test_api_key_queue_bound_deadline_and_the_runs_own_layout(served_run, tmp_path):
    import httpx
    from openai import AuthenticationError

    from rlhf.serving.server import Engine, ServeConfig, build_app

    cfg = ServeConfig(run=str(served_run), api_key="s3cret", max_batch_size=1, max_queue=1, max_tokens_cap=32,
                      default_max_tokens=16, request_timeout_s=60)
    engine = Engine(cfg)
    port = _free_port()
    srv, thread = _start(build_app(cfg, engine), port)
    url = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(AuthenticationError):
            _client(url, "wrong").chat.completions.create(model="run", messages=[{"role": "user", "content": "Hi"}])
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        ok = _client(url, "s3cret").chat.completions.create(model="run", max_tokens=4,
                                                             messages=[{"role": "user", "content": "Hi"}])
        assert ok.choices[0].message.content is not None
        statuses = []

        def send():
            r = httpx.post(f"{url}/v1/chat/completions", headers={"authorization": "Bearer s3cret"}, timeout=120,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32})
            statuses.append((r.status_code, r.headers.get("retry-after")))

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert any(s == 429 and ra is not None for s, ra in statuses) and any(s == 200 for s, _ in statuses)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
    # the run's own layout: a run that trained with another template is served with it
    info = json.loads((served_run / "policy" / "run.json").read_text())
    other = tmp_path / "other"
    import shutil

    shutil.copytree(served_run, other)
    (other / "policy" / "run.json").write_text(json.dumps({**info, "prompt_template": "Q: {prompt}\nA:"}))
    mine = Engine(ServeConfig(run=str(other)))
    text = mine.tokenizer.decode(mine.prompt_ids([{"role": "user", "content": "Hi"}], 8), skip_special_tokens=True)
    assert text.startswith("Q: Hi") and "BEGINNING OF CONVERSATION" not in text
    from rlhf.serving.server import BadRequest

    roomy = Engine(ServeConfig(run=str(served_run), max_prompt_length=300))   # the model's positions bound too
    long = [{"role": "user", "content": "word " * 50}]
    assert 224 < len(roomy.prompt_ids(long, 1)) <= 300
    with pytest.raises(BadRequest, match=r"max_tokens: the conversation is \d+ tokens and max_tokens 32: together "
                                         r"over the model's 256 positions"):
        roomy.prompt_ids(long, 32)
    # a deadline: a request not done in time is answered 504
    slow = Engine(ServeConfig(run=str(served_run), request_timeout_s=0.001))
    port = _free_port()
    srv, thread = _start(build_app(ServeConfig(run=str(served_run), port=port), slow), port)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32})
        assert r.status_code == 504 and "--request_timeout_s" in r.json()["error"]["message"]
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def _browser():
    import shutil as sh

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = sh.which("chromium") or sh.which("chromium-browser"), sh.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no headless browser here: install Debian's chromium and chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_the_page_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    browser = _browser()
    try:
        browser.get(url + "/")
        slider = browser.find_element(By.ID, "slider-0")
        assert float(slider.get_attribute("value")) == pytest.approx(0.5)
        slider.send_keys(Keys.HOME)                                            # lambda_helpful = 0
        for _ in range(16):
            slider.send_keys(Keys.ARROW_RIGHT)                                 # 16 steps of 0.05: 0.8
        assert browser.find_element(By.ID, "lambda").text == "[0.8,0.2]"
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("How do I plant tomatoes?")
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "used-preference").text)
        assert browser.find_element(By.ID, "used-preference").text == "[0.8,0.2]"
        answer = browser.find_element(By.ID, "answer").text
        want = _chat(url, [0.8, 0.2], "How do I plant tomatoes?", max_tokens=16).choices[0].message.content
        assert answer == (want or "(empty answer)")
        browser.find_element(By.ID, "point-2").click()                         # a point of the front: lambda (0, 1)
        assert browser.find_element(By.ID, "lambda").text == "[0,1]"
        assert browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()
