"""One rank of 2-process Lightning DDP fits on the CPU (gloo): the adatune callback, and HD's
drop-in optimizer under Lightning's automatic optimization and DDP's gradient averaging.

``python -m tests._lightning_ddp OUT_DIR`` under torchrun's environment
(``tests/_ranks.py``): Lightning sees the ranks were started for it, joins
them with gloo, and every rank writes ``OUT_DIR/rank-RANK.json``: the LR of
every step (as the callback logged it; as HDOptimizer had it) and a digest of
the final weights, for each fit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adatune
from adatune.integrations.lightning import AdatuneCallback


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class HDNet(Net):
    """Automatic optimization, with HD as the optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.lrs: list[float] = []

    def configure_optimizers(self):
        sgd = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return adatune.HDOptimizer(sgd, total_steps=self.trainer.estimated_stepping_batches)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.lrs.append(self.optimizers().optimizer.lr)


def data(n: int = 96) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])


def _fit(model: L.LightningModule, callbacks: list) -> tuple[L.Trainer, float]:
    train, val = data()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp",
                        callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(train, batch_size=8), DataLoader(val, batch_size=8))
    return trainer, float(sum(p.detach().double().sum() for p in model.parameters()))


def main(out: Path) -> None:
    L.seed_everything(0, verbose=False)
    callback = AdatuneCallback("marthe")
    trainer, weights = _fit(Net(), [callback])
    hd = HDNet()
    _, hd_weights = _fit(hd, [])
    (out / f"rank-{trainer.global_rank}.json").write_text(json.dumps(
        {"lrs": callback.lrs, "weights": weights, "world": trainer.world_size,
         "hd_lrs": hd.lrs, "hd_weights": hd_weights}))
    # The framework leaves its process group up; a rank that exits with gloo's threads still
    # running can abort ("terminate called without an active exception"), so close it.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
