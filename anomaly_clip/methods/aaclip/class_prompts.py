"""Class-aware prompt ensembles: AA-CLIP's normal/abnormal text anchors per object class.

Each class is described by a short phrase that tells CLIP what the object looks like ("dark
bottle" rather than "bottle"); every (state, template) sentence built from it is embedded, and
the mean of the unit-norm embeddings per state, renormalised, is that state's anchor. The
descriptive names are plain data per dataset below; classes of other datasets fall back to their
own name, and users can pass their own descriptions.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...data.registry import UnknownDatasetError, get_dataset_info, normalize_name

SentenceEncoder = Callable[[List[str]], torch.Tensor]


@dataclass(frozen=True)
class PromptEnsemble:
    """State phrases (``{}`` = the class description) and sentence templates (``{}`` = a state)."""

    normal_states: Tuple[str, ...] = ("{}", "a {}", "the {}")
    abnormal_states: Tuple[str, ...] = (
        "a damaged {}",
        "a broken {}",
        "a {} with flaw",
        "a {} with defect",
        "a {} with damage",
    )
    templates: Tuple[str, ...] = ("{}.", "a photo of {}.")

    def _sentences(self, states: Sequence[str], description: str) -> List[str]:
        return [template.format(state.format(description)) for state in states for template in self.templates]

    def sentences(self, description: str) -> Tuple[List[str], List[str]]:
        """(normal sentences, abnormal sentences) for one class description."""
        return self._sentences(self.normal_states, description), self._sentences(self.abnormal_states, description)

    @property
    def sizes(self) -> Tuple[int, int]:
        return len(self.normal_states) * len(self.templates), len(self.abnormal_states) * len(self.templates)


@dataclass(frozen=True)
class ClassDescriptions:
    """Descriptions of one dataset's classes; ``default`` describes any class not listed
    (single-class medical sets describe the modality, whatever the class is called)."""

    names: Mapping[str, str] = field(default_factory=dict)
    default: Optional[str] = None


# Keyed by the dataset registry's names (any registered alias finds them).
DATASET_DESCRIPTIONS: Dict[str, ClassDescriptions] = {
    "mvtec": ClassDescriptions({
        "bottle": "dark bottle",
        "cable": "top view of three cables",
        "capsule": "black and orange capsule",
        "carpet": "gray carpet",
        "grid": "metal or plastic mesh",
        "hazelnut": "single brown hazelnut",
        "leather": "brown leather",
        "metal_nut": "metal nut which has four notched edges",
        "pill": "oval white pill with small red speckles and the letters 'FF' engraved",
        "screw": "screw",
        "tile": "speckled tile surface",
        "transistor": "a three-legged transistor placed vertically",
        "toothbrush": "toothbrush head",
        "wood": "wood surface",
        "zipper": "a black zipper",
    }),
    "visa": ClassDescriptions({
        "candle": "candle",
        "pcb3": "infrared sensor pcb module",
        "capsules": "capsules",
        "pipe_fryum": "pipe-shaped fryum",
        "pcb4": "battery charging pcb module",
        "macaroni2": "scattered yellow macaroni",
        "pcb2": "integrated circuits board",
        "chewinggum": "chewing gum",
        "macaroni1": "orange macaroni",
        "cashew": "cashew nut",
        "fryum": "wheel-shaped fryum snack",
        "pcb1": "dual ultrasonic distance sensor pcb module",
    }),
    "mpdd": ClassDescriptions({
        "connector": "metal clamps with black adjustment knobs",
        "tubes": "scattered metal objects",
        "metal_plate": "blue rectangular metal plate with a notch on one side",
        "bracket_white": "white, elongated triangular metal bracket with a smooth, matte finish",
        "bracket_brown": "brown L-shaped metal bracket with smooth, glossy finish and multiple mounting holes "
                         "along its arms",
        "bracket_black": "black ornamental metal bracket with spiral design attached to a rectangular frame",
    }),
    "btad": ClassDescriptions({
        "01": "Bright concentric rings in neon yellow and blue tones against a dark blue background, "
              "resembling a stylized wave or energy field radiating outward.",
        "02": "vertical fabric lines in warm, dusty pink and beige tones",
        "03": "oval concentric circular rings in gradient shades of blue and white",
    }),
    "bmad-brain": ClassDescriptions(default="scan"),
    "bmad-liver": ClassDescriptions(default="scan"),
    "bmad-retina": ClassDescriptions(default="scan"),
    "clinicdb": ClassDescriptions(default="colon endoscopy image"),
    "colondb": ClassDescriptions(default="colon endoscopy image"),
    "cvc300": ClassDescriptions(default="colon endoscopy image"),
    "kvasir": ClassDescriptions(default="colon endoscopy image"),
}

GENERIC_CLASS = "object"


def dataset_descriptions(dataset: Optional[str]) -> Optional[ClassDescriptions]:
    """The built-in descriptions of ``dataset`` (registry name or alias, any spelling), or None."""
    if not dataset:
        return None
    try:
        return DATASET_DESCRIPTIONS.get(get_dataset_info(dataset).name)
    except UnknownDatasetError:
        return None


def _lookup(descriptions: ClassDescriptions, class_name: str) -> Optional[str]:
    wanted = normalize_name(class_name)
    for name, description in descriptions.names.items():
        if normalize_name(name) == wanted:
            return description
    return descriptions.default


def describe_class(class_name: str, dataset: Optional[str] = None,
                   overrides: Optional[Mapping[str, str]] = None) -> str:
    """Descriptive name of ``class_name``: user overrides, then the dataset's table, then the
    class name itself (underscores read as spaces)."""
    if overrides and class_name in overrides:
        return overrides[class_name]
    if class_name == GENERIC_CLASS:
        return class_name
    known = dataset_descriptions(dataset)
    description = _lookup(known, class_name) if known is not None else None
    return description if description is not None else class_name.replace("_", " ")


def read_descriptions(path: str) -> Dict[str, str]:
    """Read a JSON object ``{"class name": "description", ...}`` of user descriptions."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class description file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle)
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise ValueError(f"{path} must hold a JSON object mapping class names to description strings")
    return values


def class_text_anchors(encode: SentenceEncoder, descriptions: Sequence[str],
                       ensemble: PromptEnsemble = PromptEnsemble()) -> torch.Tensor:
    """Normal and abnormal anchors (C, E, 2) of C class descriptions, in one text-encoder batch.

    Anchor = mean of the L2-normalised sentence embeddings of a state, L2-normalised again.
    """
    if not descriptions:
        raise ValueError("no class descriptions to build text anchors for")
    sentences: List[str] = []
    for description in descriptions:
        normal, abnormal = ensemble.sentences(description)
        sentences += normal + abnormal
    embeddings = F.normalize(encode(sentences), dim=-1)
    embeddings = embeddings.reshape(len(descriptions), -1, embeddings.shape[-1])
    normal_count = ensemble.sizes[0]
    normal = F.normalize(embeddings[:, :normal_count].mean(dim=1), dim=-1)
    abnormal = F.normalize(embeddings[:, normal_count:].mean(dim=1), dim=-1)
    return torch.stack([normal, abnormal], dim=-1)
