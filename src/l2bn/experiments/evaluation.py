"""Evaluation of a run at the end of each epoch: test loss and accuracy, and the
intra-angle, inter-angle and IIR of the classification layer's input (supplement eqs. 1-3,
paper eq. 4), measured as in the paper's section 4.1: class centers from training features,
test intra-angle against them, inter-angle on training data only.

A diverged model (NaN or infinite classifier inputs) has no angles: the epoch's angle metrics
are left empty (null in ``metrics.jsonl``) and ``not_finite`` in the returned row names what
was not finite, for the training loop to record the divergence
(:mod:`l2bn.experiments.train`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from l2bn._classification import classification_layer
from l2bn.experiments import checkpoint as ckpt
from l2bn.experiments.config import ExperimentConfig
from l2bn.experiments.progress import progress

ANGLE_METRICS = ("intra_train", "intra_test", "inter", "iir_train", "iir_test")


def classifier_module(model: nn.Module) -> nn.Module:
    """The classification layer (``model.classifier``, else the last ``nn.Linear``)."""
    layer = classification_layer(model)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no classifier attribute and no nn.Linear")
    return layer


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    capture: nn.Module | None = None,
    max_capture: int | None = None,
    show_progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """Loss and accuracy over ``loader``; optionally the inputs of ``capture`` (the classifier).

    Runs in eval mode and restores the previous mode.
    """
    was_training = model.training
    model.eval()
    captured: list[torch.Tensor] = []
    captured_labels: list[torch.Tensor] = []
    kept = 0
    handle = None
    if capture is not None:

        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            # A copy: the layer (an in-place activation at its start) may change its input.
            captured.append(inputs[0].detach().flatten(1).float().clone())

        handle = capture.register_forward_pre_hook(hook)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    try:
        for images, labels in progress(loader, total=len(loader), desc=desc, enabled=show_progress):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            before = len(captured)
            logits = model(images)
            if capture is not None and len(captured) != before + 1:
                raise RuntimeError(
                    f"l2bn: the classification layer ran {len(captured) - before} times in "
                    "one forward pass; the angle metrics need a layer that runs exactly once"
                )
            total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
            count += labels.numel()
            if capture is not None:
                room = labels.numel() if max_capture is None else max(0, max_capture - kept)
                if room < labels.numel():
                    captured[-1] = captured[-1][:room]
                captured_labels.append(labels[:room])
                kept += min(room, labels.numel())
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    result: dict[str, Any] = {
        "loss": float(total_loss) / max(count, 1),
        "acc": 100.0 * float(correct) / max(count, 1),
        "count": count,
    }
    if capture is not None:
        result["features"] = torch.cat(captured) if captured else torch.empty(0)
        result["labels"] = torch.cat(captured_labels) if captured_labels else torch.empty(0)
    return result


def evaluate_epoch(
    model: nn.Module,
    train_set: Any,
    test_set: Any,
    config: ExperimentConfig,
    seed: int,
    eval_batch: int,
    device: torch.device,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Test loss/accuracy and, with metrics on, intra/inter angles and IIR (section 4.1).

    ``not_finite`` (a list, maybe empty) names the test loss and the classifier features
    when they are NaN or infinite; the angle metrics are then None. Finite features that
    give an angle no value (collapsed, e.g. all zero) leave the angle metrics None too,
    with ``angles_undefined`` saying why."""
    from l2bn.data import build_loader

    model = ckpt.unwrap(model)
    test_loader = build_loader(
        test_set,
        batch_size=eval_batch,
        train=False,
        seed=seed,
        augment=config.augment,  # train=False: the augmentation's evaluation transform
        subset=config.test_subset,
        num_workers=config.num_workers,
    )
    capture = classifier_module(model) if config.metrics else None
    test = evaluate(
        model,
        test_loader,
        device,
        capture=capture,
        max_capture=config.metrics_max_samples,
        show_progress=show_progress,
        desc="test",
    )
    row: dict[str, Any] = {"test_loss": test["loss"], "test_acc": test["acc"], "not_finite": []}
    if not math.isfinite(test["loss"]):
        row["not_finite"].append("test loss")
    if not config.metrics:
        return row
    from l2bn.analysis import collect_features

    limit = [v for v in (config.train_subset, config.metrics_max_samples) if v is not None]
    subset = min(limit) if limit else None
    if subset is not None and subset > len(train_set):
        subset = None  # metrics_max_samples is a maximum: past the split, all of it
    feature_loader = build_loader(
        train_set,
        batch_size=eval_batch,
        train=False,
        seed=seed,
        augment=config.augment,
        subset=subset,
        num_workers=config.num_workers,
    )
    train_features, train_labels = collect_features(
        model, feature_loader, layer=capture, device=device
    )
    finite = [bool(torch.isfinite(x).all()) for x in (train_features, test["features"])]
    if not all(finite):
        row["not_finite"].append("classifier features")
        row.update(dict.fromkeys(ANGLE_METRICS))
        return row
    row.update(
        angle_row(
            train_features,
            train_labels,
            test["features"],
            test["labels"],
            int(train_set.num_classes),
        )
    )
    return row


def angle_row(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
) -> dict[str, Any]:
    """The epoch's angle metrics (``ANGLE_METRICS``) from finite features, None where the
    features give one no value, with ``angles_undefined`` saying why: features collapsed
    (e.g. all zero) leave every one None; a test class absent from the training features
    (a small metrics subset) has no center, which leaves only the test-side metrics None
    (``intra_test``, ``iir_test``). The run goes on either way."""
    from l2bn.analysis import UndefinedAngleError, angle_metrics, train_test_metrics

    try:
        metrics = train_test_metrics(
            train_features, train_labels, test_features, test_labels, num_classes
        )
        return {key: float(metrics[key]) for key in metrics}
    except UndefinedAngleError as err:
        row: dict[str, Any] = dict.fromkeys(ANGLE_METRICS)
        row["angles_undefined"] = str(err).removeprefix("l2bn.analysis: ")
    try:
        train = angle_metrics(train_features, train_labels, num_classes=num_classes)
    except UndefinedAngleError:
        return row
    row.update(intra_train=train["intra_angle"], inter=train["inter_angle"])
    row["iir_train"] = train["iir"]
    return row
