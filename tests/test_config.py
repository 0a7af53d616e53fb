from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest

from rlhf.core.config import ConfigError, check, describe, doc_field, load_config, parse_overrides, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = doc_field(1e-4, "learning rate")
    fixed: Optional[tuple[float, ...]] = doc_field(None, "fixed preference")

    def __post_init__(self):
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Outer:
    name: str = doc_field("run", "run name")
    steps: int = doc_field(10, "number of steps")
    mode: Literal["ls", "tche"] = doc_field("ls", "aggregation")
    inner: Inner = doc_field(factory=Inner, doc="nested section")


def test_yaml_and_nested_cli_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\nsteps: 3\ninner:\n  lr: 0.01\n")
    cfg = load_config(Outer, p, ["--steps", "5", "--inner.fixed", "[0.3, 0.7]", "--inner.lr=1e-3", "--mode", "tche"])
    assert cfg == Outer(name="a", steps=5, mode="tche", inner=Inner(lr=1e-3, fixed=(0.3, 0.7)))
    assert to_dict(cfg)["inner"]["fixed"] == [0.3, 0.7]
    with pytest.raises(Exception):
        cfg.steps = 4  # frozen


def test_unknown_key_names_field_and_valid_keys():
    with pytest.raises(ConfigError, match=r"inner\.lrr.*valid keys"):
        load_config(Outer, None, ["--inner.lrr", "1"])


@pytest.mark.parametrize("args,match", [
    (["--steps", "abc"], "'steps': expected an integer"),
    (["--steps", "1.5"], "'steps': expected an integer"),
    (["--mode", "max"], "'mode': must be one of"),
    (["--inner.lr", "-1"], "'inner.lr': must be > 0"),
    (["--inner.fixed", "[a, b]"], r"'inner.fixed\[0\]': expected a number"),
])
def test_wrong_type_and_range_are_clear(args, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, None, args)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "3", "--flag", "--c=x", "--d", "1e-4"]) == {
        "a": {"b": 3}, "flag": True, "c": "x", "d": 1e-4}
    with pytest.raises(ConfigError, match="--key value"):
        parse_overrides(["positional"])


def test_describe_lists_docs():
    text = describe(Outer)
    assert "inner.lr: float = 0.0001  # learning rate" in text and "steps: int = 10" in text


def test_an_override_that_switches_a_variant_drops_the_files_keys_for_the_old_one(tmp_path):
    """``--preference.name fixed`` on a file with a Dirichlet block (as the RS baselines in scripts/ do): the old
    variant's keys are dropped with a warning naming them, not merged into the new variant and refused."""
    from rlhf.training.ppo_config import PPOConfig

    three = Path(__file__).resolve().parents[1] / "configs" / "three" / "ppo.yaml"
    with pytest.warns(UserWarning, match=r"--preference.name fixed replaces the config file's preference block "
                                         r"\(variant 'dirichlet'\): its keys \['per', 'vertex_prob'\] are dropped"):
        cfg = load_config(PPOConfig, three, ["--preference.name", "fixed", "--preference.value",
                                                                "[1.0,0.0,0.0]"])
    assert cfg.preference.NAME == "fixed" and cfg.preference.value == (1.0, 0.0, 0.0)
    same = load_config(PPOConfig, three, ["--preference.vertex_prob", "0.2"])  # same variant: merged
    assert (same.preference.NAME, same.preference.vertex_prob, same.preference.per) == ("dirichlet", 0.2, "batch")
