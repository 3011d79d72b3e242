"""Explaining filters with words: LaViSE's filter attention and the paper's baselines.

:class:`FilterExplainer` is configured once (store, trained mapper, word space,
vocabulary, method) and its one verb, :meth:`FilterExplainer.explain`, names every
requested filter in a tidy DataFrame. All filters of a layer are explained from the
activation store with tensor operations; only ``method="image_masking"`` runs the
network again (batched).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ._utils.progress import progress
from .calibration import vocabulary_name
from .coherence import NULL_LEVEL, RandomDirections, resultant_length, weighted_sums
from .config import METHODS, ExplainSettings
from .mapper import masked_mean, pool_features
from .probe import LayerProbe, resolve_device
from .regions import filter_maps
from .words import MissingWordsError, Vocabulary

__all__ = ["FilterExplainer", "ExplainSettings", "METHODS", "EXPLANATION_COLUMNS", "IMAGE_WORD_COLUMNS", "hub_note"]

EXPLANATION_COLUMNS = ["layer", "filter", "rank", "word", "votes", "support", "lift", "score", "kind", "n_images",
                       "coherence", "null_share", "method", "note"]
IMAGE_WORD_COLUMNS = ["layer", "filter", "image", "image_id", "activation", "rank", "word", "score", "kind",
                      "method"]


class FilterExplainer:
    """Name a layer's filters with the nearest words of a vocabulary.

    Parameters
    ----------
    store : ActivationStore
        Reference activations (top images and thresholds come from here).
    mapper : Mapper
        The trained explainer head for this store's model and layer; with
        ``settings.calibrated=True`` its :attr:`Mapper.calibration` gives the gammas.
    space : WordSpace
        The word space the mapper was trained into.
    vocabulary : Vocabulary or list of str or "concepts", optional
        Candidate words. Default: the word space's default concept vocabulary plus
        every annotated concept. ``"concepts"``: the annotated concepts only.
    settings : ExplainSettings, optional
        Method, attention form, p, voting, hubness, calibration and output size
        (see :class:`~lavise_nb.config.ExplainSettings`).
    prior : ClassPrior, optional
        Adds the target model's own predictions for each pair's region to the pair's
        explanation vector before words are ranked (see :mod:`lavise_nb.prior`).
    model, dataset : optional
        Needed only for ``method="image_masking"``.
    device : str
        ``"auto"``: cuda when available.
    show_progress : bool

    Notes
    -----
    A calibrated gamma holds for the settings, prior and vocabulary it was tuned
    with; any difference warns and names the fix.

    Examples
    --------
    >>> explainer = FilterExplainer(store, mapper, space, settings=ExplainSettings(p=10))   # doctest: +SKIP
    >>> explainer.explain(filters=[0, 1]).head()                                           # doctest: +SKIP
    """

    def __init__(self, store, mapper, space, vocabulary=None, settings: ExplainSettings | None = None, *,
                 prior=None, model=None, dataset=None, device="auto", show_progress: bool = False):
        settings = ExplainSettings() if settings is None else settings
        if settings.method == "image_masking" and (model is None or dataset is None):
            raise ValueError("method='image_masking' runs the network again: pass model= and dataset=")
        mapper.check(store, space)
        self.store, self.mapper, self.space = store, mapper, space
        self.model, self.dataset = model, dataset
        self.device = resolve_device(device)
        self.show_progress = show_progress
        self._settings, self._prior = settings, prior
        self.words, self.vectors = self._candidates(vocabulary)
        self.vocabulary_name = vocabulary_name(vocabulary)
        seen, unseen = set(mapper.seen), set(mapper.unseen)
        self.kinds = np.array(["seen" if w in seen else "unseen" if w in unseen else "zero-shot"
                               for w in self.words])
        self._cache: dict = {}
        self._set_gammas()

    @property
    def settings(self) -> ExplainSettings:
        """The explanation settings; assigning new ones (``dataclasses.replace``) clears cached results."""
        return self._settings

    @settings.setter
    def settings(self, value: ExplainSettings) -> None:
        self._settings = value
        self._cache.clear()
        self._set_gammas()

    @property
    def prior(self):
        """The class prior (or None); assigning another clears cached results."""
        return self._prior

    @prior.setter
    def prior(self, value) -> None:
        self._prior = value
        self._cache.clear()
        self._set_gammas()

    def _set_gammas(self) -> None:
        calibrated, record = self._settings.calibrated, self.mapper.calibration
        if calibrated is True:
            if record is not None:
                problems = record.mismatch(self._settings, self._prior, self.vocabulary_name)
                if problems:
                    warnings.warn("the mapper's gamma was tuned under other settings than this explainer's: "
                                  + "; ".join(problems) + ". Run GammaCalibration with this explainer's settings, "
                                  "prior and vocabulary, then mapper.calibrated(record)", stacklevel=3)
            self.gamma, self.filter_gamma = record.gammas if record is not None else (0.0, 0.0)
        else:
            self.gamma = self.filter_gamma = float(calibrated or 0.0)

    def _candidates(self, vocabulary) -> tuple[list, torch.Tensor]:
        concepts = self.space.embed(self.mapper.concepts, missing="skip")
        if isinstance(vocabulary, str) and vocabulary == "concepts":
            words, vectors = list(concepts.names), np.asarray(concepts.vectors)
        else:
            if vocabulary is None:
                vocabulary = Vocabulary.default(self.space)
            elif isinstance(vocabulary, (list, tuple)):
                vocabulary = Vocabulary.from_words(self.space, list(vocabulary))
            known = set(vocabulary.words)
            extra = [i for i, name in enumerate(concepts.names) if name not in known]
            words = list(vocabulary.words) + [concepts.names[i] for i in extra]
            vectors = np.concatenate([np.asarray(vocabulary.vectors), np.asarray(concepts.vectors)[extra]])
        return words, torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))

    # ------------------------------------------------------------------ features
    def pairs(self, filters=None) -> pd.DataFrame:
        """The (filter, image) pairs that carry evidence: top-p images with max activation > 0."""
        filters = np.arange(self.store.shape[1]) if filters is None else np.asarray(filters, dtype=np.int64)
        return _evidence_pairs(filters, self.store.top_indices(self.settings.p, filters), self.store.maxima)

    def pair_features(self, pairs: pd.DataFrame, directions: RandomDirections | None = None) -> torch.Tensor:
        """Pooled features of each (filter, image) pair under the chosen method; (P, C).

        With ``directions``, the pairs' ``filter`` column indexes those random directions
        (virtual filters: their map is w . F) instead of the layer's filters.
        """
        out = torch.zeros(len(pairs), self.store.shape[1])
        method, step = self.settings.method, self.settings.batch_pairs
        if directions is not None and method == "image_masking":
            raise ValueError("random directions have no image-masking features (the network would have to run "
                             "on each direction's masked images); use another method for the coherence null")
        if directions is None:
            thresholds = torch.from_numpy(self.store.thresholds)
        elif method == "activation_masking":
            thresholds = directions.thresholds(float(self.store.manifest["quantile"]))
        else:
            thresholds = torch.zeros(len(directions.directions))
        cells = self.store.valid_cells
        for start in progress(range(0, len(pairs), step), enabled=self.show_progress, desc=f"features ({method})"):
            part = pairs.iloc[start:start + step]
            filters = torch.tensor(part["filter"].to_numpy(), dtype=torch.long)
            if method == "image_masking":
                out[start:start + len(part)] = self._image_masking(part, filters, thresholds)
                continue
            images = part["image"].to_numpy()
            maps = self.store.features(images).to(self.device)
            flat = maps.flatten(2)
            if directions is None:
                own = flat[torch.arange(len(filters)), filters.to(self.device)]
            else:
                own = torch.einsum("pcs,pc->ps", flat, directions.directions[filters].to(self.device))
            out[start:start + len(part)] = self._from_maps(maps, own, thresholds[filters].to(self.device),
                                                           cells[images]).cpu()
        return out

    def _from_maps(self, maps: torch.Tensor, own: torch.Tensor, thresholds: torch.Tensor, cells) -> torch.Tensor:
        """maps (P, C, h, w), own (P, h*w) the explained filter's map, thresholds (P,), cells (P, h, w) bool
        (real pixels) -> pooled (P, C)."""
        flat = maps.flatten(2)
        mean = masked_mean(flat, cells)
        method, attention = self.settings.method, self.settings.attention
        if method == "original":
            return mean
        if method == "activation_masking":
            region = (own > thresholds[:, None]).float().view(-1, *maps.shape[2:])
            return pool_features(maps, region, self.mapper.config.pooling)
        if attention == "paper":
            weights = torch.einsum("pcs,ps->pc", F.normalize(flat, dim=2), F.normalize(own, dim=1))
            return weights * mean
        if attention == "code":
            return torch.einsum("pcs,ps->pc", flat, own) / own.norm(dim=1).clamp_min(1e-6)[:, None] / flat.shape[2]
        soft = own.clamp_min(0)
        return torch.einsum("pcs,ps->pc", flat, soft) / soft.sum(1).clamp_min(1e-6)[:, None]

    def _image_masking(self, part: pd.DataFrame, filters: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        pre = self.dataset.preprocess
        images = torch.stack([self.dataset[int(i)]["image"] for i in part["image"]])
        size = images.shape[-1]
        maps = filter_maps(self.store, part["image"].to_numpy(), part["filter"].to_numpy(), size)
        keep = (maps > thresholds[filters][:, None, None]).unsqueeze(1)
        black = pre.normalize(torch.zeros(1, 3, size, size))
        masked = torch.where(keep, images, black)
        self.model.to(self.device)
        with LayerProbe(self.model, self.store.layer) as probe:
            features = probe(masked.to(self.device)).float().cpu()
        region = F.adaptive_avg_pool2d(keep.float(), features.shape[2:])[:, 0]
        return pool_features(features, region, self.mapper.config.pooling)

    # ------------------------------------------------------------------ words
    def _pair_words(self, filters, gamma: float | None = None) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
        """Pairs, their vectors (P, dim), and each pair's top ``image_k`` word indices and scores (P, image_k)."""
        key = None if filters is None else tuple(np.asarray(filters).tolist())
        gamma = self.gamma if gamma is None else gamma
        if (key, gamma) not in self._cache:
            pairs, vectors, local = self.pair_vectors(filters)
            index_top, scores_top = self.top_words_of(vectors, gamma, self.settings.image_k, local)
            self._cache[key, gamma] = (pairs, vectors, index_top, scores_top)
        return self._cache[key, gamma]

    def pair_vectors(self, filters=None) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor | None]:
        """The pairs (:meth:`pairs`), their explanation vectors (P, dim) and the words' hubness r_w (V,) or None.

        Cached per filter list until the settings or the prior change.
        """
        key = None if filters is None else tuple(np.asarray(filters).tolist())
        if key not in self._cache:
            pairs, vectors = self.explainer_vectors(filters)
            if self.prior is not None and len(pairs):
                vectors = F.normalize(vectors + self.prior.weight * self.prior.vectors(self.store, pairs), dim=1)
            self._cache[key] = (pairs, vectors, self._word_hubness(vectors))
        return self._cache[key]

    def explainer_vectors(self, filters=None) -> tuple[pd.DataFrame, torch.Tensor]:
        """The pairs (:meth:`pairs`) and the explainer's own vectors of them, (P, dim), without the prior."""
        key = ("explainer", None if filters is None else tuple(np.asarray(filters).tolist()))
        if key not in self._cache:
            pairs = self.pairs(filters)
            self._cache[key] = (pairs, self.mapper.embed(self.pair_features(pairs)))
        return self._cache[key]

    def coherence(self, filters=None) -> pd.DataFrame:
        """How much each filter's top images agree, against random directions of the layer.

        Returns
        -------
        pandas.DataFrame
            ``filter, coherence, null_share, coherent``: the activation-weighted resultant length of the
            explainer's vectors of the filter's top images (see :mod:`lavise_nb.coherence`; NaN when
            no image activates it), the share of ``settings.null_directions`` random directions at
            least as coherent, (1 + count) / (1 + n) (NaN when there is no null), and whether that
            share is at most :data:`~lavise_nb.coherence.NULL_LEVEL`.
        """
        wanted = np.arange(self.store.shape[1]) if filters is None else np.asarray(filters, dtype=np.int64)
        return self._agreement(*self.explainer_vectors(filters), wanted)

    def _agreement(self, pairs: pd.DataFrame, vectors: torch.Tensor, wanted: np.ndarray) -> pd.DataFrame:
        """:meth:`coherence`'s table for the ids ``wanted`` from their pairs and vectors (P, dim)."""
        ids, lengths = resultant_length(vectors, pairs["activation"], pairs["filter"])
        values = pd.Series(lengths, index=ids).reindex(wanted).to_numpy()
        null = self.null_coherence()
        share = ((1 + (null[None, :] >= values[:, None]).sum(1)) / (1 + len(null)) if len(null)
                 else np.full(len(wanted), np.nan))
        share = np.where(np.isnan(values), np.nan, share)
        return pd.DataFrame({"filter": wanted, "coherence": values, "null_share": share,
                             "coherent": share <= NULL_LEVEL})

    def null_coherence(self) -> np.ndarray:
        """Coherence of ``settings.null_directions`` random unit directions of the layer, explained as filters.

        One pass over the store's activations (cached until the settings change); empty when
        ``null_directions`` is 0 or the method is ``"image_masking"``.
        """
        n = self.settings.null_directions
        if n == 0 or self.settings.method == "image_masking":
            return np.zeros(0)
        if "null" not in self._cache:
            pairs, vectors = self.direction_vectors(RandomDirections(self.store, n, seed=0))
            self._cache["null"] = resultant_length(vectors, pairs["activation"], pairs["filter"])[1]
        return self._cache["null"]

    def direction_vectors(self, directions: RandomDirections) -> tuple[pd.DataFrame, torch.Tensor]:
        """Random directions as filters: their evidence pairs (``filter`` = direction) and vectors (P, dim).

        The same top-p images (by max response), pooling and head as filters get; no class prior.
        """
        maxima = directions.maxima(show_progress=self.show_progress)
        pairs = _evidence_pairs(np.arange(len(directions)), directions.top_indices(self.settings.p), maxima)
        return pairs, self.mapper.embed(self.pair_features(pairs, directions))

    def explain_directions(self, directions: RandomDirections) -> pd.DataFrame:
        """Name random directions of the layer the way :meth:`explain` names filters: a baseline for them.

        Without the class prior (its crops follow a filter's own regions), so compare with an
        explainer that has ``prior=None``. A filter's words that are no truer (for example by
        :meth:`ProbeScenes.score` with ``directions``) than a random direction's say little about the filter.

        Returns
        -------
        pandas.DataFrame
            :meth:`explain`'s columns; ``filter`` is the direction's index.
        """
        pairs, vectors = self.direction_vectors(directions)
        index_top, scores_top = self.top_words_of(vectors, self.filter_gamma, self.settings.image_k,
                                                  self._word_hubness(vectors))
        ids = np.arange(len(directions))
        return self._word_table(pairs, index_top, scores_top, ids, self._agreement(pairs, vectors, ids))

    def top_words_of(self, vectors: torch.Tensor, gamma: float, k: int,
                     local: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices and calibrated scores of each vector's k best candidate words, both (n, k)."""
        bias = self.seen_offsets(gamma)
        k = min(k, len(self.words))
        index_top, scores_top = [torch.zeros(0, k, dtype=torch.long)], [torch.zeros(0, k)]
        for chunk in vectors.split(2048):
            top = (self.word_scores(chunk, local) - bias).topk(k, dim=1)
            scores_top.append(top.values)
            index_top.append(top.indices)
        return torch.cat(index_top), torch.cat(scores_top)

    def seen_offsets(self, gamma: float) -> torch.Tensor:
        """Calibrated stacking's offsets, (V,): ``gamma`` for seen concepts, 0 for the other words."""
        return torch.from_numpy((self.kinds == "seen") * float(gamma)).float()

    def word_scores(self, vectors: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
        """Uncalibrated scores of every candidate word, (n, V): cosines, or CSLS with ``local`` = r_w."""
        scores = vectors @ self.vectors.T
        return scores if local is None else 2 * scores - local

    def _word_hubness(self, vectors: torch.Tensor) -> torch.Tensor | None:
        """r_w: each word's mean cosine to its k nearest explanation vectors; (V,)."""
        if self.settings.hubness is None or len(vectors) == 0:
            return None
        k = min(self.settings.hubness_k, len(vectors))
        return torch.cat([(chunk @ vectors.T).topk(k, dim=1).values.mean(1)
                          for chunk in self.vectors.split(2048)])

    def explain(self, filters=None) -> pd.DataFrame:
        """Explain filters (default: every filter of the layer).

        Returns
        -------
        pandas.DataFrame
            One row per (filter, word), ``top_words`` per filter, columns
            ``layer, filter, rank`` (1 = best), ``word``, ``votes`` (sum over the
            filter's top images of their max activation times their vote for the
            word, see ``voting``), ``support`` (``votes`` over the summed max
            activation of the filter's voting images: 1 when every image gives the
            word its whole vote, near 0 when the images disagree), ``lift`` (the word's share of the
            filter's votes over its mean share among the layer's filters with top images, each plus
            ``lift_floor``: above 1 when the word is more typical of this filter than of the layer; the order with
            ``ranking="lift"``), ``score`` (mean calibrated cosine over
            the images that voted for it), ``kind`` ("seen", "unseen" annotated concept, or "zero-shot"
            word outside the annotations), ``n_images`` (images that voted), ``coherence`` and
            ``null_share`` (per filter, :meth:`coherence`: a ``null_share`` above 0.05 means the
            filter's images agree no more than a random direction's, so its words are doubtful),
            ``method`` and ``note`` (why a filter has no words).

        Notes
        -----
        The votes of every filter are computed (once, then cached), whatever ``filters`` asks for,
        so that ``lift`` and CSLS compare a filter with the whole layer.
        """
        wanted = np.arange(self.store.shape[1]) if filters is None else np.asarray(filters, dtype=np.int64)
        pairs, _, index_top, scores_top = self._pair_words(None, self.filter_gamma)  # lift's base: every filter
        return self._word_table(pairs, index_top, scores_top, wanted, self.coherence(filters))

    def _word_table(self, pairs: pd.DataFrame, index_top: torch.Tensor, scores_top: torch.Tensor,
                    wanted: np.ndarray, agreement: pd.DataFrame) -> pd.DataFrame:
        """:meth:`explain`'s table from the pairs, their top words (P, k) and the :meth:`coherence` table."""
        rows = []
        agreement = agreement.set_index("filter")
        votes = self.votes(pairs, index_top, scores_top)
        n_images = pairs.groupby("filter").size()
        evidence = pairs.groupby("filter")["activation"].sum()
        grouped = dict(tuple(votes.groupby("filter")))
        for f in wanted:
            if f not in grouped:
                rows.append(dict(filter=int(f), rank=0, word=None, votes=0.0, support=0.0, lift=np.nan, score=np.nan,
                                 kind=None,
                                 n_images=0, note=f"none of the top {self.settings.p} images activates this filter "
                                                   "(max activation <= 0)"))
                continue
            best = grouped[f].head(self.settings.top_words)
            for rank, (word, vote, lift, score) in enumerate(zip(best["word"], best["votes"], best["lift"],
                                                                 best["score"]), 1):
                rows.append(dict(filter=int(f), rank=rank, word=self.words[word], votes=float(vote),
                                 support=float(vote / evidence[f]), lift=float(lift), score=float(score),
                                 kind=self.kinds[word], n_images=int(n_images[f]), note=""))
        table = pd.DataFrame(rows)
        table["coherence"] = agreement["coherence"].reindex(table["filter"]).to_numpy()
        table["null_share"] = agreement["null_share"].reindex(table["filter"]).to_numpy()
        table.insert(0, "layer", self.store.layer)
        table["method"] = self.settings.method
        return table[EXPLANATION_COLUMNS]

    def votes(self, pairs: pd.DataFrame, index_top: torch.Tensor, scores_top: torch.Tensor) -> pd.DataFrame:
        """Each image votes for its best words with its max activation (see ``voting``); sum per filter.

        Parameters
        ----------
        pairs : pandas.DataFrame
            :meth:`pairs` rows (filter, image, activation), P of them.
        index_top, scores_top : torch.Tensor
            (P, k) word indices and calibrated scores of each pair, best first
            (k >= ``s`` for ``"top_s"``; the softmax uses all k).

        Returns
        -------
        pandas.DataFrame
            ``filter, word`` (index into :attr:`words`), ``votes``, ``score``, ``lift`` (the word's
            share of the filter's votes, plus ``lift_floor``, over its mean share among the filters
            of ``pairs``, plus ``lift_floor``), sorted by filter, then by ``ranking`` (votes, or lift)
            and score descending.
        """
        if self.settings.voting == "top_s":
            index_top, scores_top = index_top[:, :self.settings.s], scores_top[:, :self.settings.s]
            shares = torch.ones_like(scores_top)
        else:
            shares = (scores_top / self.settings.temperature).softmax(dim=1)
        k = index_top.shape[1]
        filters = np.repeat(pairs["filter"].to_numpy().astype(np.int64), k)
        words = index_top.reshape(-1).numpy().astype(np.int64)
        width = int(words.max()) + 1 if len(words) else 1
        cells, row = np.unique(filters * width + words, return_inverse=True)  # one cell per (filter, word)
        weights = np.repeat(pairs["activation"].to_numpy(), k) * shares.reshape(-1).numpy()
        votes = np.bincount(row, weights, len(cells))
        score = np.bincount(row, scores_top.reshape(-1).numpy(), len(cells)) / np.bincount(row, None, len(cells))
        filter_of, word_of = cells // width, cells % width
        ids, slot = np.unique(filter_of, return_inverse=True)
        share = votes / np.maximum(np.bincount(slot, votes, len(ids)), 1e-12)[slot]
        base = np.bincount(word_of, share, width) / max(len(ids), 1)
        floor = self.settings.lift_floor
        lift = (share + floor) / (base[word_of] + floor)
        order = np.lexsort((-score, -(votes if self.settings.ranking == "votes" else lift), filter_of))
        return pd.DataFrame({"filter": filter_of[order], "word": word_of[order], "votes": votes[order],
                             "score": score[order], "lift": lift[order]})

    def image_words(self, filters=None) -> pd.DataFrame:
        """Each top image's own top words (``image_k`` of them) for each filter.

        Returns
        -------
        pandas.DataFrame
            Columns ``layer, filter, image, image_id, activation, rank, word, score, kind, method``.
        """
        pairs, _, index_top, scores_top = self._pair_words(filters)
        s = index_top.shape[1]
        words = np.asarray(self.words, dtype=object)[index_top.reshape(-1).numpy()]
        table = pd.DataFrame({
            "layer": self.store.layer,
            "filter": np.repeat(pairs["filter"].to_numpy(), s),
            "image": np.repeat(pairs["image"].to_numpy(), s),
            "activation": np.repeat(pairs["activation"].to_numpy(), s),
            "rank": np.tile(np.arange(1, s + 1), len(pairs)),
            "word": words,
            "score": scores_top.reshape(-1).numpy(),
            "kind": self.kinds[index_top.reshape(-1).numpy()],
        })
        table.insert(3, "image_id", self.store.index["image_id"].to_numpy()[table["image"]])
        table["method"] = self.settings.method
        return table[IMAGE_WORD_COLUMNS]

    def filter_vectors(self, filters=None) -> tuple[np.ndarray, torch.Tensor]:
        """Each filter's explanation vector: the vote-weighted mean of its images' vectors.

        Returns
        -------
        (filters, vectors) : numpy.ndarray (F,), torch.Tensor (F, dim) unit-norm
        """
        pairs, vectors, _ = self.pair_vectors(filters)
        unique, sums, _ = weighted_sums(vectors, pairs["activation"], pairs["filter"])
        return unique, F.normalize(sums, dim=1)

    def lookup(self, phrase: str, k: int = 10) -> pd.DataFrame:
        """Reverse look-up: the filters whose explanations are closest to a word or phrase.

        Returns
        -------
        pandas.DataFrame
            Columns ``query, rank, filter, score`` (cosine between the phrase and the
            filter's explanation vector) and ``words`` (the filter's top words).
        """
        try:
            embedded = self.space.embed([phrase])
        except MissingWordsError:
            raise ValueError(f"the word space {self.space.name!r} has no vector for {phrase!r} (nor for any of its "
                             "words): try another spelling or a related word") from None
        query = torch.from_numpy(np.asarray(embedded.vectors, dtype=np.float32))
        filters, vectors = self.filter_vectors()
        scores = (vectors @ query[0]).numpy()
        order = np.argsort(-scores)[:k]
        explained = self.explain()
        words = explained.dropna(subset=["word"]).groupby("filter")["word"].apply(lambda w: ", ".join(w[:5]))
        return pd.DataFrame({
            "query": phrase, "rank": np.arange(1, len(order) + 1), "filter": filters[order],
            "score": scores[order], "words": [words.get(f, "") for f in filters[order]],
        })


def _evidence_pairs(ids: np.ndarray, top: np.ndarray, maxima) -> pd.DataFrame:
    """(filter, image, activation) rows of each id's top images (ids (F,), top (F, p), maxima (N, >ids)),
    those with max activation > 0 only."""
    table = pd.DataFrame({"filter": np.repeat(ids, top.shape[1]), "image": top.reshape(-1)})
    table["activation"] = np.asarray(maxima)[table["image"], table["filter"]].astype(np.float32)
    return table[table["activation"] > 0].reset_index(drop=True)


def hub_note(explanations: pd.DataFrame, max_share: float = 0.5) -> str:
    """A warning in words when one word is the first word of more than ``max_share`` of the filters.

    Such a *hub* word says more about the mapper than about the filters (every
    explanation vector lands near it), so word-level summaries of that layer are
    weak evidence. Returns "" when no word dominates.

    Parameters
    ----------
    explanations : pandas.DataFrame
        :meth:`FilterExplainer.explain` rows (``rank``, ``word``).
    max_share : float
        Share of filters above which the first word counts as a hub (default: half).
    """
    firsts = explanations.loc[explanations["rank"] == 1, "word"].value_counts(normalize=True)
    if not len(firsts) or firsts.iloc[0] <= max_share:
        return ""
    return (f"LaViSE names {firsts.iloc[0]:.0%} of the layer's filters '{firsts.index[0]}' first: a hub word of "
            "this mapper, so the word-level view says little here; read the Network Dissection cross-check and the "
            "example images.")
