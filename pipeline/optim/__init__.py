"""The optimizer axis: the registry of curated optimizers and sets (`registry`), any class of torch.optim,
pytorch-optimizer or schedulefree by name (`libraries`), Muon with AdamW beside it (`muon`), and the learning-rate
schedules (`schedulers`)."""
from pipeline.optim.muon import MuonAdamW, split_params
from pipeline.optim.registry import (NOTEBOOK_OPTIMIZERS, OPTIMIZERS, SET_NAMES, OptimizerSettings, OptimizerSpec,
                                     SplitOptimizer, build_optimizer, get_spec, keeps_two_sequences, optimizer_names,
                                     set_mode)
from pipeline.optim.schedulers import SCHEDULERS, SchedulerSpec, build_scheduler
