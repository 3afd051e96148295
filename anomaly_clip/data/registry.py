"""Registry of supported datasets: one entry each, naming its folder layout, domain and masks.

Adding a dataset whose files follow a known arrangement is one :func:`register` call with a
:mod:`~anomaly_clip.data.layouts` instance; ``python -m generate_dataset_json <name> --root DIR``
then writes its metadata. Names are matched ignoring case and punctuation, and each entry has
aliases (``"MVTec AD"``, ``"mvtec_ad"`` and ``"mvtec"`` are the same dataset).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .layouts import (
    CsvTable,
    CustomFolders,
    DefectFolders,
    FirstMatching,
    ImageMaskFolders,
    Layout,
    LayoutError,
    MaskPresence,
    PlainFolders,
)
from .layouts.folders import Folders
from .records import Metadata

logger = logging.getLogger(__name__)

DOMAINS = ("industrial", "medical")


class UnknownDatasetError(ValueError):
    """No registered dataset has that name or alias."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the project knows about one dataset.

    ``domain`` picks domain-specific settings (AA-CLIP's map blur); ``image_level_only``
    datasets have no pixel masks, so anomalous images load with an empty mask and pixel metrics
    do not apply; ``normal_images`` is False for segmentation sets whose images all show a
    lesion (no warning about classes without normal images); ``classes`` are the publisher's
    class names (empty when they come from the user's folders).
    """

    name: str
    title: str
    domain: str
    layout: Layout
    image_level_only: bool = False
    normal_images: bool = True
    aliases: Tuple[str, ...] = ()
    classes: Tuple[str, ...] = ()
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain of {self.name} must be one of {DOMAINS}, got {self.domain!r}")
        user_layout = isinstance(self.layout, (CustomFolders, PlainFolders))
        if self.image_level_only == self.layout.has_masks and not user_layout:
            raise ValueError(f"{self.name}: image_level_only must be the opposite of its layout having masks")


DATASETS: Dict[str, DatasetInfo] = {}
_LOOKUP: Dict[str, str] = {}


def normalize_name(name: str) -> str:
    """Lower-case, punctuation-free key: ``"CVC-ClinicDB"`` -> ``"cvcclinicdb"``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def register(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to the registry; its name and aliases must not clash with another entry."""
    keys = {normalize_name(info.name), *(normalize_name(alias) for alias in info.aliases)}
    clashes = {key: _LOOKUP[key] for key in keys if key in _LOOKUP and _LOOKUP[key] != info.name}
    if clashes:
        raise ValueError(f"names of {info.name} already used by {clashes}")
    DATASETS[info.name] = info
    _LOOKUP.update({key: info.name for key in keys})
    return info


def get_dataset_info(name: str) -> DatasetInfo:
    """The entry called ``name`` or one of its aliases (any case and punctuation)."""
    key = _LOOKUP.get(normalize_name(name))
    if key is None:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[key]


def dataset_names() -> List[str]:
    return list(DATASETS)


def published_classes_problem(name: str, class_names: Sequence[str]) -> Optional[str]:
    """Why data whose classes are ``class_names`` cannot be compared with published numbers of
    the dataset ``name`` (None when it can, or when the registry lists no classes for it):

    * a class that is not among the dataset's published classes: the data is another dataset
      (e.g. ``MVTEC_ROOT`` pointing at the synthetic set);
    * only some of its classes: the mean is over a subset, not the published mean.
    """
    try:
        info = get_dataset_info(name)
    except UnknownDatasetError:
        return None
    if not info.classes or not class_names:
        return None
    foreign = sorted(set(class_names) - set(info.classes))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"not {info.title} data (classes {shown}): not comparable"
    missing = [c for c in info.classes if c not in set(class_names)]
    if missing:
        return f"{len(info.classes) - len(missing)} of {len(info.classes)} {info.title} classes: not the published mean"
    return None


def _ordered(metadata: Metadata, expected: Tuple[str, ...]) -> Metadata:
    rank = {name: index for index, name in enumerate(expected)}
    return {split: sorted(samples, key=lambda s: (rank.get(s.class_name, len(rank)), s.class_name))
            for split, samples in metadata.items()}


def _warn_classes_without_normal_images(info: DatasetInfo, layout: Layout, metadata: Metadata) -> None:
    """A class whose split has anomalous but no normal images gets N/A image metrics: say so."""
    for split, samples in metadata.items():
        for name in dict.fromkeys(sample.class_name for sample in samples):
            labels = [sample.label for sample in samples if sample.class_name == name]
            if labels and all(labels):
                hint = layout.normal_hint()
                logger.warning("%s: class %r has %d anomalous and no normal image in split %r, so its image-level "
                               "metrics will be N/A%s", info.title, name, len(labels), split,
                               f"; {hint}" if hint else "")


def scan_dataset(name: str, root: Union[str, Path], class_name: Optional[str] = None,
                 normal_dir: Folders = None, anomalous_dir: Folders = None,
                 mask_dir: Folders = None, split: Optional[str] = None) -> Metadata:
    """Samples per split of the dataset ``name`` stored at ``root`` in its published layout.

    ``class_name`` renames the class of single-class datasets; ``normal_dir``, ``anomalous_dir``
    and ``mask_dir`` (each a folder or a sequence of folders) and ``split`` configure the plain
    ``folders`` layout. A class with anomalous but no normal images in a split is warned about
    (unless the dataset has none by design). Raises :class:`LayoutError` when the tree does not
    match (the message says what was expected).
    """
    info = get_dataset_info(name)
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"dataset root {root} is not a folder")
    layout = info.layout
    folder_options = (normal_dir, anomalous_dir, mask_dir, split)
    if isinstance(layout, PlainFolders):
        layout = layout.with_folders(normal_dir, anomalous_dir, mask_dir, split)
    elif any(option is not None for option in folder_options):
        raise LayoutError(f"--normal-dir/--anomalous-dir/--mask-dir/--split apply to the 'folders' layout, "
                          f"not to {info.name}")
    if not layout.matches(root):
        raise LayoutError(f"{root} does not look like {info.title}. Expected: {layout.describe()}")
    metadata = {split_name: samples for split_name, samples in layout.scan(root).items() if samples}
    if not metadata:
        raise LayoutError(f"no images found for {info.title} under {root}. Expected: {layout.describe()}")
    if info.normal_images:
        _warn_classes_without_normal_images(info, layout, metadata)
    found = {sample.class_name for samples in metadata.values() for sample in samples}
    if class_name:
        if len(found) > 1:
            raise LayoutError(f"{info.title} under {root} has several classes ({sorted(found)}), named by its "
                              f"folders; a class name applies to single-class datasets only")
        metadata = {split_name: [replace(sample, class_name=class_name) for sample in samples]
                    for split_name, samples in metadata.items()}
    elif info.classes:
        absent = [c for c in info.classes if c not in found]
        extra = sorted(found - set(info.classes))
        if absent:
            logger.warning("%s: classes %s not found under %s (partial download?)", info.title, absent, root)
        if extra:
            logger.warning("%s: classes %s under %s are not among its published classes", info.title, extra, root)
    return _ordered(metadata, info.classes)


MVTEC_CLASSES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                 "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
VISA_CLASSES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                "pcb3", "pcb4", "pipe_fryum")
MPDD_CLASSES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
BTAD_CLASSES = ("01", "02", "03")
DAGM_CLASSES = tuple(f"Class{i}" for i in range(1, 11))
DTD_CLASSES = ("Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
               "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127")
MVTEC_AD2_CLASSES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")

_POLYP_LAYOUT = {"test": (("images", "masks"),)}
_LABEL_FOLDERS = dict(splits={"test": ""}, images=("{state}",), masks=(), normal_states=("no",),
                      anomalous_states=("yes",))


def _bmad(organ: str, aliases: Tuple[str, ...], source: str) -> DatasetInfo:
    return DatasetInfo(
        f"bmad-{organ.lower()}", f"BMAD {organ}", "medical",
        DefectFolders(splits={"train": "train", "validation": "valid", "test": "test"},
                      images=("{split}/{state}/img",), masks=("{split}/{state}/label",), mask_suffixes=("",),
                      normal_states=("good",), anomalous_states=("Ungood",), class_name=organ),
        aliases=aliases, classes=(organ,), source=source,
        notes="BMAD's reorganised release: <split>/good|Ungood/img, masks in <split>/Ungood/label.",
    )


for _info in (
    DatasetInfo("mvtec", "MVTec AD", "industrial", DefectFolders(), aliases=("mvtec_ad", "mvtecad"),
                classes=MVTEC_CLASSES, source="https://www.mvtec.com/company/research/datasets/mvtec-ad"),
    DatasetInfo("visa", "VisA", "industrial",
                CsvTable(tables=("split_csv/1cls.csv",), label_column="label", anomalous_values=("anomaly",),
                         image_column="image", class_column="object", split_column="split", mask_column="mask"),
                aliases=("visa_20220922",), classes=VISA_CLASSES, source="https://github.com/amazon-science/spot-diff",
                notes="Splits and labels come from the published split_csv/1cls.csv."),
    DatasetInfo("mpdd", "MPDD", "industrial", DefectFolders(), classes=MPDD_CLASSES,
                source="https://github.com/stepanje/MPDD"),
    DatasetInfo("btad", "BTAD", "industrial",
                DefectFolders(normal_states=("ok",), mask_suffixes=("", "_mask")), aliases=("btech",),
                classes=BTAD_CLASSES, source="http://avires.dimi.uniud.it/papers/btad/btad.zip",
                notes="Normal images in ok/, defects in ko/; masks share the image stem (.png or .bmp)."),
    DatasetInfo("sdd", "SDD (KolektorSDD)", "industrial",
                FirstMatching((
                    DefectFolders(mask_suffixes=("_mask", "")),
                    MaskPresence(splits={"test": "{group}"}, mask_suffixes=("_label",),
                                 class_name="electrical_commutators", from_content=True),
                )),
                aliases=("kolektorsdd", "ksdd", "kolektor"), source="https://www.vicos.si/resources/kolektorsdd/",
                notes="AnomalyCLIP's MVTec-style copy (<class>/test/good|defect), or the raw release "
                      "(kosNN/PartN.jpg with PartN_label.bmp; anomalous when the label has foreground)."),
    DatasetInfo("dagm", "DAGM 2007", "industrial",
                MaskPresence(splits={"train": "{cls}/Train", "test": "{cls}/Test"}, mask_folder="Label",
                             mask_suffixes=("_label",)),
                aliases=("dagm2007", "dagm_kaggleupload"), classes=DAGM_CLASSES,
                source="https://www.kaggle.com/datasets/mhskjelvareid/dagm-2007-competition-dataset-optical-inspection",
                notes="An image is anomalous when Label/<stem>_label.PNG exists."),
    DatasetInfo("dtd", "DTD-Synthetic", "industrial", DefectFolders(), aliases=("dtd_synthetic", "dtdsys"),
                classes=DTD_CLASSES, source="https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1"),
    DatasetInfo("isic", "ISIC 2016 (ISBI)", "medical",
                FirstMatching((
                    ImageMaskFolders(class_name="skin", splits={
                        "train": (("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),),
                        "test": (("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),),
                    }, mask_suffixes=("_Segmentation", "")),
                    DefectFolders(splits={"test": "test"}, masks=("{cls}/ISBI2016_ISIC_Part1_Test_GroundTruth",),
                                  mask_suffixes=("_Segmentation", "", "_mask")),
                )),
                normal_images=False,
                aliases=("isic2016", "isbi", "isbi2016"), source="https://challenge.isic-archive.com/data/#2016",
                notes="Publisher's folders (masks <stem>_Segmentation.png), or AnomalyCLIP's copy "
                      "skin/test/<state>/ with skin/ISBI2016_ISIC_Part1_Test_GroundTruth/."),
    DatasetInfo("clinicdb", "CVC-ClinicDB", "medical",
                ImageMaskFolders(class_name="Colon_clinicDB", splits={"test": (
                    ("images", "masks"), ("Original", "Ground Truth"), ("PNG/Original", "PNG/Ground Truth"),
                    ("TIF/Original", "TIF/Ground Truth"))}),
                normal_images=False,
                aliases=("cvc_clinicdb", "colon_clinicdb"),
                source="https://figshare.com/articles/figure/Polyp_DataSet_zip/21221579"),
    DatasetInfo("colondb", "CVC-ColonDB", "medical", ImageMaskFolders(class_name="Colon_colonDB", splits=_POLYP_LAYOUT),
                normal_images=False,
                aliases=("cvc_colondb", "colon_colondb"),
                source="https://figshare.com/articles/figure/Polyp_DataSet_zip/21221579"),
    DatasetInfo("kvasir", "Kvasir-SEG", "medical", ImageMaskFolders(class_name="Kvasir", splits=_POLYP_LAYOUT),
                normal_images=False,
                aliases=("kvasir_seg", "colon_kvasir"), source="https://datasets.simula.no/kvasir-seg/"),
    DatasetInfo("endo", "EndoTect 2020", "medical",
                ImageMaskFolders(class_name="colon", splits={"test": (("*", "masks"),)}),
                normal_images=False,
                aliases=("endotect", "endotect2020"),
                source="https://drive.google.com/file/d/1LNpLkv5ZlEUzr_RPN5rdOHaqk0SkZa3m/view",
                notes="Every folder except masks/ holds images; masks share the image stem."),
    DatasetInfo("tn3k", "TN3K", "medical",
                ImageMaskFolders(class_name="thyroid", splits={"train": (("trainval-image", "trainval-mask"),),
                                                                "test": (("test-image", "test-mask"),)}),
                normal_images=False,
                aliases=("thyroid",), source="https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation"),
    DatasetInfo("headct", "HeadCT", "medical",
                FirstMatching((
                    DefectFolders(splits={"test": "test"}, masks=()),
                    CsvTable(tables=("labels.csv",), label_column="hemorrhage", anomalous_values=("1",),
                             image_templates=("head_ct/head_ct/{id:03d}.png", "head_ct/{id:03d}.png", "{id:03d}.png"),
                             class_name="brain"),
                )),
                image_level_only=True, aliases=("head_ct",),
                source="https://drive.google.com/file/d/1lSAUkgZXUFwTqyexS8km4ZZ3hW89i5aS/view",
                notes="AnomalyCLIP's copy (brain/test/good|<defect>) or Kaggle's head_ct/ with labels.csv."),
    DatasetInfo("brainmri", "BrainMRI", "medical",
                DefectFolders(class_name="brain", prefixes=("brain_tumor_dataset", ""), **_LABEL_FOLDERS),
                image_level_only=True, aliases=("brain_mri", "brain_tumor_dataset"),
                source="https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
                notes="no/ normal, yes/ tumour (inside brain_tumor_dataset/ or at the root)."),
    DatasetInfo("br35h", "Br35H", "medical", DefectFolders(class_name="brain", **_LABEL_FOLDERS),
                image_level_only=True, aliases=("br35",),
                source="https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
                notes="no/ normal, yes/ tumour; the unlabelled pred/ folder is not used."),
    DatasetInfo("covid19", "COVID-19 Radiography", "medical",
                DefectFolders(splits={"test": ""}, images=("{state}/images", "{state}"), masks=(),
                              normal_states=("Normal",), ignore_states=("masks",), class_name="chest",
                              prefixes=("COVID-19_Radiography_Dataset", "")),
                image_level_only=True, aliases=("covid", "covid_19", "covid19_radiography"),
                source="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
                notes="Normal/ (or NORMAL/) normal, every other class folder anomalous; its lung masks "
                      "are not anomaly masks and are not used."),
    _bmad("Brain", ("brain", "brain_ad", "brats"), "https://github.com/DorisBao/BMAD"),
    _bmad("Liver", ("liver", "liverct", "liver_ad"), "https://github.com/DorisBao/BMAD"),
    _bmad("Retina", ("retina", "resc", "retina_resc", "retina_resc_ad"), "https://github.com/DorisBao/BMAD"),
    DatasetInfo("cvc300", "CVC-300", "medical", ImageMaskFolders(class_name="CVC-300", splits=_POLYP_LAYOUT),
                normal_images=False,
                aliases=("colon_cvc300", "endoscene"),
                source="https://figshare.com/articles/figure/Polyp_DataSet_zip/21221579"),
    DatasetInfo("mvtec-ad2", "MVTec AD 2", "industrial",
                DefectFolders(splits={"train": "train", "validation": "validation", "test": "test_public"},
                              masks=("{cls}/{split}/ground_truth/{state}",)),
                aliases=("mvtec_ad_2", "mad2"), classes=MVTEC_AD2_CLASSES,
                source="https://www.mvtec.com/company/research/datasets/mvtec-ad-2",
                notes="test_public becomes the test split; test_private* have no labels and are not listed."),
    DatasetInfo("synthetic", "Synthetic defects", "industrial", DefectFolders(), aliases=("synth",),
                notes="Written by anomaly-clip synthesize (MVTec AD layout)."),
    DatasetInfo("custom", "Custom folders", "industrial", CustomFolders(), aliases=("own", "user"),
                notes="<class>/[<split>/]<good|defect>/ with optional ground_truth/<defect>/ masks; a "
                      "root holding train/, test/ or good/ is one class."),
    DatasetInfo("folders", "Normal/anomalous folder pair", "industrial", PlainFolders(),
                aliases=("plain", "pair"), notes="--normal-dir and --anomalous-dir (repeatable), optional --mask-dir."),
):
    register(_info)


def list_rows() -> List[Dict[str, str]]:
    """One row per registered dataset, for ``--list`` and the documentation."""
    return [{
        "name": info.name,
        "dataset": info.title,
        "domain": info.domain,
        "masks": "no" if info.image_level_only else ("optional" if info.name in ("custom", "folders") else "yes"),
        "aliases": ", ".join(info.aliases),
    } for info in DATASETS.values()]
