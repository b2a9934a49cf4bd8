"""build_model's config handling, the reference parameter count and state-dict keys, checkpoint loading."""
import pytest
import torch

from models import build_model, parse_arch
from models.checkpoint import COMPILED_PREFIX, load_model_weights
from training.run_folder import read_weights
from models.config_validation import ConfigError

# The published architecture with the Sudoku dataset's sizes.
SUDOKU_ARCH = dict(
    name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
    loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
    halt_exploration_prob=0.1, halt_max_steps=16, H_cycles=2, L_cycles=2, H_layers=4, L_layers=4,
    hidden_size=512, num_heads=8, expansion=4, puzzle_emb_ndim=512, pos_encodings="rope",
)
SUDOKU_SIZES = dict(batch_size=768, seq_len=81, vocab_size=11, num_puzzle_identifiers=1)


def layer_keys(level, count):
    names = ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight"]
    return {f"model.inner.{level}.layers.{i}.{n}" for i in range(count) for n in names}


def test_sudoku_architecture_parameter_count_and_state_dict_keys():
    model = build_model(parse_arch(SUDOKU_ARCH), **SUDOKU_SIZES)
    assert sum(p.numel() for p in model.parameters()) == 27_275_266
    expected = {"model.inner.H_init", "model.inner.L_init", "model.inner.embed_tokens.embedding_weight",
                "model.inner.lm_head.weight", "model.inner.q_head.weight", "model.inner.q_head.bias",
                "model.inner.puzzle_emb.weights"} | layer_keys("H_level", 4) | layer_keys("L_level", 4)
    assert set(model.state_dict()) == expected
    assert model.state_dict()["model.inner.puzzle_emb.weights"].shape == (1, 512)


TINY = dict(SUDOKU_ARCH, H_layers=1, L_layers=1, hidden_size=32, num_heads=2, puzzle_emb_ndim=32,
            forward_dtype="float32")
TINY_SIZES = dict(batch_size=2, seq_len=5, vocab_size=6, num_puzzle_identifiers=3)


def test_learned_positions_add_position_table_key():
    model = build_model(parse_arch(dict(TINY, pos_encodings="learned")), **TINY_SIZES)
    assert model.state_dict()["model.inner.embed_pos.embedding_weight"].shape == (5 + 1, 32)


@pytest.mark.parametrize("arch,message", [
    (dict(TINY, hidden_sise=3), "arch.hidden_sise: unknown key"),
    (dict(TINY, hidden_size="big"), "arch.hidden_size"),
    ({k: v for k, v in TINY.items() if k != "H_cycles"}, "arch.H_cycles: missing"),
    (dict(TINY, name="hrm.nope@Model"), "arch.name"),
    (dict(TINY, loss=dict(name="losses@ACTLossHead", loss_type="l2")), "arch.loss.loss_type"),
    (dict(TINY, loss=dict(name="losses@ACTLossHead", loss_type="softmax_cross_entropy", extra=1)), "extra"),
    (dict(TINY, pos_encodings="alibi"), "arch.pos_encodings"),
])
def test_bad_arch_configs_name_the_field(arch, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build_model(parse_arch(arch), **TINY_SIZES)


def test_reference_state_dict_with_compile_prefix_loads_strictly(tmp_path):
    torch.manual_seed(1)
    source = build_model(parse_arch(TINY), **TINY_SIZES)
    with torch.no_grad():
        source.model.inner.puzzle_emb.weights.normal_()
    path = tmp_path / "step_10"
    torch.save({COMPILED_PREFIX + k: v for k, v in source.state_dict().items()}, path)

    torch.manual_seed(2)
    target = build_model(parse_arch(TINY), **TINY_SIZES)
    assert load_model_weights(target, read_weights(str(path))) == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert set(read_weights(str(path))) == set(source.state_dict())

    # Same outputs as the source model.
    source.eval()
    target.eval()
    batch = {"inputs": torch.randint(0, 6, (2, 5)), "labels": torch.randint(0, 6, (2, 5)),
             "puzzle_identifiers": torch.tensor([0, 2])}
    with torch.no_grad():
        out_a = source(carry=source.initial_carry(batch), batch=batch, return_keys=["logits"]).outputs["logits"]
        out_b = target(carry=target.initial_carry(batch), batch=batch, return_keys=["logits"]).outputs["logits"]
    assert torch.equal(out_a, out_b)


def test_mismatched_checkpoint_is_an_error_naming_keys():
    model = build_model(parse_arch(TINY), **TINY_SIZES)
    state = model.state_dict()
    state.pop("model.inner.lm_head.weight")
    state["model.inner.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="lm_head.weight.*model.inner.extra"):
        load_model_weights(model, state)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="step_3"):
        read_weights(str(tmp_path / "step_3"))
