"""Folder layouts: how a dataset's files are arranged, and the scan that turns a tree into samples.

A handful of small, parameterised layout kinds describe every supported dataset (see
:mod:`anomaly_clip.data.registry`): a new dataset with a known arrangement is a few lines of data,
not a new script. The folder kinds only say where their images are; the scan itself is written
once, in :class:`~.base.FolderLayout`.

* :class:`DefectFolders` -- one folder per state (``good``, or a defect type) per split, masks
  in a parallel folder tree (MVTec AD and its many look-alikes, BMAD, label folders).
* :class:`ImageMaskFolders` -- an ``images`` folder of anomalous images and a ``masks`` folder
  (polyp and lesion segmentation sets).
* :class:`CsvTable` -- a table lists the images, their label and split (VisA, HeadCT).
* :class:`MaskPresence` -- images in one folder, anomalous exactly when a mask file exists or
  has defect pixels (DAGM, raw KolektorSDD).
* :class:`CustomFolders` and :class:`PlainFolders` -- users' own data.
* :class:`FirstMatching` -- a dataset shipped in more than one arrangement.

Masks are paired with images by file name (``<image stem><suffix>.<any image extension>``),
never by sort order, so a missing or extra file is reported instead of shifting every pair.
"""
from ..imaging import is_image_file
from .base import (
    MASK_FOLDER_NAMES,
    NORMAL_STATE_NAMES,
    SPLIT_FOLDERS,
    FirstMatching,
    FolderLayout,
    ImageGroup,
    Layout,
    LayoutError,
    MaskFinder,
    folder_key,
    is_mask_folder,
    is_normal_state,
    list_folders,
    list_images,
    split_of,
)
from .folders import CustomFolders, DefectFolders, PlainFolders
from .pairs import ImageMaskFolders, MaskPresence
from .table import CsvTable

__all__ = [
    "MASK_FOLDER_NAMES", "NORMAL_STATE_NAMES", "SPLIT_FOLDERS", "CsvTable", "CustomFolders",
    "DefectFolders", "FirstMatching", "FolderLayout", "ImageGroup", "ImageMaskFolders", "Layout", "LayoutError",
    "MaskFinder", "MaskPresence", "PlainFolders", "folder_key", "is_image_file", "is_mask_folder",
    "is_normal_state", "list_folders", "list_images", "split_of",
]
