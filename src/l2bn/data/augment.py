"""The built-in augmentations: ``none``, ``cifar`` and ``imagenet``.

They act on batches of *normalized* images, so zero padding is padding with the
dataset's mean colour. Each is ``fn(images (B, C, H, W), generator) -> images``.

* ``cifar``: the "simple data augmentation" of Lee et al. (2015) used for every CIFAR-100
  experiment of the paper (supplement, section B): pad 4 pixels on each side, take a
  random crop of the original size (32x32 for CIFAR, 28x28 for MNIST-like data), and
  mirror left-right with probability 1/2. Evaluation: no change.
* ``imagenet``: random-resized crop to 224 (area 8%-100%, aspect 3/4-4/3) plus the flip;
  evaluation: shorter side resized to 256, central 224x224 crop. Lazy datasets hand it
  each image at its stored size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2bn.data.registry import register_augmentation
from l2bn.data.transforms import (
    pad_random_crop,
    random_flip,
    random_resized_crop,
    resize_center_crop,
)

CIFAR_PADDING = 4
IMAGENET_CROP = 224
IMAGENET_RESIZE = 256


@register_augmentation("none")
def no_augmentation(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Return the images unchanged."""
    return images


@register_augmentation("cifar")
def cifar_augmentation(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Pad 4, random crop back to the input size, random horizontal flip."""
    return random_flip(pad_random_crop(images, CIFAR_PADDING, generator), generator)


def imagenet_eval(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Shorter side to 256, then the central 224x224 crop."""
    return resize_center_crop(images, IMAGENET_RESIZE, IMAGENET_CROP)


@register_augmentation("imagenet", eval_fn=imagenet_eval, full_image=True)
def imagenet_augmentation(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Random-resized crop to 224, random horizontal flip."""
    return random_flip(random_resized_crop(images, IMAGENET_CROP, generator), generator)
