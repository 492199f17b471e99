"""The workload registry, the second axis beside the optimizers: name -> frozen spec of what is trained, where it
comes from, its data, model, objective, target and two budgets (`full` for a GPU at the reference size, `quick`
for a few minutes on 2 CPU cores). `workload=package.module:function` builds a user's own (workloads/user.py).

CIFAR-10 workloads are the `cifar` entry point's models (`cifar10_X` is `cifar model=X`, trained by its loop with
everything it does); the others train for a number of optimizer steps, evaluated every `eval_every`."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.core.errors import UsageError
from pipeline.training.objective import CLASSIFIER, NEXT_TOKEN, OWN_LOSS, Target
from pipeline.workloads import quadratic
from pipeline.workloads.spec import Budget, StepBatches, Workload, WorkloadData
from pipeline.workloads.text import shakespeare
from pipeline.workloads.text.gpt import GPT, GPTConfig


def _quadratic_data(data_dir: str, download: bool, seed: int, budget: Budget) -> WorkloadData:
    batch, fixed = budget["batch_size"], torch.Generator().manual_seed(seed + 1)
    train = StepBatches(lambda generator: quadratic.noise_batch(generator, batch), budget["eval_every"], seed)
    val = [quadratic.noise_batch(fixed, 1024) for _ in range(budget["eval_batches"])]
    return WorkloadData(train, val)


def _gpt_data(data_dir: str, download: bool, seed: int, budget: Budget) -> WorkloadData:
    corpus, size = shakespeare.load_corpus(data_dir, download), budget["size"]
    train_tokens, val_tokens = corpus.tokens[:corpus.split], corpus.tokens[corpus.split:]
    batch, context, fixed = budget["batch_size"], size["context"], torch.Generator().manual_seed(seed + 1)
    train = StepBatches(lambda generator: shakespeare.window_batch(train_tokens, generator, batch, context),
                        budget["eval_every"], seed)
    val = [shakespeare.window_batch(val_tokens, fixed, batch, context) for _ in range(budget["eval_batches"])]
    return WorkloadData(train, val, {"vocabulary": len(corpus.vocabulary)}, {"vocabulary": corpus.vocabulary})


def _gpt(seed: int, data: WorkloadData, budget: Budget) -> nn.Module:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocabulary=data.model_args["vocabulary"], **budget["size"]))


def _quadratic(seed: int, data: WorkloadData, budget: Budget) -> nn.Module:
    return quadratic.NoisyQuadratic(seed)


def _cifar(model: str, summary: str, source: str, quick: Budget, full: Budget, hidden: bool = True) -> Workload:
    return Workload(f"cifar10_{model}", summary, source, CLASSIFIER, Target("val_acc", "max", CIFAR_TARGET), quick,
                    full, cifar_model=model, serves="images", hidden_matrices=hidden)


# 1% over the quadratic's expected floor, 0.5 E[tr H] = 0.5 (90 x 0.5 + 10 x 45) = 247.5
QUADRATIC_TARGET = 250.0
CIFAR_TARGET = 0.3  # val_acc: reached by every optimizer worth comparing within the quick budgets
_CIFAR_QUICK = {"epochs": 2, "train_limit": 2048, "val_limit": 512, "batch_size": 64}
_NANOGPT_CPU = {"context": 64, "layers": 4, "heads": 4, "width": 128, "dropout": 0.0}
_NANOGPT_FULL = {"context": 256, "layers": 6, "heads": 6, "width": 384, "dropout": 0.2}

WORKLOADS: dict[str, Workload] = {
    spec.name: spec
    for spec in (
        Workload("quadratic_deep", "100-d noisy quadratic, Hessian eigenvalues 90% in (0,1), 10% in (30,60)",
                 "DeepOBS (Schneider et al. 2019)", OWN_LOSS, Target("val_loss", "min", QUADRATIC_TARGET),
                 {"steps": 1000, "batch_size": 128, "eval_every": 100, "eval_batches": 4, "scheduler": "none"},
                 {"steps": 10000, "batch_size": 128, "eval_every": 500, "eval_batches": 8, "scheduler": "none"},
                 build=_quadratic, data=_quadratic_data, hidden_matrices=False),
        _cifar("logreg", "multinomial logistic regression on CIFAR-10 pixels (convex)", "DeepOBS; classical SGD theory",
               {**_CIFAR_QUICK, "epochs": 3}, {"epochs": 40, "batch_size": 128}, hidden=False),
        _cifar("3c3d", "three conv + three dense layers on CIFAR-10", "DeepOBS cifar10_3c3d (Schneider et al. 2019)",
               _CIFAR_QUICK, {"epochs": 100, "batch_size": 128}),
        _cifar("resnet18", "the CIFAR ResNet18 (3x3 stem, no max-pool)", "He et al. 2016; optlab's cifar default",
               {**_CIFAR_QUICK, "epochs": 1, "train_limit": 1024}, {"epochs": 30, "batch_size": 512}),
        _cifar("resnet18_imagenet", "the notebook's torchvision ResNet18 + Linear(1000, 10)", "the tutorial notebook",
               {**_CIFAR_QUICK, "epochs": 1, "train_limit": 1024}, {"epochs": 30, "batch_size": 512}),
        _cifar("tiny_cnn", "two conv layers, about 5k parameters: smoke runs", "optlab's tests",
               {**_CIFAR_QUICK, "epochs": 1}, {"epochs": 10, "batch_size": 512}),
        Workload("shakespeare_gpt", "character-level decoder-only transformer on Tiny Shakespeare, nats per char",
                 "nanoGPT shakespeare_char (Karpathy)", NEXT_TOKEN, Target("val_loss", "min", 2.0),
                 {"steps": 2000, "batch_size": 12, "eval_every": 250, "eval_batches": 20, "scheduler": "cosine",
                  "size": _NANOGPT_CPU},
                 {"steps": 5000, "batch_size": 64, "eval_every": 250, "eval_batches": 200, "scheduler": "cosine",
                  "size": _NANOGPT_FULL},
                 build=_gpt, data=_gpt_data, serves="text"),
    )
}
SUITE = ("quadratic_deep", "cifar10_logreg", "cifar10_3c3d", "cifar10_resnet18", "shakespeare_gpt")
SETS = {"suite": SUITE}


def get_workload(name: str) -> Workload:
    """A registered workload, or a user's (`package.module:function`), or one UsageError line."""
    if ":" in name:
        from pipeline.workloads.user import load_user_workload  # noqa: PLC0415

        return load_user_workload(name)
    if name not in WORKLOADS:
        raise UsageError(f"workload: unknown {name!r}; choose one of {', '.join(WORKLOADS)} (or the set suite, "
                         "or package.module:function for your own); list them: python -m pipeline workloads")
    return WORKLOADS[name]


def workload_list(text: str) -> list[str]:
    """A comma list of workload names and sets, validated, without repeats, in the order given."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(f"workloads: expected names or the set suite, got {text!r}")
    expanded = [member for name in names for member in SETS.get(name, (name,))]
    for name in expanded:
        get_workload(name)
    return list(dict.fromkeys(expanded))


def listing() -> str:
    """Every workload with its source and budgets, one line each, then the sets."""
    rows = []
    for spec in WORKLOADS.values():
        rows.append(f"{spec.name:<18} {spec.summary} [{spec.source}]")
        rows.append(f"{'':<18} score {spec.target.metric} ({spec.target.direction}); quick {_budget(spec.quick)}; "
                    f"full {_budget(spec.full)}")
    return "\n".join([*rows, f"sets (compare, tune: workloads=...): suite = {', '.join(SUITE)}",
                      "your own: workload=package.module:function (docs/workloads.md)"])


def _budget(budget: Budget) -> str:
    return ", ".join(f"{key} {value}" for key, value in budget.items() if key != "size") + \
        (f", model {'x'.join(str(v) for k, v in budget['size'].items() if k in ('layers', 'heads', 'width'))}"
         if "size" in budget else "")
