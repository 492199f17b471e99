"""Checkpoints: a resume restores exactly; a checkpoint that is code, damaged or foreign is one line, exit 2."""
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import SHARED_SUBSET, new_experiment, runs_of

from pipeline import cli
from pipeline.cifar import CHECKPOINT, build_loaders, build_trainer
from pipeline.config.tasks import build_config
from pipeline.core.errors import UsageError
from pipeline.core.provenance import config_hash
from pipeline.training.checkpoint import restore_checkpoint, save_checkpoint
from pipeline.training.loop import FitState
from pipeline.workloads.cifar.data import load_cifar10

pytestmark = pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")

ARGS = {"model": "tiny_cnn", "data_dir": str(SHARED_SUBSET), "epochs": "1", "train_limit": "64", "val_limit": "32",
        "system_metrics": "false", "log_model": "false"}


class WritesMarker:
    """A pickled object that, when unpickled by a plain unpickler, creates a file: the attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _trainer():
    cfg = build_config("cifar", {**ARGS, "optimizer": "adam"})
    arrays = load_cifar10(SHARED_SUBSET, download=False, train_limit=64, val_limit=32)
    return build_trainer(cfg, build_loaders(cfg, arrays, torch.device("cpu")), torch.device("cpu"))


def _restore(path: Path) -> FitState:
    trainer = _trainer()
    return restore_checkpoint(path, trainer.model, trainer.optimizer, trainer.scheduler, trainer.train_batches,
                              "the test checkpoint")


def test_a_saved_checkpoint_restores_weights_optimizer_streams_and_progress(tmp_path):
    trainer = _trainer()
    for images, labels in trainer.train_batches:  # one epoch, so the optimizer has state and the streams moved
        loss = torch.nn.functional.cross_entropy(trainer.model(images), labels)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    state = FitState(epoch=1, train_seconds=2.5, best_val_acc=0.25, history=[{"train_loss": 2.0}])
    path = save_checkpoint(tmp_path, trainer.model, trainer.optimizer, None, trainer.train_batches, state)
    fresh = _trainer()
    restored = restore_checkpoint(path, fresh.model, fresh.optimizer, None, fresh.train_batches, "ckpt")
    assert restored == state
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(fresh.model.state_dict()[name], tensor, rtol=0, atol=0)
    assert fresh.optimizer.state_dict()["state"][0]["step"] == trainer.optimizer.state_dict()["state"][0]["step"]
    assert [labels.tolist() for _, labels in fresh.train_batches] == \
        [labels.tolist() for _, labels in trainer.train_batches]


def _torch_save_with(tmp_path: Path, payload) -> Path:
    path = tmp_path / "last.pt"
    torch.save(payload, path)
    return path


def test_a_checkpoint_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "owned"
    path = _torch_save_with(tmp_path, {"model": WritesMarker(marker)})
    with pytest.raises(UsageError, match="cannot use the test checkpoint"):
        _restore(path)
    assert not marker.exists()


def _fuzzed(tmp_path: Path, kind: str) -> Path:
    """A damaged or foreign checkpoint of one kind."""
    good = save_checkpoint(tmp_path / "good", *(lambda t: (t.model, t.optimizer, None, t.train_batches))(_trainer()),
                           FitState(epoch=1))
    data, path = good.read_bytes(), tmp_path / "last.pt"
    payloads = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "random": os.urandom(4096),
        "json": b'{"model": {}}',
        "plain pickle": pickle.dumps({"model": [1, 2, 3]}),
    }
    if kind in payloads:
        path.write_bytes(payloads[kind])
    elif kind == "zip of junk":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", b"junk")
    elif kind == "other model":
        saved = torch.load(good, weights_only=True)
        torch.save({**saved, "model": {"fc.weight": torch.zeros(3, 3)}}, path)
    elif kind == "missing keys":
        torch.save({"model": {}}, path)
    elif kind == "bad progress":
        saved = torch.load(good, weights_only=True)
        torch.save({**saved, "state": {"epoch": "two"}}, path)
    return path


KINDS = ("empty", "truncated", "random", "json", "plain pickle", "zip of junk", "other model", "missing keys",
         "bad progress")


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_or_foreign_checkpoint_is_one_usage_error(tmp_path, kind):
    with pytest.raises(UsageError) as caught:
        _restore(_fuzzed(tmp_path, kind))
    assert "\n" not in str(caught.value) and "the test checkpoint" in str(caught.value)


def _crashed_run(client, experiment: str, checkpoint: Path, tmp_path: Path) -> str:
    """A run as a crash leaves it (this config's hash, FAILED) whose checkpoint is the given file."""
    cfg = build_config("cifar", {**ARGS, "experiment": experiment})
    experiment_id = client.create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment_id, tags={"config_hash": config_hash(cfg), "task": "cifar"})
    client.log_artifact(run.info.run_id, str(checkpoint), os.path.dirname(CHECKPOINT))
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


@pytest.mark.parametrize("kind", ["code", "truncated", "other model"])
def test_resume_from_a_hostile_or_damaged_checkpoint_is_one_line_exit_2(tracking, tmp_path, capsys, kind):
    marker = tmp_path / "owned"
    folder = tmp_path / "made"
    folder.mkdir()
    checkpoint = _torch_save_with(folder, {"model": WritesMarker(marker)}) if kind == "code" else \
        _fuzzed(folder, kind)
    experiment = new_experiment()
    run_id = _crashed_run(tracking, experiment, checkpoint, tmp_path)
    argv = ["cifar", *(f"--{k}={v}" for k, v in ARGS.items()), "--experiment", experiment, "--resume", "true"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: resume: cannot use checkpoints/last.pt of run"), err
    assert not marker.exists()
    (run,) = runs_of(tracking, experiment)
    assert run.info.run_id == run_id and run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("resume: cannot use")
