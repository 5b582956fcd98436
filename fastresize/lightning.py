"""Lightning integration: the wrapped loader's progress in every checkpoint.

Lightning restores a stateful dataloader only when it resumes in the middle of an epoch, so a run
resumed from an epoch-end checkpoint would start the counter, the sizes and a counter-driven
learning rate from zero again. :class:`LoaderCheckpoint` keeps the loader's state in every
checkpoint and gives it back before the first batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from fastresize.loader import ResizeLoader


def _find_loader(dataloaders: Any) -> ResizeLoader:
    """Return the one :class:`ResizeLoader` in Lightning's train dataloader(s)."""
    found: list[ResizeLoader] = []
    pending = [dataloaders]
    while pending:
        item = pending.pop()
        if isinstance(item, ResizeLoader):
            found.append(item)
        elif isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    if len(found) != 1:
        raise ValueError(
            f"LoaderCheckpoint needs exactly one fastresize ResizeLoader among the train dataloaders, found "
            f"{len(found)}; return fastresize.wrap(...) from train_dataloader()"
        )
    return found[0]


class LoaderCheckpoint(Callback):
    """Saves the wrapped loader's state (counter and scheduler) with Lightning's checkpoints.

    Add it to the trainer's callbacks; with ``Trainer.fit(model, ckpt_path=...)`` the loader then
    continues where the checkpoint left it: the same sizes (after the new process's max-size-first
    steps) and, for a counter-driven scheduler, the same learning rates.

    Example:
        >>> from fastresize.lightning import LoaderCheckpoint
        >>> trainer = L.Trainer(max_epochs=10, callbacks=[LoaderCheckpoint()])  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.loader: ResizeLoader | None = None
        self._saved: dict[str, Any] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.loader = _find_loader(trainer.train_dataloader)
        if self._saved is not None:
            self.loader.load_state_dict(self._saved)
            self._saved = None

    def state_dict(self) -> dict[str, Any]:
        if self.loader is not None:
            return self.loader.state_dict()
        return dict(self._saved or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before it builds the dataloaders: keep it for on_train_start.
        self._saved = dict(state_dict) or None
