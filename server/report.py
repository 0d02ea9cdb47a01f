"""``report.html``: a self-contained page with a run's plots (PNG embedded as base64)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsilo.server.report_flags import flags_section, mark_flags  # noqa: E402


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(path: Path, config: Any, result: Any,
                 label_counts: dict[str, list[int]] | None = None, *,
                 declared_counts: dict[str, int | None] | None = None,
                 resumed_from: list[int] | None = None) -> None:
    """Write the HTML report: accuracy and loss per round, epsilon when DP is on, sites' data.

    ``result.rounds`` is every round of the run (a resumed run's too). The sites' data
    chart shows ``label_counts`` (a simulation: examples per label at each site) or, for
    a deployment, ``declared_counts`` (the example count each site declared at the
    handshake; None: not declared). ``resumed_from``: the checkpoint round of each resume.
    """
    rounds = [r.round for r in result.rounds]
    acc = [r.test_accuracy for r in result.rounds]
    test_loss = [r.test_loss for r in result.rounds]
    train_loss = [r.train_loss for r in result.rounds]
    eps = [r.epsilon for r in result.rounds]

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(rounds, acc, marker="o", ms=3, label="central test accuracy")
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1)
    if any(e is not None for e in eps):
        ax_eps = axes[0].twinx()
        ax_eps.plot(rounds, [e if e is not None else np.nan for e in eps], color="tab:red",
                    marker=".", label="epsilon spent")
        ax_eps.set_ylabel("epsilon (cumulative)", color="tab:red")
    axes[0].grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    axes[1].plot(rounds, [v if v is not None else np.nan for v in test_loss], marker="o", ms=3,
                 label="central test loss")
    axes[1].plot(rounds, [v if v is not None else np.nan for v in train_loss], marker="s", ms=3,
                 label="site train loss (weighted)")
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("loss")
    axes[1].grid(alpha=0.3)
    axes[1].legend()
    mark_flags(axes, result.rounds)
    curves = _png(fig)

    if label_counts is not None:
        sites_png, sites_alt = _label_chart(label_counts), "examples per site by label"
        totals: dict[str, int | None] = {k: int(sum(v)) for k, v in label_counts.items()}
        count_head = "examples"
    else:
        sites_png, sites_alt = _declared_chart(declared_counts or {}), "examples each site declared"
        totals, count_head = dict(declared_counts or {}), "examples declared"
    site_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{'not declared' if v is None else v}</td></tr>"
        for k, v in sorted(totals.items())
    )

    site_section = _site_section(result.rounds)
    rows = "".join(
        f"<tr><td>{r.round}</td><td>{r.status}</td><td>{r.sampled}</td><td>{r.replied}</td>"
        f"<td>{r.accepted}</td><td>{_fmt(r.train_loss)}</td><td>{_fmt(r.test_loss)}</td>"
        f"<td>{_fmt(r.test_accuracy)}</td><td>{_fmt(r.epsilon)}</td><td>{r.wall_time:.2f}</td>"
        f"<td><code>{html.escape(r.model_digest[:19])}</code></td></tr>"
        for r in result.rounds
    )
    cfg_rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(str(v))}</code></td></tr>"
        for k, v in config.to_dict().items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedsilo run {html.escape(str(config.run_id))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px}}
th{{background:#f3f3f3}}</style></head><body>
<h1>fedsilo run <code>{html.escape(str(config.run_id))}</code></h1>
<p>Final model digest: <code>{html.escape(result.final_digest)}</code><br>
Run ended: <b>{html.escape(result.closing_reason)}</b>; {len(result.rounds)} rounds; sites: {len(result.sites)}.<br>
{html.escape(getattr(result, "detail", "") or "")}{_resumes_text(resumed_from)}</p>
<h2>Accuracy and loss per round</h2><img alt="accuracy and loss per round" src="data:image/png;base64,{curves}">
{flags_section(result.rounds, secagg=bool(config.secagg.enabled))}
{site_section}
<h2>Sites' data</h2><img alt="{sites_alt}" src="data:image/png;base64,{sites_png}">
<table><tr><th>site</th><th>{count_head}</th></tr>{site_rows}</table>
<h2>Rounds</h2><table><tr><th>round</th><th>status</th><th>sampled</th><th>replied</th><th>accepted</th>
<th>train loss</th><th>test loss</th><th>test acc</th><th>epsilon</th><th>wall s</th><th>model out</th></tr>{rows}</table>
<h2>Configuration</h2><table>{cfg_rows}</table>
</body></html>
"""
    # atomically: report.html marks a finished run, so it is never seen half written
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page)
    tmp.replace(path)


def _site_section(rounds: list[Any]) -> str:
    """"Per-site evaluation": each site's score of the global model on its own held-out
    split per round (a curve per site), the mean over sites and the spread (the band from
    the worst to the best site), then the last evaluated round's table. Empty when no
    round was evaluated at the sites."""
    from fedsilo.server.site_eval import headline, lower_is_better

    evaluated = [r for r in rounds if getattr(r, "site_eval", None)]
    if not evaluated:
        return ""
    name = headline(evaluated[-1].site_eval) or "loss"
    sites = sorted({s for r in evaluated for s in r.site_eval["sites"]})
    xs = [r.round for r in evaluated]
    fig, ax = plt.subplots(figsize=(11, 4.0))
    for site in sites:
        ys = [r.site_eval["sites"].get(site, {}).get(name, np.nan) for r in evaluated]
        ax.plot(xs, ys, lw=0.9, alpha=0.7, marker=".", ms=3, label=site)
    values = [[m[name] for m in r.site_eval["sites"].values() if name in m] for r in evaluated]
    ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color="grey",
                    alpha=0.2, label="spread (worst to best site)")
    ax.plot(xs, [r.site_eval["mean"][name] for r in evaluated], color="black", lw=2,
            label="mean over sites")
    ax.set_xlabel("round")
    ax.set_ylabel(f"{name} (site's held-out split)")
    ax.set_title(f"per-site {name} of the global model, each site on its own held-out split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    png = _png(fig)
    last = evaluated[-1]
    names = ["loss", *sorted(n for n in last.site_eval["mean"] if n != "loss")]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{m['num_examples']}</td>"
        + "".join(f"<td>{_fmt(m.get(n))}</td>" for n in names) + "</tr>"
        for s, m in sorted(last.site_eval["sites"].items())
    )
    mean = "".join(f"<td>{_fmt(last.site_eval['mean'].get(n))}</td>" for n in names)
    worst = "".join(
        f"<td>{_fmt(last.site_eval['worst'].get(n))} "
        f"({html.escape(last.site_eval['worst_site'].get(n, ''))})</td>" for n in names
    )
    direction = "highest" if lower_is_better(name) else "lowest"
    return (
        f'<h2>Per-site evaluation</h2><img alt="per-site {html.escape(name)} per round" '
        f'src="data:image/png;base64,{png}">\n'
        f"<p>Round {last.round}: each sampled site's score of the global model on its own "
        f"held-out split (signed by the site, in lineage); worst = {direction} "
        f"{html.escape(name)}.</p>"
        f"<table><tr><th>site</th><th>held-out examples</th>{head}</tr>{body}"
        f"<tr><th>mean over sites</th><td></td>{mean}</tr>"
        f"<tr><th>worst site</th><td></td>{worst}</tr></table>"
    )


def _label_chart(label_counts: dict[str, list[int]]) -> str:
    sites = sorted(label_counts)
    counts = np.array([label_counts[s] for s in sites])
    fig, ax = plt.subplots(figsize=(11, 3.6))
    bottom = np.zeros(len(sites))
    cmap = plt.get_cmap("tab10")
    for c in range(counts.shape[1]):
        ax.bar(sites, counts[:, c], bottom=bottom, color=cmap(c % 10), label=f"label {c}")
        bottom += counts[:, c]
    ax.set_ylabel("examples")
    ax.set_title("examples per site, by label")
    ax.tick_params(axis="x", rotation=60)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)  # outside the axes, clear of the bars
    return _png(fig)


def _declared_chart(declared: dict[str, int | None]) -> str:
    """A deployment's sites as the handshake named them, with the counts they declared
    (the server never sees their data, so there is no per-label split to show)."""
    sites = sorted(declared)
    fig, ax = plt.subplots(figsize=(11, 3.6))
    values = [declared[s] or 0 for s in sites]
    bars = ax.bar(sites, values, color="tab:blue")
    for bar, s in zip(bars, sites, strict=True):
        ax.annotate("not declared" if declared[s] is None else str(declared[s]),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("examples (declared)")
    ax.set_title("examples each site declared at the handshake")
    ax.tick_params(axis="x", rotation=60)
    return _png(fig)


def _resumes_text(resumed_from: list[int] | None) -> str:
    if not resumed_from:
        return ""
    rounds = ", ".join(str(r) for r in resumed_from)
    return (f"<br>Interrupted and resumed {len(resumed_from)} time(s), "
            f"from the checkpoint of round(s) {html.escape(rounds)}.")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
