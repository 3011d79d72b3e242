"""The notebooks' default pipeline end to end, stage by stage, against one bare forward pass.

Runs notebook 01 + 02's default path (:mod:`_pipeline_worker`) in a fresh process with an
empty temporary cache (``LAVISE_NB_CACHE``): the scenes, the store, the MiniLM word vectors
that are not cached yet, the weak labels, the class prior and everything after are built
as on a first run. Only the fetched inputs are linked in from the real cache: the Tux Paint
files, WordNet, and the word caches (GloVe converted, vocabulary lists, encoded MiniLM
vectors; ``--encode-words`` links only GloVe and WordNet, so the word lists and vectors are
made anew). Each stage is a multiple of one bare full forward pass over the same images
with the store's DataLoader settings, measured in the same process (the mean of
``--forward-rounds`` passes: one before the store build, the others at the end).

Writes ``pipeline.json`` and ``pipeline.md`` to ``--output-dir``. ``make bench`` runs it after
the other figures (``benchmarks/bench.py --pipeline-images N``); alone:
``python benchmarks/pipeline.py --images 2000`` (``--images 300`` for a quicker check: every stage
shrinks but the class prior, which classifies 25 crops per filter whatever the number of images).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, load_average  # noqa: E402

TARGET = 2.5            # the tracker's target for the total, in forward passes
DEFAULT_IMAGES = 2000   # the notebooks' n_images
WORD_INPUTS = ("glove-6b-50d.kv",)          # kept with --encode-words: GloVe, converted from its package


def log(message: str) -> None:
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {message}", flush=True)


def real_cache() -> Path:
    return Path(os.environ.get("LAVISE_NB_CACHE", Path.home() / ".cache" / "lavise_nb"))


def fetched_inputs() -> Path:
    """The real cache, once it holds the Tux Paint files, WordNet and GloVe (fetched now if missing)."""
    from lavise_nb import load_word_space
    from lavise_nb.scenes import fetch_tuxpaint
    from lavise_nb.words.wordnet import fetch_wordnet

    fetch_tuxpaint()
    fetch_wordnet()
    load_word_space("glove-6b-50d")
    return real_cache()


def link_inputs(source: Path, cache: Path, encode_words: bool) -> list[str]:
    """Link ``source``'s fetched inputs (and word caches, unless ``encode_words``) into the empty ``cache``.

    Folders the pipeline writes into (``words/``, ``wordnet/``) are made anew and their files linked one by
    one, so what the run writes stays in ``cache``. Returns the names linked.
    """
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "tuxpaint").symlink_to(source / "tuxpaint", target_is_directory=True)
    linked = ["tuxpaint/"]
    for folder in ("words", "wordnet"):
        (cache / folder).mkdir()
        for item in sorted((source / folder).iterdir()):
            fetched = item.name == "wordnet-base" or item.name.startswith(WORD_INPUTS)
            if item.name.startswith(".") or (encode_words and not fetched):
                continue
            (cache / folder / item.name).symlink_to(item, target_is_directory=item.is_dir())
            linked.append(f"{folder}/{item.name}")
    return linked


def run_pipeline(images: int, out: Path, device: str = "auto", forward_rounds: int = 2, extras: bool = False,
                 encode_words: bool = False) -> dict:
    """Run the pipeline in a fresh process on a temporary cache; write and return the report."""
    if images < 1 or forward_rounds < 1:
        raise ValueError("images and forward_rounds must be >= 1")
    source = fetched_inputs()
    work = Path(tempfile.mkdtemp(prefix="lavise-pipeline-"))
    try:
        cache = work / "cache"
        linked = link_inputs(source, cache, encode_words)
        result_file = work / "stages.json"
        env = {**os.environ, "LAVISE_NB_CACHE": str(cache), "LAVISE_NB_MALLOC": "fast",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        worker = Path(__file__).resolve().parent / "_pipeline_worker.py"
        log(f"{images} images, empty cache at {cache} (linked: {', '.join(linked[:3])}, ... {len(linked)} in all)")
        load_start, started = load_average(), time.perf_counter()
        command = [sys.executable, str(worker), str(images), str(result_file), device, str(forward_rounds),
                   str(int(extras))]
        done = subprocess.run(command, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the pipeline worker failed (exit {done.returncode}); its output is above")
        result = json.loads(result_file.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(load_start=load_start, load_end=load_average(), wall_seconds=time.perf_counter() - started,
                  linked=linked, encode_words=encode_words)
    summarise(result)
    write_report(out, result)
    return result


def summarise(result: dict) -> None:
    """Add each stage's ratio to the mean bare forward pass, and the totals."""
    forward = sum(result["forward_seconds"]) / len(result["forward_seconds"])
    total = sum(s["seconds"] for s in result["stages"] if s["in_total"])
    for s in result["stages"]:
        s["x_forward"] = s["seconds"] / forward
        s["share"] = s["seconds"] / total if s["in_total"] else None
    notebook01 = sum(s["seconds"] for s in result["stages"] if s["in_total"] and s["notebook"] == "01")
    spread = [total / max(result["forward_seconds"]), total / min(result["forward_seconds"])]
    seconds = {s["stage"].split(" (")[0]: s["seconds"] for s in result["stages"]}
    if "calibration, inner head capped" in seconds:
        result["capped_total_x_forward"] = (total - seconds["calibration"] + seconds["calibration, inner head capped"]) \
            / forward
    result["summary"] = {"forward_seconds": forward, "total_seconds": total, "total_x_forward": total / forward,
                         "total_x_forward_range": spread,
                         "notebook01_x_forward": notebook01 / forward, "target": f"<= {TARGET:g}",
                         "status": "met" if total / forward <= TARGET else "NOT met"}


def write_report(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(result, indent=2))
    f, s = result["facts"], result["summary"]
    forward = ", ".join(f"{t:.1f}" for t in result["forward_seconds"])
    lines = [
        "# The notebooks' default pipeline, end to end",
        "",
        f"Notebook 01 + 02 defaults (EfficientNet-Lite0 `_blocks.15`, {f['images']} StampScenes images, word space "
        f"glove-6b-50d+minilm, class prior, calibration, vocabulary nouns) from an empty cache, on {f['device']}, "
        f"batch {f['batch_size']}, {f['workers']} DataLoader workers, LAVISE_NB_MALLOC={f['malloc'] or 'unset'}. "
        f"One bare full forward pass over the same images: {s['forward_seconds']:.1f} s (mean of {forward} s).",
        "",
        "| stage | notebook | seconds | x forward | share |",
        "|---|---|---|---|---|",
    ]
    for row in result["stages"]:
        share = f"{100 * row['share']:.0f} %" if row["share"] is not None else "not in total"
        lines.append(f"| {row['stage']} | {row['notebook']} | {row['seconds']:.1f} | {row['x_forward']:.2f} | {share} |")
    lines += [
        f"| **total** | 01 + 02 | {s['total_seconds']:.1f} | **{s['total_x_forward']:.2f}** | 100 % |",
        "",
        f"Total: {s['total_x_forward']:.2f} x one forward pass (target {s['target']}: {s['status']}); "
        f"notebook 01 alone {s['notebook01_x_forward']:.2f} x. Against the slowest and the fastest forward pass "
        f"alone: {s['total_x_forward_range'][0]:.2f} to {s['total_x_forward_range'][1]:.2f} x.",
        "",
        *([f"With the calibration's inner head capped at 60 epochs instead (not the default; gammas "
           f"{f['capped_gammas']} instead of {f['gammas']}): total {result['capped_total_x_forward']:.2f} x.", ""]
          if "capped_total_x_forward" in result else []),
        f"- {f['concepts']} concepts, {f['space_words']} words in the space, {f['candidate_words']} candidate words, "
        f"{f['filters']} filters, {f['pairs']} (filter, image) pairs, training ran {f['epochs_run']} epochs",
        f"- word caches: {'GloVe only (word lists and MiniLM vectors made anew)' if result['encode_words'] else 'reused where they existed'}",
        f"- load average at start / end: {result['load_start']} / {result['load_end']} "
        f"({result['machine']['cores']} cores); per stage in pipeline.json",
        f"- machine: {result['machine']['cpu']}, torch {result['machine']['torch']}, "
        f"{result['machine']['torch_threads']} threads",
        f"- wall time of the run: {result['wall_seconds']:.0f} s (stages, forward passes, imports)",
        "- not timed: imports, figures and widgets (training monitor, gamma curve, browser, cards, look-up)",
        "",
    ]
    (out / "pipeline.md").write_text("\n".join(lines))


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The pipeline's options (``--images`` here, ``--pipeline-images`` in bench.py)."""
    parser.add_argument(f"--{prefix}images", type=int, default=DEFAULT_IMAGES,
                        help=f"reference images (default {DEFAULT_IMAGES}, the notebooks'; e.g. 300 for a quicker "
                             "check: every stage shrinks but the class prior, 25 crops per filter whatever N)")
    parser.add_argument(f"--{prefix}forward-rounds", type=int, default=2,
                        help="bare forward passes averaged for the reference (default 2)")
    parser.add_argument(f"--{prefix}extras", action="store_true",
                        help="also time notebook 02's uncalibrated explain and recall comparison (not in the total)")
    parser.add_argument(f"--{prefix}encode-words", action="store_true",
                        help="link only GloVe and WordNet: word lists and MiniLM vectors are made anew")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/bench")
    parser.add_argument("--device", default="auto")
    add_arguments(parser)
    args = parser.parse_args()
    out = Path(args.output_dir)
    run_pipeline(args.images, out, args.device, args.forward_rounds, args.extras, args.encode_words)
    print((out / "pipeline.md").read_text())


if __name__ == "__main__":
    main()
