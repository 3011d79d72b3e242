"""Jupyter widgets for LaViSE (training monitor, filter browser, reverse look-up)."""
from __future__ import annotations

__all__ = ["training_monitor", "filter_browser", "lookup_widget", "TrainingMonitor", "FilterBrowser",
           "LookupWidget"]

import numpy as np
import pandas as pd

from ._utils.progress import progress

WORD_COLUMNS = ("rank word kind votes support lift faithfulness score n_images coherence null_share dissection_word "
                "dissection_iou dissection_faithfulness agrees verified_word verified_faithfulness note").split()


def _png(fig, dpi: int = 90):
    """A figure as an IPython PNG image (renders in live widgets and in static reports alike)."""
    import io

    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return Image(data=buffer.getvalue(), format="png")


def _figure():
    """A figure outside pyplot (never auto-shown, never leaked)."""
    from matplotlib.figure import Figure

    return Figure()


def _display(obj) -> None:
    from IPython.display import display

    display(obj)


class TrainingMonitor:
    """Live loss/accuracy curves of an explainer training run.

    Built by :func:`training_monitor`; pass ``.callback`` to
    :meth:`ExplainerTrainer.fit`.

    Attributes
    ----------
    widget : ipywidgets.VBox
        A status line and the curves (redrawn every ``every`` epochs).
    history : pandas.DataFrame
        The history received so far.
    figure : matplotlib.figure.Figure
        The latest curves.
    interactive : bool
        False: nothing is drawn while training; :meth:`finish` (or displaying the
        monitor) shows the final curves once, as static output.
    """

    def __init__(self, max_epochs: int | None = None, every: int = 1, interactive: bool = True,
                 show_progress: bool = True):
        import ipywidgets as W

        self.max_epochs, self.every, self.interactive = max_epochs, max(1, every), interactive
        self.history = pd.DataFrame()
        self.figure = _figure()
        self._status = W.HTML("waiting for the first epoch ...")
        self._out = W.Output()
        self.widget = W.VBox([self._status, self._out])
        self._bar = progress(total=max_epochs, enabled=show_progress and not interactive, desc="train explainer")

    @property
    def result(self) -> pd.DataFrame:
        """The history so far (alias of :attr:`history`)."""
        return self.history

    def status(self) -> str:
        """One line: epoch, losses and accuracies of the last epoch."""
        if self.history.empty:
            return "no epoch yet"
        last = self.history.iloc[-1]
        best = self.history.loc[self.history["val_loss"].idxmin()]
        total = f"/{self.max_epochs}" if self.max_epochs else ""
        return (f"epoch {int(last['epoch']) + 1}{total}: train loss {last['train_loss']:.3f}, "
                f"val loss {last['val_loss']:.3f} (best {best['val_loss']:.3f} at epoch {int(best['epoch']) + 1}); "
                f"seen top-1 {last['seen_top1']:.2f} / top-5 {last['seen_top5']:.2f}; "
                f"unseen top-1 {last['unseen_top1']:.2f} / top-5 {last['unseen_top5']:.2f}")

    def callback(self, history: pd.DataFrame) -> None:
        """Receive the history after an epoch (the ``fit(callback=...)`` hook)."""
        self.history = history.copy()
        self._bar.update(len(history) - self._bar.n)
        self._status.value = self.status()
        if self.interactive and (len(history) % self.every == 0 or len(history) == 1):
            self._redraw()

    def _redraw(self) -> None:
        from .plots import training_curves

        training_curves(self.history, fig=self.figure)
        self._out.clear_output(wait=True)
        with self._out:
            _display(_png(self.figure))

    def finish(self, history: pd.DataFrame | None = None) -> "TrainingMonitor":
        """Draw the final curves (e.g. with ``mapper.history``, which marks the best epoch)."""
        if history is not None:
            self.history = history.copy()
        self._bar.close()
        self._status.value = self.status()
        if self.interactive:
            self._redraw()
        else:
            from .plots import training_curves

            training_curves(self.history, fig=self.figure)
        return self

    def _ipython_display_(self):
        if self.interactive:
            _display(self.widget)
        else:
            print(self.status())
            _display(_png(self.figure))


def training_monitor(max_epochs: int | None = None, every: int = 1, interactive: bool = True,
                     show_progress: bool = True) -> TrainingMonitor:
    """A live monitor for :meth:`ExplainerTrainer.fit`.

    Parameters
    ----------
    max_epochs : int, optional
        For the status line and the progress bar.
    every : int
        Redraw the curves every this many epochs (the status line updates each epoch).
    interactive : bool
        True: display ``monitor`` (or ``monitor.widget``) before training and watch
        it update. False (papermill reports): a tqdm bar while training, then
        ``monitor.finish(mapper.history)`` and display it for the static curves.
    show_progress : bool

    Returns
    -------
    TrainingMonitor
        ``.widget``, ``.callback``, ``.history``, ``.finish()``.

    Examples
    --------
    >>> monitor = training_monitor(max_epochs=60)             # doctest: +SKIP
    >>> display(monitor)                                       # doctest: +SKIP
    >>> mapper = trainer.fit(callback=monitor.callback)        # doctest: +SKIP
    >>> monitor.finish(mapper.history)                         # doctest: +SKIP
    """
    return TrainingMonitor(max_epochs, every, interactive, show_progress)


class FilterBrowser:
    """Browse explained filters: pick one by number or find the filters that mean a word.

    Built by :func:`filter_browser`.

    Attributes
    ----------
    widget : ipywidgets.VBox
        Filter slider, word search box, search results, the words table and the filter card.
    explanations, image_words : pandas.DataFrame
        The tables being browsed.
    summary : pandas.DataFrame
        :func:`lavise_nb.plots.filter_summary` of every filter (best explained first).
    filter : int
        The selected filter.
    result : pandas.DataFrame
        The explanation rows of the selected filter.
    figure : matplotlib.figure.Figure
        Its filter card.
    matches : pandas.DataFrame
        The last :meth:`search` result.
    """

    def __init__(self, store, dataset, explainer=None, explanations=None, image_words=None, filter=None,
                 n_images: int = 6, static_filters: int = 3, interactive: bool = True,
                 show_progress: bool = True):
        import ipywidgets as W

        if explanations is None:
            if explainer is None:
                raise ValueError("pass explainer= or explanations= (and image_words=)")
            explanations = explainer.explain()
        if image_words is None and explainer is not None:
            image_words = explainer.image_words()
        self.store, self.dataset, self.explainer = store, dataset, explainer
        self.explanations, self.image_words = explanations, image_words
        self.n_images, self.static_filters, self.interactive = n_images, static_filters, interactive
        self.show_progress = show_progress
        self.summary = _summary(explanations, image_words)
        self.matches = pd.DataFrame(columns=["query", "filter", "rank", "word", "votes", "score", "match"])
        self.figure = _figure()
        n_filters = store.shape[1]
        default = int(self.summary["filter"].iloc[0]) if filter is None and len(self.summary) else int(filter or 0)
        self._slider = W.IntSlider(value=default, min=0, max=n_filters - 1, description="filter",
                                   continuous_update=False, layout=W.Layout(width="60%"))
        self._query = W.Text(placeholder="a word, e.g. wheel", description="find word",
                             continuous_update=False)
        self._hits, self._words, self._card = W.HTML(), W.Output(), W.Output()
        self._slider.observe(lambda change: self._show(change["new"]), names="value")
        self._query.observe(lambda change: self.search(change["new"]) if change["new"] else None, names="value")
        self.widget = W.VBox([W.HBox([self._slider, self._query]), self._hits, self._words, self._card])
        self.filter = None
        self._show(default)

    def _show(self, filter: int) -> None:
        from .plots import filter_card

        self.filter = int(filter)
        self.result = self.explanations[self.explanations["filter"] == self.filter].reset_index(drop=True)
        filter_card(self.store, self.dataset, self.explanations, self.image_words, self.filter,
                    n_images=self.n_images, fig=self.figure)
        if self.interactive:
            self._words.clear_output(wait=True)
            with self._words:
                _display(self._words_table())
            self._card.clear_output(wait=True)
            with self._card:
                _display(_png(self.figure))

    def _words_table(self) -> pd.DataFrame:
        return self.result[[c for c in WORD_COLUMNS if c in self.result]]

    def select(self, filter: int) -> pd.DataFrame:
        """Show ``filter``; returns its explanation rows (also in :attr:`result`)."""
        filter = int(filter)
        if not 0 <= filter < self.store.shape[1]:
            raise ValueError(f"filter must be in [0, {self.store.shape[1] - 1}], not {filter}")
        if self._slider.value != filter:
            self._slider.value = filter  # the observer draws it
        else:
            self._show(filter)
        return self.result

    def search(self, word: str, k: int = 10) -> pd.DataFrame:
        """Filters explained by ``word``, best first; selects the first one.

        Filters whose words contain ``word`` come first (by its rank in their
        words, then votes). When fewer than ``k`` do and an explainer is known,
        the rest are the nearest filters by :meth:`FilterExplainer.lookup`
        (``match == "look-up"``).

        Returns
        -------
        pandas.DataFrame
            ``query, filter, rank, word, votes, score, match`` (also :attr:`matches`).
        """
        word = word.strip().lower()
        exact = self.explanations[self.explanations["word"].astype(str).str.lower() == word]
        exact = exact.sort_values(["rank", "votes"], ascending=[True, False]).head(k)
        table = exact[["filter", "rank", "word", "votes", "score"]].assign(match="explained by")
        if len(table) < k and self.explainer is not None and word:
            try:
                nearest = self.explainer.lookup(word, k=k)
            except (KeyError, ValueError):
                nearest = None
            if nearest is not None:
                nearest = nearest[~nearest["filter"].isin(table["filter"])].head(k - len(table))
                table = pd.concat([table, pd.DataFrame({
                    "filter": nearest["filter"], "rank": np.nan, "word": nearest["words"],
                    "votes": np.nan, "score": nearest["score"], "match": "look-up"})], ignore_index=True)
        table.insert(0, "query", word)
        self.matches = table.reset_index(drop=True)
        self.matches["filter"] = self.matches["filter"].astype(int)
        if self._query.value.strip().lower() != word:
            self._query.value = word  # triggers search again only when it differs
            return self.matches
        self._hits.value = self._hits_html()
        if len(self.matches):
            self.select(int(self.matches["filter"].iloc[0]))
        return self.matches

    def _hits_html(self) -> str:
        if self.matches.empty:
            return "<i>no filter is explained by this word</i>"
        items = []
        for _, row in self.matches.iterrows():
            what = (f"rank {int(row['rank'])}, votes {row['votes']:.1f}" if row["match"] == "explained by"
                    else f"look-up cos {row['score']:.2f}: {row['word']}")
            items.append(f"filter <b>{int(row['filter'])}</b> ({what})")
        return f"<b>{self.matches['query'].iloc[0]!s}</b> &rarr; " + "; ".join(items)

    def _ipython_display_(self):
        from IPython.display import HTML

        if self.interactive:
            _display(self.widget)
            return
        distinct = self.summary.drop_duplicates("word")["filter"]  # best filter per first word
        shown = [self.filter] + [int(f) for f in distinct if int(f) != self.filter]
        for f in progress(shown[:max(1, self.static_filters)], enabled=self.show_progress, desc="filter cards"):
            if f != self.filter:
                self._show(f)
            _display(HTML(f"<h4>filter {f}</h4>"))
            _display(self._words_table())
            _display(_png(self.figure))
        if shown:
            self._show(shown[0])


def _summary(explanations, image_words):
    from .plots import filter_summary

    return filter_summary(explanations, image_words)


def filter_browser(store, dataset, explainer=None, *, explanations=None, image_words=None, filter=None,
                   n_images: int = 6, static_filters: int = 3, interactive: bool = True,
                   show_progress: bool = True) -> FilterBrowser:
    """Browse a layer's explained filters with their filter cards.

    Parameters
    ----------
    store : ActivationStore
    dataset : Dataset
        The store's dataset, to draw top images.
    explainer : FilterExplainer, optional
        Explains every filter when the tables are not given, and powers the
        semantic fall-back of the word search.
    explanations, image_words : pandas.DataFrame, optional
        Precomputed :meth:`FilterExplainer.explain` / ``image_words`` tables.
    filter : int, optional
        Initial filter (default: the best-explained one).
    n_images : int
        Top images per card.
    static_filters : int
        With ``interactive=False``: cards shown (the selected filter, then the best explained).
    interactive : bool
        True: display the widget (slider + word search). False: displaying the
        browser renders ``static_filters`` cards as static output (papermill reports).
    show_progress : bool

    Returns
    -------
    FilterBrowser
        ``.widget``, ``.select(filter)``, ``.search(word)``, ``.result``, ``.figure``.
    """
    return FilterBrowser(store, dataset, explainer, explanations, image_words, filter, n_images, static_filters,
                         interactive, show_progress)


class LookupWidget:
    """Reverse look-up: which filters mean a word? Built by :func:`lookup_widget`.

    Attributes
    ----------
    widget : ipywidgets.VBox
    result : pandas.DataFrame
        The last :meth:`FilterExplainer.lookup` table.
    figure : matplotlib.figure.Figure
        Its bar chart.
    """

    def __init__(self, explainer, query: str = "wheel", k: int = 10, interactive: bool = True):
        import ipywidgets as W

        self.explainer, self.interactive = explainer, interactive
        self.figure = _figure()
        self.result = pd.DataFrame(columns=["query", "rank", "filter", "score", "words"])
        self.message = ""
        self._query = W.Text(value=query, description="word", continuous_update=False)
        self._k = W.IntSlider(value=k, min=1, max=max(50, k), description="filters", continuous_update=False)
        self._out = W.Output()
        self._query.observe(lambda change: self.search(change["new"]), names="value")
        self._k.observe(lambda change: self.search(self._query.value, change["new"]), names="value")
        self.widget = W.VBox([W.HBox([self._query, self._k]), self._out])
        self.search(query, k)

    def search(self, query: str, k: int | None = None) -> pd.DataFrame:
        """Look ``query`` up; returns (and keeps in :attr:`result`) the nearest filters."""
        from .plots import lookup_bars

        k = int(k or self._k.value)
        try:
            self.result = self.explainer.lookup(query, k=k)
            self.message = ""
        except (KeyError, ValueError) as error:
            self.result = self.result.iloc[0:0]
            self.message = str(error).strip("'\"")
        self.figure.clear()
        if self.message:
            self.figure.text(0.5, 0.5, self.message, ha="center")
        else:
            self.figure.set_size_inches(7.5, 0.35 * max(3, len(self.result)) + 1.0)
            lookup_bars(self.result, ax=self.figure.add_subplot(1, 1, 1))
            self.figure.tight_layout()
        if self.interactive:
            self._out.clear_output(wait=True)
            with self._out:
                if self.message:
                    print(self.message)
                else:
                    _display(_png(self.figure))
        return self.result

    def _ipython_display_(self):
        if self.interactive:
            _display(self.widget)
        elif self.message:
            print(self.message)
        else:
            _display(self.result)
            _display(_png(self.figure))


def lookup_widget(explainer, query: str = "wheel", k: int = 10, interactive: bool = True) -> LookupWidget:
    """Which filters mean ``query``? A word box and the nearest filters as bars.

    Parameters
    ----------
    explainer : FilterExplainer
    query : str
        The first word or phrase looked up.
    k : int
        Filters shown.
    interactive : bool
        False: displaying the widget renders the table and bar chart for ``query`` statically.

    Returns
    -------
    LookupWidget
        ``.widget``, ``.search(word, k)``, ``.result``, ``.figure``.
    """
    return LookupWidget(explainer, query, k, interactive)


# --- calibration: calibrated vs uncalibrated words
__all__ += ["calibration_compare", "CalibrationCompare"]


class CalibrationCompare:
    """Side by side: a filter's words with and without calibrated stacking.

    Built by :func:`calibration_compare`.

    Attributes
    ----------
    widget : ipywidgets.VBox
    result : pandas.DataFrame
        ``rank, uncalibrated, uncalibrated_kind, calibrated, calibrated_kind`` for the selected filter.
    table : pandas.DataFrame
        Per filter: the first word of each and whether a non-seen word gained a place.
    """

    def __init__(self, raw, calibrated, filters=None, filter=None, interactive: bool = True, static_filters: int = 5):
        import ipywidgets as W

        self.raw = raw.explain(filters)
        self.calibrated = calibrated.explain(filters)
        self.gamma, self.filter_gamma = calibrated.gamma, calibrated.filter_gamma
        self.interactive, self.static_filters = interactive, static_filters
        self.table = self._table()
        ids = sorted(self.table["filter"])
        self._slider = W.SelectionSlider(options=ids, value=filter if filter in ids else ids[0], description="filter")
        self._out = W.Output()
        self._slider.observe(lambda change: self.select(change["new"]), names="value")
        self.widget = W.VBox([W.HTML(f"<b>calibrated stacking</b>: {self._gammas()} subtracted from "
                                     "seen-concept scores"), self._slider, self._out])
        self.select(self._slider.value)

    def _gammas(self) -> str:
        return (f"gamma = {self.filter_gamma:.2f} for the filter's words ({self.gamma:.2f} for each image's "
                "own words)")

    def _table(self) -> pd.DataFrame:
        def firsts(table):
            return table[table["rank"] == 1].set_index("filter")[["word", "kind"]]
        merged = firsts(self.raw).add_suffix("_uncalibrated").join(firsts(self.calibrated).add_suffix("_calibrated"))
        unseen = self.calibrated[self.calibrated["kind"] != "seen"].groupby("filter").size()
        unseen_raw = self.raw[self.raw["kind"] != "seen"].groupby("filter").size()
        merged["non_seen_words_gained"] = unseen.reindex(merged.index, fill_value=0) - \
            unseen_raw.reindex(merged.index, fill_value=0)
        return merged.reset_index()

    def select(self, filter: int) -> pd.DataFrame:
        """Compare the words of one filter; returns (and keeps in :attr:`result`) the side-by-side table."""
        def words(table, name):
            part = table[(table["filter"] == filter) & (table["rank"] > 0)][["rank", "word", "kind"]]
            return part.rename(columns={"word": name, "kind": f"{name}_kind"}).set_index("rank")
        self.result = words(self.raw, "uncalibrated").join(words(self.calibrated, "calibrated"), how="outer") \
            .reset_index()
        if self.interactive:
            self._out.clear_output(wait=True)
            with self._out:
                _display(self._styled(self.result))
        return self.result

    @staticmethod
    def _styled(table: pd.DataFrame):
        colours = {"unseen": "color: #c00000", "zero-shot": "color: #2a7a2a; font-style: italic", "seen": ""}

        def paint(column):
            kinds = table[f"{column.name}_kind"]
            return [colours.get(k, "") for k in kinds]
        return table.style.apply(paint, subset=["uncalibrated", "calibrated"]).hide(
            ["uncalibrated_kind", "calibrated_kind"], axis="columns")

    def _ipython_display_(self):
        if self.interactive:
            _display(self.widget)
            return
        print(f"{self._gammas()} subtracted from seen-concept scores; unseen concepts red, "
              "zero-shot words green italic")
        _display(self.table.head(20))
        changed = self.table[self.table["word_uncalibrated"] != self.table["word_calibrated"]]
        for f in (changed if len(changed) else self.table)["filter"].head(self.static_filters):
            print(f"filter {f}")
            _display(self._styled(self.select(int(f))))


def calibration_compare(raw, calibrated, filters=None, filter=None, interactive: bool = True,
                        static_filters: int = 5) -> CalibrationCompare:
    """Compare a filter's words with and without calibrated stacking.

    Parameters
    ----------
    raw, calibrated : FilterExplainer
        The same explainer settings with ``calibrated=False`` and ``calibrated=True``.
    filters : list of int, optional
        Filters to compare (default all).
    interactive : bool
        False: displaying renders the per-filter table and a few filters whose first word changed.

    Returns
    -------
    CalibrationCompare
        ``.widget``, ``.select(filter)``, ``.result``, ``.table``.
    """
    return CalibrationCompare(raw, calibrated, filters, filter, interactive, static_filters)


# --- bias analysis (lavise_nb.bias): browse filters that differ between groups
__all__ += ["bias_browser", "BiasBrowser"]


class BiasBrowser:
    """Browse :class:`~lavise_nb.bias.GroupComparison` views: grouping column, discovered filters, images per group.

    Built by :func:`bias_browser`, which passes ``build(column) -> GroupComparison`` (the view of a column
    not shown yet, with the first view's reference store, thresholds' source, explanations and settings)
    and optionally ``first``, an already built view. Attributes: ``widget`` (an ipywidgets box; controls
    only when interactive), ``comparison`` (the current view, None when it could not be built),
    ``views`` (built views by grouping column: switching back shows the same view), ``result`` (its
    :meth:`GroupComparison.compare` table), ``group_column``, ``filter``, ``figure`` (the last gallery
    figure), ``message`` (why nothing is shown, if so).
    """

    def __init__(self, store, group_column, build, *, first=None, dataset=None, top: int = 20, k: int = 4,
                 interactive: bool = True):
        import ipywidgets as W

        self.store, self.build, self.dataset, self.top, self.k = store, build, dataset, top, k
        self.interactive, self.views = interactive, {} if first is None else {first.group_column: first}
        self.group_column = self.comparison = self.result = self.filter = self.figure = None
        self.message, self.columns, self._busy = "", _bias_group_columns(store), False
        self._out = W.Output()
        self._column = W.Dropdown(options=self.columns, value=None, description="group by")
        self._filter = W.Dropdown(options=[], description="filter", layout=W.Layout(width="60%"))
        if interactive:
            self._column.observe(lambda change: None if self._busy else self.select(group_column=change["new"]),
                                 names="value")
            self._filter.observe(lambda change: None if self._busy else self.select(filter=change["new"]),
                                 names="value")
            self.widget = W.VBox([W.HBox([self._column, self._filter]), self._out])
        else:
            self.widget = W.VBox([self._out])
        self.select(group_column=group_column)

    def _show_column(self, group_column) -> None:
        self.group_column = group_column
        try:
            if group_column not in self.views:
                self.views[group_column] = self.build(group_column)
            self.comparison, self.message = self.views[group_column], ""
            self.result = self.comparison.compare()
        except ValueError as exc:
            self.comparison, self.result, self.message = None, None, str(exc)
        per = [] if self.result is None else \
            self.result.drop_duplicates("filter").sort_values("rank").head(self.top).to_dict("records")
        labels = [(f"#{int(r['filter'])}  {r['top_words'] or '(no words)'}  diff {r['difference']:+.2f}  "
                   f"q={r['q_value']:.1g}{' *' if r['significant'] else ''}", int(r["filter"])) for r in per]
        self._busy = True
        if group_column not in self.columns:
            self.columns.append(group_column)
            self._column.options = self.columns
        self._column.value, self._filter.options = group_column, labels
        self.filter = self._filter.value = labels[0][1] if labels else None
        self._busy = False

    def select(self, filter: int | None = None, group_column: str | None = None) -> "BiasBrowser":
        """Show another filter and/or regroup by another column; returns self."""
        if group_column is not None and group_column != self.group_column:
            self._show_column(group_column)
        if filter is not None:
            if self.result is not None and int(filter) not in set(self.result["filter"]):
                raise ValueError(f"filter {filter} is not part of this comparison")
            self.filter = int(filter)
            self._busy = True
            if any(v == self.filter for _, v in self._filter.options):
                self._filter.value = self.filter
            self._busy = False
        self._render()
        return self

    def _show_table(self) -> bool:
        if self.comparison is None or self.filter is None:
            print(self.message or "no filter to show")
            return False
        columns = ["filter", "group", "n_images", "n_qualify", "share", "ci_low", "ci_high", "difference", "q_value",
                   "significant", "top_words", "reason"]
        _display(self.result[self.result["filter"] == self.filter][columns].reset_index(drop=True))
        return True

    def _render(self) -> None:
        import matplotlib.pyplot as plt
        from .plots import bias_gallery

        self._out.clear_output(wait=True)
        with self._out:
            if self._show_table():
                self.figure = bias_gallery(self.comparison, [self.filter], k=self.k, dataset=self.dataset)
                plt.close(self.figure)  # shown explicitly (inside the widget, or by _ipython_display_)
                if self.interactive:
                    _display(self.figure)

    def _ipython_display_(self):
        if self.interactive:
            _display(self.widget)
        elif self._show_table() and self.figure is not None:
            _display(self.figure)


def _bias_group_columns(store, max_groups: int = 20) -> list:
    """Metadata columns of a store's index that look like grouping columns (2..max_groups values)."""
    skip = {"image", "image_id", "path", "width", "height", "valid", "error", "file_name"}
    out = []
    for column in store.index.columns:
        if column in skip:
            continue
        try:
            n = store.index[column].dropna().nunique()
        except TypeError:
            continue
        if 2 <= n <= max_groups:
            out.append(column)
    return out


def bias_browser(target, group_column: str | None = None, *, reference_store=None, explanations=None,
                 threshold_source: str = "auto", settings=None, dataset=None, top: int = 20, k: int = 4,
                 interactive: bool = True) -> BiasBrowser:
    """Browse the filters whose firing rate differs between groups of a target store.

    Regrouping with the "group by" control keeps the reference store (so the
    thresholds), explanations and settings; switching back shows the first view again.

    Parameters
    ----------
    target : ActivationStore or GroupComparison
        The target store (its ``index`` holds the grouping columns), or a comparison to show
        first, which brings its reference store, thresholds' source, explanations and settings.
    group_column : str, optional
        The grouping column shown first (default: the comparison's, else ``"group"``); the
        dropdown offers every metadata column with 2-20 values.
    reference_store, explanations, threshold_source, settings
        As for :class:`~lavise_nb.bias.GroupComparison` (with a store only).
    dataset : optional
        The target dataset, for images exactly as the model saw them with the region outlined.
    top, k : int
        Filters offered (by rank) and images per group.
    interactive : bool
        False renders the table and gallery statically (for papermill / exported HTML).

    Returns
    -------
    BiasBrowser
        ``.widget``, ``.select(filter=..., group_column=...)``, ``.result``.
    """
    from functools import partial

    from .bias import GroupComparison

    view = dict(dataset=dataset, top=top, k=k, interactive=interactive)
    if isinstance(target, GroupComparison):
        given = dict(reference_store=reference_store, explanations=explanations, settings=settings,
                     threshold_source=None if threshold_source == "auto" else threshold_source)
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            raise ValueError(f"pass {clash} to GroupComparison, not with one: bias_browser(comparison) keeps the "
                             "comparison's reference store, thresholds' source, explanations and settings")
        column = target.group_column if group_column is None else group_column
        return BiasBrowser(target.store, column, target.regroup, first=target, **view)
    build = partial(GroupComparison, target, reference_store=reference_store, threshold_source=threshold_source,
                    explanations=explanations, settings=settings)
    return BiasBrowser(target, "group" if group_column is None else group_column, build, **view)
