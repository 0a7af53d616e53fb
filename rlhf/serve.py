"""Serve the whole front: an OpenAI-compatible chat endpoint with a per-request preference, and a page to explore it.

    python -m rlhf.serve --run RUN [--host 127.0.0.1 --port 8000] [--device cuda] [--api_key KEY]
    python -m rlhf.serve --run RUN --engine vllm [--vllm_url URL]     # decoded by vLLM, each preference a LoRA

- ``POST /v1/chat/completions``: OpenAI's body plus ``preference``: a list of D weights on the simplex, or an object
  keyed by the run's objective names (default: the centre of the simplex); ``stream: true`` answers with server-sent
  chunks (``stream_options.include_usage`` too). ``stop``, ``logprobs`` / ``top_logprobs`` (the policy's log-probs
  under the request's preference), ``seed``, ``temperature`` (0: greedy) and ``top_p`` are honoured; a parameter it
  does not implement is refused by name. The answer echoes the preference it ran under.
- ``GET /v1/models``: the run, its objectives and the preference dimension.
- ``GET /``: a page with the run's front (its ``eval/pareto.json``; ``--front`` for another), sliders that keep the
  preference on the simplex (or a click on a point of the front), and a chat box.

Requests join the running batch between decode steps and leave when done (continuous batching, one lambda and one
seed per row), so a request's text never depends on its neighbours. Prompts are laid out as the run trained them.
``--engine vllm`` hands decoding to a vLLM engine in its own environment (``rlhf/serving/vllm_decoder.py``): the base
loaded once, each request's preference a LoRA request, vLLM's own continuous batching and streaming.
Bounds: body size (413), messages and prompt tokens, the queue (429 with Retry-After), a per-request deadline (504);
a client that goes away is dropped from the batch. Only this machine's Host names are served (``--allowed_hosts``
for more), no cross-origin use, JSON bodies only, and with ``--api_key`` (or $PANACEA_API_KEY) every /v1/ request
needs ``Authorization: Bearer KEY``. Every error is JSON naming the field.
"""
from __future__ import annotations

import sys
from typing import Optional

from rlhf.serving.server import ServeConfig, build_app


def main(argv: Optional[list[str]] = None) -> None:
    import uvicorn

    from rlhf.core.config import describe, load_config
    from rlhf.core.errors import InputError

    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__ + "\nOptions (--key value):\n" + describe(ServeConfig))
        return
    try:
        cfg = load_config(ServeConfig, None, argv)
        app = build_app(cfg)
    except (InputError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(f"[serve] {cfg.run}: objectives {app.state.engine.names}; http://{cfg.host}:{cfg.port}/", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


if __name__ == "__main__":
    main()
