"""The training loop both of the project's own models use (export/train_shapes.py,
export/train_shapes_detector.py): AdamW (weight decay 1e-4) under a one-cycle schedule, the model in
training mode while it learns and in evaluation mode between epochs."""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np


def fit(model, epochs: int, steps_per_epoch: int, lr: float, losses: Callable[[int], Iterable],
        report: Callable[[int, float, float], None]) -> float:
    """Train: `losses(epoch)` yields one loss tensor per step; `report(epoch, mean loss, seconds so far)`
    runs after each epoch with the model in evaluation mode. Returns the training time in seconds."""
    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        values = []
        for loss in losses(epoch):
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            values.append(loss.item())
        model.eval()
        report(epoch, float(np.mean(values)), time.perf_counter() - start)
    return time.perf_counter() - start
