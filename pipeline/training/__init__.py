"""Training any workload: the loop (`loop`: one model or several in lockstep), checkpoints (`checkpoint`),
torch.distributed glue (`distributed`), `nproc=N` relaunching (`nproc`), the protocol logging talks to (`hooks`)
and what one run logs as it trains (`runlog`). Never imports mlflow: it talks to a RunLogger."""
from pipeline.training.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from pipeline.training.hooks import MemoryLogger, RunHooks, RunLogger
from pipeline.training.loop import FitState, Member, Precision, StopTraining, evaluate, fit, train_epoch
