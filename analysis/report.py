"""`gentune report`: a finished sweep -> the report's figures and tables (PNG + index.html + report.md),
also logged to each study's MLflow parent run under `report/`.

What it shows:
- the sweep's studies, and the architectures shown, as `gentune arch` prints them;
- each family's own sections, drawn by the function its registry entry names (`Family.report`; the
  built-in GAN, DDPM and DANN ones are in analysis/report_sections.py), for the best trial of each
  study or the trials named with --trial;
- every study: its metric per trial over epochs, Optuna's parameter importances and parallel coordinates
  (from the Optuna study the sweep stored in SWEEP/optuna.db; a two-objective study's on its first
  objective), the Pareto front of a two-objective study, and the trials table.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from analysis import compare as C
from analysis import export as E
from analysis.sampling import log
from trainables.errors import GentuneError
from analysis.sweepdata import ARTIFACTS, Study, Sweep, Trial, better, check_optuna_db, check_parent, varied_params

# --- a small document model rendered to both HTML and Markdown -----------------------------------------

@dataclass
class Section:
    title: str
    blocks: list[tuple] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)  # MLflow parent runs the section's figures go to

    def text(self, s: str) -> None:
        self.blocks.append(("text", s))

    def note(self, s: str) -> None:
        self.blocks.append(("note", s))

    def pre(self, s: str) -> None:
        self.blocks.append(("pre", s))

    def table(self, columns: list[str], rows: list[list[str]], caption: str = "") -> None:
        self.blocks.append(("table", columns, rows, caption))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", path.name, caption))

    @property
    def figures(self) -> list[str]:
        return [b[1] for b in self.blocks if b[0] == "figure"]


def render_md(title: str, intro: list[str], sections: list[Section]) -> str:
    out = [f"# {title}", "", *intro, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if b[0] == "text":
                out += [b[1], ""]
            elif b[0] == "note":
                out += [f"> Note: {b[1]}", ""]
            elif b[0] == "pre":
                out += ["```", b[1], "```", ""]
            elif b[0] == "table":
                if b[3]:
                    out += [f"**{b[3]}**", ""]
                out += [C.markdown_table(b[1], b[2]), ""]
            elif b[0] == "figure":
                out += [f"![{b[2]}]({b[1]})", "", f"*{b[2]}*", ""]
    return "\n".join(out).rstrip() + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:11px;max-height:28em}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#444}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}details{margin:.5em 0}"""


def render_html(title: str, intro: list[str], sections: list[Section]) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{escape(title)}</h1>", *(f"<p>{escape(p)}</p>" for p in intro)]
    toc = "".join(f"<li><a href='#s{i}'>{escape(s.title)}</a></li>" for i, s in enumerate(sections))
    out.append(f"<ul>{toc}</ul>")
    for i, s in enumerate(sections):
        out.append(f"<h2 id='s{i}'>{escape(s.title)}</h2>")
        for b in s.blocks:
            if b[0] == "text":
                out.append(f"<p>{escape(b[1])}</p>")
            elif b[0] == "note":
                out.append(f"<p class='note'>{escape(b[1])}</p>")
            elif b[0] == "pre":
                out.append(f"<details><summary>show</summary><pre>{escape(b[1])}</pre></details>")
            elif b[0] == "table":
                if b[3]:
                    out.append(f"<p><b>{escape(b[3])}</b></p>")
                out.append(C.html_table(b[1], b[2]))
            elif b[0] == "figure":
                out.append(f"<figure><img src='{escape(b[1])}' alt='{escape(b[2])}'>"
                           f"<figcaption>{escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- helpers ---------------------------------------------------------------------------------------

def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


class Report:
    def __init__(self, sweep: Sweep, out: Path, *, trial_ids: list[str] | None = None,
                 arch_text: Callable[[str], str] | None = None, device: str = "auto", seed: int = 0,
                 tsne_max: int = 500, quiet: bool = False) -> None:
        self.sweep, self.out, self.arch_text = sweep, out, arch_text
        self.device = E.resolve_device(device)
        self.seed, self.tsne_max, self.quiet = seed, tsne_max, quiet
        if tsne_max < 10:
            raise GentuneError(f"--tsne-max must be >= 10, got {tsne_max}")
        self.named = [sweep.trial(t) for t in trial_ids] if trial_ids else None
        self.sections: list[Section] = []
        self.arch: list[str] = []  # the `gentune arch` names of the models the family sections showed

    def log(self, msg: str) -> None:
        log(f"gentune report: {msg}", self.quiet)

    def studies_of(self, family: str) -> list[Study]:
        return [s for s in self.sweep.studies.values() if s.family == family]

    def best_across(self, family: str, where: dict[str, Any] | None = None) -> Trial | None:
        """The best finished trial of `family` over its studies (by each study's metric when they share
        one; otherwise the first study, in spec order, that has one), each trial scored as its study ranks
        and exports it (its best evaluated epoch or its last: rank_by)."""
        studies = self.studies_of(family)
        picks = [(st, self.sweep.best_trial(st.name, where=where)) for st in studies]
        picks = [(st, t) for st, t in picks if t is not None]
        if not picks:
            return None
        if len({(st.metric, st.mode) for st, _ in picks}) > 1:
            return picks[0][1]
        scored = [(self.sweep.score(t, st.metric, st.mode, st.rank_by), t) for st, t in picks]
        best_v, best = scored[0]
        for v, t in scored[1:]:
            if better(v, best_v, picks[0][0].mode):  # type: ignore[arg-type]
                best_v, best = v, t
        return best

    def models_for(self, trial: Trial):
        """The models of the checkpoint the trial is ranked by (the one `gentune export` takes)."""
        ckpt = ranked_checkpoint(self.sweep, trial)
        cfg, mods = E.models_from_checkpoint(ckpt, f"trial {trial.trial_id}'s checkpoint of epoch {ckpt.get('epoch')}",
                                             self.device)
        return ckpt, cfg, mods

    def trial_label(self, t: Trial) -> str:
        return f"trial {t.trial_id} (study {t.study})"

    # --- sections ----------------------------------------------------------------------------------

    def overview(self) -> Section:
        s = Section("Sweep")
        rows = []
        for st in self.sweep.studies.values():
            trials = self.sweep.trials(st.name)
            best = self.sweep.best_trial(st.name)
            value = self.sweep.score(best, st.metric, st.mode, st.rank_by) if best else None
            n = f" ({st.aggregate} of {st.repeats} seeds)" if st.repeats > 1 else ""
            rows.append([st.name, st.family, f"{st.metric} ({st.mode})", str(len(trials)),
                         str(len(self.sweep.finished(st.name, st.metric))), best.trial_id if best else "-",
                         (num(value) if value is not None else "-") + n,
                         "best evaluated epoch" if st.rank_by == "best" else "last epoch"])
        s.table(["study", "family", "metric", "trials", "finished with metric", "best trial", "best value", "ranked by"], rows)
        if self.sweep.info.get("smoke"):
            s.note("This sweep ran with --smoke: tiny models and runs on the embedded demo data, so the numbers "
                   "and images only show that the pipeline works, not what the models can do.")
        return s

    def architectures(self, names: list[str]) -> Section | None:
        if self.arch_text is None or not names:
            return None
        s = Section("Model architectures")
        s.text("As `gentune arch NAME` prints them (the report's configuration; a trial's config may change "
               "sizes such as the DDPM's n_feat).")
        for n in names:
            s.text(f"gentune arch {n}")
            s.pre(self.arch_text(n))
        return s

    def study_section(self, st: Study) -> Section:
        from analysis import plots

        s = Section(f"Study {st.name} ({st.family}): {st.metric} ({st.mode})", studies={st.name})
        trials = self.sweep.trials(st.name)
        if not trials:
            s.note("No trial of this study is recorded in MLflow.")
            return s
        best = self.sweep.best_trial(st.name)
        series = {t.trial_id: self.sweep.history(t, st.metric) for t in trials if st.metric in t.metrics}
        tag = slug(st.name)
        if series:
            p = plots.metric_over_time(series, st.metric, self.out / f"sweep_{tag}_metric.png",
                                       f"study {st.name}: {st.metric} per trial", best.trial_id if best else None)
            s.figure(p, f"{st.metric} of each trial after each epoch" + (f" (best: trial {best.trial_id}, drawn thicker)" if best else ""))
        else:
            s.note(f"No trial reported {st.metric}, so there is no metric plot.")
        if len(st.objectives) > 1:
            self.pareto(s, st, trials)
        study, why = optuna_study(self.sweep, st)
        if study is None:
            s.note(f"Parameter importances and parallel coordinates skipped: {why}.")
        else:
            if len({t.values[0] for t in study.trials}) == 1:
                s.note(f"Every completed trial ended with the same {st.metric}, so the importances carry no information.")
            for kind, title in (("importances", "parameter importances"), ("parallel", "parallel coordinates")):
                try:
                    p = plots.optuna_plot(kind, study, self.out / f"sweep_{tag}_{kind}.png", f"study {st.name}: {title}",
                                          st.metric)
                    s.figure(p, f"Optuna's {title} of the {len(study.trials)} completed trials "
                                f"(objective: final {st.metric}, {st.mode}; {why})")
                except Exception as e:  # noqa: BLE001 - Optuna's evaluators raise many types on a few trials; said twice
                    why = f"Optuna's {title} skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    s.note(why)
                    self.log(f"study {st.name}: {why}")
        table = C.study_table(self.sweep, st.name)
        s.table(table.columns, C.table_cells(table), f"Trials sorted by final {st.metric} ({st.mode}), best first")
        return s

    def pareto(self, s: Section, st: Study, trials: list[Trial]) -> None:
        """A multi-objective study: its Pareto front on the first two objectives, and the front as a table."""
        from analysis import plots
        from analysis.sweepdata import knee

        names = [m for m, _ in st.objectives]
        front = self.sweep.pareto(st.name)
        if not front:
            s.note(f"No trial finished with all of {', '.join(names)}, so there is no Pareto front.")
            return
        pick = knee(front, tuple(m for _, m in st.objectives))
        points = {t.trial_id: (t.value(names[0]), t.value(names[1])) for t in trials if t.status == "FINISHED"
                  and t.value(names[0]) is not None and t.value(names[1]) is not None}
        p = plots.pareto_scatter(points, list(front), (names[0], names[1]), self.out / f"sweep_{slug(st.name)}_pareto.png",
                                 f"study {st.name}: {names[0]} ({st.objectives[0][1]}) vs {names[1]} ({st.objectives[1][1]})", pick)
        s.figure(p, f"Final {names[0]} and {names[1]} of each finished trial; the {len(front)} Pareto-optimal ones "
                    f"joined; ringed: `gentune export`'s pick (nearest the front's ideal point)")
        rows = [[k, *(num(v) for v in front[k]), "export pick" if k == pick else ""] for k in sorted(front, key=lambda k: front[k])]
        s.table(["trial", *names, ""], rows, "Pareto-optimal trials")

    # --- the whole report --------------------------------------------------------------------------

    def build(self) -> list[Section]:
        from trainables.families import hook, known

        fams = {st.family for st in self.sweep.studies.values()}
        own = []
        for name in known():  # registry order: gan, ddpm, dann, then the plugins
            if name in fams and (draw := hook(name, "report")) is not None:
                own += draw(self)
        secs = [self.overview()]
        a = self.architectures(self.arch)
        if a is not None:
            secs.append(a)
        secs += own
        for st in self.sweep.studies.values():
            self.log(f"study {st.name}: metric plot, Optuna plots, trials table")
            secs.append(self.study_section(st))
        self.sections = secs
        return secs


# --- the Optuna study the sweep stored ------------------------------------------------------------------

def optuna_study(sweep: Sweep, st: Study):
    """(the optuna.Study Tune's searcher kept in SWEEP/optuna.db, with its completed trials only, and where it
    came from) or (None, why not). A two-objective study is plotted on its first objective."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = sweep.root / "optuna.db"
    if db.exists() or db.is_symlink():
        check_optuna_db(db)  # before Optuna opens it: it would add missing tables to a foreign file
    try:
        stored = optuna.load_study(study_name=st.name, storage=f"sqlite:///{db}") if db.is_file() else None
    except KeyError:  # the named study is not in it: said in the report's note below
        stored = None
    if stored is None:
        return None, ("the sweep stored no Optuna study for it (studies without a search space, PBT studies, "
                      "sweeps on remote storage and sweeps older than stored studies have none)")
    done = [t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return None, f"{len(done)} completed trial(s) in the sweep's stored Optuna study; at least 2 are needed"
    if not varied_params(done):
        return None, "no parameter varies between the completed trials of the sweep's stored Optuna study"
    study = optuna.create_study(directions=stored.directions, study_name=st.name)
    study.add_trials(done)
    return study, "the sweep's stored Optuna study"


def ranked_checkpoint(sweep: Sweep, trial: Trial) -> dict[str, Any]:
    """The checkpoint a trial is ranked by, the one `gentune export` takes: of its best evaluated epoch or its last
    (the study's rank_by), of the seed nearest the aggregate for a configuration repeated over seeds."""
    st = sweep.studies.get(trial.study)
    if st is None or not st.metric:
        return sweep.load_checkpoint(trial)
    return E.chosen_checkpoint(sweep, trial, st.metric, st.mode, st.rank_by)[0]


def preflight(sweep: Sweep, named: list[Trial] | None) -> None:
    """The files the report will read whatever it finds, checked before anything is drawn: the checkpoints of the
    trials named with --trial, and optuna.db. The checkpoints of the trials it picks itself are read when drawn
    (reading every finished trial's took 8 of 14 s on a 1,000-trial sweep whose family draws none); a damaged one
    is one error then, and the report, built in a temporary folder, is not written: never a half-made report."""
    for t in named or []:
        ranked_checkpoint(sweep, t)
    db = sweep.root / "optuna.db"
    if db.exists() or db.is_symlink():
        check_optuna_db(db)


# --- entry point -------------------------------------------------------------------------------------

def build_report(sweep_dir: str | Path, out: str | Path, *, trial_ids: list[str] | None = None,
                 arch_text: Callable[[str], str] | None = None, device: str = "auto", seed: int = 0,
                 tsne_max: int = 500, log_mlflow: bool = True, tracking_uri: str = "", quiet: bool = False) -> dict[str, Any]:
    """Write the report of a sweep into `out`; returns {index, markdown, figures, logged}."""
    sweep = Sweep(sweep_dir, tracking_uri)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise GentuneError(f"--out {out} is a file; name the folder to write the report into")
    check_parent(out, "--out")
    rep = Report(sweep, out, trial_ids=trial_ids, arch_text=arch_text, device=device, seed=seed,
                 tsne_max=tsne_max, quiet=quiet)  # checks the options before anything is written
    preflight(sweep, rep.named)
    # Built in a temporary folder beside --out and moved in when complete: a failure leaves no half-made report.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rep.out = tmp
        sections = rep.build()
        title = f"gentune report: sweep {sweep.name}"
        intro = [f"Sweep folder {sweep.root}; MLflow {sweep.tracking_uri}.",
                 "Demo data (embedded scikit-learn digits and scikit-image faces) where the configs use source: demo."]
        (tmp / "report.md").write_text(render_md(title, intro, sections))
        (tmp / "index.html").write_text(render_html(title, intro, sections))
        if log_mlflow:  # a copied or moved sweep folder: its figures go to its own mlartifacts/, never the original's
            moved = sweep.keep_artifacts_here("add --no-mlflow to write the report without logging it")
            if moved:
                rep.log(f"this sweep folder was copied or moved: its MLflow store now keeps artifacts in "
                        f"{sweep.root / ARTIFACTS} (was {moved})")
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rep.out = out
    figures = [f for s in sections for f in s.figures]
    logged: dict[str, list[str]] = {}
    if log_mlflow:
        for name, st in sweep.studies.items():
            if st.run_id is None:
                continue
            files = [f for s in sections if name in s.studies for f in s.figures]
            with sweep.store_errors():
                for f in files:
                    sweep.client.log_artifact(st.run_id, str(out / f), artifact_path="report")
                if files:
                    sweep.client.log_artifact(st.run_id, str(out / "report.md"), artifact_path="report")
            if files:
                logged[name] = files
        rep.log(f"figures logged to the MLflow study runs under report/ ({sum(map(len, logged.values()))} files)")
    return {"index": out / "index.html", "markdown": out / "report.md", "figures": figures, "logged": logged}
