"""WordNet 3.0 nouns: parsing ``data.noun``, the lemmas under a synset, and fetching the file."""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from .._utils.cache import cache_dir
from .._utils.debian import fetch_deb

__all__ = ["PHYSICAL_ENTITY", "fetch_wordnet", "parse_wordnet_nouns", "physical_entity_lemmas"]

PHYSICAL_ENTITY = "00001930"
"""WordNet 3.0 offset of ``physical_entity.n.01``."""


def parse_wordnet_nouns(path: str | os.PathLike) -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    """Parse a WordNet ``data.noun`` file.

    Parameters
    ----------
    path : path
        Lines ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...]
        p_cnt [ptr_symbol offset pos source/target]... | gloss`` (``w_cnt`` in
        hex); lines starting with a space (the licence) are skipped.

    Returns
    -------
    dict
        offset -> (lemmas, [(pointer_symbol, target_offset), ...]), noun
        pointers only.
    """
    synsets = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip() or line.startswith(" "):
                continue
            fields = line.split(" | ", 1)[0].split()
            n_words = int(fields[3], 16)
            lemmas = fields[4 : 4 + 2 * n_words : 2]
            at = 4 + 2 * n_words
            n_ptrs = int(fields[at])
            ptrs = [
                (fields[j], fields[j + 1])
                for j in range(at + 1, at + 1 + 4 * n_ptrs, 4)
                if fields[j + 2] == "n"
            ]
            synsets[fields[0]] = (lemmas, ptrs)
    return synsets


def physical_entity_lemmas(data_noun: str | os.PathLike, root: str = PHYSICAL_ENTITY,
                           instances: bool = False) -> list[str]:
    """All lemmas of the synsets under ``root`` (inclusive) in a ``data.noun`` file.

    Descends hyponym (``~``) and instance-hyponym (``~i``) pointers, and the
    reverse of hypernym (``@``) and instance-hypernym (``@i``) pointers.

    Parameters
    ----------
    data_noun : path
    root : str
        Offset of the top synset; default ``physical_entity.n.01``.
    instances : bool
        Also return lemmas of instance synsets (named individuals such as
        ``Paris`` or ``Einstein``); they are traversed either way.

    Returns
    -------
    list of str
        Lemmas as written in WordNet (``_`` for spaces, capitals kept),
        deduplicated, in breadth-first order.
    """
    synsets = parse_wordnet_nouns(data_noun)
    if root not in synsets:
        raise ValueError(f"synset {root} not found in {data_noun}: is it a WordNet 3.0 data.noun?")
    children: dict[str, set[str]] = {}
    named: set[str] = set()
    for off, (_, ptrs) in synsets.items():
        for sym, target in ptrs:
            if sym in ("~", "~i"):
                children.setdefault(off, set()).add(target)
            elif sym in ("@", "@i"):
                children.setdefault(target, set()).add(off)
            named.update([target] if sym == "~i" else [off] if sym == "@i" else [])
    seen, queue, lemmas = {root}, deque([root]), {}
    while queue:
        off = queue.popleft()
        if instances or off not in named:
            lemmas.update(dict.fromkeys(synsets.get(off, ([], []))[0]))
        for child in sorted(children.get(off, ())):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return list(lemmas)


def fetch_wordnet(package: str = "wordnet-base") -> Path:
    """Path to WordNet's ``data.noun``, from Debian's ``wordnet-base`` package.

    Downloads the package with ``apt-get download`` (running ``apt-get
    update`` once if nothing is found) and unpacks it with ``dpkg-deb -x``
    into ``cache_dir("wordnet")``; later calls reuse it.

    Returns
    -------
    Path
        ``.../usr/share/wordnet/data.noun``.
    """
    data_noun = Path("usr") / "share" / "wordnet" / "data.noun"
    target = cache_dir("wordnet") / package
    if not (target / data_noun).exists():
        fetch_deb(package, target, needs=[str(data_noun)], purpose="WordNet's data.noun",
                  fix="Instead, get WordNet 3.0's data.noun by hand and pass it as "
                      "Vocabulary.concrete_nouns(space, data_noun=PATH).")
    return target / data_noun
