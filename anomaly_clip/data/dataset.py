"""Image/mask loading with the official preprocessing, as a torch ``Dataset``.

Images: any storage mode -> 8-bit RGB (:mod:`anomaly_clip.data.imaging`) -> bicubic resize to
``(S, S)`` with PIL -> ``[0, 1]`` -> OpenAI CLIP mean/std, the same operations as the reference
code's torchvision pipeline, so the tensors are identical. Masks: foreground -> 0/255 -> resize
to ``(S, S)`` (``bilinear`` as AnomalyCLIP, ``nearest`` as AA-CLIP) -> ``> 0.5`` after scaling
to ``[0, 1]``; a mask of another size than its image is simply resized. An anomalous image whose
mask has no defect pixel at the model size is warned about, naming the file (once per dataset
and process, in epoch 0 only: DataLoader workers are fresh copies every epoch).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .imaging import HIGH_BIT_DEPTH_SCALINGS, UnreadableImageError, open_image, read_binary_mask, read_rgb, to_rgb
from .records import Sample, class_names

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MASK_INTERPOLATIONS = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
MAX_LISTED = 10


class MissingMaskError(FileNotFoundError):
    """An anomalous image of a dataset with pixel annotations has no mask."""


class DatasetValidationError(ValueError):
    """:meth:`AnomalyDataset.validate` found missing or unreadable files (all listed)."""


def normalize(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 tensor of an 8-bit RGB image, scaled to [0, 1] and CLIP-normalised."""
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    tensor = tensor.to(torch.float32).div(255)
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


class ImageTransform:
    """PIL image (any mode) -> normalised (3, S, S) tensor, the preprocessing of both methods."""

    def __init__(self, image_size: int = 518, high_bit_depth: str = "range"):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if high_bit_depth not in HIGH_BIT_DEPTH_SCALINGS:
            raise ValueError(f"high_bit_depth must be one of {HIGH_BIT_DEPTH_SCALINGS}, got {high_bit_depth!r}")
        self.image_size = image_size
        self.high_bit_depth = high_bit_depth

    def resize(self, image: Image.Image) -> Image.Image:
        return to_rgb(image, self.high_bit_depth).resize((self.image_size, self.image_size), Image.BICUBIC)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return normalize(self.resize(image))


def image_transform(image_size: int = 518, high_bit_depth: str = "range") -> ImageTransform:
    """The image preprocessing of both methods, for scoring one's own images."""
    return ImageTransform(image_size, high_bit_depth)


def load_image(path: PathLike, image_size: int = 518, high_bit_depth: str = "range") -> torch.Tensor:
    """Read ``path`` (any mode, any size) into a normalised (3, S, S) tensor; errors name the file."""
    return ImageTransform(image_size, high_bit_depth)(read_rgb(path, high_bit_depth))


def mask_to_tensor(mask: np.ndarray, image_size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """(1, S, S) float32 {0, 1} tensor of a boolean (H, W) mask resized as the official code does."""
    if interpolation not in MASK_INTERPOLATIONS:
        raise ValueError(f"mask_interpolation must be one of {sorted(MASK_INTERPOLATIONS)}, got {interpolation!r}")
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = image.resize((image_size, image_size), MASK_INTERPOLATIONS[interpolation])
    values = torch.from_numpy(np.array(resized, dtype=np.uint8, copy=True)).to(torch.float32).div(255)
    return (values > 0.5).to(torch.float32).unsqueeze(0)


def empty_mask_message(mask_path: Path, image_path: Path, defect: np.ndarray, image_size: int) -> str:
    """Why the mask of an anomalous image gives no defect pixel at the model size (for a warning):
    the file itself has none, or its few defect pixels vanish in the resize."""
    if not defect.any():
        return (f"mask {mask_path} of anomalous image {image_path} has no defect pixel: it adds no anomalous "
                f"pixel to the pixel metrics. Check the file (defect pixels must be non-zero; a 0/1 mask saved as "
                f"JPEG loses its labels, save masks as PNG)")
    return (f"the {int(defect.sum())} defect pixel(s) of mask {mask_path} (anomalous image {image_path}) vanish "
            f"when the mask is resized to {image_size} x {image_size}: it adds no anomalous pixel to the pixel metrics")


Augmentation = Callable[..., Any]


class AnomalyDataset(Dataset):
    """Samples of one split as tensors: ``{"image", "mask", "label", "class_name", "path", "index"}``.

    ``image_level_only`` datasets (no pixel annotations) give an all-zero mask for every image;
    by default a dataset is image-level only when none of its samples names a mask. Otherwise an
    anomalous image without a mask is an error naming the image. ``augment`` is applied to the
    normalised image and its mask together (e.g. :class:`~anomaly_clip.data.augment.AAClipAugmentation`);
    its optional ``photometric`` step runs on the PIL image before resizing.
    """

    def __init__(self, samples: Sequence[Sample], root: PathLike, image_size: int = 518,
                 mask_interpolation: str = "bilinear", augment: Optional[Augmentation] = None,
                 image_level_only: Optional[bool] = None, high_bit_depth: str = "range"):
        if not samples:
            raise ValueError(f"no samples to load from {root}")
        if mask_interpolation not in MASK_INTERPOLATIONS:
            raise ValueError(f"mask_interpolation must be one of {sorted(MASK_INTERPOLATIONS)}, "
                             f"got {mask_interpolation!r}")
        self.samples: List[Sample] = list(samples)
        self.root = Path(root)
        self.image_size = image_size
        self.mask_interpolation = mask_interpolation
        self.augment = augment
        self.transform = ImageTransform(image_size, high_bit_depth)
        self.high_bit_depth = high_bit_depth
        if image_level_only is None:
            image_level_only = not any(sample.mask_path for sample in self.samples)
        self.image_level_only = image_level_only
        self.epoch = 0
        self._warned_masks: Set[int] = set()

    @property
    def has_masks(self) -> bool:
        """Whether masks are real annotations (pixel metrics apply)."""
        return not self.image_level_only

    @property
    def class_names(self) -> List[str]:
        return class_names(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Epoch number for seeded augmentation (fresh random draws each epoch)."""
        self.epoch = epoch

    def image_path(self, index: int) -> Path:
        return self.root / self.samples[index].image_path

    def mask_path(self, index: int) -> Optional[Path]:
        """The mask file that must exist for sample ``index``, None when it needs none."""
        sample = self.samples[index]
        if not sample.is_anomalous or self.image_level_only:
            return None
        if not sample.mask_path:
            raise MissingMaskError(
                f"anomalous image {self.image_path(index)} has no mask in the metadata; add its mask, or load "
                f"the dataset as image-level only (image_level_only=True) to skip pixel annotations")
        return self.root / sample.mask_path

    def _mask(self, index: int) -> torch.Tensor:
        path = self.mask_path(index)
        if path is None:
            return torch.zeros(1, self.image_size, self.image_size)
        if not path.is_file():
            raise MissingMaskError(f"mask {path} of anomalous image {self.image_path(index)} not found")
        defect = read_binary_mask(path)
        tensor = mask_to_tensor(defect, self.image_size, self.mask_interpolation)
        if self.epoch == 0 and index not in self._warned_masks and not tensor.any():
            self._warned_masks.add(index)
            logger.warning("%s", empty_mask_message(path, self.image_path(index), defect, self.image_size))
        return tensor

    @property
    def varies_by_epoch(self) -> bool:
        """Whether an image's tensors change from epoch to epoch (random augmentation)."""
        return self.augment is not None

    def augmentation_generator(self, index: int) -> Optional[torch.Generator]:
        """The seeded generator of sample ``index`` this epoch (None: torch's global one)."""
        if self.augment is not None and hasattr(self.augment, "generator"):
            return self.augment.generator(index, self.epoch)
        return None

    def resized_image(self, index: int, generator: Optional[torch.Generator] = None,
                      photometric: bool = True) -> Image.Image:
        """Sample ``index`` as an 8-bit RGB image at the model's size, after the photometric
        augmentation unless ``photometric`` is False: the stage where pseudo-anomalies are painted."""
        image = read_rgb(self.image_path(index), self.high_bit_depth)
        if photometric and self.augment is not None and hasattr(self.augment, "photometric"):
            image = self.augment.photometric(image, generator)
        return self.transform.resize(image)

    def make_item(self, index: int, image: Image.Image, mask: torch.Tensor, label: int,
                  generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        """Normalise a resized image, apply the geometric augmentation to it and its (1, S, S)
        mask together, and return the item of sample ``index``."""
        tensor = normalize(image)
        if self.augment is not None:
            tensor, mask = self.augment(tensor, mask, generator)
        return {
            "image": tensor,
            "mask": mask,
            "label": torch.tensor(label, dtype=torch.int64),
            "class_name": self.samples[index].class_name,
            "path": str(self.image_path(index)),
            "index": index,
        }

    def __getitem__(self, index: int) -> Dict[str, Any]:
        generator = self.augmentation_generator(index)
        image = self.resized_image(index, generator)
        return self.make_item(index, image, self._mask(index), self.samples[index].label, generator)

    def _problems(self, index: int, decode: bool) -> List[str]:
        problems = []
        image = self.image_path(index)
        try:
            mask = self.mask_path(index)
        except MissingMaskError as error:
            problems.append(str(error))
            mask = None
        for path, role in ((image, "image"), (mask, "mask")):
            if path is None:
                continue
            if not path.is_file():
                problems.append(f"{role} file not found: {path}")
            elif decode:
                try:
                    if role == "image":
                        open_image(path, role)
                    else:
                        self._mask(index)
                except UnreadableImageError as error:
                    problems.append(str(error))
        return problems

    def validate(self, decode: bool = False, workers: int = 4) -> None:
        """Check every file up front: images exist, anomalous images have their masks, and with
        ``decode`` every file decodes and every mask is read as training and evaluation read it
        (a mask without defect pixels is warned about). Raises :class:`DatasetValidationError`
        listing all problems."""
        indices = range(len(self))
        if decode and workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                found = list(pool.map(lambda i: self._problems(i, True), indices))
        else:
            found = [self._problems(i, decode) for i in indices]
        problems = [problem for group in found for problem in group]
        if problems:
            shown = "\n  ".join(problems[:MAX_LISTED])
            more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            raise DatasetValidationError(f"{len(problems)} problem(s) in dataset at {self.root}:\n  {shown}{more}")
        logger.info("Validated %d samples under %s", len(self), self.root)


class AnomalyDatasetView(Dataset):
    """Base of datasets that change the items of a wrapped :class:`AnomalyDataset` (pseudo-anomalies,
    mosaics) and keep everything else of it: samples, root, classes, masks, length and epoch."""

    def __init__(self, dataset: AnomalyDataset):
        self.dataset = dataset

    @property
    def samples(self) -> List[Sample]:
        return self.dataset.samples

    @property
    def root(self) -> Path:
        return self.dataset.root

    @property
    def class_names(self) -> List[str]:
        return class_names(self.samples)

    @property
    def has_masks(self) -> bool:
        return self.dataset.has_masks

    @property
    def varies_by_epoch(self) -> bool:
        return self.dataset.varies_by_epoch

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)
