"""W&B logging (offline when no API key) and tqdm, on rank 0 only."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Optional

from rlhf.config import doc_field


@dataclass(frozen=True)
class WandbConfig:
    """Where metrics go. W&B runs offline when no API key is configured, so runs never block on the network."""

    project: str = doc_field("panacea-rlhf", "W&B project")
    run_name: Optional[str] = doc_field(None, "W&B run name (null: W&B picks one)")
    mode: Literal["auto", "online", "offline", "disabled"] = doc_field(
        "auto", "auto = online if WANDB_API_KEY is set (or WANDB_MODE says so), else offline")
    dir: Optional[str] = doc_field(None, "where W&B writes its files (null: the run's output_dir)")


class Tracker:
    """Thin wrapper: ``log(metrics, step)`` and ``finish()``; a no-op on ranks other than 0."""

    def __init__(self, cfg: WandbConfig, run_config: dict[str, Any], output_dir: str, active: bool) -> None:
        self.run = None
        if not active or cfg.mode == "disabled":
            return
        import wandb

        mode = cfg.mode
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        os.makedirs(cfg.dir or output_dir, exist_ok=True)
        self.run = wandb.init(project=cfg.project, name=cfg.run_name, config=run_config, mode=mode,
                              dir=cfg.dir or output_dir, reinit="finish_previous")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
