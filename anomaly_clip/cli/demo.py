"""The main job in one command: synthetic data -> train on some classes -> zero-shot on the rest.

Uses real CLIP weights when they can be had (``--weights`` file, or the open_clip cache, or a
download with ``--download``); otherwise, or with ``--tiny``, it runs the tiny random backbone
(saying why), whose numbers only show that the pipeline works end to end.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from .common import setup_logging
from .options import CommandParser, UsageError, dataclass_flags
from .settings import DemoSettings, TinySettings

logger = logging.getLogger(__name__)

# the demo's own ways of providing weights, for the advice when none are found
DEMO_OPTIONS = {"weights_path": "--weights FILE", "download": "--download"}


def build_demo_parser() -> CommandParser:
    """The parser of ``demo`` (:class:`~anomaly_clip.cli.settings.DemoSettings`)."""
    command = CommandParser("anomaly-clip demo", __doc__.split("\n\n")[0], "demo")
    command.add_flags(dataclass_flags(DemoSettings, "demo"), "demo")
    command.add_flags(dataclass_flags(TinySettings, "demo"), "demo")
    return command


def _demo_backbone(args):
    """Real CLIP from ``--weights`` (which must load), or from the cache (downloaded only with
    ``--download``); else, or with ``--tiny``, the tiny random backbone (saying why, and how to
    get real weights, when it was not asked for)."""
    from ..clip.backbone import BackboneConfig, load_backbone
    from ..clip.weights import WeightsNotFoundError

    if args.tiny and args.weights:
        raise UsageError("--tiny builds the tiny random backbone, which --weights contradicts: drop one of them")
    real = BackboneConfig(weights_path=args.weights, download=args.download,
                          image_size=args.image_size or BackboneConfig().image_size)
    if not args.tiny:
        if args.weights:
            return load_backbone(real, args.device), True
        try:
            return load_backbone(real, args.device), True
        except WeightsNotFoundError as error:
            logger.warning("No CLIP weights, so this demo runs the tiny random backbone. %s",
                           error.describe(DEMO_OPTIONS))
    tiny = BackboneConfig().tiny().with_updates(image_size=args.image_size)
    return load_backbone(tiny, args.device), False


def demo_main(argv: Optional[Sequence[str]] = None) -> dict:
    """Generate the data, train AnomalyCLIP on some classes, evaluate the rest; return the report."""
    args = build_demo_parser().parse(list(argv or []))
    from .. import api
    from ..data.dataset import AnomalyDataset
    from ..data.formats import load_samples
    from ..data.synthetic import generate_synthetic_dataset
    from ..engine.config import TrainConfig
    from ..engine.evaluation import evaluate
    from ..engine.training import seed_everything
    from ..methods.anomalyclip.config import AnomalyCLIPTraining

    output = Path(args.output)
    setup_logging(output, "demo_log.txt")
    seed_everything(args.seed)
    data_root = generate_synthetic_dataset(output / "data", seed=args.seed)
    backbone, pretrained = _demo_backbone(args)
    samples = load_samples(str(data_root), split="test")
    classes = sorted({s.class_name for s in samples})
    if len(classes) <= args.train_classes:
        raise ValueError(f"need more than {args.train_classes} synthetic classes, have {classes}")
    train_classes, eval_classes = classes[: args.train_classes], classes[args.train_classes:]
    logger.info("Training on %s, evaluating zero-shot on held-out %s", train_classes, eval_classes)
    size = backbone.config.image_size
    train_set = AnomalyDataset([s for s in samples if s.class_name in train_classes], str(data_root), image_size=size)
    eval_set = AnomalyDataset([s for s in samples if s.class_name in eval_classes], str(data_root), image_size=size)

    detector = api.create_detector("anomalyclip", backbone=backbone)
    api.fit(detector, train_set, TrainConfig(save_path=str(output / "checkpoints"), seed=args.seed,
                                             save_freq=args.epochs, num_workers=DemoSettings().num_workers,
                                             method=AnomalyCLIPTraining(epoch=args.epochs, batch_size=args.batch_size)))
    report = evaluate(detector, eval_set, batch_size=args.batch_size, num_workers=DemoSettings().num_workers,
                      visualize=output / "heatmaps")
    settings = {"demo": True, "pretrained": pretrained, "train_classes": train_classes,
                "eval_classes": eval_classes, "backbone_config": backbone.config.to_dict()}
    report.save(output, settings)
    logger.info("Zero-shot results on held-out synthetic classes:\n%s", report.to_markdown())
    logger.info("Heatmaps: %s; tables: %s", output / "heatmaps", output)
    return {"report": report, "settings": settings}
