"""``anomaly-clip summarize``: one table from several ``test.py`` result folders."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence


def summarize_main(argv: Optional[Sequence[str]] = None) -> str:
    """Gather the mean rows of several ``test.py`` result folders into one table."""
    from tabulate import tabulate

    parser = argparse.ArgumentParser("anomaly-clip summarize", description=summarize_main.__doc__)
    parser.add_argument("result_dirs", nargs="+", help="folders written by test.py --save_path")
    parser.add_argument("--output", default=None, help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    rows: List[dict] = []
    for directory in args.result_dirs:
        path = Path(directory) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run test.py with --save_path {directory} first")
        data = json.loads(path.read_text())
        mean = data["mean"]
        rows.append({"dataset": data["settings"].get("dataset", directory), **mean})
    headers = list(dict.fromkeys(key for row in rows for key in row))
    table = tabulate([[_percent(row.get(h)) for h in headers] for row in rows], headers=headers, tablefmt="pipe")
    sys.stdout.write(table + "\n")
    if args.output:
        Path(args.output).write_text(table + "\n")
    return table


def _percent(value: object) -> object:
    if value is None:
        return "N/A"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return value
