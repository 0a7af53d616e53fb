"""The plug-in shape (rlhf/core/registry.py): a block names its variant, owns its fields, checks itself against the
run config when the config loads, and round-trips through to_dict; trainers read capabilities, never names."""
import pytest

from hhbench.fixtures import write_ppo_config
from rlhf.algo.advantages import ADVANTAGES, GAEConfig, GroupConfig
from rlhf.algo.aggregation import AGGREGATIONS
from rlhf.algo.preference import PREFERENCES
from rlhf.core.config import ConfigError, describe, from_dict, load_config, to_dict
from rlhf.core.registry import check_zero_stage
from rlhf.rollout.backends import BACKENDS
from rlhf.scoring.objectives import OBJECTIVES, ModelObjective, ObjectiveConfig
from rlhf.training.ppo_config import PPOConfig


def load(path, *over):
    return load_config(PPOConfig, path, list(over))


def test_short_form_mapping_and_cli_merge_pick_the_same_variant(world, tmp_path):
    path = write_ppo_config(world, tmp_path / "a")
    assert isinstance(load(path).advantage, GAEConfig)                                    # the default
    short = load(path, "--advantage", "group")
    assert isinstance(short.advantage, GroupConfig) and short.advantage.group_size == 4
    merged = load(path, "--advantage", "group", "--advantage.group_size", "2")            # scalar, then a field
    assert merged.advantage == GroupConfig(group_size=2) and merged.advantage.samples_per_prompt == 2
    yaml_form = load(write_ppo_config(world, tmp_path / "b", advantage={"name": "group", "baseline": "loo"}))
    assert yaml_form.advantage == GroupConfig(baseline="loo")


def test_a_variant_owns_its_fields_and_the_errors_name_them(world, tmp_path):
    path = write_ppo_config(world, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['advantage.group_size'\] for advantage "
                                          r"estimator 'gae'; valid keys: \['advantage.gae_lambda'\]"):
        load(path, "--advantage.group_size", "2")
    with pytest.raises(ConfigError, match="'aggregation.name': unknown aggregation 'max'; must be one of "
                                          r"\['ls', 'stche', 'tche'\]"):
        load(path, "--aggregation", "max")
    with pytest.raises(ConfigError, match=r"'aggregation.mu': must be > 0"):
        load(path, "--aggregation", "stche", "--aggregation.mu", "0")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['aggregation.mu'\] for aggregation 'tche'"):
        load(path, "--aggregation", "tche", "--aggregation.mu", "0.5")


def test_each_block_checks_itself_against_the_whole_run_config_at_load(world, tmp_path):
    path = write_ppo_config(world, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"'advantage.group_size': must divide rollout_batch_size \(4"):
        load(path, "--advantage", "group", "--advantage.group_size", "3")
    with pytest.raises(ConfigError, match=r"'aggregation.ideal': needs 2 entries"):
        load(path, "--aggregation", "tche", "--aggregation.ideal", "[1.0]")
    with pytest.raises(ConfigError, match=r"'preference.value': has 3 entries but 2 objectives"):
        load(path, "--preference", "fixed", "--preference.value", "[0.2, 0.2, 0.6]")


def test_to_dict_round_trips_and_resume_sees_a_changed_variant(world, tmp_path):
    cfg = load(write_ppo_config(world, tmp_path / "a"), "--aggregation", "stche", "--aggregation.mu", "0.3",
               "--preference", "fixed", "--preference.value", "[0.3, 0.7]", "--advantage", "group")
    d = to_dict(cfg)
    assert d["aggregation"] == {"name": "stche", "ideal": None, "ideal_margin": 0.1, "mu": 0.3}
    assert d["preference"] == {"name": "fixed", "value": [0.3, 0.7]}
    assert d["objectives"][0] == {"name": "helpful", "kind": "reward", "normalize": False,
                                  "model": str(world / "rm"), "batch_size": 16, "max_length": None,
                                  "prompt_template": cfg.objectives[0].prompt_template}
    assert from_dict(PPOConfig, d) == cfg


def test_objectives_pick_their_source_by_key():
    assert type(OBJECTIVES.parse("helpful", "objectives[0]")) is ObjectiveConfig           # a name, no source
    assert OBJECTIVES.parse({"name": "h", "model": "m"}, "o") == ModelObjective(name="h", model="m")
    assert not ObjectiveConfig(name="x").SCORES and ModelObjective(name="h", model="m").SCORES
    with pytest.raises(ConfigError, match="'objectives\\[0\\].model': is required"):
        OBJECTIVES.parse({"name": "h", "model": ""}, "objectives[0]")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['o.batch_size'\] for ObjectiveConfig"):
        OBJECTIVES.parse({"name": "h", "batch_size": 4}, "o")                                # a model's field, no model


def test_capabilities_not_names_decide(world, tmp_path):
    path = write_ppo_config(world, tmp_path / "a")
    assert ADVANTAGES.get("gae").NEEDS_CRITIC and not ADVANTAGES.get("group").NEEDS_CRITIC
    assert AGGREGATIONS.make("tche").build().uses_ideal and not AGGREGATIONS.make("ls").build().uses_ideal
    assert PREFERENCES.make("dirichlet", per="sample").per_row and PREFERENCES.make("fixed", value=(1.0,)).fixed_value
    cfg = load(path, "--generation.backend", "hf_static_compile")
    check_zero_stage(cfg, 2, "z2.json")
    with pytest.raises(ConfigError, match="'generation.backend': 'hf_static_compile' needs ZeRO stage 0-2 "
                                          r"\(z3.json is stage 3\)"):
        check_zero_stage(cfg, 3, "z3.json")
    check_zero_stage(load(path), 3, "z3.json")                                            # hf: every stage
    assert BACKENDS.make("hf").build().name == "hf"


def test_help_lists_every_variant_with_its_own_fields():
    text = describe(PPOConfig)
    for line in ("advantage = {name: group}:", "advantage.group_size: int = 4", "advantage.gae_lambda: float = 0.95",
                 "aggregation = {name: stche}:", "aggregation.mu: float = 0.1", "preference.value:",
                 "generation.backend = {name: hf_static_compile}:", "objectives[] with `model:`",
                 "objectives[].batch_size: int = 16"):
        assert line in text, line
