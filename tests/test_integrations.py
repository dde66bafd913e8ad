"""adatune in PyTorch Lightning and the Hugging Face Trainer, and HD as a drop-in optimizer.

The real packages, no mocks: a tiny LightningModule on the CPU (one process,
and two ranks under Lightning's DDP with gloo), a tiny BERT built from a
config (no download), and HD's drop-in against the HD tuner, bit for bit.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys

import pytest
import torch
from torch import nn

import adatune
from adatune.errors import ConfigError, MissingExtra
from tests import _ranks

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------ HD drop-in
def _hand_loop(make_optimizer, drop_in: bool, steps: int = 30):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    optimizer = make_optimizer(model.parameters())
    lrs = []
    if drop_in:
        hd = adatune.HDOptimizer(optimizer, total_steps=steps)
    else:
        hd = adatune.HD(optimizer, total_steps=steps)
    for t in range(steps):
        xb, yb = x[t % 4 * 16:(t % 4 + 1) * 16], y[t % 4 * 16:(t % 4 + 1) * 16]
        if drop_in:
            hd.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            hd.step(loss=loss)
        else:
            hd.step(nn.functional.cross_entropy(model(xb), yb))
        lrs.append(hd.lr)
    return lrs, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01),
], ids=["sgd-momentum", "adamw"])
def test_hd_optimizer_takes_the_lrs_of_the_hd_tuner_bit_for_bit(make_optimizer):
    """The same arithmetic on the same gradients (backward() and autograd.grad agree)."""
    lrs, weights = _hand_loop(make_optimizer, drop_in=False)
    lrs_drop, weights_drop = _hand_loop(make_optimizer, drop_in=True)
    assert lrs_drop == lrs and len(set(lrs)) > 10
    assert all(torch.equal(a, b) for a, b in zip(weights, weights_drop))


def test_hd_optimizer_is_an_optimizer_with_the_tuners_state():
    model = nn.Linear(3, 1)
    hd = adatune.HDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), online=True)
    assert isinstance(hd, torch.optim.Optimizer)
    assert hd.param_groups is hd.tuner.optimizer.param_groups
    loss = model(torch.ones(2, 3)).pow(2).mean()
    loss.backward()
    assert hd.step(lambda: loss) is loss
    assert set(hd.state_dict()) == set(hd.tuner.state_dict())


# ------------------------------------------------------------------ Lightning
import lightning as L  # noqa: E402 - the test extra installs it: a missing one fails

from adatune.integrations.lightning import AdatuneCallback  # noqa: E402
from tests._lightning_ddp import Net, data  # noqa: E402


def _trainer(tmp_path, callbacks, **kwargs):
    options = dict(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path)
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


def _loaders(batch: int = 8):
    from torch.utils.data import DataLoader

    train, val = data()
    return DataLoader(train, batch_size=batch), DataLoader(val, batch_size=batch)


def test_lightning_logs_and_records_the_tuners_lr(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    callback = AdatuneCallback("marthe", store=str(tmp_path / "runs.db"), log_every=1)
    logger = CSVLogger(tmp_path / "logs")
    monitor = LearningRateMonitor(logging_interval="step")
    trainer = _trainer(tmp_path, [callback, monitor], logger=logger, log_every_n_steps=1)
    model = Net()
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, *_loaders())
    tuner = callback.tuner
    assert tuner.total_steps == 16 and len(callback.lrs) == 16  # estimated_stepping_batches
    assert tuner.phase in ("climb", "fixed") and len(set(callback.lrs)) > 5
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # through self.log: the LR every step used, as float32 (the logger's tensors)
    import csv

    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["adatune/lr"]) for r in rows if r.get("adatune/lr")]
    assert logged == [float(torch.tensor(lr, dtype=torch.float32)) for lr in callback.lrs]
    monitored = [float(r["lr-TunerStep"]) for r in rows if r.get("lr-TunerStep")]
    assert monitored == callback.lrs
    # the module is as it was, and the run is in the store, every step's LR exactly
    assert model.automatic_optimization and "training_step" not in vars(model)
    from adatune.replay import schedule_from_run
    from adatune.store import open_store

    with open_store(tmp_path / "runs.db") as store:
        [run] = store.list_runs()
        detail = store.get_run(run.id)
        assert list(schedule_from_run(store, run.id).lrs) == callback.lrs
    assert (run.method, run.status, run.epochs) == ("marthe", "completed", 2)
    assert all(e.val_loss == e.val_loss for e in detail.epochs)  # the logged val_loss


def test_lightning_marthe_in_bf16_mixed_precision(tmp_path):
    callback = AdatuneCallback("marthe")
    _trainer(tmp_path, [callback], precision="bf16-mixed").fit(Net(), *_loaders())
    assert len(callback.lrs) == 16 and len(set(callback.lrs)) > 5


def test_lightning_hd_needs_no_validation_data(tmp_path):
    callback = AdatuneCallback("hd", online=True)
    trainer = _trainer(tmp_path, [callback], max_epochs=1, limit_val_batches=0)
    train, _ = _loaders()
    trainer.fit(Net(), train)
    assert len(callback.lrs) == 8 and callback.tuner.online


class _NoValidation(Net):
    validation_step = L.LightningModule.validation_step


def test_lightning_marthe_without_validation_data_fails_before_the_first_step(tmp_path):
    callback = AdatuneCallback("marthe")
    model = _NoValidation()
    before = [p.detach().clone() for p in model.parameters()]
    train, _ = _loaders()
    with pytest.raises(ConfigError, match="MARTHE needs validation batches"):
        _trainer(tmp_path, [callback]).fit(model, train)
    assert callback.lrs == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.automatic_optimization and "training_step" not in vars(model)


@pytest.mark.parametrize("trainer_args,message", [
    ({"accumulate_grad_batches": 2}, "accumulate_grad_batches must be 1"),
    ({"gradient_clip_val": 1.0, "gradient_clip_algorithm": "value"},
     "gradient_clip_algorithm must be 'norm'"),
])
def test_lightning_settings_the_tuner_cannot_follow_are_refused_at_setup(tmp_path, trainer_args,
                                                                         message):
    callback = AdatuneCallback("marthe")
    model = Net()
    with pytest.raises(ConfigError, match=message):
        _trainer(tmp_path, [callback], **trainer_args).fit(model, *_loaders())
    assert callback.lrs == [] and "training_step" not in vars(model)


class _StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_lightning_checkpoint_and_resume_restore_the_tuner_bit_for_bit(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    whole = AdatuneCallback("marthe")
    model = Net()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _trainer(tmp_path, [whole], max_epochs=3).fit(model, *_loaders())

    store = str(tmp_path / "runs.db")
    first = AdatuneCallback("marthe", store=store)
    stopped = Net()
    stopped.load_state_dict(start)
    # saved after validation, before the callback records the epoch: the resume records it
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True,
                            save_on_train_epoch_end=False)
    _trainer(tmp_path, [first, saver, _StopAfterFirstEpoch()], max_epochs=3,
             enable_checkpointing=True).fit(stopped, *_loaders())
    second = AdatuneCallback("marthe", store=store)
    resumed = Net()  # other initial weights: the checkpoint's replace them
    _trainer(tmp_path, [second], max_epochs=3).fit(resumed, *_loaders(),
                                                   ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert len(first.lrs) == 8 and first.lrs + second.lrs == whole.lrs
    a, b = whole.tuner.state_dict(), second.tuner.state_dict()
    assert a["tuner"] == b["tuner"] and set(a["tangents"]) == set(b["tangents"])
    for i, tangent in a["tangents"].items():
        assert all(torch.equal(tangent[k], b["tangents"][i][k]) for k in tangent)
    for i, kept in a["optimizer"]["state"].items():
        assert torch.equal(kept["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))
    from adatune.replay import schedule_from_run
    from adatune.store import open_store

    with open_store(store) as db:  # one run, continued: every epoch once, every step's LR
        [run] = db.list_runs()
        assert [e.epoch for e in db.get_run(run.id).epochs] == [1, 2, 3]
        assert list(schedule_from_run(db, run.id).lrs) == whole.lrs
    assert run.status == "completed"


@pytest.mark.slow
def test_lightning_ddp_on_two_cpu_processes_gives_every_rank_the_same_lr(tmp_path):
    results = _ranks.run([["-m", "tests._lightning_ddp", str(tmp_path)]] * 2, tmp_path,
                         timeout=300)
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and len(ranks[0]["lrs"]) == 8
    assert ranks[0]["lrs"] == ranks[1]["lrs"] and len(set(ranks[0]["lrs"])) > 3
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # HDOptimizer under DDP's averaged gradients (and the loss averaged for the rule)
    assert len(ranks[0]["hd_lrs"]) == 8 and len(set(ranks[0]["hd_lrs"])) > 3
    assert ranks[0]["hd_lrs"] == ranks[1]["hd_lrs"]
    assert ranks[0]["hd_weights"] == ranks[1]["hd_weights"]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("module,packages,extra", [
    ("adatune.integrations.lightning", ("lightning", "lightning.pytorch", "pytorch_lightning"),
     "lightning"),
    ("adatune.integrations.huggingface", ("transformers",), "huggingface"),
])
def test_a_missing_framework_is_one_line_naming_the_extra(monkeypatch, module, packages,
                                                          extra):
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtra) as info:
        importlib.import_module(module)
    message = str(info.value)
    assert "\n" not in message and f"pip install 'adatune[{extra}]'" in message
    assert isinstance(info.value, ImportError)


def test_an_unknown_tuner_is_refused_when_the_callback_is_made():
    with pytest.raises(ConfigError, match="Invalid tuner: 'adam'"):
        AdatuneCallback("adam")


# ------------------------------------------------------------ Hugging Face Trainer
import transformers  # noqa: E402 - the test extra installs it

from adatune.integrations.huggingface import TunedTrainer  # noqa: E402


def _rows(n: int = 96):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 40, (n, 8), generator=g)
    labels = (ids[:, 0] > 20).long()
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def _hf_trainer(out, *, tuner="marthe", callbacks=None, eval_dataset=True, **args):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)  # built here: no download
    options = dict(output_dir=str(out), num_train_epochs=2, per_device_train_batch_size=8,
                   per_device_eval_batch_size=16, learning_rate=0.01, save_strategy="no",
                   logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True)
    options.update(args)
    rows = _rows()
    return TunedTrainer(model=model, args=transformers.TrainingArguments(**options),
                        train_dataset=rows[:64], eval_dataset=rows[64:] if eval_dataset else None,
                        tuner=tuner, callbacks=callbacks)


@pytest.mark.parametrize("tuner,accumulation,bf16", [
    ("marthe", 1, False), ("marthe", 2, False), ("hd", 1, False),
    ("marthe", 1, True),  # the trainer's autocast, in bfloat16 on the CPU
])
def test_huggingface_trainer_logs_the_tuners_lr(tmp_path, tuner, accumulation, bf16):
    trainer = _hf_trainer(tmp_path, tuner=tuner, gradient_accumulation_steps=accumulation,
                          bf16=bf16)
    trainer.train()
    steps = 16 // accumulation
    assert trainer.tuner.total_steps == steps and len(trainer.lrs) == steps
    assert len(set(trainer.lrs)) > 3 and trainer.state.global_step == steps
    logs = [h for h in trainer.state.log_history if "learning_rate" in h]
    assert [h["learning_rate"] for h in logs] == trainer.lrs
    assert all("adatune/hyper_lr" in h for h in logs)


@pytest.mark.slow
def test_huggingface_trainer_on_two_cpu_processes_gives_every_rank_the_same_lr(tmp_path):
    results = _ranks.run([["-m", "tests._hf_ddp", str(tmp_path)]] * 2, tmp_path, timeout=300)
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["group"] and len(ranks[0]["lrs"]) == 16
    assert ranks[0]["lrs"] == ranks[1]["lrs"] and len(set(ranks[0]["lrs"])) > 3
    assert ranks[0]["weights"] == ranks[1]["weights"]


class _StopAfterAnEpoch(transformers.TrainerCallback):
    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_training_stop = True


def test_huggingface_checkpoint_and_resume_restore_the_tuner_bit_for_bit(tmp_path):
    whole = _hf_trainer(tmp_path / "whole", logging_strategy="no")
    whole.train()
    first = _hf_trainer(tmp_path / "run", save_strategy="epoch", logging_strategy="no",
                        callbacks=[_StopAfterAnEpoch()])
    first.train()
    resumed = _hf_trainer(tmp_path / "run", logging_strategy="no")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-8"))
    assert len(first.lrs) == 8 and first.lrs + resumed.lrs == whole.lrs
    a, b = whole.tuner.state_dict(), resumed.tuner.state_dict()
    assert a["tuner"] == b["tuner"]
    for i, tangent in a["tangents"].items():
        assert all(torch.equal(tangent[k], b["tangents"][i][k]) for k in tangent)
    assert all(torch.equal(p, q) for p, q in zip(whole.model.parameters(),
                                                 resumed.model.parameters()))


def test_huggingface_marthe_without_an_eval_dataset_is_refused_at_once(tmp_path):
    with pytest.raises(ConfigError, match="MARTHE needs validation batches"):
        _hf_trainer(tmp_path, eval_dataset=False)
    _hf_trainer(tmp_path, tuner="hd", eval_dataset=False)  # HD needs none


# ------------------------------------------------------------ docs/integrations.md
def _run_example(name: str) -> None:
    from tests.test_readme_examples import example

    exec(compile(example(name), "docs/integrations.md", "exec"), {"__name__": "doc"})  # noqa: S102


def test_the_lightning_example_runs_and_records_its_run(workdir, capsys):
    _run_example("lightning")
    assert re.search(r"(climb|fixed): the last step's LR was \d", capsys.readouterr().out)
    from adatune.store import open_store

    with open_store("runs.db") as store:
        [run] = store.list_runs()
        assert len(store.get_run(run.id).epochs) == 5
    assert (run.method, run.dataset, run.status) == ("marthe", "lightning", "completed")
    from tests._cli import cli

    for args in (["report", "html", "-o", "report.html"], ["schedule", "export", "1", "-o",
                                                         "lr.csv"]):
        code, _, err = cli(capsys, *args, "--store", "runs.db")
        assert code == 0, err
    assert (workdir / "report.html").stat().st_size > 0
    assert len((workdir / "lr.csv").read_text().splitlines()) == 1 + 5 * 13  # every step


def test_the_lightning_hd_optimizer_example_runs(workdir, capsys):
    _run_example("lightning-hd")
    assert re.search(r"HD's last LR: \d", capsys.readouterr().out)


def test_the_huggingface_example_runs(workdir, capsys):
    _run_example("huggingface")
    assert re.search(r"^8 steps; the LR went from", capsys.readouterr().out, re.M)


def test_the_hd_optimizer_example_runs(workdir, capsys):
    _run_example("hd-optimizer")
    assert re.search(r"HD's last LR: \d", capsys.readouterr().out)
