"""Are a layer's filters named more truly than random directions of it? (probe scenes, no class prior)

Names every filter and ``--directions`` random unit directions of the layer the same way (notebook 02's
settings without the class prior, candidate nouns, the mapper's own gamma), scores each first word on probe
scenes against control scenes (:func:`lavise_nb.faithfulness.against_random_directions`), and prints the
median AUC of each side with its coverage. Needs a mapper from notebook 01 (``make demo`` writes one).

Writes ``random_directions.csv`` (one row per filter or direction) and ``random_directions.md`` to
``--output-dir``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from lavise_nb import ExplainSettings, FilterExplainer, Mapper, Reference, ReferenceSpec
from lavise_nb.faithfulness import ProbeScenes, against_random_directions, coverage


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mapper", default="outputs/train/mapper.pt", help="notebook 01's mapper.pt")
    parser.add_argument("--output-dir", default="outputs/quality")
    parser.add_argument("--n-images", type=int, default=2000, help="the reference scenes the mapper was trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer", default="_blocks.15")
    parser.add_argument("--directions", type=int, default=64)
    parser.add_argument("--probe-images", type=int, default=40, help="probe scenes per word (notebook 02's default)")
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def summary(scores, n_filters: int, n_directions: int) -> list[str]:
    """One line per side: median probe AUC over the testable first words, the share at >= 0.85, coverage."""
    lines = []
    for unit, total in (("filter", n_filters), ("random direction", n_directions)):
        part = scores[scores["unit"] == unit]
        tested = part[part["testable"].astype(bool) & part["auc"].notna()]
        lines.append(f"- {unit}s: median probe AUC {tested['auc'].median():.3f}, {(tested['auc'] >= 0.85).mean():.0%} "
                     f"at >= 0.85; {coverage(part, total, unit + 's')}")
    return lines


def main() -> None:
    args = parse()
    started = time.time()
    spec = ReferenceSpec(n_images=args.n_images, seed=args.seed, layer=args.layer, device=args.device)
    ref = Reference.load(spec, show_progress=False)
    mapper = Mapper.load(args.mapper, ref.store, ref.space)
    explainer = FilterExplainer(ref.store, mapper, ref.space, ref.vocabulary("nouns"), ExplainSettings(),
                                device=args.device)
    probes = ProbeScenes(ref.model, args.layer, n_images=args.probe_images, device=args.device, show_progress=True)
    scores = against_random_directions(explainer, probes, n=args.directions, seed=args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out / "random_directions.csv", index=False)
    lines = [f"# First words of filters and of random directions, on probe scenes ({args.layer}, no class prior)", "",
             *summary(scores, ref.store.shape[1], args.directions), "",
             f"{args.probe_images} probe scenes per word; mapper {args.mapper} with the gamma it was calibrated "
             f"with (both sides alike); {time.time() - started:.0f} s"]
    (out / "random_directions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
