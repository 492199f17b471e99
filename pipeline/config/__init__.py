"""Typed, frozen configs per entry point: params.yaml's defaults, then the overrides, validated once up front.

- `tasks`: toy, cifar and predict (one run each), params.yaml, logged params;
- `compare`: a sweep's own params and one task config per optimizer;
- `tune`: a tune's own params and one task config per study;
- `reference`: params.yaml's comments as each param's description (docs/entry-points.md, `--help`).
"""
from pipeline.config.compare import CompareConfig, build_compare, optimizer_list
from pipeline.config.reference import Param, read_params, regenerate, render_section
from pipeline.config.tasks import (PARAMS_FILE, PROJECT_ROOT, TASKS, CifarConfig, PredictConfig, ToyConfig, as_params,
                                   build_config, load_defaults, logged_params)
from pipeline.config.tune import StudyPlan, TuneConfig, build_tune
