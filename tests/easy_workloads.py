"""Two workloads for tests of a tune over workloads, made from the spirals example with a target a few steps
reach, so that time_to_target (and the profile over workloads it feeds) has values to recompute."""
import dataclasses

from examples.spirals import workload as spirals
from pipeline.training.objective import Target


def narrow():
    return dataclasses.replace(spirals(), name="spirals_narrow", target=Target("val_acc", "max", 0.6))


def wide():
    spec = spirals()
    return dataclasses.replace(spec, name="spirals_wide", target=Target("val_acc", "max", 0.6),
                               quick={**spec.quick, "size": {"width": 64}})
