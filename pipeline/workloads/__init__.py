"""The workload axis: what an optimizer trains. `toy`: 2-D test functions and batched descent on them; `cifar`:
CIFAR-10 images, loaded safely, and the classifiers trained on them."""
