"""The loop records the LR of every training step, for tuners and baselines alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from adatune.running.config import TrainConfig
from adatune.running.engine import train
from adatune.store import open_store


@pytest.mark.parametrize("method", ["marthe", "hd", "cosine"])
def test_every_step_lr_is_recorded_and_agrees_with_the_samples(tmp_path: Path,
                                                               method: str) -> None:
    config = TrainConfig(method=method, epochs=3, log_every=3, t_0=1,
                         checkpoint_dir=str(tmp_path / "ck"))
    with open_store(tmp_path / "s.db") as store:
        result = train(config, store)
        detail = store.get_run(result.run_id)
        per_epoch = store.get_step_lrs(result.run_id)
    assert result.status == "completed"
    assert [g.epoch for g in per_epoch] == [1, 2, 3]
    lengths = {len(g.lrs) for g in per_epoch}
    assert len(lengths) == 1 and lengths.pop() > 10  # every step of every epoch
    flat = [lr for g in per_epoch for lr in g.lrs]
    assert len(set(flat)) > len(flat) // 2  # the LR really moves from step to step
    # The sampled trace is every 3rd step of the same sequence, value for value.
    assert detail.steps and all(flat[s.step] == s.lr for s in detail.steps)
    assert [s.step for s in detail.steps] == list(range(0, len(flat), 3))
    for g, e in zip(per_epoch, detail.epochs, strict=True):
        total = 0.0
        for lr in g.lrs:  # the loop's own running sum
            total += lr
        assert e.lr_mean == total / len(g.lrs)


def test_an_epoch_healed_from_the_checkpoint_keeps_its_step_lrs(tmp_path: Path) -> None:
    """Killed after ``last.pt`` but before the epoch's commit: resume records it, LRs included."""
    from adatune.running.engine import resume

    config = TrainConfig(method="marthe", epochs=3, checkpoint_dir=str(tmp_path / "ck"))
    with open_store(tmp_path / "s.db") as store:
        record_epoch, calls = store.record_epoch, []

        def dies_on_the_second_commit(*args, **kwargs):
            calls.append(args[1].epoch)
            if len(calls) == 2:
                raise KeyboardInterrupt  # as if Ctrl-C landed between the two writes
            record_epoch(*args, **kwargs)

        store.record_epoch = dies_on_the_second_commit
        first = train(config, store)
        assert first.status == "interrupted"
        assert store.get_run(first.run_id).run.epochs == 1
        store.record_epoch = record_epoch
        assert resume(store, first.run_id).status == "completed"
        healed = store.get_step_lrs(first.run_id)
        straight = train(config, store)
        assert [g.epoch for g in healed] == [1, 2, 3]
        assert all(g.lrs for g in healed)
        assert healed == store.get_step_lrs(straight.run_id)


def test_a_run_stopped_mid_epoch_keeps_every_step_lr(tmp_path: Path) -> None:
    """SIGTERM after step 5 of epoch 2: the checkpoint carries that epoch's first LRs."""
    import os
    import signal

    from adatune.running import checkpoint, signals
    from adatune.running.engine import resume
    from adatune.running.runtypes import Events

    class StopAt(Events):
        def step_done(self, epoch, batch, loss, lr, mu) -> None:
            if (epoch, batch) == (2, 5):
                os.kill(os.getpid(), signal.SIGTERM)

    config = TrainConfig(method="marthe", epochs=3, checkpoint_dir=str(tmp_path / "ck"))
    with open_store(tmp_path / "s.db") as store:
        with signals.handle_preemption():
            first = train(config, store, events=StopAt())
        assert first.status == "interrupted" and "after step 5" in first.reason
        partial = checkpoint.load(Path(first.checkpoint_dir) / "last.pt")["partial"]
        assert len(partial["lrs"]) == 5
        assert resume(store, first.run_id).status == "completed"
        straight = train(config, store)
        assert partial["lrs"] == list(store.get_step_lrs(straight.run_id)[1].lrs[:5])
        assert store.get_step_lrs(first.run_id) == store.get_step_lrs(straight.run_id)


def test_a_checkpoint_written_before_step_lrs_resumes_without_inventing_them(
        tmp_path: Path) -> None:
    """A mid-epoch checkpoint without LRs: that epoch has none; replaying the run says so."""
    import os
    import signal

    import torch

    from adatune.methods.schedule_file import NoStepLRs, schedule_from_run
    from adatune.running import signals
    from adatune.running.engine import resume
    from adatune.running.runtypes import Events

    class StopAt(Events):
        def step_done(self, epoch, batch, loss, lr, mu) -> None:
            if (epoch, batch) == (2, 5):
                os.kill(os.getpid(), signal.SIGTERM)

    config = TrainConfig(method="hd", epochs=3, checkpoint_dir=str(tmp_path / "ck"))
    with open_store(tmp_path / "s.db") as store:
        with signals.handle_preemption():
            first = train(config, store, events=StopAt())
        last = Path(first.checkpoint_dir) / "last.pt"
        state = torch.load(last, weights_only=True)
        del state["partial"]["lrs"], state["history"]["lrs"]  # as adatune wrote them before
        torch.save(state, last)
        assert resume(store, first.run_id).status == "completed"
        per = store.get_step_lrs(first.run_id)
        assert [g.epoch for g in per] == [1, 2, 3]
        assert per[0].lrs and per[1].lrs is None and per[2].lrs
        with pytest.raises(NoStepLRs, match="epoch 2 "):
            schedule_from_run(store, first.run_id)
