"""CIFAR-10: finding or downloading it and loading it without running code (`data`, `safe_pickle`), the images a
user hands `predict` (`images`), and the classifiers by name (`models`)."""
from pipeline.workloads.cifar.data import CIFAR_CLASSES, CifarArrays, CifarLoader, load_cifar10
from pipeline.workloads.cifar.images import ImageSet, read_images
from pipeline.workloads.cifar.models import MODELS, ImageClassifier, ModelSpec, build_model
from pipeline.workloads.cifar.safe_pickle import RefusedPickle, load_batch_pickle
