"""optlab: compare deep-learning optimizers on two axes, workloads (what is trained) and optimizers (what trains
it), tracked in MLflow. Entry modules here (cli, toy, cifar, compare, tune, predict, demo); every other module
lives in a package by job: core, config, optim, workloads, training, sweeps, landscape, tracking, viz."""
