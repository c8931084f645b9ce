"""Redraw the plots of bench results from their JSON (after a change to a plot, without rerunning a bench):

    python -m mirrorspec.bench.replot bench/results/*.json

Each NAME.json whose kind has a plot gets NAME.png next to it; others are listed as skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plotter(results: dict):
    """The plot function of a results file's kind, or None."""
    from mirrorspec.bench import diffusion_bench, harness, variants

    if "variants" in results:
        return variants.plot_variants
    if "methods" in results and "categories" in next(iter(results["methods"].values()), {}):
        return harness.plot
    if "settings" in results and "examples" in results:
        return diffusion_bench.plot
    return None


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        results = json.loads(path.read_text())
        plot = plotter(results)
        if plot is None:
            print(f"skipped {path} (its bench draws its own plot)", file=sys.stderr)
            continue
        plot(results, path.with_suffix(".png"))
        print(f"redrew {path.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
