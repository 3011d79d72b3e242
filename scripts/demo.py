"""Run the lavise-nb notebooks end to end as a static report (``make demo``).

Executes, in order, with papermill (kernel ``python3``):

1. ``notebooks/01_train_explainer.ipynb``: store + explainer head -> ``OUT/train/``
2. ``notebooks/02_explain_filters.ipynb``: explanations, filter cards, look-up, recall -> ``OUT/explain/``
3. ``notebooks/03_bias_analysis.ipynb`` when it exists

The executed notebooks go to ``OUT/notebooks/``; then a short summary is printed:
where everything is, the best-explained filters with their words and the recall
table at k=20.

Usage::

    python scripts/demo.py --output-dir outputs [--n-images 2000] [-p NAME VALUE ...] [--parameters FILE]

``-p NAME VALUE`` sets a notebook parameter (a Python literal, else a string: ``-p weights ckpt.pth``,
``-p class_names None``, ``-p max_epochs 100``); ``--parameters`` reads them from a JSON file. Each notebook
gets the ones it declares, so one set of parameters drives all three.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ORDER = ["01_train_explainer.ipynb", "02_explain_filters.ipynb", "03_bias_analysis.ipynb"]


def run_notebook(name: str, out: Path, overrides: dict, kernel: str = "python3") -> float:
    """Execute one notebook with the overrides it declares as parameters; returns seconds."""
    import papermill as pm

    source = NOTEBOOKS / name
    declared = pm.inspect_notebook(str(source))
    parameters = {key: value for key, value in overrides.items() if key in declared}
    target = out / "notebooks" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n== {name}  {parameters}", flush=True)
    start = time.perf_counter()
    pm.execute_notebook(str(source), str(target), parameters=parameters, kernel_name=kernel,
                        cwd=str(NOTEBOOKS), progress_bar=True)
    seconds = time.perf_counter() - start
    print(f"   done in {seconds:.0f} s -> {target}", flush=True)
    return seconds


def summary(out: Path, k: int = 20) -> None:
    """Print where the results are, the best-explained filters and the recall table at ``k``."""
    import pandas as pd

    pd.set_option("display.width", 160)
    pd.set_option("display.max_colwidth", 70)
    print(f"\n== results under {out}")
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        files = sorted(f.name for f in folder.rglob("*") if f.is_file())
        shown = ", ".join(files[:8]) + (f", ... ({len(files)} files)" if len(files) > 8 else "")
        print(f"  {folder.name}/: {shown}")
    accuracy = out / "train" / "accuracy.csv"
    if accuracy.is_file():
        print("\n== explainer accuracy at the best epoch (train/accuracy.csv)")
        print(pd.read_csv(accuracy).round(3).to_string(index=False))
    best = out / "explain" / "filter_summary.csv"
    if best.is_file():
        print("\n== best-explained filters (explain/filter_summary.csv; agreement = share of top-image votes "
              "for the first word)")
        table = pd.read_csv(best).head(10)
        print(table[["filter", "agreement", "n_images", "words"]].round(2).to_string(index=False))
    recall = out / "explain" / "recall.csv"
    if recall.is_file():
        table = pd.read_csv(recall)
        table = table[(table["k"] == k) & (table["words_from"] == "filter")]
        print(f"\n== recall@{k} of the filters' words (explain/recall.csv)")
        print(table.pivot_table(index="method", columns=["ground", "subset"], values="recall").round(3).to_string())


def literal(text: str):
    """A command-line value as a Python literal when it is one (``None``, ``3``, ``[1, 2]``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs", help="where results and executed notebooks go")
    parser.add_argument("--n-images", type=int, default=None, help="reference scenes (notebook default: 2000)")
    parser.add_argument("--max-epochs", type=int, default=None, help="training epochs (notebook default: 300)")
    parser.add_argument("--layer", default=None, help="layer to explain (notebook default: _blocks.15)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter (repeatable)")
    parser.add_argument("--parameters", help="a JSON file of notebook parameters")
    parser.add_argument("--kernel", default="python3")
    args = parser.parse_args(argv)

    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"output_dir": str(out), "interactive": False, "show_progress": False}
    if args.parameters:
        overrides.update(json.loads(Path(args.parameters).read_text()))
    for key in ("n_images", "max_epochs", "layer"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    overrides.update({name: literal(value) for name, value in args.parameter})
    import papermill as pm

    declared = set().union(*(pm.inspect_notebook(str(NOTEBOOKS / n)) for n in ORDER if (NOTEBOOKS / n).is_file()))
    unknown = sorted(set(overrides) - declared)
    if unknown:
        parser.error(f"no notebook takes the parameter(s) {unknown}; the notebooks take: {sorted(declared)}")
    timings = {}
    for name in ORDER:
        if (NOTEBOOKS / name).is_file():
            timings[name] = run_notebook(name, out, overrides, args.kernel)
        else:
            print(f"\n== {name} not present, skipped")
    summary(out)
    print("\n== timings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
          + f"; total {sum(timings.values()):.0f} s")
    print(f"executed notebooks (static reports): {out / 'notebooks'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
