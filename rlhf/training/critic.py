"""The critic: a transformer backbone with D value heads, preference-conditioned like the actor.

Values depend on lambda (the policy does), so the backbone carries the same SVD-LoRA adapter as the actor and
receives the same lambda; its D linear heads predict one value per objective at every position.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from rlhf.adapter.svd_lora import (SVDLoRAConfig, adapter_state_dict, apply_svd_lora, load_adapter, save_adapter,
                                   svd_lora_layers)

HEAD_FILE = "value_head.safetensors"


class ValueModel(nn.Module):
    """``values(input_ids, attention_mask, position_ids) -> (B, L, D)``."""

    def __init__(self, backbone: nn.Module, num_objectives: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        hidden = backbone.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, num_objectives)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1))
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state                              # (B, L, H)
        return self.value_head(hidden.to(self.value_head.weight.dtype)).float()               # (B, L, D)


def build_critic(path: str, num_objectives: int, adapter: SVDLoRAConfig, dtype: Optional[torch.dtype] = None
                 ) -> ValueModel:
    """Backbone from ``path`` (the actor's base or a given critic), adapter applied, value heads trainable."""
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(path, dtype=dtype)
    apply_svd_lora(backbone, adapter)
    critic = ValueModel(backbone, num_objectives)
    critic.svd_lora_config = adapter  # so set_preference / adapter helpers work on the whole critic
    if dtype is not None:
        critic.value_head.to(dtype)
    return critic


def critic_trainable_state(critic: ValueModel) -> dict[str, torch.Tensor]:
    state = {f"backbone.{k}": v for k, v in adapter_state_dict(critic.backbone).items()}
    state.update({f"value_head.{k}": v.detach() for k, v in critic.value_head.state_dict().items()})
    return state


def save_critic(critic: ValueModel, path: str | Path, state: Optional[dict[str, torch.Tensor]] = None,
                fingerprint: Optional[str] = None) -> None:
    """Adapter of the backbone (same format as the actor's) + value heads; ``state`` may hold gathered tensors."""
    from safetensors.torch import save_file

    path = Path(path)
    state = state if state is not None else critic_trainable_state(critic)
    adapter = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    save_adapter(critic.backbone, path, state_dict=adapter, fingerprint=fingerprint)
    save_file({k[len("value_head."):]: v.detach().cpu().contiguous() for k, v in state.items()
               if k.startswith("value_head.")}, str(path / HEAD_FILE))
    (path / "critic.json").write_text(json.dumps({"num_objectives": critic.value_head.out_features}))


def load_critic_weights(critic: ValueModel, path: str | Path) -> None:
    from safetensors.torch import load_file

    load_adapter(critic.backbone, path)
    critic.value_head.load_state_dict(load_file(str(Path(path) / HEAD_FILE)))


def is_critic_param(name: str) -> bool:
    return "lora_" in name or name.startswith("value_head.")


__all__ = ["ValueModel", "build_critic", "save_critic", "load_critic_weights", "critic_trainable_state",
           "svd_lora_layers"]
