"""W&B logging (offline when no API key) and tqdm, on rank 0 only."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Optional

from rlhf.core.config import doc_field


@dataclass(frozen=True)
class WandbConfig:
    """Where metrics go. W&B runs offline when no API key is configured, so runs never block on the network."""

    project: str = doc_field("panacea-rlhf", "W&B project")
    run_name: Optional[str] = doc_field(None, "W&B run name (null: W&B picks one)")
    mode: Literal["auto", "online", "offline", "disabled"] = doc_field(
        "auto", "auto = online if WANDB_API_KEY is set (or WANDB_MODE says so), else offline")
    dir: Optional[str] = doc_field(None, "where W&B writes its files (null: the run's output_dir)")


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(url: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(cfg: WandbConfig) -> str:
    """The mode W&B will run in. ``online`` without an API key, or with W&B unreachable, falls back to ``offline``
    with one warning: a run never aborts (after its models have loaded) because the network is down."""
    mode = cfg.mode
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    if mode != "online":
        return mode
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not _has_api_key(urlparse(url).hostname or ""):
        reason = "no W&B API key is configured (WANDB_API_KEY or `wandb login`)"
    elif not _reachable(url):
        reason = f"W&B at {url} is unreachable"
    else:
        return mode
    warnings.warn(f"wandb.mode is online but {reason}: logging offline instead; upload later with `wandb sync DIR`")
    return "offline"


STEP = "trainer/step"


class Tracker:
    """Thin wrapper: ``log(metrics, step)`` and ``finish()``; a no-op on ranks other than 0."""

    def __init__(self, cfg: WandbConfig, run_config: dict[str, Any], output_dir: str, active: bool) -> None:
        self.run = None
        if not active or cfg.mode == "disabled":
            return
        import wandb

        mode = resolve_mode(cfg)
        if mode == "disabled":
            return
        os.makedirs(cfg.dir or output_dir, exist_ok=True)
        kwargs = dict(project=cfg.project, name=cfg.run_name, config=run_config, dir=cfg.dir or output_dir,
                      reinit="finish_previous")
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as err:  # W&B's own errors (auth, network, server) must not stop training
            if mode == "offline":
                raise
            warnings.warn(f"wandb.init online failed ({type(err).__name__}: {err}); logging offline instead")
            self.run = wandb.init(mode="offline", **kwargs)
        # every panel plots against the trainer's own step (PPO step, optimiser step), also after a resume
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, STEP: step}, step=step)

    def image(self, key: str, path: str, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(path), STEP: step}, step=step)

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows), STEP: step}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
