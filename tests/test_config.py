"""The YAML configs agree with the typed configs' defaults, and moved keys fail with a one-line pointer."""
import os

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from models.config_validation import ConfigError
from models.routing import RoutingConfig
from training.config import load_config
from training.routing_schedule import RoutingScheduleConfig


def read_yaml(*parts):
    """A config file as Hydra reads it (OmegaConf's YAML reads `1e-3` as a number, plain YAML 1.1 does not)."""
    return OmegaConf.to_container(OmegaConf.load(os.path.join(REPO_ROOT, "config", *parts)))


def test_training_routing_block_holds_the_typed_defaults():
    assert read_yaml("cfg_pretrain.yaml")["routing"] == RoutingScheduleConfig().model_dump()


def test_hrm_poh_arch_block_holds_the_typed_defaults_with_the_hrm_controller():
    routing = read_yaml("arch", "hrm_poh.yaml")["routing"]
    assert routing == dict(RoutingConfig().model_dump(), controller="hrm")


def minimal_config(**arch_routing):
    arch = dict(read_yaml("arch", "hrm_v1.yaml"), puzzle_emb_ndim=512, routing=arch_routing)
    values = {k: v for k, v in read_yaml("cfg_pretrain.yaml").items() if k != "defaults"}
    return dict(values, arch=arch, data_path="data/x", checkpoint_path="run")


def test_training_settings_under_arch_routing_name_their_new_place():
    with pytest.raises(ConfigError) as error:
        load_config(minimal_config(controller="hrm", temperature_init=1.5, warmup_epochs=0))
    assert str(error.value) == ("invalid config: arch.routing.temperature_init is a training setting now: use "
                                "routing.temperature_init; arch.routing.warmup_epochs is a training setting now: "
                                "use routing.warmup_epochs")


def test_routing_block_is_validated_with_field_names():
    values = minimal_config(controller="hrm")
    values["routing"] = dict(values["routing"], temperature_min=0)
    with pytest.raises(ConfigError, match=r"config\.routing\.temperature_min: Input should be greater than 0"):
        load_config(values)
    config = load_config(minimal_config(controller="hrm"))
    assert config.routing == RoutingScheduleConfig()


def test_a_rule_over_several_keys_is_short_and_names_them():
    values = minimal_config()
    values.update(epochs=10, eval_interval=3)
    with pytest.raises(ConfigError) as error:
        load_config(values)
    assert str(error.value) == "invalid config: config: eval_interval (3) must divide epochs (10)"


def test_a_long_bad_value_is_shortened():
    values = minimal_config()
    values["lr"] = "x" * 500
    with pytest.raises(ConfigError) as error:
        load_config(values)
    assert len(str(error.value)) <= 200 and "config.lr:" in str(error.value)  # not the 500-character value
