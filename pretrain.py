"""Train HRM: `python pretrain.py data=sudoku`, or `torchrun --nproc-per-node 8 pretrain.py data=maze`.

Any config key can be overridden on the command line (`lr=3e-4 arch.L_cycles=8`); see config/.
"""
import logging
import sys

import hydra
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from models.config_validation import ConfigError
from training.checkpointing import RunFolderError
from training.config import load_config
from training.distributed import setup_distributed, teardown_distributed
from training.loop import run_training
from training.preemption import TrainingInterrupted


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base=None)
def main(hydra_config: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO)
    ctx = setup_distributed()
    try:
        config = load_config(OmegaConf.to_container(hydra_config, resolve=True))
        if ctx.world_size > 1:
            # Run names are random: every rank takes rank 0's.
            names = [(config.project_name, config.run_name, config.checkpoint_path)]
            dist.broadcast_object_list(names, src=0)
            config.project_name, config.run_name, config.checkpoint_path = names[0]
        if ctx.is_main:
            print(f"[{ctx.world_size} process(es), device {ctx.device}] run folder: {config.checkpoint_path}", flush=True)
        run_training(config, ctx)
    except TrainingInterrupted as e:
        if ctx.is_main:
            print(e, file=sys.stderr)
        teardown_distributed()
        sys.exit(e.exit_code)
    except (ConfigError, FileNotFoundError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        teardown_distributed()
        sys.exit(2)
    teardown_distributed()


if __name__ == "__main__":
    main()
