"""Zero-shot trial for issue 13, "more seen concepts": Tux Paint's clip-art stamps as extra named concepts.

The stamp table names 173 clip-art stamps by hand (below) with 91 concepts that no photo stamp has and that
are none of the six planted concepts; they join the photo stamps in one StampScenes set (``--n-images``,
default 3000, so each photo concept keeps about as many images as in the 2000-scene default). Six logistic
probes (tiger, pineapple, giraffe, kangaroo, forest, ocean) are planted after `_blocks.15` of EfficientNet-Lite0
as in scripts/planted_benchmark.py. Explainers are trained on the same planted store with the
six held out, no weak labels and no class prior: on the photo concepts only (198 seen), on photo + clip-art
concepts (287 seen), and on random subsets of --sizes of the 287, each with seeds 0 and 1. For each head it
prints the planted words' ranks among the 10.6k concrete nouns (p = 25 votes and p = 100 lift, seen offsets 0,
0.1, 0.3) and, per held-out concept, the median rank of its word for its own masks (mask level, the less noisy
view). Writes --output-dir/clipart_trial.csv.

    python scripts/clipart_trial.py    # 2 cores: the two stores about 7 min, the ten heads about 6.5 min

--emoji adds Noto Color Emoji glyphs (Debian's fonts-noto-color-emoji, Apache-2.0, rendered at 128 px) named by
emoji-datasource-google's table (npm, MIT): every glyph of the animal, food, travel, activity and object
categories whose short or Unicode name gives a concrete noun that is not a photo stamp, background or planted
concept. They are sampled at --emoji-weight of a photo concept's rate, and a third head is trained on all seen
concepts (photo + clip-art + emoji). Both downloads go to the cache; nothing is committed.

    python scripts/clipart_trial.py --emoji --n-images 4000 --sizes ""
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import planted_benchmark as pb  # noqa: E402
import zeroshot_trials as zt  # noqa: E402

from lavise_nb import ActivationStore, ExplainerTrainer, FilterExplainer, ReferenceSpec, Vocabulary, load_word_space  # noqa: E402
from lavise_nb.config import ExplainSettings, TrainingConfig  # noqa: E402
from lavise_nb.datasets import CocoDataset  # noqa: E402
from lavise_nb.detectors import plant, planted_ranks  # noqa: E402
from lavise_nb.reference import load_target  # noqa: E402
from lavise_nb._utils.cache import cache_dir  # noqa: E402
from lavise_nb._utils.debian import fetch_deb  # noqa: E402
from lavise_nb.scenes import (SceneSettings, background_table, build_stamp_scenes, fetch_tuxpaint,  # noqa: E402
                              stamp_table)

SIX = ["tiger", "pineapple", "giraffe", "kangaroo", "forest", "ocean"]
NAMES = {  # clip-art path (prefix match) -> concept; only concepts no photo stamp has, none planted
 "animals/dinosaur/cartoon/dinosaurSings": "dinosaur", "animals/insects/bee": "bee",
 "animals/insects/cartoon/butterfly": "butterfly", "seasonal/easter/butterfly": "butterfly",
 "animals/insects/cartoon/dragonfly": "dragonfly", "animals/insects/cartoon/ladybug": "ladybug",
 "animals/insects/cartoon/snail": "snail", "animals/insects/cartoon/spider": "spider", "seasonal/halloween/spider": "spider",
 "animals/mammals/echidna": "echidna", "animals/mammals/hedgehog": "hedgehog",
 "clothes/armor/cartoon/knight_helmet": "helmet", "sports/cartoon/football_helmet": "helmet",
 "clothes/button": "button", "clothes/hats/blue_fedora": "fedora", "clothes/hats/green_fedora": "fedora",
 "clothes/hats/feathered_hat": "hat", "clothes/hats/propeller_hat": "hat", "clothes/hats/tophat": "hat",
 "seasonal/christmas/santahat": "hat", "clothes/hats/sombrero": "sombrero", "clothes/t_baseballcap": "cap",
 "clothes/t_glove": "glove", "clothes/t_jacket": "jacket", "clothes/t_pants": "pants", "clothes/t_poloshirt": "shirt",
 "clothes/t_shirt": "shirt", "clothes/t_tshirt": "shirt", "clothes/t_scarf": "scarf", "clothes/t_sock": "sock",
 "food/dessert/cartoon/birthday_cake": "cake", "food/dessert/cartoon/pink_cake": "cake",
 "food/fruit/cartoon/blueberry": "blueberry", "food/fruit/cartoon/peach": "peach", "food/fruit/cartoon/prune": "prune",
 "food/pizza": "pizza", "household/arttools/highlighter": "highlighter", "household/dishes/cartoon/pasta_pot": "pot",
 "household/dishes/cartoon/pressure_cooker": "cooker", "household/dishes/glass": "glass", "medical/tooth": "tooth",
 "naturalforces/lightningbolt": "lightning", "people/body_parts/eye": "eye", "people/cartoon/mermaid": "mermaid",
 "people/cartoon/snowman": "snowman", "seasonal/christmas/Santa": "santa", "seasonal/christmas/bow": "bow",
 "seasonal/christmas/star": "star", "symbols/shapes/star": "star", "seasonal/christmas/stocking": "stocking",
 "seasonal/easter/bluebird": "bluebird", "seasonal/easter/bunny": "bunny", "seasonal/easter/chick": "chick",
 "seasonal/easter/daffodil": "daffodil", "seasonal/halloween/bat_left": "bat", "seasonal/halloween/blackcat": "cat",
 "seasonal/halloween/ghost": "ghost", "seasonal/halloween/skull": "skull", "seasonal/hanukkah/dreydl": "dreidel",
 "seasonal/hanukkah/menorah": "menorah", "seasonal/newyears/confetti": "confetti", "seasonal/newyears/party-horn": "horn",
 "sports/cartoon/volleyball": "volleyball", "symbols/alphabets/asl/": "hand", "symbols/shapes/hand": "hand",
 "symbols/clockface": "clock", "symbols/shapes/pawprint": "pawprint", "town/cartoon/docks": "dock",
 "town/cartoon/fountain": "fountain", "town/cartoon/gate": "gate", "town/cartoon/ruins": "ruins",
 "town/cartoon/shipwreck": "shipwreck", "town/cartoon/watch_tower": "tower", "town/cartoon/wishing_well": "well",
 "town/flags/": "flag", "town/houses/cartoon/cathedral": "cathedral", "town/houses/cartoon/circus": "tent",
 "town/houses/cartoon/cityhouse": "house", "town/houses/cartoon/fairytale_castle": "castle",
 "town/houses/cartoon/farm": "farm", "town/houses/cartoon/fort.": "fort", "town/houses/cartoon/fortress": "fortress",
 "town/houses/cartoon/hunter": "house", "town/houses/cartoon/igloo": "igloo", "town/houses/cartoon/jailhouse": "jail",
 "town/houses/cartoon/medieval_tent": "tent", "town/houses/cartoon/monastery": "monastery",
 "town/houses/cartoon/pinkhome": "house", "town/houses/cartoon/stables": "stable", "town/houses/cartoon/swisshome": "house",
 "town/houses/cartoon/tent": "tent", "town/houses/cartoon/tepee": "tepee", "town/houses/cartoon/tower": "tower",
 "town/houses/cartoon/warehouse": "warehouse", "town/houses/cartoon/windmill": "windmill",
 "town/houses/cartoon/wooden_cottage": "cottage", "town/monuments/cartoon/eiffel_tower": "tower",
 "town/monuments/cartoon/obelisk": "obelisk", "town/monuments/cartoon/pyramid": "pyramid",
 "town/monuments/cartoon/statue": "statue", "town/monuments/cartoon/sword_in_the_stone": "sword",
 "town/monuments/cartoon/totem": "totem", "town/roadsigns/stoplight": "stoplight",
 "vehicles/farming/cartoon/tux_tractor": "tractor", "vehicles/flight/cartoon/eddieCopter": "helicopter",
 "vehicles/locomotive/cartoon/boxcar": "boxcar", "vehicles/locomotive/cartoon/caboose": "caboose",
 "vehicles/locomotive/cartoon/carriage": "carriage", "vehicles/locomotive/cartoon/toy_train": "locomotive",
 "vehicles/ship/cartoon/tugboat": "tugboat",
}
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f} s] {msg}", flush=True)


EMOJI_GROUPS = ("Animals & Nature", "Food & Drink", "Travel & Places", "Activities", "Objects")
EMOJI_DROP = {"face", "symbol", "sign", "with", "and", "of", "the", "a", "emoji", "button", "mark"}
EMOJI_SKIP = set("""art bar blood chime clothes construction cover curl date design drink flash food fuji game green
ground index japan label ledger left leg light link liquid machine mag mute nib note office pick pod popper pound
rex root rosette scale slide slider smoking sound station stop stroke track trend vehicle way wedge""".split())


def emoji_sources(folder: Path) -> tuple[Path, list]:
    """The Noto Color Emoji font (apt) and emoji-datasource-google's emoji.json rows (npm), fetched once."""
    font = folder / "noto"
    fetch_deb("fonts-noto-color-emoji", font, needs=["usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"],
              purpose="the emoji trial")
    table = folder / "package" / "emoji.json"
    if not table.is_file():
        if shutil.which("npm") is None:
            raise RuntimeError("--emoji needs npm to fetch emoji-datasource-google's name table: install Node.js "
                               "(Debian: apt-get install npm), or unpack that package's emoji.json into "
                               f"{folder / 'package'}")
        done = subprocess.run(["npm", "pack", "emoji-datasource-google@16.0.0", "--pack-destination", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"npm pack emoji-datasource-google failed (offline? it needs the npm registry): "
                               f"{done.stderr.strip()[-300:]}; or unpack that package's emoji.json into "
                               f"{folder / 'package'}")
        name = done.stdout.split()[-1]
        with tarfile.open(folder / name) as tar:
            tar.extract("package/emoji.json", folder)
    return font / "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf", json.loads(table.read_text())


def emoji_concept(row: dict, nouns: set) -> str | None:
    """The first concrete noun among the emoji's short names and the words of its Unicode name."""
    words = [re.sub(r"\d+$", "", n) for n in row["short_names"] if "_" not in n]
    name = [w for w in re.split(r"[^a-z]+", (row.get("name") or "").lower()) if w and w not in EMOJI_DROP]
    if len(name) == 1:
        words.append(name[0])
    elif name:
        words.append(name[-1])
    return next((w for w in words if w in nouns), None)


def add_emoji(table: pd.DataFrame, stamps: Path, folder: Path, nouns: set, weight: float) -> tuple[pd.DataFrame, dict]:
    """Render the emoji stamps into ``stamps / "emoji"`` and add their rows; the new concepts' sampling weights."""
    from PIL import Image, ImageDraw, ImageFont

    font_path, rows = emoji_sources(folder)
    font = ImageFont.truetype(str(font_path), 109)
    taken = set(table.concept) | set(background_table().concept) | set(SIX)
    (stamps / "emoji").mkdir(exist_ok=True)
    new, concepts = [], {}
    for row in rows:
        if row["category"] not in EMOJI_GROUPS:
            continue
        concept = emoji_concept(row, nouns)
        if concept is None or concept in taken or concept in EMOJI_SKIP or any(w in SIX for w in row["short_names"]):
            continue
        path = f"emoji/{row['unified'].lower()}.png"
        if not (stamps / path).is_file():
            image = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
            text = "".join(chr(int(c, 16)) for c in row["unified"].split("-"))
            ImageDraw.Draw(image).text((0, 0), text, font=font, embedded_color=True)
            box = image.getbbox()
            if box is None:
                continue
            image.crop(box).save(stamps / path)
        new.append(dict(path=path, category="emoji", caption=row["name"] or "", kind="photo", concept=concept,
                        reason=""))
        concepts[concept] = weight
    return pd.concat([table, pd.DataFrame(new)], ignore_index=True), concepts


def merged_stamps(folder: Path) -> Path:
    """A stamps folder with Tux Paint's folders linked in, for extra stamps beside them."""
    stamps = folder / "stamps"
    stamps.mkdir(parents=True, exist_ok=True)
    for child in (fetch_tuxpaint() / "stamps").iterdir():
        if not (stamps / child.name).exists():
            (stamps / child.name).symlink_to(child)
    return stamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=3000)
    parser.add_argument("--output-dir", default="outputs/clipart_trial")
    parser.add_argument("--sizes", default="100,150,200",
                        help="also train on random subsets of this many of the 287 concepts (the count's effect alone)")
    parser.add_argument("--emoji", action="store_true", help="add the Noto emoji concepts and a third head")
    parser.add_argument("--emoji-weight", type=float, default=0.4,
                        help="an emoji concept's sampling rate relative to a photo concept's")
    args = parser.parse_args()
    n_images = args.n_images
    out = Path(args.output_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)

    table = stamp_table()
    photo = set(table[(table.kind == "photo") & (table.reason == "") & (table.concept != "")].concept)
    clip = []
    for i, row in table[table.kind == "clipart"].iterrows():
        name = next((c for prefix, c in NAMES.items() if row.path.startswith(prefix)), None)
        if name:
            assert name not in photo and name not in SIX, name
            table.loc[i, ["kind", "concept", "reason"]] = ["photo", name, ""]
            clip.append(name)
    clipart = sorted(set(clip))
    log(f"{len(clip)} clip-art stamps named, {len(clipart)} new concepts: {clipart}")

    spec = ReferenceSpec()
    model = load_target(spec)
    emoji, weights, stamps_dir = [], None, None
    if args.emoji:
        folder = cache_dir("emoji_trial")
        stamps_dir = merged_stamps(folder)
        all_nouns = set(Vocabulary.concrete_nouns(load_word_space(spec.word_space)).words)
        table, weights = add_emoji(table, stamps_dir, folder, all_nouns - set(clipart), args.emoji_weight)
        emoji = sorted(weights)
        log(f"{(table.category == 'emoji').sum()} emoji stamps, {len(emoji)} new concepts: {emoji}")
    scenes = build_stamp_scenes(settings=SceneSettings(n_images=n_images, seed=0, object_weights=weights),
                                stamp_table=table, stamps_dir=stamps_dir, show_progress=False)
    dataset = CocoDataset(scenes / "annotations.json", scenes / "images", model.preprocess)
    log(f"scenes {scenes}")
    store = ActivationStore.build(model, pb.LAYER, dataset, show_progress=False)
    log(f"store {store}")
    counts = store.objects.groupby("concept")["image"].nunique()
    log("six concepts' images: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in SIX))
    probes = pb.cached_probes(store, SIX, cache)
    planted = plant(model, pb.LAYER, probes)
    pstore = ActivationStore.build(planted.model, planted.layer, dataset, show_progress=False)
    channels = planted.channels
    log("planted store")
    space = load_word_space(spec.word_space, words=list(pstore.concepts))
    nouns = Vocabulary.concrete_nouns(space)
    known = set(space.embed(list(pstore.concepts), missing="skip").names)
    others = [c for c in pstore.concepts if c not in SIX and c in known]
    base_seen = [c for c in others if c not in set(clipart) | set(emoji)]
    with_clipart = [c for c in others if c not in set(emoji)]
    log(f"seen: baseline {len(base_seen)}, with clip-art {len(with_clipart)}, all {len(others)}; clip-art in nouns: "
        f"{sum(c in set(nouns.words) for c in clipart)}")

    rows = []
    rng = np.random.default_rng(0)
    subsets = [(f"random {k}", sorted(rng.choice(with_clipart, size=k, replace=False).tolist()))
               for k in (int(v) for v in args.sizes.split(",") if v)]
    heads = [("photo only", base_seen), ("photo + clip-art", with_clipart), *subsets]
    if emoji:
        heads.append(("photo + clip-art + emoji", others))
    for label, seen in heads:
        for seed in (0, 1):
            config = TrainingConfig(seen=tuple(seen), seed=seed)
            trainer = ExplainerTrainer(pstore, space, config, weak_labels=None, missing="skip", show_progress=False)
            tag = label.replace(" ", "").replace("+", "_")
            path = cache / f"mapper_{tag}_{seed}_{n_images}{'_e' if emoji else ''}.pt"
            mapper = pb.cached_mapper(path, pstore, space, trainer.fit)
            log(f"head {label} seed {seed}")
            plain = FilterExplainer(pstore, mapper, space, nouns, ExplainSettings(calibrated=False))
            ml = {c: float(r.float().median()) for c, r in zt.mask_ranks(trainer, mapper, plain, SIX).items()}
            for p, ranking in ((25, "votes"), (100, "lift")):
                for gamma in (0.0, 0.1, 0.3):
                    s = ExplainSettings(p=p, ranking=ranking, top_words=100, calibrated=gamma if gamma else False)
                    r = planted_ranks(FilterExplainer(pstore, mapper, space, nouns, s), channels)
                    r = r[r.concept.isin(SIX)]
                    row = dict(seen=label, n_seen=len(seen), seed=seed, p=p, ranking=ranking, gamma=gamma,
                               top5=int((r["rank"] <= 5).sum()))
                    for x in r.itertuples():
                        row[x.concept] = x.rank
                        row[f"w_{x.concept}"] = x.words
                    row.update({f"mask_{c}": v for c, v in ml.items()})
                    rows.append(row)
                    log(f"{label} s{seed} p{p} {ranking} g{gamma}: top5 {row['top5']} | " +
                        ", ".join(f"{c} {row.get(c)}" for c in SIX) + " | mask medians " +
                        ", ".join(f"{c} {ml[c]:.0f}" for c in SIX))
            pd.DataFrame(rows).to_csv(out / "clipart_trial.csv", index=False)
    df = pd.DataFrame(rows)
    print(df[["seen", "seed", "p", "ranking", "gamma", "top5", *SIX]].to_string())
    summary = df.groupby(["seen", "n_seen"]).agg(top5_min=("top5", "min"), top5_max=("top5", "max"),
                                                 **{f"mask_{c}": (f"mask_{c}", "mean") for c in SIX})
    print("\nper seen set: planted words at rank <= 5 over the 12 settings (min, max); mask-level median rank, "
          "mean of the two seeds")
    print(summary.sort_values("n_seen").to_string())


if __name__ == "__main__":
    main()
