"""Docs that run: every Python block of README.md and docs/*.md is executed, and the README's
"Try it without weights" commands are run as written, from a folder outside the checkout.

Python blocks run one by one, each in a fresh copy of a folder holding what the docs name: a
small synthetic dataset at ``data/visa``, tiny-backbone checkpoints at ``ckpt/epoch_15.pth`` and
``ckpt/visa/epoch_15.pth``, images ``a.png``, ``b.jpg``, ``part1.png``, ``part2.png``. A block
that cannot run offline must say so in the doc, on the line before it, with
``*Not run offline: <reason>*``; the test counts those marks (:data:`OFFLINE_MARKS`), so they
cannot grow silently.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List, NamedTuple

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OFFLINE_MARK = "Not run offline:"
OFFLINE_MARKS = 0  # blocks marked as needing real weights or a network; raise only with a reason in the doc
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[\w+-]*)[ \t]*$")
BAR_SECONDS = 120


class Block(NamedTuple):
    path: Path
    line: int
    language: str
    code: str
    offline_reason: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> List[Block]:
    """The fenced code blocks of a Markdown file, dedented, with the offline mark of the line before."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening or not opening.group("info"):
            index += 1
            continue
        start, body = index, []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index])
            index += 1
        before = next((text for text in reversed(lines[:start]) if text.strip()), "")
        reason = before.split(OFFLINE_MARK, 1)[1].strip(" *_") if OFFLINE_MARK in before else ""
        blocks.append(Block(path, start + 1, opening.group("info"), textwrap.dedent("\n".join(body)), reason))
        index += 1
    return blocks


PYTHON_BLOCKS = [block for path in DOCS for block in fenced_blocks(path) if block.language == "python"]


def test_the_docs_have_python_blocks_and_few_offline_marks():
    assert len(PYTHON_BLOCKS) >= 7
    marked = [block.name for block in PYTHON_BLOCKS if block.offline_reason]
    assert len(marked) == OFFLINE_MARKS, f"offline marks changed: {marked}; each needs a reason in the doc"
    mentions = sum(path.read_text().count(OFFLINE_MARK) for path in DOCS)
    assert mentions == OFFLINE_MARKS


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory):
    """What the docs' Python blocks name, built on the tiny backbone."""
    import anomaly_clip
    from anomaly_clip.clip.config import BackboneConfig
    from anomaly_clip.data.synthetic import generate_synthetic_dataset

    folder = tmp_path_factory.mktemp("docs")
    generate_synthetic_dataset(folder / "data" / "visa", classes=["fabric"], n_train=2, n_test_normal=2,
                               n_test_anomalous=2, image_size=64, seed=3)
    detector = anomaly_clip.create_detector("anomalyclip", backbone=BackboneConfig().tiny(), device="cpu")
    for checkpoint in ("ckpt/epoch_15.pth", "ckpt/visa/epoch_15.pth"):
        anomaly_clip.save_checkpoint(folder / checkpoint, detector)
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (60, 80)), ("b.jpg", (90, 70)), ("part1.png", (64, 64)), ("part2.png", (48, 96))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture
def isolated_registries(monkeypatch):
    """Blocks that register a method or a dataset do so in copies of the registries."""
    from anomaly_clip.data import registry as datasets
    from anomaly_clip.engine import registry as methods

    methods.registered_methods()
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    monkeypatch.setattr(datasets, "DATASETS", dict(datasets.DATASETS))
    monkeypatch.setattr(datasets, "_LOOKUP", dict(datasets._LOOKUP))


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if not b.offline_reason], ids=lambda b: b.name)
def test_python_block_runs(block, docs_folder, tmp_path, monkeypatch, isolated_registries):
    workdir = tmp_path / "work"
    shutil.copytree(docs_folder, workdir)
    monkeypatch.chdir(workdir)
    namespace = {"__name__": "docs_block"}
    exec(compile(block.code, block.name, "exec"), namespace)  # noqa: S102 - the docs' own code


# ---- the README's "Try it without weights", as a user runs it --------------------------------------
def section_commands(heading: str) -> List[str]:
    """The command lines of the first bash block under ``heading`` in README.md (continuations joined)."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in fenced_blocks_of(section) if b[0] == "bash")[1]
    commands, current = [], ""
    for line in block.splitlines():
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            if current.strip() and not current.strip().startswith("#"):
                commands.append(current.strip())
            current = ""
    return commands


def fenced_blocks_of(text: str) -> List[tuple]:
    return [(match.group(1), match.group(2)) for match in re.finditer(r"```(\w+)\n(.*?)\n```", text, re.S)]


def console_scripts(directory: Path) -> None:
    """The command-line entry points of pyproject.toml, as ``pip install`` writes them."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    directory.mkdir(parents=True, exist_ok=True)
    for name, target in scripts.items():
        module, function = target.split(":")
        script = directory / name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                          f"sys.argv[0] = {name!r}\nsys.exit({function}())\n")
        script.chmod(0o755)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib reads pyproject.toml")
def test_try_it_without_weights_from_another_folder_in_under_two_minutes(tmp_path, record_property):
    """The bar of issue 19: a folder of one's own (normal) images, the README's commands as written,
    run from a folder outside the checkout: train, calibrate and predict in under two minutes."""
    commands = section_commands("Try it without weights")
    assert any(c.startswith("anomaly-clip train --tiny") for c in commands)
    assert any(c.startswith("anomaly-clip predict") for c in commands)
    user = tmp_path / "user"
    (user / "parts" / "good").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index in range(16):
        image = np.clip(rng.normal(128, 20, (150, 200, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(user / "parts" / "good" / f"photo_{index:02d}.png")
    console_scripts(tmp_path / "bin")
    environment = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
                       PATH=os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent),
                                             os.environ.get("PATH", "")]))
    timings = []
    start = time.perf_counter()
    for command in commands:
        began = time.perf_counter()
        completed = subprocess.run(["bash", "-c", command], cwd=user, env=environment, capture_output=True, text=True)
        timings.append((command.split(" --")[0], time.perf_counter() - began))
        assert completed.returncode == 0, f"{command}\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
    total = time.perf_counter() - start
    record_property("try_it_seconds", round(total, 1))
    print(f"'Try it without weights' took {total:.1f} s: " + "; ".join(f"{c} {s:.1f} s" for c, s in timings))
    assert not (ROOT / "tiny_run").exists() and not (ROOT / "tiny_predictions").exists()
    rows = (user / "tiny_predictions" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,score,label,error,warning" and len(rows) == 1 + 16
    assert all(row.endswith("these numbers are meaningless") and row.split(",")[2] in ("0", "1") for row in rows[1:])
    assert len(list((user / "tiny_predictions" / "overlays").rglob("*.jpg"))) == 16
    assert total < BAR_SECONDS, f"{total:.0f} s: " + "; ".join(f"{c} {s:.1f} s" for c, s in timings)
