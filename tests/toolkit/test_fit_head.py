"""The head training loop (`fit_head`) on small tensors: best-epoch restore, LR schedule, early stopping.

Most tests script the dev evaluation (macro-F1 and loss per epoch) so the expected epoch is known exactly;
the scripted evaluator also snapshots the head's weights at each epoch, so "the restored weights" can be
compared with the weights the head really had at that epoch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crisis_tool.train as train_module
from crisis_tool.features import EncodedSplit
from crisis_tool.models.heads import HeadConfig
from crisis_tool.train import TrainOptions, evaluate_head, fit_head

CLASSES = ["a", "b", "c"]
CFG = HeadConfig(num_classes=3, clip_embed_dim=16, d_repr=32, d_proj=16, num_heads=2)
PATIENCE, FACTOR = 5, 0.1  # ReduceLROnPlateau settings of the paper's code


def make_split(n: int, seed: int) -> EncodedSplit:
    """Three separable classes: image and text embeddings near a per-class centre."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32) * 3
    labels = np.arange(n) % 3
    noise = rng.normal(size=(2, n, 16)).astype(np.float32)
    return EncodedSplit(image_embeds=centres[labels] + noise[0], text_embeds=centres[labels] + noise[1],
                        labels=labels.astype(np.int64), examples=[])


TRAIN, DEV = make_split(60, 1), make_split(30, 2)


class ScriptedDev:
    """Stands in for `evaluate_head` during fit_head: returns the scripted dev numbers, snapshots weights."""

    def __init__(self, macro_f1: list[float], loss: list[float]) -> None:
        self.macro_f1, self.loss = macro_f1, loss
        self.states: list[dict[str, torch.Tensor]] = []

    def __call__(self, head: torch.nn.Module, split: EncodedSplit, classes: list[str], batch_size: int = 256):
        assert split is DEV
        self.states.append({k: v.detach().clone() for k, v in head.state_dict().items()})
        i = len(self.states) - 1
        return {"accuracy": self.macro_f1[i], "macro_f1": self.macro_f1[i], "loss": self.loss[i]}


def run_scripted(monkeypatch: pytest.MonkeyPatch, script: ScriptedDev, **opts) -> tuple[torch.nn.Module, list]:
    monkeypatch.setattr(train_module, "evaluate_head", script)
    logs: list[str] = []
    head, history = fit_head(CFG, TRAIN, DEV, CLASSES, TrainOptions(**opts), log=logs.append)
    script.logs = logs  # type: ignore[attr-defined]
    return head, history


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_restored_weights_are_the_best_dev_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    script = ScriptedDev(macro_f1=[0.2, 0.5, 0.9, 0.4, 0.3], loss=[1.0] * 5)
    head, history = run_scripted(monkeypatch, script, epochs=5, early_stop=10, lr=0.05)
    assert len(history) == 5
    assert not same_weights(script.states[2], script.states[4])  # training did move the weights
    assert same_weights(head.state_dict(), script.states[2])  # epoch 3 had the best dev macro-F1
    assert not head.training


def test_ties_do_not_replace_the_best_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    script = ScriptedDev(macro_f1=[0.7, 0.7, 0.7], loss=[1.0] * 3)
    head, _ = run_scripted(monkeypatch, script, epochs=3, early_stop=10, lr=0.05)
    assert same_weights(head.state_dict(), script.states[0])


def test_lr_drops_by_the_factor_after_patience_epochs_without_dev_loss_improvement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dev loss improves until epoch 2, then stalls: epochs 3..8 are six epochs without improvement, more than
    # PATIENCE, so epoch 9 trains with lr * FACTOR; the count restarts and epoch 15 gets lr * FACTOR**2.
    epochs = 16
    script = ScriptedDev(macro_f1=[0.1 + 0.01 * e for e in range(epochs)], loss=[1.0, 0.9] + [0.95] * (epochs - 2))
    _, history = run_scripted(monkeypatch, script, epochs=epochs, early_stop=100, lr=0.01)
    lrs = [h["lr"] for h in history]
    expected = [0.01] * 8 + [0.01 * FACTOR] * 6 + [0.01 * FACTOR**2] * 2
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_training_stops_at_the_stated_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    # best macro-F1 at epoch 2; epochs 3, 4 (a tie is no improvement) and 5 do not improve: stop after 5
    script = ScriptedDev(macro_f1=[0.3, 0.6, 0.5, 0.6] + [0.5] * 16, loss=[1.0] * 20)
    head, history = run_scripted(monkeypatch, script, epochs=20, early_stop=3, lr=0.05)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert len(script.states) == 5
    assert "early stop after epoch 5" in "\n".join(script.logs)
    assert same_weights(head.state_dict(), script.states[1])


def test_real_training_returns_the_best_epochs_head() -> None:
    """Without scripting: the returned head scores on dev exactly what its epoch scored in the history."""
    head, history = fit_head(CFG, TRAIN, DEV, CLASSES, TrainOptions(epochs=12, early_stop=100, lr=0.05))
    f1s = [h["dev_macro_f1"] for h in history]
    best = int(np.argmax(f1s))  # the first epoch with the highest macro-F1
    report = evaluate_head(head, DEV, CLASSES)
    assert report["macro_f1"] == pytest.approx(f1s[best])
    assert report["loss"] == pytest.approx(history[best]["dev_loss"], rel=1e-6)
    assert report["accuracy"] >= 0.9
    assert best != len(history) - 1 or len(set(f1s)) == 1  # the restore had something to do
