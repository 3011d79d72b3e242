"""Figures for LaViSE results: filter cards, training curves, recall bars, look-ups.

Every function draws into a figure or axes it is given (``fig=`` / ``ax=``) or a
new one, and returns it; nothing here selects a matplotlib backend.

Colours follow the paper: words that are *unseen* annotated concepts (held out
from training) are red; *zero-shot* words (outside the annotations altogether)
are green and italic; seen concepts are dark blue.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .coherence import NULL_LEVEL
from .regions import filter_maps, filter_regions

__all__ = ["KIND_STYLE", "filter_summary", "filter_card", "training_curves", "recall_bars", "lookup_bars"]

#: Colour and font style per word kind (``FilterExplainer`` ``kind`` column).
KIND_STYLE = {
    "seen": dict(color="#1f3b73", style="normal", label="seen concept (trained on)"),
    "unseen": dict(color="#d62728", style="normal", label="unseen concept (held out)"),
    "zero-shot": dict(color="#2ca02c", style="italic", label="zero-shot word (not annotated)"),
}
_OTHER = dict(color="#555555", style="normal", label="other")
BASELINES = ("frequency", "netdissect")


def _style(kind) -> dict:
    return KIND_STYLE.get(kind, _OTHER)


def _new_figure(fig, **kwargs):
    """``fig`` cleared, or a new pyplot figure (shown inline by notebooks)."""
    if fig is not None:
        fig.clear()
        if "figsize" in kwargs:
            fig.set_size_inches(*kwargs["figsize"])
        return fig
    import matplotlib.pyplot as plt
    return plt.figure(**kwargs)


def _new_axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=figsize, layout="constrained")[1]


def _one_filter(table: pd.DataFrame | None, filter: int, layer: str | None) -> pd.DataFrame:
    if table is None or len(table) == 0:
        return pd.DataFrame(columns=[] if table is None else table.columns)
    rows = table[table["filter"] == filter]
    if layer is not None and "layer" in rows:
        rows = rows[rows["layer"] == layer]
    if "method" in rows and rows["method"].nunique() > 1:
        rows = rows[rows["method"] == rows["method"].iloc[0]]
    return rows


def filter_summary(explanations: pd.DataFrame, image_words: pd.DataFrame | None = None,
                   n_words: int = 5, distinct: bool = False) -> pd.DataFrame:
    """One row per filter: its top words and how strongly its top images agree.

    Parameters
    ----------
    explanations : pandas.DataFrame
        :meth:`FilterExplainer.explain` output (one method).
    image_words : pandas.DataFrame, optional
        :meth:`FilterExplainer.image_words` output; gives the total activation of
        each filter's top images, so that ``agreement`` can be computed.
    n_words : int
        Words listed in ``words``.
    distinct : bool
        Keep only the best filter per first word (a readable "best explained" list
        when many filters share one word).

    Returns
    -------
    pandas.DataFrame
        Columns ``filter, word`` (rank 1), ``kind``, ``votes``, ``score``, ``n_images``,
        ``agreement`` (the rank-1 word's votes over the summed activation of the
        filter's top images: 1 when every image gives it its whole vote; NaN without
        ``image_words``), ``shared`` (filters with the same first word) and
        ``words`` (the first ``n_words``, comma separated), sorted best explained
        first (agreement, then votes).
    """
    named = explanations.dropna(subset=["word"])
    named = named[named["rank"] >= 1].sort_values(["filter", "rank"])
    first = named[named["rank"] == 1].set_index("filter")
    words = named.groupby("filter")["word"].apply(lambda w: ", ".join(list(w)[:n_words]))
    table = first[["word", "kind", "votes", "score", "n_images"]].copy()
    table["words"] = words
    if image_words is not None and len(image_words):
        total = image_words.drop_duplicates(["filter", "image"]).groupby("filter")["activation"].sum()
        table["agreement"] = table["votes"] / total.reindex(table.index).to_numpy()
    else:
        table["agreement"] = np.nan
    table["shared"] = table.groupby("word")["word"].transform("size").astype(int)
    table = table.reset_index()
    order = table.sort_values(["agreement", "votes"], ascending=False, na_position="last").index
    table = table.loc[order, ["filter", "word", "kind", "votes", "score", "n_images", "agreement", "shared",
                              "words"]]
    if distinct:
        table = table.drop_duplicates("word")
    return table.reset_index(drop=True)


def _image_panel(ax, store, dataset, image: int, filter: int, words: pd.DataFrame, n_words: int,
                 rank: int, cmap: str) -> None:
    """One top image: darkened outside the filter's region, heat map and outline inside."""
    sample = dataset[int(image)]
    picture = dataset.preprocess.denormalize(sample["image"]).permute(1, 2, 0).numpy()
    size = picture.shape[0]
    amap = filter_maps(store, [image], [filter], size)[0].numpy()
    threshold = float(store.thresholds[filter])
    region = filter_regions(store, [image], [filter], size)[0].numpy()
    shown = picture * np.where(region, 1.0, 0.35)[..., None]
    ax.imshow(shown, interpolation="bilinear")
    heat = np.ma.masked_where(~region, amap)
    ax.imshow(heat, cmap=cmap, alpha=0.35, vmin=threshold, vmax=max(float(amap.max()), threshold + 1e-6))
    if region.any() and not region.all():
        ax.contour(region.astype(float), levels=[0.5], colors=["#ffd400"], linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    activation = float(np.asarray(store.maxima[int(image), int(filter)]))
    ax.set_title(f"#{rank}  image {int(image)}\nmax act {activation:.2f}", fontsize=8)
    mine = words[words["image"] == image].sort_values("rank").head(n_words) if len(words) else words
    if len(words) and not len(mine):
        ax.text(0.5, -0.04, "(not among the\nimages that vote)", transform=ax.transAxes, ha="center", va="top",
                fontsize=7, color="#888888")
    for j, (word, kind) in enumerate(zip(mine.get("word", []), mine.get("kind", []))):
        style = _style(kind)
        ax.text(0.5, -0.04 - 0.13 * j, str(word), transform=ax.transAxes, ha="center", va="top", fontsize=8,
                color=style["color"], fontstyle=style["style"])


_GOOD, _WARN = "#2e7d32", "#b35900"  # a card line that supports the name, one that questions it


def _agreement_note(rows: pd.DataFrame) -> tuple[str, bool]:
    """The card's line on the filter's coherence (empty when the table has none), and whether it supports the name."""
    if not len(rows) or "coherence" not in rows or rows["coherence"].isna().all():
        return "", True
    coherence, share = float(rows["coherence"].iloc[0]), float(rows["null_share"].iloc[0])
    if share != share:
        return f"coherence {coherence:.2f} (no random-direction null)", True
    if share > NULL_LEVEL:
        return (f"no more coherent than random directions of the layer: coherence {coherence:.2f}, "
                f"{share:.0%} of them as high"), False
    return f"coherent: {coherence:.2f}, above all but {share:.0%} of random directions of the layer", True


def _dissection_note(rows: pd.DataFrame) -> tuple[str, bool]:
    """The card's line on the closed-vocabulary check (empty when the table has none), and whether it agrees."""
    if not len(rows) or "dissection_word" not in rows or rows["dissection_word"].isna().all():
        return "", True
    row = rows.iloc[0]
    truth, agrees = row.get("dissection_faithfulness", np.nan), bool(row.get("agrees", False))
    note = (f"best annotated concept over all reference images (Network Dissection): {row['dissection_word']}, "
            f"IoU {row['dissection_iou']:.2f}" + (f", faithfulness {truth:.2f}" if truth == truth else ""))
    return note + ("; the first word agrees" if agrees else "; not the first word"), agrees


def _verified_note(rows: pd.DataFrame) -> tuple[str, bool]:
    """The card's line on the best-supported word (empty when the table has none), and whether it is the first."""
    if not len(rows) or "verified_word" not in rows or rows["verified_word"].isna().all():
        return "", True
    row = rows.dropna(subset=["verified_word"]).iloc[0]
    truth, source = row.get("verified_faithfulness", np.nan), {"dissection": "the label"}.get(row["verified_from"],
                                                                                          "the words")
    first = rows.loc[rows["rank"] == 1, "word"]
    same = bool(len(first)) and first.iloc[0] == row["verified_word"]
    return (f"best supported on probe scenes (of {source}): {row['verified_word']}"
            + (f", faithfulness {truth:.2f} on other scenes" if truth == truth else "")
            + ("; the first word" if same else "; not the first word")), same


def filter_card(store, dataset, explanations: pd.DataFrame, image_words: pd.DataFrame | None, filter: int,
                n_images: int = 6, n_words: int = 3, top_words: int = 10, cmap: str = "inferno", fig=None):
    """One filter at a glance: its top images with their regions and words, and its ranked words.

    Parameters
    ----------
    store : ActivationStore
        Gives the top images, activation maps and the filter's threshold.
    dataset : Dataset
        The store's dataset (same order), to draw the images.
    explanations : pandas.DataFrame
        :meth:`FilterExplainer.explain` rows (any filters; this one is picked).
    image_words : pandas.DataFrame or None
        :meth:`FilterExplainer.image_words` rows; each image's own top ``n_words``
        are written under it.
    filter : int
    n_images : int
        Top images shown (by max activation, best first).
    n_words : int
        Words written under each image.
    top_words : int
        Ranked filter words shown in the bar chart.
    cmap : str
        Colormap of the heat map inside the region.
    fig : matplotlib.figure.Figure, optional
        Drawn into (cleared first); default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes[:n_images]`` are the image panels, the last axes the word chart.

    Notes
    -----
    Inside each image, the region where the filter's (upsampled) activation exceeds
    its threshold T_u is outlined in yellow and tinted by activation; the rest is
    darkened. Beside each word: its mean cosine, its ``support`` (the share of the
    filter's activation-weighted votes it got), its ``lift`` (that share over the word's mean
    share among the layer's filters) and, where the table has one
    (:func:`~lavise_nb.faithfulness.attach_faithfulness`), its faithfulness score. Word colours: see :data:`KIND_STYLE` (unseen concepts red, as in the
    paper; zero-shot words green italic). Under the title: the filter's ``coherence`` and
    ``null_share`` (:meth:`~lavise_nb.explain.FilterExplainer.coherence`), in orange when random
    directions of the layer have top images that agree as well. Below it, where the table has it
    (:func:`~lavise_nb.faithfulness.attach_dissection`), the filter's Network Dissection label, in
    orange when it is not the first word, and (:class:`~lavise_nb.faithfulness.WordVerification`)
    its best-supported word, orange when that is not the first word.
    """
    from matplotlib.patches import Patch

    filter = int(filter)
    layer = getattr(store, "layer", None)
    rows = _one_filter(explanations, filter, layer)
    words = _one_filter(image_words, filter, layer)
    images = store.top_indices(n_images, [filter])[0]
    n, checks = len(images), [note for note in (_dissection_note(rows), _verified_note(rows)) if note[0]]
    fig = _new_figure(fig, figsize=(max(8.0, 1.9 * n), 3.2 + 0.28 * top_words + 0.2 * n_words))
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, 0.14 * top_words + 0.25], hspace=0.12 + 0.08 * n_words,
                            left=0.2 if n <= 3 else 0.12, right=0.97, bottom=0.07,
                            top=0.86 - 0.035 * len(checks))
    for rank, image in enumerate(images, 1):
        _image_panel(fig.add_subplot(grid[0, rank - 1]), store, dataset, int(image), filter, words, n_words,
                     rank, cmap)

    ax = fig.add_subplot(grid[1, :])
    named = rows.dropna(subset=["word"]).sort_values("rank").head(top_words) if len(rows) else rows
    if len(named):
        y = np.arange(len(named))[::-1]
        colours = [_style(k)["color"] for k in named["kind"]]
        ax.barh(y, named["votes"], color=colours, alpha=0.85)
        ax.set_yticks(y, [f"{r}. {w}" for r, w in zip(named["rank"], named["word"])], fontsize=9)
        for tick, kind in zip(ax.get_yticklabels(), named["kind"]):
            style = _style(kind)
            tick.set_color(style["color"])
            tick.set_fontstyle(style["style"])
        support = named["support"] if "support" in named else [np.nan] * len(named)
        faithful = named["faithfulness"] if "faithfulness" in named else [np.nan] * len(named)
        lifts = named["lift"] if "lift" in named else [np.nan] * len(named)
        for yy, votes, score, share, lift, truth in zip(y, named["votes"], named["score"], support, lifts, faithful):
            note = f" {votes:.1f}  (cos {score:.2f}" + (f", support {share:.0%}" if share == share else "")
            note += f", lift {lift:.1f}" if lift == lift else ""
            note += (f", faithfulness {truth:.2f}" if truth == truth else "") + ")"
            ax.text(votes, yy, note, va="center", fontsize=7, color="#333333")
        ax.set_xlim(0, float(named["votes"].max()) * 1.45)
        n_voters = int(named["n_images"].iloc[0])
        ax.set_xlabel(f"votes: each of the top {n_voters} images gives its max activation, shared among "
                      "the words it ranks first", fontsize=8)
    else:
        note = rows["note"].iloc[0] if len(rows) and "note" in rows else "no explanation for this filter"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_yticks([])
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="x", labelsize=8)
    present = set(named["kind"]) if len(named) else set()
    if len(words):
        present |= set(words["kind"])
    handles = [Patch(color=s["color"], label=s["label"]) for kind, s in KIND_STYLE.items() if kind in present]
    if handles:
        legend = fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles), frameon=False,
                            bbox_to_anchor=(0.97, 1.0))
        for text, kind in zip(legend.get_texts(), [k for k in KIND_STYLE if k in present]):
            text.set_color(KIND_STYLE[kind]["color"])
            text.set_fontstyle(KIND_STYLE[kind]["style"])
    method = rows["method"].iloc[0] if len(rows) and "method" in rows else ""
    title = f"filter {filter}" + (f" of {layer}" if layer else "") + (f"  ({method})" if method else "")
    fig.text(0.01, 0.985, title, fontsize=12, fontweight="bold", va="top")
    fig.text(0.01, 0.945, f"top {n} images; yellow outline: activation > threshold "
                          f"{float(store.thresholds[filter]):.2f}; words under each image: that image's own top "
                          f"{n_words}", fontsize=8, va="top", color="#444444")
    agreement, coherent = _agreement_note(rows)
    if agreement:
        fig.text(0.01, 0.91, agreement, fontsize=8, va="top", color=_GOOD if coherent else _WARN)
    for k, (text, supports) in enumerate(checks):
        fig.text(0.01, 0.88 - 0.03 * k, text, fontsize=8, va="top", color=_GOOD if supports else _WARN)
    return fig


def training_curves(history: pd.DataFrame, fig=None):
    """Loss and accuracy of an explainer training run, per epoch.

    Parameters
    ----------
    history : pandas.DataFrame
        ``Mapper.history`` (or the frame a ``fit`` callback receives): columns
        ``epoch, train_loss, val_loss, seen_top1, seen_top5, unseen_top1, unseen_top5``.
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: losses (best epoch marked), then top-1/top-5 accuracy on
        validation pairs of seen concepts and on pairs of unseen (zero-shot) concepts.
    """
    fig = _new_figure(fig, figsize=(10, 3.6))
    loss_ax, acc_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.86, wspace=0.25)
    epochs = history["epoch"] + 1 if len(history) else []
    if len(history):
        loss_ax.plot(epochs, history["train_loss"], label="train", color="#1f77b4")
        loss_ax.plot(epochs, history["val_loss"], label="validation", color="#ff7f0e")
        best = int(history["val_loss"].idxmin())
        loss_ax.scatter([history["epoch"][best] + 1], [history["val_loss"][best]], color="#ff7f0e",
                        zorder=3, s=40, edgecolor="black", label=f"best (epoch {history['epoch'][best] + 1})")
        for column, colour, dash, label in [
            ("seen_top1", "#1f3b73", "-", "seen top-1 (val)"), ("seen_top5", "#1f3b73", "--", "seen top-5 (val)"),
            ("unseen_top1", "#d62728", "-", "unseen top-1 (zero-shot)"),
            ("unseen_top5", "#d62728", "--", "unseen top-5 (zero-shot)")]:
            if column in history and history[column].notna().any():
                acc_ax.plot(epochs, history[column], dash, color=colour, label=label)
                acc_ax.annotate(f"{history[column].iloc[-1]:.2f}", (epochs.iloc[-1], history[column].iloc[-1]),
                                fontsize=7, color=colour, xytext=(3, 0), textcoords="offset points", va="center")
        acc_ax.axvline(history["epoch"][best] + 1, color="#999999", lw=0.8, ls=":")
    loss_ax.set(title="ranking loss", xlabel="epoch", ylabel="hinge loss")
    acc_ax.set(title="accuracy: does a true concept rank first / in the top 5?", xlabel="epoch",
               ylabel="accuracy", ylim=(0, 1.05))
    acc_ax.title.set_fontsize(10)
    for ax in (loss_ax, acc_ax):
        ax.spines[["top", "right"]].set_visible(False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    return fig


def recall_bars(recall: pd.DataFrame, k: int = 20, ground: str = "objects", words_from: str = "filter",
                ax=None):
    """Recall@k of each method and baseline, split by all / seen / unseen concepts.

    Parameters
    ----------
    recall : pandas.DataFrame
        :func:`lavise_nb.evaluate.compare_methods` recall table.
    k : int
    ground : {"objects", "stuff", "all"}
        Which ground-truth concepts count.
    words_from : {"filter", "image"}
        The filter's aggregated words (baselines have only these) or each image's own.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        One group of bars per method (baselines last, hatched), one bar per subset.
    """
    ax = _new_axes(ax, (max(6.0, 1.3 * recall["method"].nunique() + 2), 3.8))
    part = recall[(recall["k"] == k) & (recall["ground"] == ground) & (recall["words_from"] == words_from)]
    if part.empty:
        ax.text(0.5, 0.5, f"no recall@{k} rows for ground={ground!r}", ha="center", transform=ax.transAxes)
        return ax
    methods = list(dict.fromkeys(m for m in part["method"] if m not in BASELINES))
    methods += [m for m in BASELINES if m in set(part["method"])]
    subsets = [s for s in ("all", "seen", "unseen") if s in set(part["subset"])]
    colours = {"all": "#7f7f7f", "seen": "#1f3b73", "unseen": "#d62728"}
    width = 0.8 / len(subsets)
    table = part.set_index(["method", "subset"])
    for j, subset in enumerate(subsets):
        x = np.arange(len(methods)) + (j - (len(subsets) - 1) / 2) * width
        values = [float(table["recall"].get((m, subset), np.nan)) for m in methods]
        bars = ax.bar(x, values, width, color=colours.get(subset, "#999999"), label=subset)
        for bar, method, value in zip(bars, methods, values):
            if method in BASELINES:
                bar.set_hatch("//")
                bar.set_edgecolor("white")
            if np.isfinite(value):
                ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f}".replace("0.", ".", 1),
                        ha="center", va="bottom", fontsize=6)
    ax.set_xticks(np.arange(len(methods)), [m.replace("/", "/\n").replace("_", "_\n") for m in methods], fontsize=8)
    n_baselines = sum(m in BASELINES for m in methods)
    if n_baselines and n_baselines < len(methods):
        ax.axvline(len(methods) - n_baselines - 0.5, color="#bbbbbb", lw=1, ls="--")
    pairs = int(table["pairs"].get((methods[0], "all"), 0)) if subsets else 0
    ax.set_ylabel(f"recall@{k}")
    ax.set_ylim(0, min(1.12, max(0.1, float(np.nanmax(part["recall"])) * 1.2)))
    ax.set_title(f"recall@{k} of {ground} concepts ({words_from} words, {pairs} filter-image pairs); "
                 "hatched: baselines", fontsize=9)
    ax.legend(title="concepts", fontsize=8, title_fontsize=8, frameon=False, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def lookup_bars(lookup_table: pd.DataFrame, ax=None):
    """Reverse look-up result as bars: which filters mean the query word.

    Parameters
    ----------
    lookup_table : pandas.DataFrame
        :meth:`FilterExplainer.lookup` output (``query, rank, filter, score, words``).
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        One horizontal bar per filter (best on top), labelled with its top words.
    """
    ax = _new_axes(ax, (7.0, 0.35 * max(3, len(lookup_table)) + 1.0))
    table = lookup_table.sort_values("rank")
    y = np.arange(len(table))[::-1]
    ax.barh(y, table["score"], color="#4c72b0")
    ax.set_yticks(y, [f"filter {f}" for f in table["filter"]], fontsize=8)
    for yy, score, words in zip(y, table["score"], table["words"]):
        ax.text(max(float(score), 0), yy, f"  {words}", va="center", fontsize=7, color="#333333")
    top = float(table["score"].max()) if len(table) else 1.0
    ax.set_xlim(min(0.0, float(table["score"].min()) if len(table) else 0.0), max(top, 0.05) * 1.9)
    query = table["query"].iloc[0] if len(table) else ""
    ax.set_title(f"filters whose explanation is closest to {query!r}", fontsize=10)
    ax.set_xlabel("cosine(query, filter's explanation vector); text: the filter's top words", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


# --- calibration
__all__ += ["gamma_curve"]


def gamma_curve(gamma_table: pd.DataFrame, chosen=None, ax=None):
    """Seen, unseen and harmonic-mean H against the calibration offset gamma.

    Parameters
    ----------
    gamma_table : pandas.DataFrame
        ``GammaCalibration.table()`` (columns gamma, words, seen, unseen, H, level, k);
        one colour per ``words`` curve (image words, filter words or masks).
    chosen : float or dict, optional
        The selected gamma (per ``words`` value when a dict), marked by a vertical
        line (default: the best H of each curve).
    """
    ax = _new_axes(ax, (5.8, 3.4))
    table = gamma_table if "words" in gamma_table else gamma_table.assign(words="")
    for colour, (words, curve) in zip(("#1f77b4", "#d62728", "#2ca02c"), table.groupby("words", sort=False)):
        label = f"{words} words: " if words else ""
        for column, style, width in (("seen", "--", 1.2), ("unseen", ":", 1.4), ("H", "-", 2.2)):
            ax.plot(curve["gamma"], curve[column], style, color=colour, lw=width, label=f"{label}{column}")
        best = curve.loc[curve["H"].idxmax(), "gamma"]
        mark = chosen.get(words, best) if isinstance(chosen, dict) else (best if chosen is None else chosen)
        ax.axvline(mark, color=colour, lw=1, ls=":")
        ax.annotate(f"{words} gamma = {mark:.2f}".strip(), (mark, curve["H"].max()), xytext=(4, 4),
                    textcoords="offset points", fontsize=8, color=colour)
    level = table["level"].iloc[0] if "level" in table else ""
    k = table["k"].iloc[0] if "k" in table else ""
    ax.set(xlabel="gamma (subtracted from seen-concept scores)",
           ylabel=f"{'recall' if level == 'filter' else 'accuracy'}@{k}",
           title="calibration on the inner split (pseudo-seen / pseudo-unseen)")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    return ax


# --- bias analysis (lavise_nb.bias): paired share bars, volcano plot, per-group image gallery
__all__ += ["bias_bars", "bias_volcano", "bias_gallery"]

_BIAS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def _bias_figure(fig, figsize):
    if fig is not None:
        fig.clear()
        fig.set_size_inches(*figsize)
        return fig
    import matplotlib.pyplot as plt
    return plt.figure(figsize=figsize)


def _bias_label(row) -> str:
    words = str(row.get("top_words", "") or "")
    return f"#{int(row['filter'])}" + (f"  {words}" if words else "")


def bias_bars(table: pd.DataFrame, top: int = 10, significant_only: bool = False, ax=None):
    """Paired bars: each group's share of qualifying images (Wilson CIs) for the best-ranked filters.

    Parameters
    ----------
    table : pandas.DataFrame
        :meth:`GroupComparison.compare` output.
    top : int
        Filters shown (by ``rank``).
    significant_only : bool

    Returns
    -------
    matplotlib.axes.Axes
    """
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(8, 0.45 * top + 1.4))
    data = table[table["significant"]] if significant_only else table
    filters = (data.drop_duplicates("filter").sort_values("rank")["filter"].head(top).tolist())
    groups = list(table.attrs.get("groups") or pd.unique(table["group"]))
    if not filters:
        ax.text(0.5, 0.5, "no significant filter", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return ax
    height = 0.8 / len(groups)
    labels = []
    for i, f in enumerate(filters):
        rows = data[data["filter"] == f].set_index("group")
        first = rows.iloc[0]
        star = "*" if bool(first["significant"]) else ""
        labels.append(_bias_label({**first.to_dict(), "filter": f}) + f"  (q={first['q_value']:.1g}){star}")
        for j, g in enumerate(groups):
            if g not in rows.index:
                continue
            r = rows.loc[g]
            y = i + (j - (len(groups) - 1) / 2) * height
            err = [[r["share"] - r["ci_low"]], [r["ci_high"] - r["share"]]]
            ax.barh(y, r["share"], height=height * 0.95, xerr=err, capsize=2,
                    color=_BIAS_COLOURS[j % len(_BIAS_COLOURS)], label=str(g) if i == 0 else None)
    ax.set_yticks(range(len(filters)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of images where the filter fires (max activation > T_u), 95% Wilson CI")
    ax.legend(title="group", fontsize=8, loc="lower right")
    ax.set_title("Filters whose firing rate differs most between groups (* significant)")
    return ax


def bias_volcano(table: pd.DataFrame, label: int = 6, alpha: float | None = None, ax=None):
    """Effect size (``difference``) against -log10 q, one point per tested filter; the best ones labelled.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(7, 5))
    alpha = table.attrs.get("alpha", 0.05) if alpha is None else alpha
    per = table.drop_duplicates("filter")
    per = per[per["q_value"].notna()]
    if per.empty:
        ax.text(0.5, 0.5, "no filter could be tested", ha="center", va="center", transform=ax.transAxes)
        return ax
    y = -np.log10(np.clip(per["q_value"].to_numpy(dtype=float), 1e-300, 1))
    x = per["difference"].to_numpy(dtype=float)
    sig = per["significant"].to_numpy(dtype=bool)
    ax.scatter(x[~sig], y[~sig], s=12, color="#999999", label="not significant")
    ax.scatter(x[sig], y[sig], s=16, color="#d62728", label=f"q < {alpha:g}")
    ax.axhline(-np.log10(alpha), color="#555555", lw=0.8, ls="--")
    ax.axvline(0, color="#555555", lw=0.5)
    for (_, row), xi, yi in zip(per.iterrows(), x, y):
        if row["rank"] <= label:
            word = str(row.get("top_word", "") or "")
            ax.annotate(f"#{int(row['filter'])}" + (f" {word}" if word else ""), (xi, yi), fontsize=7,
                        xytext=(3, 2 + 7 * (int(row["rank"]) % 3)), textcoords="offset points")
    groups = table.attrs.get("groups") or list(pd.unique(table["group"]))
    if len(groups) == 2:
        ax.set_xlabel(f"difference in share ({groups[0]} - {groups[1]})")
    else:
        ax.set_xlabel("difference in share (max - min over groups)")
    ax.set_ylabel("-log10 q")
    ax.legend(fontsize=8)
    ax.set_title("Bias volcano: effect size vs corrected significance")
    return ax


def _bias_picture(store, dataset, image: int):
    if dataset is not None:
        sample = dataset[int(image)]
        return dataset.preprocess.denormalize(sample["image"]).permute(1, 2, 0).numpy().clip(0, 1), True
    from PIL import Image
    path = store.index["path"].iloc[int(image)] if "path" in store.index else ""
    if not path:
        return None, False
    with Image.open(path) as im:
        im = im.convert("RGB").resize((store.image_size, store.image_size))
        return np.asarray(im, dtype=np.float32) / 255.0, False


def bias_gallery(comparison, filters, k: int = 4, dataset=None, fig=None):
    """Example qualifying images per filter (rows) and group (column blocks), strongest first.

    Parameters
    ----------
    comparison : GroupComparison
    filters : int or list of int
    k : int
        Images per group.
    dataset : optional
        The target dataset; with it, images are shown exactly as the model saw
        them and the region above ``T_u`` is outlined. Without it, images are
        read from the store's ``path`` column (no outline).

    Returns
    -------
    matplotlib.figure.Figure
    """
    filters = [int(filters)] if np.isscalar(filters) else [int(f) for f in filters]
    groups = list(comparison.groups)
    n_cols = k * len(groups)
    fig = _bias_figure(fig, (1.5 * n_cols, 1.75 * len(filters) + 0.4))
    axes = np.asarray(fig.subplots(len(filters), n_cols, squeeze=False))
    table = comparison.result
    for i, f in enumerate(filters):
        words = comparison.filter_words.get(f, "")
        for j, g in enumerate(groups):
            examples = comparison.example_images(f, g, k)
            share = ""
            if table is not None:
                hit = table[(table["filter"] == f) & (table["group"] == g)]
                if len(hit):
                    share = f" {hit['n_qualify'].iloc[0]}/{hit['n_images'].iloc[0]}"
            for c in range(k):
                ax = axes[i, j * k + c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"#{f} {g}{share}" + (f"\n{words}" if words and j == 0 else ""), fontsize=7)
                if c >= len(examples):
                    ax.set_axis_off()
                    continue
                row = examples.iloc[c]
                picture, aligned = _bias_picture(comparison.store, dataset, row["image"])
                if picture is None:
                    ax.text(0.5, 0.5, f"image {int(row['image'])}", ha="center", va="center", fontsize=7)
                else:
                    ax.imshow(picture)
                    if aligned:
                        region = filter_regions(comparison.store, [row["image"]], [f], picture.shape[0],
                                                comparison.thresholds)[0].numpy()
                        if region.any() and not region.all():
                            ax.contour(region.astype(float), levels=[0.5], colors=["#ffd400"], linewidths=1)
                colour = "#2ca02c" if row["qualifies"] else "#999999"
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2)
                ax.set_title(f"{row['activation']:.2f}", fontsize=7, color=colour)
    fig.suptitle("Strongest images per filter and group (green frame: fires above T_u)", fontsize=9)
    fig.tight_layout()
    return fig
