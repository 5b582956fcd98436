"""The README's Lightning recipe, with the real library: per-step learning rates, and an exact resume."""

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fastresize import CosineAnnealingWarmbootingLR, StepCounter, wrap

L = pytest.importorskip("lightning.pytorch")
from fastresize.lightning import LoaderCheckpoint  # noqa: E402  (needs lightning)

UPPER = 48


class Recipe(L.LightningModule):
    """The README's recipe: one counter, read by the scheduler and moved by the loader."""

    def __init__(self, record):
        super().__init__()
        self.net = torch.nn.Conv2d(3, 2, 3, padding=1)
        images = torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.loader = DataLoader(TensorDataset(images), batch_size=4)
        self.counter = StepCounter(steps_per_epoch=len(self.loader))
        self.record = record

    def train_dataloader(self):
        return wrap(
            self.loader, 16, UPPER, counter=self.counter, max_first_steps=2, seed=3, device=self.device,
            value_range=(0, 1), dtype=torch.float32,
        )  # fmt: skip

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=4, steps=[2], warmup_epoch=1, counter=self.counter)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        (images,) = batch
        lr = self.optimizers().param_groups[0]["lr"]
        self.record.append((self.current_epoch, batch_idx, tuple(images.shape[2:]), lr))
        return self.net(images).pow(2).mean()


def _fit(max_epochs, ckpt_path=None, save_to=None, checkpoints=None):
    """Fit ``max_epochs``; ``checkpoints``: a folder for the README's ``ModelCheckpoint(save_last=True)``."""
    record = []
    callbacks = [LoaderCheckpoint()]
    if checkpoints is not None:
        callbacks.append(L.callbacks.ModelCheckpoint(dirpath=checkpoints, save_last=True))
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=checkpoints is not None,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    module = Recipe(record)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers|LightningModule).*")
        trainer.fit(module, ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return record, module


def test_per_step_learning_rates_are_the_originals():
    record, module = _fit(4)
    scheduler = module.lr_schedulers()
    assert [(e, b) for e, b, _, _ in record] == [(e, b) for e in range(4) for b in range(3)]
    assert [lr for *_, lr in record] == [scheduler.lr_at(e, b)[0] for e in range(4) for b in range(3)]
    assert [size for _, _, size, _ in record[:2]] == [(UPPER, UPPER)] * 2  # max size first
    assert len({size for _, _, size, _ in record}) > 1


def test_resume_from_a_checkpoint_continues_the_run(tmp_path):
    uninterrupted, _ = _fit(4)
    _fit(2, checkpoints=tmp_path)  # the README's ModelCheckpoint(save_last=True)
    resumed, module = _fit(4, ckpt_path=tmp_path / "last.ckpt")
    assert (module.counter.epoch, module.counter.batch) == (4, 0)
    later = uninterrupted[6:]
    assert [(e, b, lr) for e, b, _, lr in resumed] == [(e, b, lr) for e, b, _, lr in later]  # lrs: exact
    # Sizes: a new process takes the largest size for max_first_steps=2 steps (fail-fast, on purpose),
    # then the same draws as the uninterrupted run.
    assert [size for _, _, size, _ in resumed[:2]] == [(UPPER, UPPER)] * 2
    assert [size for _, _, size, _ in resumed[2:]] == [size for _, _, size, _ in later[2:]]
    assert [lr for *_, lr in later] != [lr for *_, lr in uninterrupted[:6]]  # a restart from 0 would differ


def test_without_the_callback_lightning_restarts_the_counter(tmp_path):
    # Why LoaderCheckpoint exists: Lightning restores a dataloader's state only mid-epoch.
    _fit(2, save_to=tmp_path / "epoch2.ckpt")
    record = []
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    module = Recipe(record)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers|LightningModule).*")
        trainer.fit(module, ckpt_path=tmp_path / "epoch2.ckpt")
    assert (module.counter.epoch, module.counter.batch) == (1, 0)  # from zero: one epoch trained


def test_the_callback_needs_one_wrapped_loader():
    from fastresize.lightning import _find_loader

    with pytest.raises(ValueError, match=r"needs exactly one fastresize ResizeLoader .* found 0"):
        _find_loader([DataLoader(TensorDataset(torch.zeros(2)))])
