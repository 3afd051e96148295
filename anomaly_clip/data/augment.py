"""AA-CLIP's training augmentation: one random geometry applied to image and mask together.

As in the official code, colour jitter (stage 2 only) acts on the PIL image before resizing,
and the geometric part acts on the resized, normalised image stacked with its mask, so both
move identically: rotation by up to +/-30 degrees (p 0.5), translation by up to 15 % (p 0.5),
horizontal and vertical flips (p 0.5 each), nearest-neighbour resampling, zero fill.

The random draws are made in the reference's order and number (torchvision's ``RandomApply``,
``ColorJitter``, ``RandomRotation``, ``RandomAffine`` and flips), so under the same global seed
the same augmentations come out. With ``seed`` None the draws come from torch's global generator, like the
official code (reproducible under ``torch.manual_seed``, new draws every epoch). With an integer
``seed`` every (seed, epoch, sample index) has its own generator, so results do not depend on
worker count or order; call ``AnomalyDataset.set_epoch`` each epoch for fresh draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-spread 63-bit seed for one (seed, epoch, index) triple."""
    value = seed & _MASK64
    for part in (epoch, index):
        value = ((value ^ (part & _MASK64)) * _MIX + 0x632BE59BD9B4E019) & _MASK64
        value ^= value >> 29
    return value & ((1 << 63) - 1)


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator).item())


def _happens(probability: float, generator: Optional[torch.Generator]) -> bool:
    return bool(torch.rand(1, generator=generator).item() < probability)


@dataclass(frozen=True)
class AAClipAugmentation:
    """Paired image/mask augmentation of AA-CLIP's training (see the module docstring)."""

    rotation_degrees: float = math.degrees(math.pi / 6)
    rotation_p: float = 0.5
    translate: float = 0.15
    translate_p: float = 0.5
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    color_jitter: bool = False
    jitter_strength: float = 0.5
    jitter_p: float = 0.7
    seed: Optional[int] = None

    def generator(self, index: int, epoch: int = 0) -> Optional[torch.Generator]:
        """The generator for one sample, or None to use torch's global one."""
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))

    def photometric(self, image: Image.Image, generator: Optional[torch.Generator] = None) -> Image.Image:
        """Brightness, contrast and saturation jitter (each with probability ``jitter_p``)."""
        if not self.color_jitter:
            return image
        low, high = max(0.0, 1.0 - self.jitter_strength), 1.0 + self.jitter_strength
        for adjust in (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation):
            if _happens(self.jitter_p, generator):
                torch.randperm(4, generator=generator)  # ColorJitter's order draw; one property is active
                image = adjust(image, _uniform(low, high, generator))
        return image

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Apply one random geometry to a (C, H, W) image and its (1, H, W) mask."""
        stacked = torch.cat([image, mask.to(image.dtype)], dim=0)
        fill = [0.0] * stacked.shape[0]
        if _happens(self.rotation_p, generator):
            angle = _uniform(-self.rotation_degrees, self.rotation_degrees, generator)
            stacked = TF.rotate(stacked, angle, interpolation=InterpolationMode.NEAREST, fill=fill)
        if _happens(self.translate_p, generator):
            height, width = stacked.shape[-2:]
            _uniform(0.0, 0.0, generator)  # RandomAffine draws its (zero) angle first
            shift_x = int(round(_uniform(-self.translate * width, self.translate * width, generator)))
            shift_y = int(round(_uniform(-self.translate * height, self.translate * height, generator)))
            stacked = TF.affine(stacked, angle=0.0, translate=[shift_x, shift_y], scale=1.0, shear=[0.0, 0.0],
                                interpolation=InterpolationMode.NEAREST, fill=fill)
        if _happens(self.hflip_p, generator):
            stacked = TF.hflip(stacked)
        if _happens(self.vflip_p, generator):
            stacked = TF.vflip(stacked)
        channels = image.shape[0]
        return stacked[:channels], stacked[channels:].to(mask.dtype)
