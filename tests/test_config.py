"""The YAML configs agree with the typed configs' defaults, and moved keys fail with a one-line pointer."""
import os
import re

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from models.attention import BACKEND_ENV_VAR, installed_backends, resolve_backend
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


def test_trm_poh_arch_block_holds_the_typed_defaults_with_the_hrm_controller():
    routing = read_yaml("arch", "trm_poh.yaml")["routing"]
    assert routing == dict(RoutingConfig().model_dump(), controller="hrm")


# The TRM release README's commands: the arch they pick and the settings they give (all of them with
# lr=1e-4 and ema=True, arch.L_layers=2, the arch's other keys at the release's defaults).
TRM_README_RUNS = {
    "trm-sudoku": dict(arch="trm", mlp_t=True, pos_encodings="none", H_cycles=3, L_cycles=6, epochs=50000,
                       eval_interval=5000, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0,
                       data_path="data/sudoku-extreme-1k-aug-1000"),
    "trm-sudoku-att": dict(arch="trm", mlp_t=False, pos_encodings="rope", H_cycles=3, L_cycles=6, epochs=50000,
                           eval_interval=5000, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0,
                           data_path="data/sudoku-extreme-1k-aug-1000"),
    "trm-maze": dict(arch="trm", mlp_t=False, pos_encodings="rope", H_cycles=3, L_cycles=4, epochs=50000,
                     eval_interval=5000, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0,
                     data_path="data/maze-30x30-hard-1k"),
    "trm-arc1": dict(arch="trm", mlp_t=False, pos_encodings="rope", H_cycles=3, L_cycles=4, epochs=100000,
                     eval_interval=10000, puzzle_emb_lr=1e-2, weight_decay=0.1, puzzle_emb_weight_decay=0.1,
                     data_path="data/arc-aug-1000"),
    "trm-arc2": dict(arch="trm", mlp_t=False, pos_encodings="rope", H_cycles=3, L_cycles=4, epochs=100000,
                     eval_interval=10000, puzzle_emb_lr=1e-2, weight_decay=0.1, puzzle_emb_weight_decay=0.1,
                     data_path="data/arc-2-aug-1000"),
}


@pytest.mark.parametrize("data", TRM_README_RUNS)
def test_trm_data_configs_are_the_release_readme_commands(data):
    from pretrain import compose_config
    expected = dict(TRM_README_RUNS[data])
    config = load_config(compose_config([f"data={data}"]))
    arch = config.arch.model_dump()
    release_arch = read_yaml("arch", f"{expected.pop('arch')}.yaml")
    assert config.arch.name == release_arch["name"]
    for key in ("mlp_t", "pos_encodings", "H_cycles", "L_cycles"):
        assert arch[key] == expected.pop(key), key
    assert (arch["L_layers"], arch["hidden_size"], arch["halt_max_steps"]) == (2, 512, 16)
    assert (config.lr, config.ema, config.global_batch_size, config.lr_warmup_steps) == (1e-4, True, 768, 2000)
    for key, value in expected.items():
        assert getattr(config, key) == value, key
    # An arch on the command line replaces the one chosen there and keeps its settings.
    routed = load_config(compose_config([f"data={data}", "arch=trm_poh", "arch.mlp_t=false",
                                         "arch.pos_encodings=rope"]))
    assert routed.arch.routing.controller == "hrm" and routed.arch.L_cycles == arch["L_cycles"]
    assert routed.epochs == config.epochs


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
     "invalid config: arch: routing.topk (9) must be at most num_heads (8)"),
    (lambda v: with_arch(v, hidden_size=24, num_heads=8),  # head size 3: RoPE rotates pairs
     "invalid config: arch: rope needs an even head size: hidden_size / num_heads = 3"),
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
