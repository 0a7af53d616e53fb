import json

import pytest

from rlhf.runtime.engine import EngineConfigError, check_ds_config, resolve_ds_config

ARGS = dict(micro_batch_size=4, grad_accum=2, lr=1e-4, weight_decay=0.0, precision="bf16", max_grad_norm=1.0,
            hidden_size=64)


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero3_offload"])
def test_shipped_configs_resolve_and_validate(name):
    cfg = resolve_ds_config(f"ds_configs/{name}.json", world=4, **ARGS)
    assert cfg["train_batch_size"] == 4 * 2 * 4 and cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["optimizer"]["params"]["lr"] == 1e-4
    assert "auto" not in json.dumps(cfg)
    check_ds_config(cfg, world=4)
    with pytest.raises(EngineConfigError, match="world 8"):
        check_ds_config(cfg, world=8)


def test_cpu_configs_use_torch_adam():
    for name in ("zero1", "zero2", "zero3"):
        assert json.load(open(f"ds_configs/{name}.json"))["optimizer"]["params"]["torch_adam"] is True


def test_literal_that_disagrees_is_an_error(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    with pytest.raises(EngineConfigError, match="'train_micro_batch_size_per_gpu' is 8 but the run config implies 4"):
        resolve_ds_config(p, world=1, **ARGS)
    with pytest.raises(EngineConfigError, match="not found"):
        resolve_ds_config(tmp_path / "none.json", world=1, **ARGS)
