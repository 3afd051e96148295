"""Every registered layout: a tiny tree with the publisher's real naming -> exactly the right
metadata, which the loader then reads; plus the ``python -m generate_dataset_json`` front."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pytest
from PIL import Image

from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.formats import load_samples, read_jsonl, read_meta_json
from anomaly_clip.data.layouts import LayoutError
from anomaly_clip.data.records import Sample
from anomaly_clip.data.registry import DATASETS, UnknownDatasetError, get_dataset_info, scan_dataset
from generate_dataset_json import generate, main

Row = Tuple[str, str, int, str, Optional[str], str]  # split, image, label, class, mask, specie


def write_image(path: Path, foreground: bool = True, mask: bool = False) -> None:
    """A tiny real image (or a mask with/without foreground) in the format of its extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask:
        array = np.zeros((8, 8), np.uint8)
        if foreground:
            array[2:5, 3:6] = 255
        image = Image.fromarray(array)
    else:
        image = Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    image.save(path)


def build(root: Path, images: Iterable[str], masks: Iterable[str] = (), empty_masks: Iterable[str] = (),
          other: Iterable[str] = ()) -> Path:
    for name in images:
        write_image(root / name)
    for name in masks:
        write_image(root / name, mask=True)
    for name in empty_masks:
        write_image(root / name, foreground=False, mask=True)
    for name in other:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("not an image\n")
    return root


def rows(metadata: Dict[str, List[Sample]]) -> List[Row]:
    return [(split, s.image_path, s.label, s.class_name, s.mask_path, s.specie_name)
            for split, samples in metadata.items() for s in samples]


# name -> (images, masks, empty masks, other files, expected rows)
TREES: Dict[str, tuple] = {
    "mvtec": (
        ["bottle/train/good/000.png", "bottle/train/good/001.png", "bottle/test/good/000.png",
         "bottle/test/broken_large/000.png", "bottle/test/broken_large/001.png",
         "carpet/train/good/000.png", "carpet/test/good/000.png", "carpet/test/hole/000.png"],
        ["bottle/ground_truth/broken_large/000_mask.png", "bottle/ground_truth/broken_large/001_mask.png",
         "carpet/ground_truth/hole/000_mask.png"],
        [], ["license.txt", "bottle/readme.txt"],
        [("train", "bottle/train/good/000.png", 0, "bottle", None, "good"),
         ("train", "bottle/train/good/001.png", 0, "bottle", None, "good"),
         ("train", "carpet/train/good/000.png", 0, "carpet", None, "good"),
         ("test", "bottle/test/good/000.png", 0, "bottle", None, "good"),
         ("test", "bottle/test/broken_large/000.png", 1, "bottle", "bottle/ground_truth/broken_large/000_mask.png",
          "broken_large"),
         ("test", "bottle/test/broken_large/001.png", 1, "bottle", "bottle/ground_truth/broken_large/001_mask.png",
          "broken_large"),
         ("test", "carpet/test/good/000.png", 0, "carpet", None, "good"),
         ("test", "carpet/test/hole/000.png", 1, "carpet", "carpet/ground_truth/hole/000_mask.png", "hole")],
    ),
    "mpdd": (
        ["tubes/train/good/000.png", "tubes/test/good/000.png", "tubes/test/anomalous/000.png"],
        ["tubes/ground_truth/anomalous/000_mask.png"], [], [],
        [("train", "tubes/train/good/000.png", 0, "tubes", None, "good"),
         ("test", "tubes/test/good/000.png", 0, "tubes", None, "good"),
         ("test", "tubes/test/anomalous/000.png", 1, "tubes", "tubes/ground_truth/anomalous/000_mask.png",
          "anomalous")],
    ),
    "dtd": (
        ["Woven_001/train/good/000.png", "Woven_001/test/good/000.png", "Woven_001/test/bad/003.png"],
        ["Woven_001/ground_truth/bad/003_mask.png"], [], [],
        [("train", "Woven_001/train/good/000.png", 0, "Woven_001", None, "good"),
         ("test", "Woven_001/test/good/000.png", 0, "Woven_001", None, "good"),
         ("test", "Woven_001/test/bad/003.png", 1, "Woven_001", "Woven_001/ground_truth/bad/003_mask.png", "bad")],
    ),
    "btad": (
        ["01/train/ok/0000.bmp", "01/test/ok/0001.bmp", "01/test/ko/0002.bmp", "02/test/ko/0000.png",
         "03/test/ko/0005.bmp"],
        ["01/ground_truth/ko/0002.png", "02/ground_truth/ko/0000.png", "03/ground_truth/ko/0005.bmp"], [], [],
        [("train", "01/train/ok/0000.bmp", 0, "01", None, "ok"),
         ("test", "01/test/ok/0001.bmp", 0, "01", None, "ok"),
         ("test", "01/test/ko/0002.bmp", 1, "01", "01/ground_truth/ko/0002.png", "ko"),
         ("test", "02/test/ko/0000.png", 1, "02", "02/ground_truth/ko/0000.png", "ko"),
         ("test", "03/test/ko/0005.bmp", 1, "03", "03/ground_truth/ko/0005.bmp", "ko")],
    ),
    "visa": (
        ["candle/Data/Images/Normal/0000.JPG", "candle/Data/Images/Normal/0001.JPG",
         "candle/Data/Images/Anomaly/000.JPG", "pcb1/Data/Images/Anomaly/001.JPG"],
        ["candle/Data/Masks/Anomaly/000.png", "pcb1/Data/Masks/Anomaly/001.png"], [], [],
        [("train", "candle/Data/Images/Normal/0000.JPG", 0, "candle", None, ""),
         ("test", "candle/Data/Images/Normal/0001.JPG", 0, "candle", None, ""),
         ("test", "candle/Data/Images/Anomaly/000.JPG", 1, "candle", "candle/Data/Masks/Anomaly/000.png", ""),
         ("test", "pcb1/Data/Images/Anomaly/001.JPG", 1, "pcb1", "pcb1/Data/Masks/Anomaly/001.png", "")],
    ),
    "sdd": (
        ["electrical_commutators/train/good/kos01_Part0_0.png", "electrical_commutators/test/good/kos02_Part1_0.png",
         "electrical_commutators/test/defect/kos01_Part5_0.png"],
        ["electrical_commutators/ground_truth/defect/kos01_Part5_0.png"], [], [],
        [("train", "electrical_commutators/train/good/kos01_Part0_0.png", 0, "electrical_commutators", None, "good"),
         ("test", "electrical_commutators/test/good/kos02_Part1_0.png", 0, "electrical_commutators", None, "good"),
         ("test", "electrical_commutators/test/defect/kos01_Part5_0.png", 1, "electrical_commutators",
          "electrical_commutators/ground_truth/defect/kos01_Part5_0.png", "defect")],
    ),
    "dagm": (
        ["Class1/Train/0001.PNG", "Class1/Train/0002.PNG", "Class1/Test/0003.PNG", "Class2/Test/0001.PNG"],
        ["Class1/Train/Label/0002_label.PNG", "Class2/Test/Label/0001_label.PNG"], [],
        ["Class1/Train/Label/Labels.txt"],
        [("train", "Class1/Train/0001.PNG", 0, "Class1", None, ""),
         ("train", "Class1/Train/0002.PNG", 1, "Class1", "Class1/Train/Label/0002_label.PNG", ""),
         ("test", "Class1/Test/0003.PNG", 0, "Class1", None, ""),
         ("test", "Class2/Test/0001.PNG", 1, "Class2", "Class2/Test/Label/0001_label.PNG", "")],
    ),
    "isic": (
        ["ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg", "ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg",
         "ISBI2016_ISIC_Part1_Test_Data/ISIC_0000004.jpg"],
        ["ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png",
         "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png",
         "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000004_Segmentation.png"], [], [],
        [("train", "ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg", 1, "skin",
          "ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png", ""),
         ("test", "ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg", 1, "skin",
          "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png", ""),
         ("test", "ISBI2016_ISIC_Part1_Test_Data/ISIC_0000004.jpg", 1, "skin",
          "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000004_Segmentation.png", "")],
    ),
    "clinicdb": (
        ["images/1.png", "images/2.png"], ["masks/1.png", "masks/2.png"], [], [],
        [("test", "images/1.png", 1, "Colon_clinicDB", "masks/1.png", ""),
         ("test", "images/2.png", 1, "Colon_clinicDB", "masks/2.png", "")],
    ),
    "colondb": (
        ["images/10.png"], ["masks/10.png"], [], [],
        [("test", "images/10.png", 1, "Colon_colonDB", "masks/10.png", "")],
    ),
    "kvasir": (
        ["images/cju0qkwl35piu0993l0dewei2.jpg"], ["masks/cju0qkwl35piu0993l0dewei2.jpg"], [], [],
        [("test", "images/cju0qkwl35piu0993l0dewei2.jpg", 1, "Kvasir", "masks/cju0qkwl35piu0993l0dewei2.jpg", "")],
    ),
    "cvc300": (
        ["images/149.png", "images/150.png"], ["masks/149.png", "masks/150.png"], [], [],
        [("test", "images/149.png", 1, "CVC-300", "masks/149.png", ""),
         ("test", "images/150.png", 1, "CVC-300", "masks/150.png", "")],
    ),
    "endo": (
        ["images/a1.jpg", "images/b2.jpg"], ["masks/a1.png", "masks/b2.png"], [], [],
        [("test", "images/a1.jpg", 1, "colon", "masks/a1.png", "images"),
         ("test", "images/b2.jpg", 1, "colon", "masks/b2.png", "images")],
    ),
    "tn3k": (
        ["trainval-image/0000.jpg", "test-image/0001.jpg"], ["trainval-mask/0000.jpg", "test-mask/0001.jpg"], [], [],
        [("train", "trainval-image/0000.jpg", 1, "thyroid", "trainval-mask/0000.jpg", ""),
         ("test", "test-image/0001.jpg", 1, "thyroid", "test-mask/0001.jpg", "")],
    ),
    "headct": (
        ["brain/test/good/000.png", "brain/test/Ungood/100.png"], [], [], [],
        [("test", "brain/test/good/000.png", 0, "brain", None, "good"),
         ("test", "brain/test/Ungood/100.png", 1, "brain", None, "Ungood")],
    ),
    "brainmri": (
        ["brain_tumor_dataset/yes/Y1.jpg", "brain_tumor_dataset/no/1 no.jpeg", "yes/Y1.jpg", "no/1 no.jpeg"],
        [], [], [],
        [("test", "brain_tumor_dataset/no/1 no.jpeg", 0, "brain", None, "no"),
         ("test", "brain_tumor_dataset/yes/Y1.jpg", 1, "brain", None, "yes")],
    ),
    "br35h": (
        ["yes/y0.jpg", "yes/y1.jpg", "no/no0.jpg", "pred/pred0.jpg"], [], [], [],
        [("test", "no/no0.jpg", 0, "brain", None, "no"),
         ("test", "yes/y0.jpg", 1, "brain", None, "yes"),
         ("test", "yes/y1.jpg", 1, "brain", None, "yes")],
    ),
    "covid19": (
        ["COVID-19_Radiography_Dataset/COVID/images/COVID-1.png",
         "COVID-19_Radiography_Dataset/Normal/images/Normal-1.png",
         "COVID-19_Radiography_Dataset/Lung_Opacity/images/Lung_Opacity-1.png",
         "COVID-19_Radiography_Dataset/Viral Pneumonia/images/Viral Pneumonia-1.png"],
        ["COVID-19_Radiography_Dataset/COVID/masks/COVID-1.png"], [],
        ["COVID-19_Radiography_Dataset/COVID.metadata.xlsx"],
        [("test", "COVID-19_Radiography_Dataset/Normal/images/Normal-1.png", 0, "chest", None, "Normal"),
         ("test", "COVID-19_Radiography_Dataset/COVID/images/COVID-1.png", 1, "chest", None, "COVID"),
         ("test", "COVID-19_Radiography_Dataset/Lung_Opacity/images/Lung_Opacity-1.png", 1, "chest", None,
          "Lung_Opacity"),
         ("test", "COVID-19_Radiography_Dataset/Viral Pneumonia/images/Viral Pneumonia-1.png", 1, "chest", None,
          "Viral Pneumonia")],
    ),
    "mvtec-ad2": (
        ["can/train/good/000_regular.png", "can/validation/good/001_regular.png",
         "can/test_public/good/002_regular.png", "can/test_public/bad/003_regular.png",
         "can/test_private/004_regular.png", "can/test_private_mixed/005_regular.png"],
        ["can/test_public/ground_truth/bad/003_regular_mask.png"], [], [],
        [("train", "can/train/good/000_regular.png", 0, "can", None, "good"),
         ("validation", "can/validation/good/001_regular.png", 0, "can", None, "good"),
         ("test", "can/test_public/good/002_regular.png", 0, "can", None, "good"),
         ("test", "can/test_public/bad/003_regular.png", 1, "can",
          "can/test_public/ground_truth/bad/003_regular_mask.png", "bad")],
    ),
    "custom": (
        ["widget/good/a.png", "widget/scratch/b.png", "gadget/train/good/c.png", "gadget/test/good/d.png",
         "gadget/test/dent/e.png"],
        ["widget/ground_truth/scratch/b_mask.png", "gadget/test/ground_truth/dent/e.png"], [], [],
        [("train", "gadget/train/good/c.png", 0, "gadget", None, "good"),
         ("test", "gadget/test/good/d.png", 0, "gadget", None, "good"),
         ("test", "gadget/test/dent/e.png", 1, "gadget", "gadget/test/ground_truth/dent/e.png", "dent"),
         ("test", "widget/good/a.png", 0, "widget", None, "good"),
         ("test", "widget/scratch/b.png", 1, "widget", "widget/ground_truth/scratch/b_mask.png", "scratch")],
    ),
}
for _organ in ("Brain", "Liver", "Retina"):
    TREES[f"bmad-{_organ.lower()}"] = (
        ["train/good/img/00003_60.png", "valid/good/img/00025_99.png", "valid/Ungood/img/00124_60.png",
         "test/good/img/00000_96.png", "test/Ungood/img/00002_60.png"],
        ["valid/Ungood/label/00124_60.png", "test/Ungood/label/00002_60.png"], [], [],
        [("train", "train/good/img/00003_60.png", 0, _organ, None, "good"),
         ("validation", "valid/good/img/00025_99.png", 0, _organ, None, "good"),
         ("validation", "valid/Ungood/img/00124_60.png", 1, _organ, "valid/Ungood/label/00124_60.png", "Ungood"),
         ("test", "test/good/img/00000_96.png", 0, _organ, None, "good"),
         ("test", "test/Ungood/img/00002_60.png", 1, _organ, "test/Ungood/label/00002_60.png", "Ungood")],
    )

VISA_CSV = (
    "object,split,label,image,mask\n"
    "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
    "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
    "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"
    "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/001.JPG,pcb1/Data/Masks/Anomaly/001.png\n"
)

# Datasets whose test comes with its own tree below (alternative layouts, user options).
SEPARATELY_TESTED = {"synthetic", "folders"}


def build_tree(name: str, root: Path) -> List[Row]:
    images, masks, empty, other, expected = TREES[name]
    build(root, images, masks, empty, other)
    if name == "visa":
        (root / "split_csv").mkdir()
        (root / "split_csv/1cls.csv").write_text(VISA_CSV)
    return expected


def test_every_registered_dataset_has_a_tree():
    assert set(DATASETS) == set(TREES) | SEPARATELY_TESTED


@pytest.mark.parametrize("name", sorted(TREES))
def test_layout_gives_exact_entries_and_loader_reads_them(name, tmp_path):
    expected = build_tree(name, tmp_path)
    metadata = scan_dataset(name, tmp_path)
    assert rows(metadata) == expected
    info = get_dataset_info(name)
    assert info.image_level_only == (not any(row[4] for row in expected))

    generate(name, tmp_path, fmt="both")
    for split in metadata:
        samples = load_samples(tmp_path, split=split)
        assert samples == metadata[split] == read_jsonl(tmp_path / f"{split}.jsonl")
        dataset = AnomalyDataset(samples, tmp_path, image_size=16, image_level_only=info.image_level_only or None)
        for index in range(len(dataset)):
            item = dataset[index]
            assert item["image"].shape == (3, 16, 16)
            assert item["mask"].shape == (1, 16, 16)
            has_mask = samples[index].mask_path is not None
            assert bool(item["mask"].any()) == has_mask


def test_single_class_datasets_accept_a_class_name(tmp_path):
    build_tree("kvasir", tmp_path / "kvasir")
    metadata = scan_dataset("kvasir", tmp_path / "kvasir", class_name="colon")
    assert {s.class_name for s in metadata["test"]} == {"colon"}
    build_tree("headct", tmp_path / "headct")
    assert {s.class_name for s in scan_dataset("headct", tmp_path / "headct", class_name="head")["test"]} == {"head"}
    build_tree("mvtec", tmp_path / "mvtec")
    with pytest.raises(LayoutError, match="several classes"):
        scan_dataset("mvtec", tmp_path / "mvtec", class_name="x")


def test_missing_mask_names_the_image(tmp_path):
    build(tmp_path, ["bottle/test/good/000.png", "bottle/test/crack/000.png", "bottle/test/crack/001.png"],
          ["bottle/ground_truth/crack/000_mask.png", "bottle/ground_truth/crack/007_mask.png"])
    with pytest.raises(LayoutError, match=r"bottle/test/crack/001\.png"):
        scan_dataset("mvtec", tmp_path)


def test_masks_pair_by_name_not_by_order(tmp_path, caplog):
    """The reference scripts pair sorted lists; one extra mask would shift every pair."""
    build(tmp_path, ["images/2.png", "images/10.png"], ["masks/10.png", "masks/2.png", "masks/99.png"])
    with caplog.at_level(logging.WARNING):
        metadata = scan_dataset("clinicdb", tmp_path)
    assert [(s.image_path, s.mask_path) for s in metadata["test"]] == [
        ("images/10.png", "masks/10.png"), ("images/2.png", "masks/2.png")]
    assert "99.png" in caplog.text


def test_partial_download_and_unknown_classes_are_reported(tmp_path, caplog):
    build(tmp_path, ["bottle/test/good/000.png", "widget/test/good/000.png"])
    with caplog.at_level(logging.WARNING):
        scan_dataset("mvtec", tmp_path)
    assert "cable" in caplog.text and "widget" in caplog.text


def test_wrong_layout_explains_what_was_expected(tmp_path):
    build(tmp_path, ["pictures/a.png"])
    with pytest.raises(LayoutError, match="split_csv/1cls.csv"):
        scan_dataset("visa", tmp_path)
    with pytest.raises(LayoutError, match="ground_truth"):
        scan_dataset("mvtec", tmp_path)


def test_visa_csv_listing_missing_files_is_an_error(tmp_path):
    build_tree("visa", tmp_path)
    (tmp_path / "pcb1/Data/Images/Anomaly/001.JPG").unlink()
    with pytest.raises(LayoutError, match="001.JPG"):
        scan_dataset("visa", tmp_path)


def test_sdd_raw_release_labels_from_mask_content(tmp_path):
    build(tmp_path, ["kos01/Part0.jpg", "kos01/Part5.jpg", "kos02/Part1.jpg"],
          masks=["kos01/Part5_label.bmp"], empty_masks=["kos01/Part0_label.bmp", "kos02/Part1_label.bmp"])
    assert rows(scan_dataset("kolektorsdd", tmp_path)) == [
        ("test", "kos01/Part0.jpg", 0, "electrical_commutators", None, "kos01"),
        ("test", "kos01/Part5.jpg", 1, "electrical_commutators", "kos01/Part5_label.bmp", "kos01"),
        ("test", "kos02/Part1.jpg", 0, "electrical_commutators", None, "kos02"),
    ]


def test_isic_anomalyclip_copy(tmp_path):
    build(tmp_path, ["skin/test/anomaly/ISIC_0000003.jpg"],
          ["skin/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png"])
    assert rows(scan_dataset("isic", tmp_path)) == [
        ("test", "skin/test/anomaly/ISIC_0000003.jpg", 1, "skin",
         "skin/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png", "anomaly")]


def test_clinicdb_publisher_folders(tmp_path):
    build(tmp_path, ["Original/1.tif"], ["Ground Truth/1.tif"])
    assert rows(scan_dataset("CVC-ClinicDB", tmp_path)) == [
        ("test", "Original/1.tif", 1, "Colon_clinicDB", "Ground Truth/1.tif", "")]


def test_headct_kaggle_labels_csv(tmp_path):
    build(tmp_path, ["head_ct/head_ct/000.png", "head_ct/head_ct/001.png"])
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n")
    assert rows(scan_dataset("HeadCT", tmp_path)) == [
        ("test", "head_ct/head_ct/000.png", 1, "brain", None, ""),
        ("test", "head_ct/head_ct/001.png", 0, "brain", None, "")]


def test_covid_flat_release(tmp_path):
    build(tmp_path, ["COVID/COVID-1.png", "NORMAL/NORMAL-1.png", "Viral Pneumonia/VP-1.png"])
    assert rows(scan_dataset("covid-19", tmp_path)) == [
        ("test", "NORMAL/NORMAL-1.png", 0, "chest", None, "NORMAL"),
        ("test", "COVID/COVID-1.png", 1, "chest", None, "COVID"),
        ("test", "Viral Pneumonia/VP-1.png", 1, "chest", None, "Viral Pneumonia")]


def test_plain_folder_pair_with_and_without_masks(tmp_path):
    build(tmp_path, ["ok/1.png", "ok/2.png", "ng/3.png"], ["ng_masks/3_mask.png"])
    plain = scan_dataset("folders", tmp_path, normal_dir="ok", anomalous_dir="ng", class_name="part")
    assert rows(plain) == [("test", "ok/1.png", 0, "part", None, "good"), ("test", "ok/2.png", 0, "part", None, "good"),
                           ("test", "ng/3.png", 1, "part", None, "ng")]
    dataset = AnomalyDataset(plain["test"], tmp_path, image_size=8)
    assert dataset.image_level_only and not dataset[2]["mask"].any()
    masked = scan_dataset("folders", tmp_path, normal_dir="ok", anomalous_dir="ng", mask_dir="ng_masks",
                          split="train")
    assert rows(masked)[-1] == ("train", "ng/3.png", 1, "object", "ng_masks/3_mask.png", "ng")
    with pytest.raises(LayoutError, match="does not exist"):
        scan_dataset("folders", tmp_path, normal_dir="ok", anomalous_dir="missing")
    with pytest.raises(LayoutError, match="folders"):
        scan_dataset("mvtec", tmp_path, normal_dir="ok")


def test_custom_layout_with_partial_masks_warns_and_mask_folder_requires_every_mask(tmp_path, caplog):
    build(tmp_path, ["widget/good/a.png", "widget/scratch/b.png", "gadget/dent/e.png"],
          ["widget/ground_truth/scratch/b_mask.png"])
    with caplog.at_level(logging.WARNING):
        metadata = scan_dataset("custom", tmp_path)
    assert [s.mask_path for s in metadata["test"]] == [None, None, "widget/ground_truth/scratch/b_mask.png"]
    assert "gadget" in caplog.text
    build(tmp_path, ["widget/scratch/c.png"])
    with pytest.raises(LayoutError, match="widget/scratch/c.png"):
        scan_dataset("custom", tmp_path)


@pytest.mark.parametrize("spelling,name", [("MVTec AD", "mvtec"), ("mvtec_ad", "mvtec"), ("VISA", "visa"),
                                           ("tn3k", "tn3k"), ("CVC-ClinicDB", "clinicdb"), ("Colon_Kvasir", "kvasir"),
                                           ("MVTec AD 2", "mvtec-ad2"), ("Retina_RESC", "bmad-retina"),
                                           ("DTD-Synthetic", "dtd"), ("Br35H", "br35h")])
def test_names_are_case_and_punctuation_tolerant(spelling, name):
    assert get_dataset_info(spelling).name == name


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownDatasetError, match="mvtec.*visa"):
        get_dataset_info("imagenet")


def test_registry_records_domain_and_image_level():
    assert get_dataset_info("visa").domain == "industrial"
    assert get_dataset_info("kvasir").domain == "medical"
    assert {name for name, info in DATASETS.items() if info.image_level_only} == {
        "headct", "brainmri", "br35h", "covid19"}


def test_cli_writes_metadata_and_few_shot(tmp_path, caplog):
    root = tmp_path / "mvtec"
    build_tree("mvtec", root)
    with caplog.at_level(logging.INFO):
        written = main(["mvtec", "--root", str(root), "--format", "both", "--few-shot", "2"])
    assert {p.name for p in written} == {"meta.json", "train.jsonl", "test.jsonl", "2-shot.jsonl"}
    assert "bottle" in caplog.text and "carpet" in caplog.text  # per-class counts logged
    meta = json.loads((root / "meta.json").read_text())
    assert meta["test"]["bottle"][1] == {"img_path": "bottle/test/broken_large/000.png",
                                         "mask_path": "bottle/ground_truth/broken_large/000_mask.png",
                                         "cls_name": "bottle", "specie_name": "broken_large", "anomaly": 1}
    shots = read_jsonl(root / "2-shot.jsonl")
    assert [s.label for s in shots if s.class_name == "bottle"].count(1) == 1


def test_cli_output_path_and_errors(tmp_path, capsys):
    root = tmp_path / "kvasir"
    build_tree("kvasir", root)
    main(["kvasir", "--root", str(root), "--output", str(tmp_path / "out" / "kvasir_meta.json")])
    assert list(read_meta_json(tmp_path / "out" / "kvasir_meta.json")) == ["test"]
    with pytest.raises(SystemExit) as raised:
        main(["imagenet", "--root", str(root)])
    assert raised.value.code == 2 and "known datasets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["visa", "--root", str(root)])
    assert "split_csv" in capsys.readouterr().err
    main(["--list"])
    assert "bmad-retina" in capsys.readouterr().out


def test_cli_usage_problems_are_one_line(capsys):
    for argv in ([], ["folders", "--root", "a", "--split", "test", "--split", "train"], ["--format", "xml"]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert raised.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
        assert lines[0].endswith("see 'python -m generate_dataset_json --help'")


def test_a_second_split_of_a_folder_pair_keeps_the_first(tmp_path, caplog):
    build(tmp_path, ["good/0.png", "good/1.png", "defect/0.png", "defect/1.png"])
    main(["folders", "--root", str(tmp_path), "--normal-dir", "good", "--split", "train", "--class-name", "part"])
    with caplog.at_level(logging.INFO, logger="generate_dataset_json"):
        main(["folders", "--root", str(tmp_path), "--normal-dir", "good", "--anomalous-dir", "defect", "--split",
              "test", "--class-name", "part"])
    assert "Kept split(s) ['train']" in caplog.text
    assert [s.label for s in load_samples(tmp_path, split="train")] == [0, 0]
    assert sorted(s.label for s in load_samples(tmp_path, split="test")) == [0, 0, 1, 1]
    main(["folders", "--root", str(tmp_path), "--normal-dir", "defect", "--split", "train", "--class-name", "part"])
    assert len(load_samples(tmp_path, split="test")) == 4  # the named split is replaced, the other kept


def test_documentation_lists_every_dataset():
    table = (Path(__file__).parents[1] / "docs" / "datasets.md").read_text()
    assert all(f"| `{name}` |" in table for name in DATASETS)


# ---- users' own layouts recognised, or refused with what to do ------------------------------------

def test_custom_on_a_single_class_root_with_splits_is_one_class(tmp_path, caplog):
    """A root holding train/ and test/ (no class level) was read as classes "train" and "test"."""
    root = build(tmp_path / "bottle", ["train/good/0.png", "test/good/1.png", "test/crack/2.png"],
                 ["ground_truth/crack/2_mask.png"])
    expected = [("train", "train/good/0.png", 0, "bottle", None, "good"),
                ("test", "test/good/1.png", 0, "bottle", None, "good"),
                ("test", "test/crack/2.png", 1, "bottle", "ground_truth/crack/2_mask.png", "crack")]
    with caplog.at_level(logging.WARNING):
        assert rows(scan_dataset("custom", root)) == expected
    assert not caplog.records  # nothing suspicious: masks paired, every class has normal images
    renamed = scan_dataset("custom", root, class_name="vial")
    assert {s.class_name for samples in renamed.values() for s in samples} == {"vial"}


def test_custom_pointed_at_one_flat_class_folder_never_lists_masks_as_images(tmp_path):
    root = build(tmp_path / "widget", ["good/0.png", "scratch/1.png"], ["ground_truth/scratch/1_mask.png"])
    assert rows(scan_dataset("custom", root)) == [
        ("test", "good/0.png", 0, "widget", None, "good"),
        ("test", "scratch/1.png", 1, "widget", "ground_truth/scratch/1_mask.png", "scratch")]


@pytest.mark.parametrize("normal", ["nominal", "Normal", "OK", "no-defect", "Defect Free", "healthy"])
def test_custom_recognises_normal_folder_names(tmp_path, normal, caplog):
    build(tmp_path, [f"part/{normal}/0.png", "part/dent/1.png"])
    with caplog.at_level(logging.WARNING):
        metadata = scan_dataset("custom", tmp_path)
    assert [(s.label, s.specie_name) for s in metadata["test"]] == [(0, normal), (1, "dent")]
    assert "no normal image" not in caplog.text


def test_class_without_normal_images_is_warned_about(tmp_path, caplog):
    build(tmp_path, ["part/normalish/0.png", "part/dent/1.png", "other/good/2.png", "other/dent/3.png"])
    with caplog.at_level(logging.WARNING):
        scan_dataset("custom", tmp_path)
    warned = [r.getMessage() for r in caplog.records if "no normal image" in r.getMessage()]
    assert len(warned) == 1 and "'part'" in warned[0] and "nominal" in warned[0]
    caplog.clear()
    build(tmp_path / "kvasir", ["images/1.png"], ["masks/1.png"])
    with caplog.at_level(logging.WARNING):
        scan_dataset("kvasir", tmp_path / "kvasir")  # all anomalous by design: no warning
    assert "no normal image" not in caplog.text


def test_class_folder_mixing_splits_and_states_is_a_layout_error(tmp_path):
    build(tmp_path, ["part/test/good/0.png", "part/scratch/1.png"])
    with pytest.raises(LayoutError, match=r"mixes split folders \(test\) with state folders \(scratch\)"):
        scan_dataset("custom", tmp_path)


def test_images_outside_state_folders_are_reported(tmp_path, caplog):
    build(tmp_path, ["part/good/0.png", "part/stray.png"])
    with caplog.at_level(logging.WARNING):
        scan_dataset("custom", tmp_path)
    assert "stray.png" in caplog.text and "not listed" in caplog.text


def test_custom_lists_gif_images(tmp_path):
    build(tmp_path, ["part/good/0.gif", "part/dent/1.gif"])
    assert [s.image_path for s in scan_dataset("custom", tmp_path)["test"]] == ["part/good/0.gif", "part/dent/1.gif"]


def test_repeated_folder_flags_accumulate(tmp_path):
    build(tmp_path, ["ok/0.png", "a/1.png", "b/2.png"], ["masks_a/1.png", "masks_b/2.png"])
    written = main(["folders", "--root", str(tmp_path), "--normal-dir", "ok", "--anomalous-dir", "a",
                    "--anomalous-dir", "b", "--mask-dir", "masks_a", "--mask-dir", "masks_b"])
    assert rows(read_meta_json(written[0])) == [
        ("test", "ok/0.png", 0, "object", None, "good"),
        ("test", "a/1.png", 1, "object", "masks_a/1.png", "a"),
        ("test", "b/2.png", 1, "object", "masks_b/2.png", "b")]


def test_folder_flags_that_cannot_be_combined_stop_with_one_line(tmp_path, capsys):
    build(tmp_path, ["ok/0.png", "a/1.png", "b/2.png", "c/3.png"], ["m1/1.png", "m2/2.png"])
    for flags, message in (
            (["--anomalous-dir", "a", "--anomalous-dir", "b", "--anomalous-dir", "c", "--mask-dir", "m1",
              "--mask-dir", "m2"], "2 --mask-dir for 3 --anomalous-dir"),
            (["--normal-dir", "ok", "--anomalous-dir", "ok"], "given more than once"),
            (["--anomalous-dir", "a", "--split", "test", "--split", "train"], "--split given twice")):
        with pytest.raises(SystemExit) as raised:
            main(["folders", "--root", str(tmp_path), *flags])
        assert raised.value.code == 2 and message in capsys.readouterr().err


def test_masks_beside_their_images_are_not_images(tmp_path, caplog):
    build(tmp_path, ["ok/0.png", "ng/1.png"], ["ng/1_mask.png"])
    with caplog.at_level(logging.WARNING):
        metadata = scan_dataset("folders", tmp_path, normal_dir="ok", anomalous_dir="ng", mask_dir="ng")
    assert rows(metadata)[1:] == [("test", "ng/1.png", 1, "object", "ng/1_mask.png", "ng")]
    assert not caplog.records  # the images beside the masks are not "masks that match no image"


def test_image_folder_inside_a_mask_folder_is_a_layout_error(tmp_path):
    build(tmp_path, ["ok/0.png", "ng/1.png"], ["ng/masks/1.png"])
    with pytest.raises(LayoutError, match="inside the mask folder"):
        scan_dataset("folders", tmp_path, normal_dir="ng/masks", anomalous_dir="ng", mask_dir="ng/masks")


def test_one_mask_named_after_two_images_is_a_layout_error(tmp_path):
    build(tmp_path, ["a/1.png", "b/1.png"], ["masks/1.png"])
    with pytest.raises(LayoutError, match=r"masks/1\.png <- a/1\.png, b/1\.png"):
        scan_dataset("folders", tmp_path, anomalous_dir=["a", "b"], mask_dir="masks")


def test_a_missing_folder_of_a_folder_pair_is_named(tmp_path, capsys):
    (tmp_path / "good").mkdir()
    with pytest.raises(SystemExit) as raised:
        main(["folders", "--root", str(tmp_path), "--normal-dir", "nothere"])
    error = capsys.readouterr().err.strip()
    assert raised.value.code == 2 and error == f"error: normal folder {tmp_path / 'nothere'} does not exist"
