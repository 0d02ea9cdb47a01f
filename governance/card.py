"""``fedsilo card RUN_DIR``: a model card generated only from a verified run.

The card's sections follow the model-card sections of Mitchell et al. (2019) and the
points of the EU AI Act's technical documentation (Annex IV) that a training run can
answer; each section says which it answers to and which lineage fields it is read from
(the same table is in ``docs/governance.md``). What the run cannot know (the intended use,
unless the run config states it in ``[card]``; the people who own the model) is written
as "not stated", never guessed.

`write_card` renders both files in memory first and then replaces them atomically, so a
failure leaves no half-written card.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from .document import Section, Table, to_html, to_markdown
from .run_facts import RunFacts, read_run_facts, score_spread

CARD_NAMES = ("model_card.md", "model_card.html")
_NOT_STATED = "not stated in the run config (set it under [card] in the run's TOML)"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def model_details(f: RunFacts) -> Section:
    s = Section("Model details", "Model card: Model Details; Annex IV 1(a), 1(c), 2(a)",
                "genesis.run_id, created_at, task, initial_model_digest, code_version; "
                "closing.final_model_digest")
    task = f.genesis.get("task") or {}
    rows = [("run", f.genesis["run_id"]), ("created", f.genesis["created_at"]),
            ("task", f"{task.get('name', f.config.get('task', '-'))} "
                     f"(version {task.get('version', '-')})"),
            ("model layout digest", task.get("layout_digest", "-")),
            ("data schema digest", task.get("schema_digest", "-")),
            ("initial model", f.genesis["initial_model_digest"]),
            ("final model", f.final_model)]
    s.add(Table(("field", "value"), tuple((k, _fmt(v)) for k, v in rows)))
    return s


def intended_use(f: RunFacts) -> Section:
    s = Section("Intended use", "Model card: Intended Use; Annex IV 1(a)",
                "genesis.config.card (intended_use, out_of_scope, owner)")
    card = f.config.get("card") or {}
    for key, label in (("intended_use", "Intended use"), ("out_of_scope", "Out of scope"),
                       ("owner", "Owner")):
        s.add(f"{label}: {card.get(key) or _NOT_STATED}")
    return s


def federation(f: RunFacts) -> Section:
    s = Section("Federation and training data", "Model card: Training Data; Annex IV 2(d)",
                "genesis.sites (site_id, data_fingerprint, num_examples, policy), "
                "genesis.task.schema_digest, genesis.task.data_profiles")
    sites = f.genesis.get("sites") or []
    total = sum(int(x.get("num_examples") or 0) for x in sites)
    s.add(f"{len(sites)} sites took part, declaring {total} training examples in all; "
          "the data never left them. Each fingerprint pins the data version a site trained "
          "on; the declared counts are signed by the sites' keys.")
    rows = tuple((str(x["site_id"]), _fmt(x.get("num_examples")), str(x["data_fingerprint"]),
                  _policy_text(x.get("policy") or {})) for x in sites)
    s.add(Table(("site", "examples", "data fingerprint", "site policy"), rows))
    s.add(_drift_text((f.genesis.get("task") or {}).get("data_profiles")))
    return s


def _drift_text(profiles: dict[str, Any] | None) -> str:
    """What the run's drift check had to work with (its findings are in the flags)."""
    if not profiles:
        return ("Data drift: not checked (the task profiles no data, the monitor's drift "
                "check was off, or a DP run released no profile).")
    how = ("each site's profile" if profiles.get("summed") == "clear"
           else "only the federation's profile, summed under SecAgg+")
    if profiles.get("record_dp"):  # record-level DP: each site noised its own profile
        how = (f"each site's profile, noised at the site (noise multiplier "
               f"{profiles['record_dp']['noise_multiplier']:g}) and charged to its DP-SGD budget")
    dp = profiles.get("dp")
    if dp:  # client-level DP: one noisy release of the sum, charged to the budget
        how = (f"only the federation's profile, released once with Gaussian noise (std "
               f"{dp['noise_stddev']:.4g} per count, noise multiplier {dp['noise_multiplier']:g}, "
               f"{dp['sites']} sites) and charged to the DP budget")
    base = profiles.get("baseline")
    against = (f"against baseline run {base['run_id']} (chain head {base['chain_head']})"
               if base else "against the federation only (no baseline run)")
    return (f"Data drift: genesis records {how} (row counts, per-feature histograms, label "
            f"counts); checked {against}; any finding is in Flags.")


_DEFAULT_ON = frozenset({"share_profile"})
"""Policy switches that are on by default (listed only when a site turned them off)."""


def _policy_text(policy: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted(policy.items())
             if v not in (None, [], 0, False, "") and not (k in _DEFAULT_ON and v is True)]
    parts += [f"{k}=False" for k in sorted(_DEFAULT_ON) if policy.get(k) is False]
    return ", ".join(parts) or "defaults"


def training(f: RunFacts) -> Section:
    s = Section("Training", "Annex IV 2(a), 2(b)",
                "genesis.config; round records (status, sampled, accepted, rejected, dropped, "
                "strategy); resume records; closing record")
    cfg = f.config
    done = f.completed_rounds
    skipped = [b for b in f.rounds if b.get("status") == "skipped"]
    closing = f.closing or {}
    rows = [("aggregator", cfg.get("aggregator")), ("server optimiser", cfg.get("optimizer")),
            ("rounds requested", cfg.get("rounds")), ("rounds that changed the model", len(done)),
            ("rounds skipped", len(skipped)), ("fraction sampled per round", cfg.get("fraction")),
            ("local epochs", cfg.get("local_epochs")), ("local learning rate", cfg.get("lr")),
            ("resumes", len(f.resumes)),
            ("outcome", f"{closing.get('reason', 'still running')}: {closing.get('detail', '')}")]
    s.add(Table(("field", "value"), tuple((k, _fmt(v)) for k, v in rows)))
    dropped = Counter(site for b in f.rounds for site in b.get("dropped") or [])
    rejected = Counter(site for b in f.rounds for site in (b.get("rejected") or {}))
    if dropped or rejected:
        sites = sorted(set(dropped) | set(rejected))
        s.add(Table(("site", "rounds dropped", "replies rejected"),
                    tuple((x, str(dropped[x]), str(rejected[x])) for x in sites)))
    else:
        s.add("No site dropped out or had a reply rejected.")
    return s


def privacy(f: RunFacts) -> Section:
    s = Section("Privacy and security", "Model card: Ethical Considerations; Annex IV 2(h)",
                "genesis.config.dp, record_dp, secagg; round records' privacy and secagg; "
                "closing.epsilon_spent")
    cfg = f.config
    dp, rdp, sa = (cfg.get(k) or {} for k in ("dp", "record_dp", "secagg"))
    if dp.get("enabled"):
        spent = (f.closing or {}).get("epsilon_spent")
        s.add(f"Client-level differential privacy ({dp.get('where', 'server')} side, "
              f"{dp.get('clipping', 'fixed')} clipping at {_fmt(dp.get('clip_norm'))}, "
              f"{dp.get('accountant', 'rdp')} accountant, {dp.get('sampling')} sampling): "
              f"epsilon {_fmt(spent)} spent of a budget of {_fmt(dp.get('epsilon'))} at "
              f"delta {_fmt(dp.get('delta'))}.")
    else:
        s.add("No client-level differential privacy: the model carries no DP guarantee.")
    if rdp.get("enabled"):
        s.add(f"Record-level DP-SGD at the sites (Opacus): target epsilon "
              f"{_fmt(rdp.get('epsilon'))} at delta {_fmt(rdp.get('delta'))}, gradient norm "
              f"bound {_fmt(rdp.get('max_grad_norm'))}.")
    if sa.get("enabled"):
        s.add("Secure aggregation (SecAgg+): the server saw only the sum of each round's "
              "updates; per-site update checks that need an individual update did not apply.")
    else:
        s.add("No secure aggregation: the server saw each site's update.")
    s.add("Every update, evaluation and record is signed (Ed25519); see Verification.")
    return s


def robustness(f: RunFacts) -> Section:
    s = Section("Robustness", "Annex IV 2(b), 2(g)",
                "genesis.config (aggregator, max_update_norm, malicious, allow_overreach); "
                "round records' contributions (fate)")
    cfg = f.config
    fates = Counter(str(c.get("fate")) for b in f.rounds for c in b.get("contributions") or [])
    s.add(f"Aggregator {cfg.get('aggregator')}; updates with a norm above "
          f"{_fmt(cfg.get('max_update_norm'))} are screened out."
          + (f" The run was configured with {cfg['malicious']} simulated malicious sites."
             if cfg.get("malicious") else ""))
    s.add(Table(("contribution fate", "count"),
                tuple((k, str(v)) for k, v in sorted(fates.items())) or (("none", "0"),)))
    return s


def performance(f: RunFacts) -> Section:
    s = Section("Performance", "Model card: Metrics, Evaluation Data, Quantitative Analyses, "
                "Factors (the site); Annex IV 2(g), 3",
                "round records' metrics (central) and evaluations (each site's signed score "
                "of the final model on its own held-out data)")
    central = f.central_metrics()
    if central:
        s.add(Table(("central metric", "final", "best", "round of best"), tuple(
            (name, _fmt(vals[-1][1]), _fmt(_best(name, vals)[1]), str(_best(name, vals)[0]))
            for name, vals in sorted(central.items()))))
    else:
        s.add("No central evaluation: the server holds no data.")
    if not f.site_scores:
        s.add("No site scored the final model (per-site evaluation was off or found no "
              "held-out data).")
        return s
    names = sorted({m for sc in f.site_scores for m in sc.metrics}) + ["loss"]
    s.add(Table(("site", "round", "held-out examples", *names), tuple(
        (sc.site_id, str(sc.round), str(sc.num_examples),
         *(_fmt(sc.loss if m == "loss" else sc.metrics.get(m)) for m in names))
        for sc in f.site_scores)))
    spreads = [sp for m in names if (sp := score_spread(f.site_scores, m)) is not None]
    s.add(Table(("metric", "sites", "mean (by examples)", "std", "min", "max", "worst site"),
                tuple((sp["metric"], str(sp["sites"]), _fmt(sp["mean"]), _fmt(sp["std"]),
                       _fmt(sp["min"]), _fmt(sp["max"]), f"{sp['worst_site']} "
                       f"({_fmt(sp['worst'])})") for sp in spreads)))
    return s


def _best(name: str, vals: list[tuple[int, float]]) -> tuple[int, float]:
    lower = name.endswith(("loss", "rmse", "mae", "mse"))
    return (min if lower else max)(vals, key=lambda rv: rv[1])


def flags(f: RunFacts) -> Section:
    s = Section("Flags and actions", "Model card: Caveats and Recommendations; Annex IV 3, 5",
                "round records' extra.flags (the run's monitor)")
    if not f.flags:
        s.add("No flag was recorded in this run's rounds.")
        return s
    s.add(Table(("round", "severity", "code", "site", "action", "evidence"), tuple(
        (_fmt(x.get("round")), str(x.get("severity")), str(x.get("code")), _fmt(x.get("site")),
         _fmt(x.get("action")), _fmt(x.get("evidence"))) for x in f.flags)))
    return s


def verification(f: RunFacts) -> Section:
    s = Section("Verification", "Annex IV 2(g) (signed test logs)",
                "`fedsilo lineage verify` of lineage.sqlite and model.npz")
    rows = [("verifier", f.verify_summary), ("records", f.records), ("chain head", f.chain_head),
            ("server key", f.server_key), ("site signatures checked", f.site_signatures),
            ("final model digest", f.final_model)]
    s.add(Table(("field", "value"), tuple((k, _fmt(v)) for k, v in rows)))
    s.add(f"Re-check with: fedsilo lineage verify {f.run_dir}")
    return s


def versions(f: RunFacts) -> Section:
    s = Section("Code and library versions", "Annex IV 1(c)", "genesis.code_version")
    s.add(Table(("component", "version"), tuple(
        (str(k), _fmt(v)) for k, v in sorted((f.genesis.get("code_version") or {}).items()))))
    return s


SECTIONS = (model_details, intended_use, federation, training, privacy, robustness,
            performance, flags, verification, versions)
"""The card's sections, in order (each reads only `RunFacts`)."""


def render_card(facts: RunFacts) -> tuple[str, str]:
    """The card as (Markdown, HTML)."""
    title = f"Model card: {facts.genesis['run_id']}"
    intro = ("Generated by fedsilo from the run's verified lineage chain and run directory "
             "only. Each section names what it answers to and the lineage fields it reads.")
    sections = [build(facts) for build in SECTIONS]
    return to_markdown(title, intro, sections), to_html(title, intro, sections)


def write_card(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Verify ``run_dir`` and write ``model_card.md`` and ``model_card.html`` into
    ``out_dir`` (default: the run directory). Returns the two paths.

    Raises:
        GovernanceError: the run is not a run directory or its chain does not verify
            (nothing is written).
    """
    markdown, page = render_card(read_run_facts(run_dir))
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in CARD_NAMES]
    temps = []
    for path, text in zip(paths, (markdown, page), strict=True):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=out_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        temps.append(tmp)
    for tmp, path in zip(temps, paths, strict=True):
        os.replace(tmp, path)
    return paths
