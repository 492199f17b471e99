"""optlab: compare deep-learning optimizers on 2-D test functions and CIFAR-10, tracked in MLflow."""
