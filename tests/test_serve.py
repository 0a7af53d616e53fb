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


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """A live server (uvicorn in a thread) on a tiny run with a random adapter, and its front for the page."""
    import uvicorn

    from rlhf.serving.server import ServeConfig, build_app

    world = request.getfixturevalue("world")
    root = tmp_path_factory.mktemp("serve")
    run = make_run(world, root / "run", s=3.0)
    (run / "eval").mkdir()
    (run / "eval" / "pareto.json").write_text(json.dumps({
        "objectives": ["helpful", "harmless"], "preferences": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
        "points": [[1.0, -1.0], [0.5, 0.5], [-1.0, 1.0]], "base_point": [0.0, 0.0]}))
    port = _free_port()
    cfg = ServeConfig(run=str(run), port=port, max_batch_size=8, batch_window_ms=200, max_tokens_cap=32,
                      default_max_tokens=16)
    app = build_app(cfg)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started:
        assert time.time() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=10)


def _chat(url, pref, content="How do I bake bread?", **kw):
    import httpx

    body = {"messages": [{"role": "user", "content": content}], "preference": pref, "max_tokens": 12,
            "temperature": 0, **kw}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def test_models_endpoint_and_page(server):
    import httpx

    url, _ = server
    (m,) = httpx.get(f"{url}/v1/models").json()["data"]
    assert m["objectives"] == ["helpful", "harmless"] and m["preference_dim"] == 2 and m["id"] == "run"
    page = httpx.get(url + "/").text
    assert "<svg" in page and '"points": [[1.0, -1.0]' in page and "slider" in page


def test_concurrent_requests_are_batched_and_get_exactly_their_own_answer(server):
    url, app = server
    prefs = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8], [0.35, 0.65]]
    alone = [_chat(url, p).json() for p in prefs]                                   # one at a time
    texts = {json.dumps(a["preference"]): a["choices"][0]["message"]["content"] for a in alone}
    assert len(set(texts.values())) > 1, "lambda must change the answer, or the test proves nothing"
    seeded_alone = _chat(url, [0.5, 0.5], temperature=1.0, seed=7).json()["choices"][0]["message"]["content"]
    before = dict(app.state.engine.stats)
    results = [None] * (len(prefs) + 1)

    def send(i):
        results[i] = (_chat(url, prefs[i]) if i < len(prefs) else _chat(url, [0.5, 0.5], temperature=1.0, seed=7))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = app.state.engine.stats
    assert stats["batches"] - before["batches"] < len(results), "the concurrent requests were not batched"
    for p, r in zip(prefs, results):
        body = r.json()
        assert body["preference"] == p and body["choices"][0]["message"]["content"] == texts[json.dumps(p)]
    assert results[-1].json()["choices"][0]["message"]["content"] == seeded_alone     # sampled: its own noise


@pytest.mark.parametrize("body,param,match", [
    ({"preference": [0.5, 0.3, 0.2]}, "preference", "has 3 entries but this run has 2 objectives"),
    ({"preference": [1.5, -0.5]}, "preference", "must be >= 0"),
    ({"preference": [0.5, 0.6]}, "preference", "must sum to 1"),
    ({"preference": {"helpful": 0.5, "funny": 0.5}}, "preference", r"unknown objective\(s\) \['funny'\]"),
    ({"max_tokens": 1000}, "max_tokens", "exceeds this server's cap 32"),
    ({"messages": []}, "messages", "must be a non-empty list"),
    ({"temperature": -1}, "temperature", "must be a number in"),
])
def test_bad_requests_get_400_naming_the_field_and_the_server_keeps_serving(server, body, param, match):
    import re

    import httpx

    url, _ = server
    full = {"messages": [{"role": "user", "content": "Hi?"}], "preference": [0.5, 0.5], **body}
    r = httpx.post(f"{url}/v1/chat/completions", json=full, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert re.search(match, r.json()["error"]["message"]), r.json()
    assert _chat(url, {"helpful": 0.25, "harmless": 0.75}).status_code == 200


def test_malformed_json_nan_and_a_vanishing_client(server):
    import httpx

    url, _ = server
    r = httpx.post(f"{url}/v1/chat/completions", content=b'{"messages": [', timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60, headers={"content-type": "application/json"},
                   content=b'{"messages": [{"role": "user", "content": "Hi"}], "preference": [NaN, 0.5]}')
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]
    # a client that gives up mid-request disturbs nobody: the others get their answers, the server goes on
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/chat/completions", timeout=0.01,
                   json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32})
    other = _chat(url, [0.5, 0.5])
    assert other.status_code == 200 and _chat(url, [1.0, 0.0]).status_code == 200


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
        want = _chat(url, [0.8, 0.2], "How do I plant tomatoes?", max_tokens=16).json()["choices"][0]["message"]
        assert answer == (want["content"] or "(empty answer)")
        browser.find_element(By.ID, "point-2").click()                         # a point of the front: lambda (0, 1)
        assert browser.find_element(By.ID, "lambda").text == "[0,1]"
        assert browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()
