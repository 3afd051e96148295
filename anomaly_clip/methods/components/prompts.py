"""Fixed text prompts of the training-free baselines and their encoding by a frozen text tower.

A :class:`PromptEnsemble` is a set of normal and abnormal *state* phrases (``"damaged {}"``)
inserted into *templates* (``"a photo of a {}."``); a class's two text features are reductions of
the sentence embeddings of each state group. The ensembles here are data written from the
methods' public sources:

* :data:`CLIP_PROMPTS`: AnomalyCLIP appendix A.2's CLIP baseline, "A photo of a normal [cls]." and
  "A photo of an anomalous [cls]." (one sentence each).
* :data:`CLIP_AC_PROMPTS`: CLIP-AC, the states "normal [cls]" / "anomalous [cls]" in each of the 80
  ImageNet templates of the CLIP paper's prompt-engineering notebook.
* :data:`WINCLIP_PROMPTS`: WinCLIP's compositional prompt ensemble as anomalib runs it.
* :data:`VAND_PROMPTS`: APRIL-GAN's states and 35 templates (``prompt_ensemble.py`` of the
  official repository).

Two reductions are in use: ``"normalized_mean"`` (each sentence embedding L2-normalised, the mean
normalised again: CLIP's zero-shot ensembling, APRIL-GAN) and ``"mean"`` (the mean of the raw
embeddings: anomalib's WinCLIP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...clip.backbone import CLIPBackbone

REDUCTIONS = ("normalized_mean", "mean")
GENERIC_CLASS = "object"
"""Class word used when a batch names no classes (anomalib's WinCLIP default)."""
TEXT_CHUNK = 256
"""Sentences per text-tower pass while encoding an ensemble (bounds memory for large ensembles)."""

CLIP_IMAGENET_TEMPLATES: Tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
"""The 80 ImageNet prompt templates of the CLIP paper (Radford et al. 2021, prompt-engineering notebook)."""

WINCLIP_NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
                         "{} without defect", "{} without damage")
WINCLIP_ABNORMAL_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)
"""anomalib's 21 WinCLIP templates; "a jpeg corrupted photo of the {}." appears twice and both copies count."""

VAND_NORMAL_STATES = WINCLIP_NORMAL_STATES
VAND_ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
VAND_TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a photo of one {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "a low resolution photo of a {}.",
    "a photo of a large {}.", "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a photo of the small {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "a dark photo of a {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "there is a {} in the scene.", "there is the {} in the scene.",
    "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.",
)


@dataclass(frozen=True)
class PromptEnsemble:
    """Normal/abnormal state phrases x templates, and how sentence embeddings are reduced.

    Each state is formatted with the class word, then each template with the state (state-major
    order, as the official code builds its lists). ``spaces_for_underscores`` writes
    ``metal_nut`` as ``metal nut``; anomalib's WinCLIP and the official APRIL-GAN code insert names verbatim.
    """

    normal_states: Tuple[str, ...]
    abnormal_states: Tuple[str, ...]
    templates: Tuple[str, ...] = ("{}",)
    reduction: str = "normalized_mean"
    spaces_for_underscores: bool = False

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if not self.normal_states or not self.abnormal_states or not self.templates:
            raise ValueError("a prompt ensemble needs normal states, abnormal states and templates")

    def class_word(self, class_name: str) -> str:
        return class_name.replace("_", " ") if self.spaces_for_underscores else class_name

    def sentences(self, class_name: str) -> Tuple[List[str], List[str]]:
        """(normal sentences, abnormal sentences) of one class."""
        word = self.class_word(class_name)
        return tuple([template.format(state.format(word)) for state in states for template in self.templates]
                     for states in (self.normal_states, self.abnormal_states))


CLIP_PROMPTS = PromptEnsemble(("A photo of a normal {}.",), ("A photo of an anomalous {}.",),
                              spaces_for_underscores=True)
CLIP_AC_PROMPTS = PromptEnsemble(("normal {}",), ("anomalous {}",), CLIP_IMAGENET_TEMPLATES,
                                 spaces_for_underscores=True)
WINCLIP_PROMPTS = PromptEnsemble(WINCLIP_NORMAL_STATES, WINCLIP_ABNORMAL_STATES, WINCLIP_TEMPLATES, reduction="mean")
VAND_PROMPTS = PromptEnsemble(VAND_NORMAL_STATES, VAND_ABNORMAL_STATES, VAND_TEMPLATES)


def reduce_embeddings(embeddings: torch.Tensor, reduction: str) -> torch.Tensor:
    """One (E,) feature from (S, E) sentence embeddings: ``"normalized_mean"`` = normalise each,
    average, normalise again; ``"mean"`` = the plain average of the raw embeddings."""
    if reduction == "normalized_mean":
        return F.normalize(F.normalize(embeddings.float(), dim=-1).mean(dim=0), dim=-1)
    if reduction == "mean":
        return embeddings.float().mean(dim=0)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def encode_sentences(backbone: CLIPBackbone, sentences: Sequence[str], chunk: int = TEXT_CHUNK) -> torch.Tensor:
    """Plain CLIP text features (S, E) of sentences, ``chunk`` at a time. Each chunk is cut after
    its longest end-of-text token: under causal attention the padding never reaches the pooled
    token, so the features equal those of the full 77-token sequences."""
    parts = []
    for start in range(0, len(sentences), chunk):
        token_ids = backbone.tokenize(sentences[start:start + chunk])
        eot = token_ids.argmax(dim=-1)
        token_ids = token_ids[:, : int(eot.max()) + 1]
        parts.append(backbone.encode_text_embeddings(backbone.embed_tokens(token_ids), eot))
    return torch.cat(parts)


@torch.no_grad()
def encode_ensemble(backbone: CLIPBackbone, ensemble: PromptEnsemble, class_name: str) -> torch.Tensor:
    """(2, E) float32 text features of one class, rows [normal, abnormal] (see the module docstring)."""
    normal, abnormal = ensemble.sentences(class_name)
    embeddings = encode_sentences(backbone, normal + abnormal)
    return torch.stack([reduce_embeddings(embeddings[: len(normal)], ensemble.reduction),
                        reduce_embeddings(embeddings[len(normal):], ensemble.reduction)])


ClassEncoder = Callable[[Sequence[str]], torch.Tensor]
"""Distinct class names (C) -> their (C, 2, E) [normal, abnormal] text features."""


class ClassTextFeatures(nn.Module):
    """Frozen [normal, abnormal] text features of class names, computed once per class on first use.

    The rows live in the non-persistent buffer :attr:`features` (C, 2, E) float32, in the order of
    :attr:`names`: they move with the detector (``.to(device)``), stay out of checkpoints, and a
    forward pass reads them as tensors. :meth:`rows` gives (B, 2, E) for a batch's class names
    (``None``: :data:`GENERIC_CLASS` for every image), computing unseen classes with ``encode``;
    :meth:`clear` drops every row (when a trainable text side changed).
    """

    def __init__(self) -> None:
        super().__init__()
        self.names: List[str] = []
        self.register_buffer("features", torch.empty(0), persistent=False)

    def prepare(self, class_names: Sequence[str], encode: ClassEncoder) -> None:
        """Compute the rows of the classes not seen yet. They are plain tensors without gradient
        even when first asked for under ``torch.inference_mode`` (evaluation), so a later training
        step may use them."""
        missing = [name for name in dict.fromkeys(class_names) if name not in self.names]
        if not missing:
            return
        with torch.inference_mode(False), torch.no_grad():
            rows = encode(missing).float()
        self.features = rows if not self.names else torch.cat([self.features.to(rows.device), rows])
        self.names += missing

    def clear(self) -> None:
        self.names = []
        self.features = torch.empty(0, device=self.features.device)

    def class_word(self, class_name: str) -> str:
        """The word the prompts write for ``class_name`` (``_`` read as a space)."""
        return class_name.replace("_", " ")

    def rows(self, class_names: Optional[Sequence[str]], batch: int, encode: ClassEncoder,
             default: Optional[str] = None) -> torch.Tensor:
        """(B, 2, E) rows of each image's class; ``ValueError`` when the names do not match the batch.
        Without class names the row of ``default`` (None: :data:`GENERIC_CLASS`) is broadcast (no
        index list: any batch size, also when traced)."""
        if class_names is None:  # no per-image list: the batch size stays symbolic when traced
            name = default or GENERIC_CLASS
            self.prepare([name], encode)
            index = self.names.index(name)
            return self.features[index:index + 1].expand(batch, -1, -1)
        names = batch_class_names(class_names, batch)
        self.prepare(names, encode)
        lookup = {name: index for index, name in enumerate(self.names)}
        return self.features[torch.tensor([lookup[name] for name in names], device=self.features.device)]


def batch_class_names(class_names: Optional[Sequence[str]], batch: int, default: Optional[str] = None) -> List[str]:
    """Each image's class name: ``class_names`` checked against the batch size, or ``default``
    (None: :data:`GENERIC_CLASS`) for every image when none are given."""
    names = [default or GENERIC_CLASS] * batch if class_names is None else list(class_names)
    if len(names) != batch:
        raise ValueError(f"got {len(names)} class names for {batch} images")
    return names


class EnsembleTextFeatures(ClassTextFeatures):
    """:class:`ClassTextFeatures` of a fixed :class:`PromptEnsemble` (unit rows when ``normalize``)."""

    def __init__(self, ensemble: PromptEnsemble, normalize: bool = False):
        super().__init__()
        self.ensemble, self.normalize = ensemble, normalize

    def encode(self, backbone: CLIPBackbone, class_names: Sequence[str]) -> torch.Tensor:
        """(C, 2, E) float32 features of distinct class names."""
        features = torch.stack([encode_ensemble(backbone, self.ensemble, name) for name in class_names])
        return F.normalize(features, dim=-1) if self.normalize else features

    def class_word(self, class_name: str) -> str:
        return self.ensemble.class_word(class_name)

    def forward(self, backbone: CLIPBackbone, class_names: Optional[Sequence[str]], batch: int,
                default: Optional[str] = None) -> torch.Tensor:
        """(B, 2, E) rows of each image's class (see :meth:`ClassTextFeatures.rows`)."""
        return self.rows(class_names, batch, lambda names: self.encode(backbone, names), default)


class ClassAwareText:
    """Mixin of detectors whose frozen text is written for each class (``self.text``, a
    :class:`ClassTextFeatures`): images without class names are scored as the detector's
    ``default_class_name``, else as :data:`GENERIC_CLASS`; :meth:`class_text` is the word the
    prompts write, so calibrations and exports tell classes apart."""

    def text_class(self, class_name: Optional[str] = None) -> str:
        """The class whose text scores images of ``class_name`` (None: the default class)."""
        return class_name or self.default_class_name or GENERIC_CLASS

    def class_text(self, class_name: Optional[str] = None) -> str:
        return self.text.class_word(self.text_class(class_name))
