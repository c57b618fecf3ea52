"""The dashboard page: a Bokeh document that redraws itself from the latest view of the job.

One :class:`~crscale.monitor.state.DashboardState` per server reads the archive (see
:mod:`crscale.monitor.server`); each browser session only copies the latest view into its
widgets on a periodic callback, so opening more pages costs no more reading. The CR-rate plot
streams only the exposures catalogued since the session's last update.

The tables are plain HTML (``Div``) with ``data-*`` attributes: readable by people, by
screen readers, and by the browser test (``tests/test_dashboard_browser.py``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from datetime import UTC, datetime

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool, Range1d
from bokeh.palettes import Category10
from bokeh.plotting import figure

from crscale.io.archive import STAGES
from crscale.io.catalogue_schema import CLASSES
from crscale.monitor.state import View

_MJD_UNIX = 40587.0  # MJD of 1970-01-01
_STAGE_LABEL = {"ingest": "ingested", "detect": "detected", "catalogue": "catalogued"}
_COLOURS = Category10[10]
_STYLE = """<style>
table.crs { border-collapse: collapse; font: 13px sans-serif; }
table.crs th, table.crs td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.crs th { background: #f3f3f3; }
table.crs td.text, table.crs th.text { text-align: left; max-width: 38em; overflow-wrap: anywhere; }
.crs-state-running { color: #1f77b4; } .crs-state-finished { color: #2ca02c; }
.crs-state-failed, .crs-state-died { color: #d62728; }
</style>"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``12s``; ``—`` where unknown."""
    if not math.isfinite(seconds):
        return "—"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _rate(per_s: float) -> str:
    if not math.isfinite(per_s):
        return "—"
    return f"{per_s * 60:.1f}/min" if per_s < 1 else f"{per_s:.2f}/s"


def header_html(view: View) -> str:
    """Title line: archive, job state, command, times, the Dask dashboard link."""
    job = view.job or {}
    link = view.dashboard_link
    dask = (f'<a id="crscale-dask-link" href="{_e(link)}" target="_blank">Dask dashboard</a>'
            if link else '<span id="crscale-dask-link">Dask dashboard: only while the job runs</span>')
    read = datetime.fromtimestamp(view.read_at, UTC).strftime("%H:%M:%S UTC")
    unread = f" · reading the archive: {view.unread} exposure(s) still to read" if view.unread else ""
    if view.catalogue_unread:
        unread += f" · reading the catalogue: {view.catalogue_unread} exposure(s) still to read"
    return (
        f'{_STYLE}<div id="crscale-header" data-tick="{view.tick}" data-read-at="{view.read_at:.3f}" '
        f'data-state="{_e(view.state)}" style="font: 14px sans-serif">'
        f'<h2 style="margin: 0 0 4px 0">crscale job on {_e(view.archive)}</h2>'
        f'job <b id="crscale-job-state" class="crs-state-{_e(view.state)}">{_e(view.state)}</b>'
        f' · started {_e(job.get("started", "—"))} · ended {_e(job.get("ended", "—"))}'
        f' · {dask}<br><code>{_e(job.get("command", ""))}</code><br>'
        f'<small>updated {read} (tick {view.tick}, read in {view.cost_s * 1e3:.0f} ms){unread}</small></div>'
    )


def progress_html(view: View) -> str:
    """The per-stage table: done, running, failed, total, rate, ETA."""
    head = "".join(f"<th>{h}</th>" for h in ("done", "running", "failed", "total", "rate", "ETA"))
    rows = []
    for s in view.stages:
        cells = {"done": s.done, "running": s.running, "failed": s.failed,
                 "total": "—" if s.total is None else s.total}
        tds = "".join(f'<td data-stage="{s.stage}" data-col="{k}">{v}</td>' for k, v in cells.items())
        eta = "done" if s.remaining == 0 else format_duration(s.eta_s)
        rows.append(f'<tr><th class="text">{_STAGE_LABEL[s.stage]}</th>{tds}'
                    f'<td data-stage="{s.stage}" data-col="rate">{_rate(s.rate)}</td>'
                    f'<td data-stage="{s.stage}" data-col="eta">{eta}</td></tr>')
    extra = (f'<p style="font: 13px sans-serif"><span id="crscale-exposures" data-value="{view.exposures}">'
             f'{view.exposures}</span> exposure(s) in the archive; <span id="crscale-inputs-failed" '
             f'data-value="{view.inputs_failed}">{view.inputs_failed}</span> input file(s) failed to ingest'
             f'{f"; {view.duplicates} duplicate(s) skipped" if view.duplicates else ""}.</p>')
    return (f'<table class="crs" id="crscale-progress"><tr><th class="text">stage</th>{head}</tr>'
            f'{"".join(rows)}</table>{extra}')


def workers_html(view: View) -> str:
    """Workers of the job's scheduler: threads, tasks, CPU, memory, GPU."""
    if not view.workers:
        why = view.scheduler_error or "no workers"
        return f'<p id="crscale-workers" data-n="0" style="font: 13px sans-serif">Workers: {_e(why)}.</p>'
    gpu = any(w.gpu_utilization is not None for w in view.workers)
    cols = ["worker", "threads", "executing", "CPU %", "memory GiB"] + (["GPU %", "GPU GiB"] if gpu else [])
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for w in view.workers:
        cells = [f'<td class="text">{_e(w.name)}</td>', f"<td>{w.nthreads}</td>", f"<td>{w.executing}</td>",
                 f"<td>{w.cpu:.0f}</td>", f"<td>{w.memory_gib:.2f} / {w.memory_limit_gib:.1f}</td>"]
        if gpu:
            cells += [f"<td>{'—' if w.gpu_utilization is None else f'{w.gpu_utilization:.0f}'}</td>",
                      f"<td>{'—' if w.gpu_memory_gib is None else f'{w.gpu_memory_gib:.1f}'}"
                      f"{'' if w.gpu_memory_total_gib is None else f' / {w.gpu_memory_total_gib:.0f}'}</td>"]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    tasks = ", ".join(f"{n} {s}" for s, n in sorted(view.tasks.items())) or "none"
    return (f'<table class="crs" id="crscale-workers" data-n="{len(view.workers)}"><tr>{head}</tr>'
            f'{"".join(rows)}</table>'
            f'<p style="font: 13px sans-serif">Tasks on the scheduler: {_e(tasks)}</p>')


def failures_html(view: View) -> str:
    """The failures table, newest first."""
    if not view.n_failures:
        return '<p id="crscale-failures" data-n="0" style="font: 13px sans-serif">No failures recorded.</p>'
    cols = ("exposure", "stage", "kind", "message", "time", "what to do")
    head = "".join(f'<th class="text">{c}</th>' for c in cols)
    rows = []
    for f in view.failures:
        vals = (f["exposure"], f["stage"], f["kind"], f["message"], f["time"], f["advice"])
        tds = "".join(f'<td class="text" data-col="{c}">{_e(v)}</td>'
                      for c, v in zip(cols, vals, strict=True))
        rows.append(f'<tr class="crscale-failure" title="{_e(f["path"])}">{tds}</tr>')
    more = f" (the newest {len(view.failures)} shown)" if len(view.failures) < view.n_failures else ""
    return (f'<h3 style="font: bold 14px sans-serif">{view.n_failures} failure(s){more}</h3>'
            f'<table class="crs" id="crscale-failures" data-n="{view.n_failures}"><tr>{head}</tr>'
            f'{"".join(rows)}</table>')


def classes_html(view: View) -> str:
    """Class fractions and, where the catalogue tells them apart, CRs against defects."""
    total = sum(view.classes.get(c, 0) for c in CLASSES)
    parts = [f"{c} {view.classes.get(c, 0) / total:.1%}" for c in CLASSES] if total else ["no CRs yet"]
    out = (f'<p id="crscale-classes" data-total="{total}" style="font: 13px sans-serif">'
           f'<b>{total}</b> CR(s) catalogued: {", ".join(parts)}.</p>')
    if view.kinds is None:
        return out + ('<p id="crscale-kinds" data-present="0" style="font: 13px sans-serif">'
                      'CRs vs defects: this catalogue has no <code>kind</code> column.</p>')
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(view.kinds.items()) if n) or "none yet"
    return out + (f'<p id="crscale-kinds" data-present="1" style="font: 13px sans-serif">'
                  f'Catalogue rows by kind: {_e(kinds)}.</p>')


def _rate_columns(rows: list) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("exposure", "instrument", "time", "rate", "lo", "hi", "n_cr")}
    for r in rows:
        cols["exposure"].append(r.exposure)
        cols["instrument"].append(r.instrument)
        cols["time"].append((r.mjd - _MJD_UNIX) * 86400e3 if math.isfinite(r.mjd) else math.nan)
        cols["rate"].append(r.rate)
        cols["lo"].append(r.rate - r.rate_err)
        cols["hi"].append(r.rate + r.rate_err)
        cols["n_cr"].append(r.n_cr)
    return cols


class DashboardDocument:
    """The widgets of one browser session, and how they follow the views.

    Parameters
    ----------
    latest : callable
        Returns the newest :class:`~crscale.monitor.state.View` (or None before the first).
    """

    def __init__(self, latest: Callable[[], View | None]) -> None:
        self.latest = latest
        self._shown_tick = -1
        self._rates_key = (-1, 0)
        self._instruments: dict[str, str] = {}
        self.header = Div(text="<p>Reading the archive…</p>", sizing_mode="stretch_width")
        self.progress = Div(text="", width=560)
        self.workers = Div(text="", width=560)
        self.failures = Div(text="", sizing_mode="stretch_width")
        self.classes = Div(text="", width=420)
        tools = "pan,wheel_zoom,box_zoom,reset,save"
        self.throughput_src = ColumnDataSource({k: [] for k in ("time", "width", "mpix", *STAGES)})
        self.exp_fig = figure(title="Exposures per second, by stage", x_axis_type="datetime",
                              height=260, width=560, tools=tools)
        for k, stage in enumerate(STAGES):
            self.exp_fig.line("time", stage, source=self.throughput_src, color=_COLOURS[k],
                              legend_label=_STAGE_LABEL[stage], line_width=2)
        self.exp_fig.legend.location = "top_left"
        self.exp_fig.yaxis.axis_label = "exposures / s"
        self.mpix_fig = figure(title="Detection throughput (Mpix/s)", x_axis_type="datetime",
                               height=260, width=560, tools=tools)
        self.mpix_fig.vbar(x="time", top="mpix", source=self.throughput_src, width="width", color=_COLOURS[1])
        self.mpix_fig.yaxis.axis_label = "Mpix / s"
        self.rates_src = ColumnDataSource(_rate_columns([]) | {"color": []})
        self.rate_fig = figure(title="CR rate per exposure (± Poisson error), by instrument",
                               x_axis_type="datetime", height=320, width=700, tools=tools)
        self.rate_fig.segment("time", "lo", "time", "hi", source=self.rates_src, color="color", alpha=0.6)
        self.rate_fig.scatter("time", "rate", source=self.rates_src, color="color", size=7,
                              legend_field="instrument")
        self.rate_fig.add_tools(HoverTool(tooltips=[("exposure", "@exposure"), ("instrument", "@instrument"),
                                                    ("CRs", "@n_cr"), ("rate", "@rate{0.000} cm⁻² s⁻¹")]))
        self.rate_fig.legend.location = "top_left"
        self.rate_fig.legend.background_fill_alpha = 0.5
        self.rate_fig.legend.click_policy = "hide"
        self.rate_fig.xaxis.axis_label = "observation date"
        self.rate_fig.yaxis.axis_label = "CR cm⁻² s⁻¹"
        # Fixed ranges, moved to the data as it comes: an empty data range draws no axes at all.
        self.rate_fig.y_range = Range1d(0, 1)
        now_ms = datetime.now(UTC).timestamp() * 1e3
        self.rate_fig.x_range = Range1d(now_ms - 365.25 * 86400e3, now_ms)
        self.class_src = ColumnDataSource({"cls": list(CLASSES), "n": [0] * len(CLASSES)})
        self.class_fig = figure(title="CRs per morphology class", x_range=list(CLASSES), height=240,
                                width=420, tools="save")
        self.class_fig.vbar(x="cls", top="n", source=self.class_src, width=0.7, color=_COLOURS[0])
        self.class_fig.y_range.start = 0
        self.layout = column(
            self.header,
            row(self.progress, self.workers),
            row(self.exp_fig, self.mpix_fig),
            row(self.rate_fig, column(self.class_fig, self.classes)),
            self.failures,
            sizing_mode="stretch_width",
        )

    def refresh(self) -> None:
        """Copy the newest view into the widgets (nothing when it is the one shown)."""
        view = self.latest()
        if view is None or view.tick == self._shown_tick:
            return
        self._shown_tick = view.tick
        self.header.text = header_html(view)
        self.progress.text = progress_html(view)
        self.workers.text = workers_html(view)
        self.failures.text = failures_html(view)
        self.classes.text = classes_html(view)
        self.throughput_src.data = {k: list(v) for k, v in view.throughput.items()}
        self.class_src.data = {"cls": list(CLASSES), "n": [view.classes.get(c, 0) for c in CLASSES]}
        self._refresh_rates(view)

    def _colour(self, instrument: str) -> str:
        if instrument not in self._instruments:
            self._instruments[instrument] = _COLOURS[len(self._instruments) % len(_COLOURS)]
        return self._instruments[instrument]

    def _refresh_rates(self, view: View) -> None:
        generation, sent = self._rates_key
        rows = view.rate_rows
        if generation == view.rates_generation and len(rows) == sent:
            return
        fresh = generation != view.rates_generation or len(rows) < sent
        new = rows if fresh else rows[sent:]
        cols = _rate_columns(new)
        cols["color"] = [self._colour(i) for i in cols["instrument"]]
        if fresh:
            self.rates_src.data = cols
        else:
            self.rates_src.stream(cols)
        self._rates_key = (view.rates_generation, len(rows))
        finite = [r.rate + r.rate_err for r in rows if math.isfinite(r.rate + r.rate_err)]
        self.rate_fig.y_range.end = max(finite) * 1.1 if finite and max(finite) > 0 else 1.0
        times = [t for t in self.rates_src.data["time"] if math.isfinite(t)]
        if times:
            pad = max((max(times) - min(times)) * 0.05, 86400e3)
            self.rate_fig.x_range.update(start=min(times) - pad, end=max(times) + pad)
