"""ONNX export and ONNX Runtime inference: the graph equals the detector's forward, on tiny backbones.

Every registered exportable method is exported once per (method, precision) in module-scoped
fixtures and the files are shared by the tests. Float32 graphs must equal ``detector(images)``
within 1e-5 (scores) and 1e-4 (maps) at batch sizes 1 and 3; ``half`` graphs the documented
tolerance. The issue's bar runs ``anomaly-clip export`` on a tiny 1-epoch checkpoint.

The backbone is ``anomaly-clip-tiny-shallow`` (tests/model_configs: the tiny model with 4 image
and 4 text blocks, 56 px), which still runs every operator of the graph (plain and V-V blocks,
adapted and plain blocks, two feature layers, both smoothings) at a third of the export time of
the 24-block tiny model. A method whose settings do not fit it falls back to ``anomaly-clip-tiny``.
The tests that need the ``export`` extra skip without it, except the one that checks the error
naming it.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import open_clip
import pytest
import scipy.ndimage
import torch
from PIL import Image

import anomaly_clip
from anomaly_clip import Inferencer, cli
from anomaly_clip.cli.main import main
from anomaly_clip.clip.backbone import load_backbone
from anomaly_clip.data.dataset import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, load_image
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine import registry
from anomaly_clip.engine.calibration import Calibration, sidecar_path, weights_fingerprint
from anomaly_clip.engine.checkpoint import save_checkpoint
from anomaly_clip.engine.export import (FLOAT32_TOLERANCE, HALF_TOLERANCE, ExportMetadata, ExportResult,
                                        export_onnx, exportable_methods, load_onnx, output_tolerances,
                                        read_metadata)
from anomaly_clip.engine.export.graph import check_batch_axis, check_exporter, log_export
from anomaly_clip.engine.smoothing import gaussian_blur, gaussian_filter
from anomaly_clip.extras import EXTRAS, MissingExtraError, require

open_clip.add_model_config(Path(__file__).parent / "model_configs")

SHALLOW = "anomaly-clip-tiny-shallow"
SHALLOW_SETTINGS = {"features_list": (2, 4), "dpam_layers": 3, "image_adapt_until": 2, "depth": 3}
"""Settings of the methods that the 4-block backbone needs (applied where a method has the field)."""
SIZE = 56
CLASS = "screw"
def _exporter_ready() -> bool:
    """The export extra is installed and this torch has the dynamo-based exporter (torch 2.6+)."""
    if not all(find_spec(name) is not None for name in EXTRAS["export"]):
        return False
    try:
        check_exporter()
    except MissingExtraError:
        return False
    return True


HAS_EXPORT = _exporter_ready()
needs_export = pytest.mark.skipif(not HAS_EXPORT, reason='needs the export extra (pip install -e ".[export]") and '
                                                         'torch 2.6 or later')
CLI_SHALLOW = ["--model_name", SHALLOW, "--random_init", "--image_size", str(SIZE), "--device", "cpu",
               "--num_workers", "0", "--features_list", "2", "4", "--dpam_layers", "3", "--depth", "3"]


def tiny_detector(method: str, seed: int = 0):
    """A random-initialised detector of ``method`` on the shallow tiny backbone (the 24-block tiny
    one with the method's own settings when they do not fit 4 blocks)."""
    spec = registry.find_method(method)
    fields = {item.name for item in dataclasses.fields(spec.config_class)}
    settings = {key: value for key, value in SHALLOW_SETTINGS.items() if key in fields}
    for model, overrides in ((SHALLOW, settings), ("anomaly-clip-tiny", {})):
        torch.manual_seed(seed)
        config = dataclasses.replace(spec.detector_class.default_backbone_config(), model_name=model,
                                     pretrained=None, random_init=True, image_size=SIZE)
        try:
            return anomaly_clip.create_detector(method, backbone=load_backbone(config, device="cpu"),
                                                **overrides).eval()
        except ValueError:
            if model != SHALLOW:
                raise
    raise AssertionError("unreachable")


def class_for(detector):
    """The class to export: one with its own text where the method's text depends on the class."""
    return CLASS if detector.class_text(CLASS) != detector.class_text(None) else None


def run_onnx(path, images: torch.Tensor):
    """(scores, maps) of a plain ONNX Runtime CPU session, independent of OnnxDetector."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, maps = session.run(["scores", "maps"], {"images": images.numpy()})
    return torch.from_numpy(scores), torch.from_numpy(maps)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class Records(logging.Handler):
    """Log records of the export package while a fixture runs (caplog is function-scoped)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        logger = logging.getLogger("anomaly_clip.engine.export")
        self.level, logger.level = logger.level, logging.INFO
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("anomaly_clip.engine.export")
        logger.removeHandler(self)
        logger.level = self.level


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), classes=["fabric"], n_train=2,
                                      n_test_normal=3, n_test_anomalous=3, image_size=64, seed=5)


@pytest.fixture(scope="module")
def images(synthetic):
    """Five synthetic images (three anomalous) preprocessed at the tiny models' size."""
    paths = sorted(Path(synthetic).glob("fabric/test/*/*.png"))
    return torch.stack([load_image(path, SIZE) for path in paths[:5]])


@pytest.fixture(scope="module")
def checkpoint(synthetic, tmp_path_factory):
    """The issue's tiny 1-epoch checkpoint (AnomalyCLIP, two feature layers)."""
    save = tmp_path_factory.mktemp("anomalyclip")
    return cli.train_main(["--train_data_path", synthetic, "--save_path", str(save), "--epoch", "1",
                           "--batch_size", "4", *CLI_SHALLOW])


@pytest.fixture(scope="module")
def exported_checkpoint(checkpoint, tmp_path_factory):
    """``anomaly-clip export`` of the 1-epoch checkpoint: its ONNX file."""
    output = tmp_path_factory.mktemp("onnx") / "model.onnx"
    main(["export", "--checkpoint_path", str(checkpoint), "--output", str(output)])
    return output


@pytest.fixture(scope="module")
def aaclip_checkpoint(synthetic, tmp_path_factory):
    """A random-initialised AA-CLIP checkpoint calibrated (F1-max) for one class: the sidecar holds
    the class, the thresholds and the score statistics of the fused image score."""
    saved = save_checkpoint(tmp_path_factory.mktemp("aaclip") / "aaclip.pth", tiny_detector("aaclip", seed=3))
    cli.calibrate_main(["--checkpoint_path", str(saved), "--data_path", synthetic, "--class_name", CLASS,
                        "--device", "cpu", "--num_workers", "0"])
    return saved


@pytest.fixture(scope="module")
def exported_aaclip(aaclip_checkpoint):
    """``anomaly-clip export`` of the calibrated AA-CLIP checkpoint (class taken from the calibration)."""
    return cli.export_main(["--checkpoint_path", str(aaclip_checkpoint), "--output",
                            str(aaclip_checkpoint.with_suffix(".onnx"))])


@pytest.fixture(scope="module", params=exportable_methods())
def exported(request, tmp_path_factory):
    """(detector, exported class, metadata, file) of the float32 export of each exportable method:
    AnomalyCLIP (the 1-epoch checkpoint) and AA-CLIP (calibrated) through ``anomaly-clip export``,
    any other method random-initialised through :func:`export_onnx`."""
    if request.param == "anomalyclip":
        checkpoint, path = request.getfixturevalue("checkpoint"), request.getfixturevalue("exported_checkpoint")
        return anomaly_clip.load(checkpoint, device="cpu"), None, read_metadata(path), path
    if request.param == "aaclip":
        result = request.getfixturevalue("exported_aaclip")
        detector = anomaly_clip.load(request.getfixturevalue("aaclip_checkpoint"), device="cpu")
        return detector, CLASS, result.metadata, result.path
    detector = tiny_detector(request.param)
    class_name = class_for(detector)
    result = export_onnx(detector, tmp_path_factory.mktemp(request.param) / "model.onnx", class_name=class_name)
    assert result.within_tolerance and result.tolerance == FLOAT32_TOLERANCE
    return detector, class_name, result.metadata, result.path


@pytest.fixture(scope="module", params=exportable_methods())
def exported_half(request, tmp_path_factory):
    """(detector, ExportResult, export log records) of the ``half`` export of each exportable
    method, without a class name (class-specific text: the default class's, with a warning)."""
    detector = tiny_detector(request.param)
    with Records() as log:
        result = export_onnx(detector, tmp_path_factory.mktemp(request.param) / "half.onnx", half=True)
    return detector, result, log.records


def test_every_method_of_the_papers_is_exportable():
    """Exportability is declared in the registry; these tests run for every method declaring it."""
    assert {"anomalyclip", "aaclip", "anomalyclip_adapters"} <= set(exportable_methods())
    assert all(registry.find_method(name).exportable for name in exportable_methods())


@needs_export
def test_the_bar_checker_accepts_and_runtime_reproduces_pytorch(checkpoint, exported_checkpoint, images):
    """The issue's bar: the CLI's file passes onnx.checker and ONNX Runtime reproduces PyTorch on
    a batch of 3 synthetic images (scores within 1e-5, maps within 1e-4)."""
    import onnx

    onnx.checker.check_model(str(exported_checkpoint), full_check=True)
    model = anomaly_clip.load(checkpoint, device="cpu")
    batch = images[2:5]
    expected = model(batch)
    scores, maps = run_onnx(exported_checkpoint, batch)
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE)
    assert max_difference(scores, expected.scores) <= 1e-5
    assert max_difference(maps, expected.maps) <= 1e-4


@needs_export
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_equals_pytorch_float32(exported, images, batch):
    detector, class_name, _, path = exported
    chosen = images[:batch]
    expected = detector(chosen, None if class_name is None else [class_name] * batch)
    scores, maps = run_onnx(path, chosen)
    assert max_difference(scores, expected.scores) <= FLOAT32_TOLERANCE[0] == 1e-5
    assert max_difference(maps, expected.maps) <= FLOAT32_TOLERANCE[1] == 1e-4


@needs_export
def test_batch_axis_is_dynamic_and_named(exported, images):
    import onnx

    path = exported[-1]
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["scores", "maps"]
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)]
    batch = dims[0][0]
    assert isinstance(batch, str) and dims == [[batch, 3, SIZE, SIZE], [batch], [batch, SIZE, SIZE]]
    for count in (2, 5):
        scores, maps = run_onnx(path, images[:count])
        assert scores.shape == (count,) and maps.shape == (count, SIZE, SIZE)


@needs_export
def test_a_graph_for_one_batch_size_is_refused(exported_checkpoint):
    """The export's own check: a graph whose batch axis the exporter fixed is not written."""
    import onnx

    model = onnx.load(str(exported_checkpoint))
    check_batch_axis(model, exported_checkpoint)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    with pytest.raises(RuntimeError, match="fixed the batch axis"):
        check_batch_axis(model, exported_checkpoint)


@needs_export
def test_half_export_within_documented_tolerance(exported_half, images):
    """float16 weights and detector against the float32 PyTorch model; an export of class-specific
    text without a class says whose text it holds."""
    detector, result, records = exported_half
    assert result.metadata.precision == "fp16" and result.within_tolerance
    expected = detector(images)
    scores, maps = run_onnx(result.path, images)
    score_tolerance, map_tolerance = output_tolerances(expected.maps, half=True)
    assert score_tolerance == HALF_TOLERANCE[0]
    assert max_difference(scores, expected.scores) <= score_tolerance
    assert 0 < max_difference(maps, expected.maps) <= map_tolerance  # it did run in half precision
    assert detector.backbone.visual.conv1.weight.dtype == torch.float32  # the detector itself is unchanged
    assert detector.default_class_name is None
    if detector.class_text(None) is not None:
        assert result.metadata.class_name is None and result.metadata.class_text == "object"
        assert any("text of 'object'" in r.getMessage() for r in records if r.levelno == logging.WARNING)


@needs_export
def test_smoothing_in_the_graph_equals_scipy_and_the_blur(tmp_path):
    """AnomalyCLIP's Gaussian filter (sigma 4: truncate 4 gives a 33-tap kernel; reflect borders,
    reflected again on maps smaller than the radius) and AA-CLIP's fixed-size blur, exported
    alone, against scipy.ndimage.gaussian_filter and the PyTorch blur."""
    import onnxruntime

    class Smoothing(torch.nn.Module):
        def forward(self, maps):
            return gaussian_filter(maps, 4.0), gaussian_blur(maps, 7, 1.0)

    for shape in [(3, 56, 56), (2, 12, 9)]:
        example = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 3
        example[0, 0, 0] = 50.0  # an impulse in a corner: the border rule decides the corner's neighbours
        path = tmp_path / f"smoothing_{shape[1]}.onnx"
        torch.onnx.export(Smoothing().eval(), (example,), str(path), dynamo=True, input_names=["maps"],
                          dynamic_shapes={"maps": {0: torch.export.Dim("batch")}}, verbose=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        filtered, blurred = session.run(None, {"maps": example.numpy()})
        expected = np.stack([scipy.ndimage.gaussian_filter(m.astype(np.float64), sigma=4.0) for m in example.numpy()])
        np.testing.assert_allclose(filtered, expected, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(blurred, gaussian_blur(example, 7, 1.0).numpy(), atol=1e-6, rtol=1e-6)


@needs_export
def test_metadata_round_trip(exported):
    detector, class_name, exported_metadata, path = exported
    metadata = read_metadata(path)
    assert metadata == exported_metadata == ExportMetadata.from_properties(metadata.to_properties())
    assert metadata.method == detector.method_name and metadata.image_size == SIZE
    assert metadata.mean == OPENAI_CLIP_MEAN and metadata.std == OPENAI_CLIP_STD
    assert metadata.class_name == class_name and metadata.class_text == detector.class_text(class_name)
    assert metadata.precision == "fp32" and metadata.random_init is True
    assert metadata.weights_sha256 == weights_fingerprint(detector.trainable_state_dict())
    assert type(detector.config).from_dict(metadata.method_config) == detector.config
    assert metadata.backbone_config == json.loads(json.dumps(detector.backbone.config.to_dict()))
    calibration = detector.calibration
    assert metadata.calibration == (calibration.to_dict() if calibration is not None else None)
    model = load_onnx(path, device="cpu")
    properties = model.session.get_modelmeta().custom_metadata_map
    assert json.loads(properties["format_version"]) == 1 and json.loads(properties["method"]) == detector.method_name
    assert model.method_name == detector.method_name and model.image_size == SIZE


@needs_export
def test_foreign_or_newer_onnx_files_are_refused(exported_checkpoint, tmp_path):
    import onnx

    model = onnx.load(str(exported_checkpoint))
    properties = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="not an ONNX model exported by anomaly_clip"):
        load_onnx(tmp_path / "foreign.onnx", device="cpu")
    onnx.helper.set_model_props(model, {**properties, "format_version": "99"})
    onnx.save(model, str(tmp_path / "newer.onnx"))
    with pytest.raises(ValueError, match="newer anomaly_clip"):
        read_metadata(tmp_path / "newer.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="not a model ONNX Runtime can run"):
        load_onnx(tmp_path / "garbage.onnx", device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_onnx(tmp_path / "missing.onnx")


@needs_export
def test_onnx_detector_checks_images_and_classes(exported, images):
    _, class_name, _, path = exported
    model = load_onnx(path, device="cpu")
    with pytest.raises(ValueError, match=r"\(B, 3, 56, 56\)"):
        model(images[:, :, :40, :40])
    names = ["bottle"] * 2
    if class_name is None:
        torch.testing.assert_close(model(images[:2], names).scores, model(images[:2]).scores)
    else:
        torch.testing.assert_close(model(images[:2], [class_name] * 2).scores, model(images[:2]).scores)
        with pytest.raises(ValueError, match="export again with --class_name bottle"):
            model(images[:2], names)
        model.metadata.class_name = "metal_nut"
        model.check_class_names(["metal nut", "metal_nut", None])  # one class, either spelling
        with pytest.raises(ValueError, match="not of \\['metal'\\]"):
            model.check_class_names(["metal"])


@pytest.mark.parametrize("method", exportable_methods())
def test_class_text_says_whether_forward_depends_on_the_class(method, images):
    """What export relies on, for every exportable method: where ``class_text`` is the same for
    every class, ``forward`` ignores class names; where it differs, ``forward(images)`` with
    ``default_class_name`` set equals ``forward(images, [class] * B)``. A method whose text depends
    on the class without saying so fails here (its exported file would hold the wrong text)."""
    detector = tiny_detector(method)
    batch = images[:2]
    with_class = detector(batch, [CLASS] * 2)
    if detector.class_text(CLASS) == detector.class_text(None):
        torch.testing.assert_close(detector(batch).scores, with_class.scores)
        torch.testing.assert_close(detector(batch).maps, with_class.maps)
        return
    assert max_difference(detector(batch).maps, with_class.maps) > 0
    detector.default_class_name = CLASS
    assert detector.class_text() == CLASS
    torch.testing.assert_close(detector(batch).scores, with_class.scores)
    torch.testing.assert_close(detector(batch).maps, with_class.maps)


def test_default_class_of_object_aware_prompts(images):
    """The object-aware AnomalyCLIP ablation: ``default_class_name`` picks its prompt pair (either
    spelling), ``class_text`` names it and refuses a class it has no prompts for."""
    aware = anomaly_clip.create_detector("anomalyclip", backbone=tiny_detector("anomalyclip").backbone,
                                         object_classes=("bottle", "metal nut"),
                                         **{k: SHALLOW_SETTINGS[k] for k in ("features_list", "dpam_layers", "depth")})
    aware.eval()
    assert aware.class_text() == "bottle"
    aware.default_class_name = "metal_nut"
    assert aware.class_text() == "metal nut"
    torch.testing.assert_close(aware(images[:2]).scores, aware(images[:2], ["metal nut"] * 2).scores)
    assert max_difference(aware(images[:2]).scores, aware(images[:2], ["bottle"] * 2).scores) > 0
    with pytest.raises(ValueError, match="object-aware prompts know"):
        aware.class_text("screw")


def test_missing_extra_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    """Without onnx / onnxruntime (simulated): one error line naming the extra, no file written."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[export\]"'):
        require("export")
    output = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint_path", str(checkpoint), "--output", str(output)])
    assert exit_info.value.code == 2 and not output.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: onnx is not installed")
    assert 'pip install -e ".[export]"' in lines[0]
    with pytest.raises(SystemExit):
        main(["predict", "--backend", "onnxruntime", "--model", str(output), "--input", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "onnxruntime is not installed" in lines[0] and ".[export]" in lines[0]


def test_a_torch_without_the_dynamo_exporter_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    """torch before 2.6 (simulated: an export function without the dynamo arguments): one line
    naming the torch version needed, no file written."""
    def old_export(model, args, f, export_params=True, verbose=False, input_names=None, output_names=None,
                   dynamic_axes=None, opset_version=None):
        raise AssertionError("the old exporter must not run")

    monkeypatch.setattr(torch.onnx, "export", old_export)
    output = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint_path", str(checkpoint), "--output", str(output)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and not output.exists()
    assert lines[0].startswith(f"error: torch {torch.__version__} has no dynamo-based ONNX exporter taking dynamo, "
                               "dynamic_shapes, optimize") and "torch>=2.6" in lines[0]


@needs_export
def test_a_training_free_method_exports_without_a_checkpoint(mixed_folder, tmp_path):
    """``export --method clip_ac`` needs no checkpoint; its graph holds the class's text and
    ``predict --backend onnxruntime`` scores as the PyTorch model does."""
    output = tmp_path / "clip_ac.onnx"
    flags = ["--model_name", SHALLOW, "--random_init", "--image_size", str(SIZE), "--device", "cpu"]
    result = cli.export_main(["--method", "clip_ac", "--class_name", CLASS, "--output", str(output), *flags])
    assert result.metadata.method == "clip_ac" and result.metadata.class_text == CLASS and output.is_file()
    assert result.within_tolerance
    common = ["--input", str(mixed_folder), "--class_name", CLASS, "--num_workers", "0", "--device", "cpu"]
    torch_rows = cli.predict_main(["--method", "clip_ac", *flags[:-2], "--save_path", str(tmp_path / "torch"),
                                   *common])
    onnx_rows = cli.predict_main(["--backend", "onnxruntime", "--model", str(output), "--save_path",
                                  str(tmp_path / "onnx"), *common])
    scored = [(a.score, b.score) for a, b in zip(torch_rows, onnx_rows) if not a.error]
    assert len(scored) == 3 and max(abs(a - b) for a, b in scored) <= FLOAT32_TOLERANCE[0]


def test_normal_references_are_not_exported(tmp_path):
    detector = tiny_detector("vand")
    detector.set_references({CLASS: detector.reference_features(torch.zeros(1, 3, SIZE, SIZE))}, 0.5)
    with pytest.raises(ValueError, match="holds normal references .* not exported"):
        export_onnx(detector, tmp_path / "vand.onnx", class_name=CLASS)
    assert list(tmp_path.iterdir()) == []


def test_a_method_that_is_not_exportable_is_refused_in_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    spec = registry.find_method("anomalyclip")
    monkeypatch.setitem(registry.METHODS, spec.name, dataclasses.replace(spec, exportable=False))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint_path", str(checkpoint), "--output", str(tmp_path / "model.onnx")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: anomalyclip cannot be exported to ONNX") and "aaclip" in lines[0]
    assert not (tmp_path / "model.onnx").exists()


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Images of several sizes and modes plus an unreadable file."""
    root = tmp_path_factory.mktemp("own_images")
    rng = np.random.default_rng(0)
    for name, (height, width) in {"gray.png": (40, 70), "photo.jpg": (48, 80), "square.png": (64, 64)}.items():
        mode_shape = (height, width) if name == "gray.png" else (height, width, 3)
        Image.fromarray(rng.integers(0, 255, mode_shape, dtype=np.uint8)).save(root / name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return root


def assert_same_predictions(torch_dir: Path, onnx_dir: Path) -> None:
    """Same rows, labels and errors; scores within 1e-5 and saved maps within 1e-4."""
    torch_rows, onnx_rows = read_rows(torch_dir / "predictions.csv"), read_rows(onnx_dir / "predictions.csv")
    assert [(r["path"], r["label"], r["error"]) for r in torch_rows] == [
        (r["path"], r["label"], r["error"]) for r in onnx_rows]
    scored = [(float(a["score"]), float(b["score"])) for a, b in zip(torch_rows, onnx_rows) if not a["error"]]
    assert scored and max(abs(a - b) for a, b in scored) <= 1e-5
    saved = sorted((torch_dir / "maps").rglob("*.npz"))
    assert saved
    for path in saved:
        np.testing.assert_allclose(np.load(onnx_dir / "maps" / path.relative_to(torch_dir / "maps"))["map"],
                                   np.load(path)["map"], atol=1e-4)


@needs_export
def test_predict_on_onnx_runtime_writes_the_torch_csv(checkpoint, exported_checkpoint, mixed_folder, tmp_path):
    common = ["--input", str(mixed_folder), "--image_threshold", "0.55", "--save-maps", "npz", "--overlays",
              "--batch_size", "2", "--num_workers", "0", "--device", "cpu"]
    cli.predict_main(["--checkpoint_path", str(checkpoint), "--save_path", str(tmp_path / "torch"), *common])
    rows = cli.predict_main(["--backend", "onnxruntime", "--model", str(exported_checkpoint), "--save_path",
                             str(tmp_path / "onnx"), *common])
    assert len(rows) == 4 and sum(1 for r in rows if r.error) == 1
    assert_same_predictions(tmp_path / "torch", tmp_path / "onnx")
    assert sorted(p.name for p in (tmp_path / "onnx" / "overlays").iterdir()) == [
        "gray.png.jpg", "photo.jpg.jpg", "square.png.jpg"]
    settings = json.loads((tmp_path / "onnx" / "predict_settings.json").read_text())
    assert settings["backend"] == "onnxruntime" and settings["model"] == str(exported_checkpoint)
    assert settings["random_init"] is True and settings["calibration"]["image_threshold"] == 0.55
    log = (tmp_path / "onnx" / "predict_log.txt").read_text()  # warned as the torch log is
    assert "exported from a model with random (untrained) CLIP weights" in log


@needs_export
def test_inferencer_scores_files_like_the_checkpoint(checkpoint, exported_checkpoint, mixed_folder):
    paths = sorted(str(p) for p in mixed_folder.iterdir() if p.name != "broken.png")
    expected = Inferencer(anomaly_clip.load(checkpoint, device="cpu")).predict_paths(paths, original_size=True)
    got = Inferencer(anomaly_clip.load_onnx(exported_checkpoint, device="cpu")).predict_paths(paths,
                                                                                              original_size=True)
    assert max_difference(got.scores, expected.scores) <= 1e-5
    for ours, theirs in zip(got.maps, expected.maps):
        assert ours.shape == theirs.shape and max_difference(ours, theirs) <= 1e-4


@needs_export
def test_calibration_at_export_is_carried_and_used(aaclip_checkpoint, exported_aaclip, synthetic, tmp_path):
    """AA-CLIP calibrated on one class: export takes the class and the calibration from the sidecar;
    predict on ONNX Runtime applies its thresholds and score statistics (fused image score) as
    PyTorch does; a calibration of other weights is refused."""
    calibration = Calibration.read(sidecar_path(aaclip_checkpoint))
    assert set(calibration.score_statistics) == {"score_low", "score_high", "map_low", "map_high"}
    metadata = read_metadata(exported_aaclip.path)
    assert metadata.class_name == CLASS and metadata.class_text == CLASS
    assert Calibration.from_dict(metadata.calibration) == calibration
    assert metadata.weights_sha256 == calibration.provenance["weights_sha256"]
    model = load_onnx(exported_aaclip.path, device="cpu")
    assert model.calibration == calibration
    common = ["--input", f"{synthetic}/fabric/test", "--num_workers", "0", "--save-maps", "npz", "--device", "cpu"]
    cli.predict_main(["--checkpoint_path", str(aaclip_checkpoint), "--save_path", str(tmp_path / "torch"), *common])
    rows = cli.predict_main(["--backend", "onnxruntime", "--model", str(exported_aaclip.path), "--save_path",
                             str(tmp_path / "onnx"), *common])
    assert [r.label for r in rows] == [int(r.score >= calibration.image_threshold) for r in rows]
    assert_same_predictions(tmp_path / "torch", tmp_path / "onnx")
    fused = Inferencer(model).predict_paths([rows[0].path])
    raw = model(load_image(rows[0].path, SIZE)[None])
    assert fused.scores[0].item() == pytest.approx(rows[0].score, abs=1e-6)
    assert abs(raw.scores[0].item() - rows[0].score) > 1e-4  # the CSV holds the fused score, not the raw one
    settings = [json.loads((tmp_path / run / "predict_settings.json").read_text()) for run in ("torch", "onnx")]
    assert settings[0]["calibration"] == settings[1]["calibration"] == calibration.to_dict()
    assert settings[0]["class_name"] == settings[1]["class_name"] == CLASS
    other = Calibration(method="aaclip", image_threshold=0.5, provenance={"weights_sha256": "0" * 64})
    other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="other weights"):
        load_onnx(exported_aaclip.path, device="cpu", calibration=tmp_path / "other.json")


def _with_provenance(calibration: Calibration, path: Path, **changes) -> Path:
    """``calibration`` saved at ``path`` with its provenance updated by ``changes``."""
    changed = Calibration.from_dict(calibration.to_dict())
    changed.provenance.update(changes)
    changed.save(path)
    return path


@needs_export
def test_onnx_runtime_checks_the_inference_settings_of_a_calibration(aaclip_checkpoint, exported_aaclip, synthetic,
                                                                     tmp_path, capsys):
    """The rule of the PyTorch backend: a ``--calibration`` made at another image size, on another
    class, with normal references or on another backbone than the exported graph's is refused in
    one line; the one made with the graph's settings is used."""
    calibration = Calibration.read(sidecar_path(aaclip_checkpoint))
    exported = calibration.provenance["backbone_config"]["activation"]
    other = "quick_gelu" if exported == "gelu" else "gelu"
    backbone = dict(calibration.provenance["backbone_config"], activation=other)
    cases = {"size": ({"image_size": 112}, f"image size {SIZE} (calibrated at 112)"),
             "class": ({"class_name": "washer", "class_names": ["washer"]}, "(calibrated on 'washer')"),
             "references": ({"references": {"weight": 0.5, "images": 2, "sha256": "0" * 64}},
                            "no normal references (calibrated with them fused in)"),
             "backbone": ({"backbone_config": backbone}, f"backbone activation {exported!r} (calibrated with {other!r})")}
    for name, (changes, phrase) in cases.items():
        other = _with_provenance(calibration, tmp_path / f"{name}.json", **changes)
        with pytest.raises(ValueError, match="other inference settings") as error:
            load_onnx(exported_aaclip.path, device="cpu", calibration=other)
        assert phrase in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--backend", "onnxruntime", "--model", str(exported_aaclip.path), "--calibration",
              str(tmp_path / "size.json"), "--input", f"{synthetic}/fabric/test", "--save_path", str(tmp_path / "out"),
              "--device", "cpu", "--num_workers", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "image size 56 (calibrated at 112)" in lines[0]
    assert not (tmp_path / "out" / "predictions.csv").exists()
    same = _with_provenance(calibration, tmp_path / "same.json")
    assert load_onnx(exported_aaclip.path, device="cpu", calibration=same).calibration == calibration


@needs_export
def test_export_embeds_only_a_calibration_of_its_settings(aaclip_checkpoint, tmp_path, capsys):
    """Export at another class than the sidecar's: the sidecar is left out with a warning (the
    graph's metadata holds no calibration); the same file given with ``--calibration`` is refused
    in one line and nothing is written; :func:`export_onnx` refuses it too."""
    output = tmp_path / "washer.onnx"
    capsys.readouterr()
    result = cli.export_main(["--checkpoint_path", str(aaclip_checkpoint), "--class_name", "washer",
                              "--output", str(output)])
    assert result.metadata.class_name == "washer" and result.metadata.calibration is None
    assert read_metadata(output).calibration is None
    warned = [line for line in capsys.readouterr().out.splitlines() if "WARNING" in line and "not using it" in line]
    assert len(warned) == 1 and "'washer' (calibrated on 'screw')" in warned[0]
    refused = tmp_path / "refused.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint_path", str(aaclip_checkpoint), "--calibration",
              str(sidecar_path(aaclip_checkpoint)), "--class_name", "washer", "--output", str(refused)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "'washer' (calibrated on 'screw')" in lines[0]
    assert not refused.exists()
    detector = anomaly_clip.load(aaclip_checkpoint, device="cpu")
    with pytest.raises(ValueError, match="other inference settings"):
        export_onnx(detector, tmp_path / "api.onnx", class_name="washer")
    assert not (tmp_path / "api.onnx").exists()


@needs_export
def test_differences_beyond_tolerance_are_a_warning(exported_checkpoint, caplog):
    close = ExportResult(exported_checkpoint, read_metadata(exported_checkpoint), 2e-7, 3e-6, FLOAT32_TOLERANCE)
    far = dataclasses.replace(close, map_difference=2e-4)
    with caplog.at_level("INFO", logger="anomaly_clip.engine.export"):
        log_export(close)
        log_export(far)
    assert close.within_tolerance and not far.within_tolerance
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
    assert "max |map difference| 0.0002 (accepted: 1e-05 / 0.0001)" in caplog.records[1].getMessage()


@pytest.mark.parametrize("flag", ["--reference_images", "--reference-weight", "--save_reference_bank"])
def test_references_are_refused_on_onnx_runtime_in_one_line(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--backend", "onnxruntime", "--model", str(tmp_path / "model.onnx"), "--input",
              str(tmp_path), flag, str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: --{flag[2:].replace('-', '_')} needs the detector's patch features")
    assert "--backend torch" in lines[0]


@pytest.mark.parametrize("flags", [["--model", "x.onnx"], ["--checkpoint_path", "x.onnx"]])
def test_onnx_file_passed_to_the_torch_backend_says_what_to_do(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *flags, "--input", str(tmp_path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: an ONNX model runs with --backend onnxruntime --model FILE.onnx")


@needs_export
def test_onnx_runtime_settings_from_a_config_file(exported_checkpoint, mixed_folder, tmp_path):
    """``backend: onnxruntime`` in a config file's predict section selects the ONNX Runtime flags."""
    config = tmp_path / "predict.yaml"
    config.write_text(f"predict:\n  backend: onnxruntime\n  model: {exported_checkpoint}\n  device: cpu\n"
                      f"  num_workers: 0\n  threads: 1\n")
    rows = cli.predict_main(["--config", str(config), "--input", str(mixed_folder / "square.png"), "--save_path",
                             str(tmp_path / "out")])
    assert len(rows) == 1 and rows[0].score is not None
    assert json.loads((tmp_path / "out" / "predict_settings.json").read_text())["backend"] == "onnxruntime"


@needs_export
def test_cuda_is_required_only_when_asked(exported_checkpoint):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    assert load_onnx(exported_checkpoint).session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        load_onnx(exported_checkpoint, device="cuda")
