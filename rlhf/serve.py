"""Serve the whole front: an OpenAI-compatible chat endpoint with a per-request preference, and a page to explore it.

    python -m rlhf.serve --run RUN [--host 127.0.0.1 --port 8000] [--device cuda] [--max_batch_size 16]

- ``POST /v1/chat/completions``: OpenAI's body (``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``)
  plus ``preference``: a list of D weights on the simplex, or an object keyed by the run's objective names
  (default: the centre of the simplex). The answer echoes the preference it ran under.
- ``GET /v1/models``: the run, its objectives and the preference dimension.
- ``GET /``: a page with the run's front (its ``eval/pareto.json``; ``--front`` for another), sliders that keep the
  preference on the simplex (or a click on a point of the front), and a chat box.

Requests that arrive together (within ``--batch_window_ms``, up to ``--max_batch_size``) are decoded in one batch with
one lambda per row (the adapter's per-sample preference), so N users with N preferences cost about one forward per
token, not N. Each request samples with its own seeded noise (``SharedNoiseSampling``), so a response never depends
on what else was in its batch: with greedy decoding, concurrent requests get exactly the text each would get alone.
Bad input is answered with HTTP 400 naming the field and the fix; the server keeps serving.
"""
from __future__ import annotations

import sys
from typing import Optional

from rlhf.serving.server import ServeConfig, build_app


def main(argv: Optional[list[str]] = None) -> None:
    import uvicorn

    from rlhf.core.config import ConfigError, describe, load_config

    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__ + "\nOptions (--key value):\n" + describe(ServeConfig))
        return
    try:
        cfg = load_config(ServeConfig, None, argv)
        app = build_app(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"[serve] {cfg.run}: objectives {app.state.engine.names}; http://{cfg.host}:{cfg.port}/", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


if __name__ == "__main__":
    main()
