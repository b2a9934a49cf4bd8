"""The YAML configs agree with the typed configs' defaults, and moved keys fail with a one-line pointer."""
import os
import re

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from models.attention import BACKEND_ENV_VAR, installed_backends, resolve_backend
from models import parse_arch
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


def with_arch(values, **arch):
    return dict(values, arch=dict(values["arch"], **arch))


@pytest.mark.parametrize("change, message", [
    (lambda v: with_arch(v, routing={"controller": "classical", "topk": 9}, num_heads=8),
     "arch: routing.topk (9) must be at most num_heads (8)"),
    (lambda v: with_arch(v, hidden_size=24, num_heads=8),  # head size 3: RoPE rotates pairs
     "arch: rope needs an even head size: hidden_size / num_heads = 3"),
    (lambda v: with_arch(v, attention_backend="flash"), "arch.attention_backend: Input should be 'auto'"),
    (lambda v: dict(v, seed=-1), "config.seed: Input should be greater than or equal to 0"),
    (lambda v: dict(v, seed=2 ** 64), "config.seed: Input should be less than"),
])
def test_values_the_model_or_the_loader_would_reject_fail_at_start_up_naming_the_key(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(change(minimal_config()))


def test_the_largest_seeds_torch_and_numpy_take_are_accepted():
    assert load_config(dict(minimal_config(), seed=2 ** 63 - 1)).seed == 2 ** 63 - 1


@pytest.mark.parametrize("variable", [None, "fa3"])
def test_a_forced_attention_backend_that_is_not_installed_is_a_config_error_naming_where_it_was_set(
        variable, monkeypatch):
    if "fa3" in installed_backends():
        pytest.skip("FlashAttention 3 is installed here")
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    if variable:
        monkeypatch.setenv(BACKEND_ENV_VAR, variable)
    with pytest.raises(ConfigError, match=f"^{BACKEND_ENV_VAR if variable else 'arch.attention_backend'}: "
                                          "attention backend 'fa3' was forced but"):
        resolve_backend("fa3")


def test_the_trm_arch_block_checks_its_head_size_and_attention_backend_too():
    arch = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO_ROOT, "config", "arch", "trm.yaml")), resolve=True)
    arch.pop("defaults", None)
    for change, message in ((dict(hidden_size=24, num_heads=8, pos_encodings="rope"), "rope needs an even head size"),
                            (dict(attention_backend="flash"), "arch.attention_backend: Input should be 'auto'")):
        with pytest.raises(ConfigError, match=message):
            parse_arch(dict(arch, **change))
