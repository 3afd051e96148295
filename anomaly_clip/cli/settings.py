"""Settings of the command line's own steps (data, evaluation, prediction, ...): the one place
their defaults are written. Method and backbone settings live with the library
(:mod:`anomaly_clip.methods`, :mod:`anomaly_clip.clip.config`, :mod:`anomaly_clip.engine.config`);
the sub-commands derive every flag from these dataclasses (:mod:`.options`). Imports no torch."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

from ..engine.config import DIST_TIMEOUT_S, MAP_DTYPES, MAP_FORMATS, METRIC_LEVELS, OVERLAY_FORMATS, PRECISIONS
from ..settings import setting

SYNTHETIC_FORMATS = ("meta", "jsonl", "both")
SUMMARY_LAYOUTS = ("runs", "methods")
PREDICT_BACKENDS = ("torch", "onnxruntime")


def _environment_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _environment_list(name: str) -> Optional[Tuple[str, ...]]:
    """The words of ``$name`` (spaces or commas), each once in the order given."""
    return tuple(dict.fromkeys(os.environ.get(name, "").replace(",", " ").split())) or None


def _environment_count(name: str) -> int:
    """``$name`` as a count >= 0 (unset or empty: 0); anything else is a :class:`ValueError` naming it."""
    value = os.environ.get(name, "").strip()
    if not value:
        return 0
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"${name} must be a whole number >= 0, got {value!r}")
    return int(value)


@dataclass
class RunSettings:
    """Where a command runs."""

    device: str = setting("auto", "cuda, cuda:1, cpu, or auto (CUDA when present)")
    precision: str = setting("auto", "auto: bf16/fp16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    num_workers: int = setting(2, "data-loading worker processes", minimum=0)
    dist_timeout: float = setting(DIST_TIMEOUT_S, "under torchrun: seconds a process waits for the others at a "
                                                  "synchronisation point before the run stops with an error (a "
                                                  "stopped or hung process)", metavar="SECONDS")


@dataclass
class TinySettings:
    """Trying the pipeline without CLIP weights (:meth:`~anomaly_clip.clip.config.BackboneConfig.tiny`)."""

    tiny: bool = setting(False, "the tiny random backbone (anomaly-clip-tiny, random weights, 112 px): try any "
                                "command on your own images without CLIP weights, in seconds on a CPU; its numbers "
                                "are MEANINGLESS. Checkpoints trained with it carry it, so test/predict/calibrate "
                                "need no flag (README: 'Try it without weights')")


@dataclass
class DataSettings:
    """Which images of a dataset root a command reads."""

    dataset: Optional[str] = setting(None, "dataset name (used for reports and, for AA-CLIP, class descriptions and "
                                           "blur; default: the folder name)")
    split: str = setting("test", "metadata split to read")
    metadata: Optional[str] = setting(None, "explicit metadata file (meta.json or jsonl)", metavar="FILE")


@dataclass
class PseudoAnomalySettings:
    """Training on normal images: defects painted with their exact masks."""

    synthesize_anomalies: float = setting(0.0, "paint a defect with its exact mask on a fraction P of the normal "
                                               "training images, anew every epoch (seeded by --seed); 0 trains on the "
                                               "data as it is", metavar="P")
    synthesize_defects: Optional[Tuple[str, ...]] = setting(None, "defect kinds to paint (default all; an unknown "
                                                                  "kind is an error that lists them)", metavar="KIND")


@dataclass
class EvaluationSettings:
    """``test``: metrics, outputs and the evaluation batch."""

    save_path: str = setting("./results", "folder for the log, tables and outputs")
    metrics: str = setting("image-pixel-level", "metric levels", choices=METRIC_LEVELS)
    aupro: str = setting("compat", "AUPRO definition: compat = 200 thresholds as in the published tables, exact = "
                                   "MVTec benchmark integral (or one registered with "
                                   "anomaly_clip.metrics.register_aupro)")
    batch_size: int = setting(8, "evaluation batch size", minimum=1)
    save_predictions: Optional[str] = setting(None, "write one .npz per class (paths, labels, scores, maps)",
                                              metavar="DIR")
    visualize: bool = setting(False, "write one panel per image under SAVE_PATH/heatmaps/<class>: image | map with "
                                     "colour bar | ground truth outlined (the design of predict's overlays)")
    overlay_format: str = setting("jpg", "file format of the --visualize panels (png: lossless, larger)",
                                  choices=OVERLAY_FORMATS)


@dataclass
class ReferenceSettings:
    """Few-shot normal references fused with the method's maps."""

    reference_images: Optional[str] = setting(None, "K normal images per class from the dataset's "
                                                     "--reference_split, a folder of normal images (one sub-folder per "
                                                     "class, or --reference_class), or a saved memory bank",
                                               metavar="K|DIR|FILE")
    reference_class: Optional[str] = setting(None, "class of the images directly in a --reference_images DIR",
                                             aliases=("class_name",))
    reference_weight: float = setting(0.5, "map = (1-W) text map + W reference map; score likewise with the "
                                           "reference map's maximum. VAND (APRIL-GAN): map = 2 x that, image score "
                                           "0.5 x (text probability + min-max normalised map maximum) whatever W "
                                           "(docs/baselines.md)", metavar="W")
    reference_split: str = setting("train", "split the K references come from")
    reference_seed: int = setting(0, "seed of the choice of K references per class")
    save_reference_bank: Optional[str] = setting(None, "write the memory bank to FILE, for --reference_images FILE "
                                                       "later", metavar="FILE")


@dataclass
class ModelSettings:
    """The trained model a command reads (``test``, ``predict``, ``calibrate``)."""

    checkpoint_path: str = setting(None, "our checkpoint, or an official one (AnomalyCLIP epoch_15.pth; AA-CLIP "
                                         "folder); a training-free --method (clip, clip_ac, winclip) needs none")
    method: Optional[str] = setting(None, "method of the checkpoint (detected from the file when omitted)")


@dataclass
class ImageSettings:
    """One's own images (``predict``, ``calibrate``)."""

    class_name: Optional[str] = setting(None, "class of the images scored (e.g. 'screw'): AA-CLIP's text anchors "
                                              "and the class of --reference_images; AnomalyCLIP ignores it")
    batch_size: int = setting(8, "images per forward pass", minimum=1)


@dataclass
class PredictSettings:
    """``predict``: inputs, outputs, thresholds."""

    input: Tuple[str, ...] = setting(None, "image files, folders (searched recursively) or glob patterns "
                                           "('parts/**/*.png')")
    save_path: str = setting("./predictions", "output folder (predictions.csv, maps/, overlays/)")
    image_threshold: Optional[float] = setting(None, "label 1 when score >= this (overrides the stored calibration)")
    pixel_threshold: Optional[float] = setting(None, "predicted mask: map >= this (overrides the stored calibration)")
    calibration: Optional[str] = setting(None, "calibration JSON to use instead of <checkpoint>.calibration.json",
                                         metavar="FILE")
    save_maps: Optional[str] = setting(None, "write each anomaly map at the image's original resolution (compressed "
                                             ".npz, or 16-bit PNG with its value range in the PNG text)",
                                       choices=MAP_FORMATS)
    map_dtype: str = setting("float32", "value type of the npz maps (float16: half the size, about 3 significant "
                                        "digits)", choices=MAP_DTYPES)
    overlays: bool = setting(False, "write image | heatmap with colour bar | predicted-mask outline panels with score "
                                    "and decision")
    overlay_format: str = setting("jpg", "file format of the overlays (png: lossless, larger)", choices=OVERLAY_FORMATS)
    map_range: Optional[Tuple[float, float]] = setting(None, "colour scale of the overlays: two numbers (default: "
                                                             "the calibration's map range)", metavar="LOW HIGH")
    backend: str = setting("torch", "torch: a checkpoint (--checkpoint_path); onnxruntime: an ONNX file written by "
                                    "'anomaly-clip export' (--model FILE; 'anomaly-clip predict --backend onnxruntime "
                                    "--help' lists its flags)", choices=PREDICT_BACKENDS)


@dataclass
class CalibrateSettings:
    """``calibrate``: which images and which rule."""

    input: Optional[Tuple[str, ...]] = setting(None, "normal images only (files, folders, globs), instead of "
                                                     "--data_path; needs --normal_quantile")
    normal_quantile: Optional[float] = setting(None, "thresholds at this quantile of the normal images' scores and "
                                                     "map maxima (1 = maximum); default: F1-max on a labelled "
                                                     "--data_path")
    output: Optional[str] = setting(None, "calibration file to write (default: <checkpoint_path>.calibration.json)",
                                    metavar="FILE")


@dataclass
class DemoSettings:
    """``demo``: synthetic data -> train on some classes -> zero-shot table on the rest."""

    output: str = setting("runs/demo", "folder for data, checkpoints, tables, heatmaps")
    weights: Optional[str] = setting(None, "local CLIP weights file (OpenAI or open_clip format)", metavar="FILE")
    download: bool = setting(False, "download the pretrained ViT-L-14-336 weights if they are not cached")
    epochs: int = setting(3, "training epochs")
    batch_size: int = setting(8, "batch size", minimum=1)
    image_size: Optional[int] = setting(None, "input size (default 518 with real weights, 112 with the tiny backbone)")
    train_classes: int = setting(3, "synthetic classes used for training")
    seed: int = setting(111, "random seed")
    device: str = setting("auto", "cuda, cpu, or auto")
    num_workers: int = setting(0, flag=False)


@dataclass
class SummarizeSettings:
    """``summarize``: one table from several ``test`` result folders."""

    result_dirs: Tuple[str, ...] = setting(None, "folders written by test --save_path")
    compare: bool = setting(False, "compare with the published numbers: ours | published | delta per metric")
    published_reference: Optional[str] = setting(None, "published table to compare with (e.g. zero_shot, "
                                                       "official_log, shot_16); default: the one the run's config "
                                                       "names, else the method's default", aliases=("reference",))
    published: Optional[Tuple[str, ...]] = setting(None, "published-table YAML file(s) (default: "
                                                         "configs/published/<method>.yaml)", metavar="FILE")
    output: Optional[str] = setting(None, "also write the table (markdown) to this file", metavar="FILE")
    layout: str = setting("runs", "runs: one row per run and metric (ours | published | delta); methods: the "
                                  "papers' layout, rows = datasets (and metrics), columns = methods, each cell "
                                  "'ours (published)'", choices=SUMMARY_LAYOUTS)
    per_class: bool = setting(False, "methods layout: also one row per class (the papers' per-class tables)")
    csv: Optional[str] = setting(None, "methods layout: also write the cells as CSV (one row per dataset, class, "
                                       "metric and method) to this file", metavar="FILE")


@dataclass
class ProtocolSettings:
    """``protocol``: a paper protocol from configs/; defaults from the environment (train.sh / test.sh)."""

    method: str = setting(default_factory=lambda: os.environ.get("METHOD") or "anomalyclip",
                          help="method (env METHOD)")
    methods: Optional[Tuple[str, ...]] = setting(default_factory=lambda: _environment_list("METHODS"),
                                                 help="several methods, run one after the other and compared in "
                                                      "one table (env METHODS, e.g. \"clip winclip vand\"); "
                                                      "overrides --method", metavar="METHOD")
    protocol: str = setting(default_factory=lambda: os.environ.get("PROTOCOL") or "zero_shot",
                            help="zero_shot, tn3k, or a protocol file (env PROTOCOL)")
    shot: int = setting(default_factory=lambda: _environment_count("SHOT"),
                        help="AA-CLIP training images per class: 0 = full shot; 2, 16, 64 (env SHOT)")
    published_reference: Optional[str] = setting(default_factory=lambda: os.environ.get("REFERENCE") or None,
                                                 help="published table of the final comparison (default: the "
                                                      "config's; env REFERENCE)", aliases=("reference",))
    extra: str = setting("", "extra flags for train / test, one string (TRAIN_ARGS / TEST_ARGS)", aliases=("args",))
    per_class: bool = setting(default_factory=lambda: _environment_flag("PER_CLASS"),
                              help="the final table also has one row per class (env PER_CLASS=1)")


@dataclass
class SynthesizeSettings:
    """``synthesize``: the synthetic anomaly dataset (MVTec AD layout + meta.json)."""

    root: str = setting(None, "output folder")
    seed: int = setting(0, "random seed")
    image_size: int = setting(128, "image side in pixels")
    classes: Optional[Tuple[str, ...]] = setting(None, "subset of the synthetic classes", metavar="CLASS")
    n_train: int = setting(16, "normal training images per class")
    n_test_normal: int = setting(10, "normal test images per class")
    n_test_anomalous: int = setting(15, "anomalous test images per class")
    format: str = setting("meta", "metadata format", choices=SYNTHETIC_FORMATS)
    overwrite: bool = setting(False, "replace existing class folders")


@dataclass
class ConvertSettings:
    """``convert``: AnomalyCLIP meta.json <-> AA-CLIP jsonl files."""

    input: Tuple[str, ...] = setting(None, "a meta.json, or one or more jsonl files (their split is the file name "
                                           "without .jsonl unless --split is given)")
    output: str = setting(None, "folder for <split>.jsonl files, or the meta.json to write")
    split: Optional[Tuple[str, ...]] = setting(None, "split(s) to take from a meta.json, or the split names of the "
                                                     "jsonl inputs")


@dataclass
class ExportSettings:
    """``export``: the ONNX file and what its graph holds."""

    output: str = setting(None, "ONNX file to write (e.g. model.onnx)", metavar="FILE")
    class_name: Optional[str] = setting(None, "class whose text the graph holds (AA-CLIP's anchors, e.g. 'screw'); "
                                              "default: the calibration's class, else the generic class (with a "
                                              "warning); AnomalyCLIP's text does not depend on it")
    half: bool = setting(False, "float16 weights and detector (for GPUs; half the file size); inputs, outputs, "
                                "similarities and smoothing stay float32")
    calibration: Optional[str] = setting(None, "calibration JSON to store instead of <checkpoint>.calibration.json",
                                         metavar="FILE")


@dataclass
class OnnxModelSettings:
    """``predict --backend onnxruntime``: the exported file and where ONNX Runtime runs it."""

    model: str = setting(None, "ONNX file written by 'anomaly-clip export' (--device auto runs it on ONNX Runtime's "
                               "CUDA provider when onnxruntime-gpu is installed, else on the CPU)", metavar="FILE")
    threads: Optional[int] = setting(None, "CPU threads of one inference (default: ONNX Runtime's, one per physical "
                                           "core)")
