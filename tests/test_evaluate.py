"""evaluate.py on an ema=true run (its train state is evaluated with the weight average, as step_N holds it), and
on run folders of the TRM release (its all_config.yaml keys, its compiled checkpoints)."""
import json
import os
import shutil

import pytest
import torch
import yaml

import evaluate
from models.checkpoint import COMPILED_PREFIX
from tiny_runs import make_config, write_tiny_dataset
from training.build import create_loader, create_model
from training.config import load_config
from training.evaluation import EvaluationError, evaluate as evaluate_in_process
from training.distributed import DistributedContext
from training.loop import run_training
from training.run_folder import read_train_state

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    write_tiny_dataset(str(root / "data" / "tiny"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("WANDB_MODE", "disabled")
        run_training(make_config(str(root / "data" / "tiny"), f"checkpoint_path={root / 'run'}", "epochs=2",
                                 "ema=true", "ema_rate=0.9"), CPU)
    step = max(int(name[len("step_"):]) for name in os.listdir(root / "run") if name.startswith("step_")
               and name[len("step_"):].isdigit())
    return root / "run", step


def run_evaluate(capsys, *argv):
    code = evaluate.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@pytest.mark.slow
def test_the_train_state_of_an_ema_run_is_evaluated_with_the_weight_average(ema_run, tmp_path, capsys):
    run_dir, step = ema_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    code, out, err = run_evaluate(capsys, "--checkpoint", str(run / "train_state.pt"), "--save-outputs", "preds")
    assert code == 0, err
    assert f"evaluating the weight average (ema) of {run / 'train_state.pt'}, as step_N files hold it" in err
    assert f"saved preds to {run / f'step_{step}_all_preds'}.<rank> (1 file(s))" in err
    code_step, out_step, _ = run_evaluate(capsys, "--checkpoint", str(run / f"step_{step}"))
    assert code_step == 0 and json.loads(out) == json.loads(out_step)

    # The trained (not averaged) weights evaluate differently, so the comparison above can fail.
    torch.save(read_train_state(str(run / "train_state.pt")).model, run / "step_999")
    _, out_trained, _ = run_evaluate(capsys, "--checkpoint", str(run / "step_999"))
    assert json.loads(out_trained) != json.loads(out_step)


# ---------------------------------------------------------------------------------------------------------
# A run folder of the TRM release: its all_config.yaml keys, and step_N saved from its compiled model.

RELEASE_LOSS = dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy")
RELEASE_ARCHS = {
    # The release's config/arch files at tiny sizes, with the keys they have (no attention_backend, no routing).
    "trm": dict(name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1", loss=RELEASE_LOSS,
                halt_exploration_prob=0.1, halt_max_steps=3, H_cycles=2, L_cycles=2, H_layers=0, L_layers=2,
                hidden_size=32, num_heads=2, expansion=4, puzzle_emb_ndim=32, pos_encodings="rope",
                forward_dtype="float32", mlp_t=False, puzzle_emb_len=2, no_ACT_continue=True),
    "trm_mlp_t": dict(name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1", loss=RELEASE_LOSS,
                      halt_exploration_prob=0.1, halt_max_steps=3, H_cycles=2, L_cycles=2, H_layers=0, L_layers=2,
                      hidden_size=32, num_heads=2, expansion=4, puzzle_emb_ndim=32, pos_encodings="none",
                      forward_dtype="float32", mlp_t=True, puzzle_emb_len=16, no_ACT_continue=True),
    "transformer": dict(name="recursive_reasoning.transformers_baseline@Model_ACTV2", loss=RELEASE_LOSS,
                        halt_exploration_prob=0.1, halt_max_steps=3, H_cycles=1, H_layers=2, hidden_size=32,
                        num_heads=3, expansion=4, puzzle_emb_ndim=32, pos_encodings="rope", forward_dtype="float32"),
}
# The training keys both configs share, with the release's defaults.
SHARED_TRAINING_KEYS = dict(global_batch_size=16, epochs=4, lr=1e-4, lr_min_ratio=1.0, lr_warmup_steps=2,
                            weight_decay=1.0, beta1=0.9, beta2=0.95, puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0,
                            project_name="Tiny ACT-torch", run_name="TinyRecursiveReasoningModel_ACTV1 tiny-run",
                            seed=0, checkpoint_every_eval=True, eval_interval=2, eval_save_outputs=[], ema=True,
                            ema_rate=0.999)


def release_config(arch, data_paths, data_paths_test=()):
    """all_config.yaml as the release's pretrain.py writes it (its PretrainConfig dumped)."""
    return dict(SHARED_TRAINING_KEYS, arch=arch, data_paths=list(data_paths), data_paths_test=list(data_paths_test),
                evaluators=[], load_checkpoint=None, checkpoint_path="checkpoints/Tiny ACT-torch/tiny-run",
                min_eval_interval=0, freeze_weights=False)


@pytest.mark.parametrize("variant", RELEASE_ARCHS)
def test_a_trm_release_run_folder_evaluates_as_the_same_weights_do_here(variant, tiny_dataset, tmp_path, capsys):
    arch = RELEASE_ARCHS[variant]
    config = load_config(dict(SHARED_TRAINING_KEYS, arch=arch, data_path=tiny_dataset, checkpoint_path=str(tmp_path)))
    loader, metadata = create_loader(config, "test", CPU, test_set_mode=True, epochs_per_iter=1)
    torch.manual_seed(0)
    model = create_model(config, metadata, CPU)
    with torch.no_grad():  # trained-looking heads: Q values and predictions depend on the weights
        for name, p in model.named_parameters():
            if "q_head" in name or "lm_head" in name:
                p.normal_(std=0.5)
        model.model.inner.puzzle_emb.weights.normal_()
    expected = evaluate_in_process(model, loader, metadata, CPU)

    run = tmp_path / "TinyRecursiveReasoningModel_ACTV1 tiny-run"
    run.mkdir()
    with open(run / "all_config.yaml", "w") as f:
        yaml.safe_dump(release_config(arch, [tiny_dataset]), f)
    torch.save({COMPILED_PREFIX + k: v for k, v in model.state_dict().items()}, run / "step_24")
    code, out, err = run_evaluate(capsys, "--checkpoint", str(run / "step_24"))
    assert code == 0, err
    printed = json.loads(out)
    assert set(printed) == {"all"} and printed["all"].keys() == expected["all"].keys()
    for key, value in expected["all"].items():
        assert printed["all"][key] == pytest.approx(value, abs=1e-6), key
    assert printed["all"]["steps"] == 3.0 and 0 < printed["all"]["accuracy"] < 1


def test_a_release_run_on_several_datasets_is_a_one_line_error(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "all_config.yaml", "w") as f:
        yaml.safe_dump(release_config(RELEASE_ARCHS["trm"], [tiny_dataset, tiny_dataset]), f)
    torch.save({COMPILED_PREFIX + "model.inner.H_init": torch.zeros(32)}, run / "step_1")
    code, out, err = run_evaluate(capsys, "--checkpoint", str(run / "step_1"))
    assert code == 2 and out == ""
    assert err == [f"error: invalid config: data_paths: evaluation reads one dataset folder; the run names "
                   f"{[tiny_dataset, tiny_dataset]!r}"]


def test_an_evaluation_that_receives_no_batch_is_an_error_not_empty_metrics(tiny_dataset):
    # A loader worker that cannot hand over its batches (a full /dev/shm) ends the loader early and silently.
    config = make_config(tiny_dataset)
    _, metadata = create_loader(config, "test", CPU, test_set_mode=True, epochs_per_iter=1)
    model = create_model(config, metadata, CPU)
    with pytest.raises(EvaluationError, match="received no batch from its data loader"):
        evaluate_in_process(model, [], metadata, CPU)
