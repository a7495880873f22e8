"""What proposes a sweep's trials: Optuna (through Ray's OptunaSearch, told what really happened), the search space,
PBT's scheduler, and the Optuna study kept in the sweep folder."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from search.spec import Domain, Study
from trainables.storage import Folder, is_remote

def evaluated_optuna_search(max_epochs: int, stopped_as: str = "pruned", **kwargs):
    """Ray's OptunaSearch, told what really happened to each trial.

    Trials report every epoch (each report carries the epoch's checkpoint, so a trial resumes from
    its last epoch and MLflow gets every loss), but the metric only at evaluation epochs
    (`eval_every`). Ray's OptunaSearch reads result[metric] from every result and ends the sweep with
    a KeyError on the others; ASHA already skips them, and its rungs are evaluation epochs (the spec
    rounds the grace period up to a multiple of eval_every).

    Optuna is told: each evaluated value as an intermediate value at its epoch; a trial that ASHA stopped
    before its last epoch as PRUNED (Ray tells it COMPLETE at its rung value, and TPE would then model a
    2-epoch accuracy as a final one); a diverged trial as FAIL, so TPE does not treat it as merely slow.
    The stored study names its objectives (optuna-dashboard shows "target_acc", not "Objective 0").
    `stopped_as="complete"` tells a stopped trial as Ray does (COMPLETE at its rung value): benchmarks.search
    measures both (benchmarks/RESULTS.md).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from ray.tune.search.optuna import OptunaSearch

    from trainables.loop import is_failure

    class EvaluatedOptunaSearch(OptunaSearch):
        def _setup_study(self, mode):
            import warnings

            import optuna

            super()._setup_study(mode)
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2: not a line for the user
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(self._metric if isinstance(self._metric, list) else [self._metric])

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            # a multi-objective study has no intermediate values in Optuna
            if isinstance(self.metric, list) or trial_id in self._completed_trials:
                return
            value = result.get(self.metric)
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            reported = getattr(self, "_reported", None)
            if reported is None:
                reported = self._reported = {}
            # the result that ends a trial may have come here already: Optuna warns of a step reported twice
            if isinstance(value, (int, float)) and math.isfinite(value) and step > reported.get(trial_id, -1):
                try:
                    self._ot_trials[trial_id].report(float(value), step)
                except UpdateFinishedTrialError:
                    # a driver that stopped after telling Optuna this trial's end, before Tune's next state save:
                    # the resumed trial runs its last epochs again, and Optuna already has them
                    self._forget(trial_id)
                    return
                reported[trial_id] = step

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials:
                return
            ot = self._ot_trials.get(trial_id)
            if ot is not None and self._ot_study._storage.get_trial(ot._trial_id).state.is_finished():
                self._forget(trial_id)  # told before a driver restart (see on_trial_result)
                return
            if result and is_failure(result.get("stop_reason")):
                result, error = None, True
            elif result and not error:
                # the result that ended the trial (a rung's or the last epoch's) may come here only
                self.on_trial_result(trial_id, result)
                if trial_id in self._completed_trials:  # Optuna had it already (see on_trial_result)
                    return
                if int(result.get("epoch", max_epochs)) < max_epochs and stopped_as == "pruned":
                    result = None  # stopped at a rung: Ray's OptunaSearch tells a trial without a result PRUNED
            super().on_trial_complete(trial_id, result, error)
            self._forget(trial_id)

        def _forget(self, trial_id: str) -> None:
            # Tune saves the searcher's state (a pickle of it) with its own: holding only the running trials keeps
            # that save's size flat in the number of trials the study has run
            self._completed_trials.add(trial_id)
            self._ot_trials.pop(trial_id, None)
            getattr(self, "_reported", {}).pop(trial_id, None)

        def save(self, checkpoint_path: str) -> None:
            # Tune pickles the searcher into each of its state saves. The study is in its storage (optuna.db) and
            # Optuna's in-memory copy of it grows with every trial: saved are the running trials' numbers only
            import pickle

            state = {**self.__dict__, "_ot_study": None,
                     "_ot_trials": {tid: t._trial_id for tid, t in self._ot_trials.items()}}
            with open(checkpoint_path, "wb") as f:
                pickle.dump(state, f)

        def restore(self, checkpoint_path: str) -> None:
            import optuna

            super().restore(checkpoint_path)
            if self._ot_study is None:  # saved by save() above (an older save holds the study itself)
                self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                                   sampler=self._sampler)
                self._ot_trials = {tid: optuna.Trial(self._ot_study, n) for tid, n in self._ot_trials.items()}

    return EvaluatedOptunaSearch(**kwargs)


class DefineByRun:
    """Optuna define-by-run space: conditional keys are only suggested when their `when` holds."""

    def __init__(self, domains: tuple[Domain, ...], fixed: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        # `when` reads a key searched earlier, else its fixed value, else the family's default
        self.domains, self.fixed, self.lookup = domains, fixed, {**(defaults or {}), **fixed}

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for d in self.domains:
            if not all(chosen.get(k, self.lookup.get(k)) == v for k, v in d.when):
                continue
            if d.kind == "loguniform":
                chosen[d.key] = trial.suggest_float(d.key, *d.args, log=True)
            elif d.kind == "uniform":
                chosen[d.key] = trial.suggest_float(d.key, *d.args)
            elif d.kind == "int":
                chosen[d.key] = trial.suggest_int(d.key, *d.args)
            else:
                chosen[d.key] = trial.suggest_categorical(d.key, list(d.args))
        return {**self.fixed, **chosen}


def full_config(st: Study) -> dict[str, Any]:
    from trainables.config import from_flat, to_flat
    from trainables.families import config_class

    return to_flat(from_flat(config_class(st.family), st.config))


def tune_domain(d: Domain):
    from ray import tune

    if d.kind == "loguniform":
        return tune.loguniform(*d.args)
    if d.kind == "uniform":
        return tune.uniform(*d.args)
    if d.kind == "int":
        return tune.randint(d.args[0], d.args[1] + 1)
    return tune.choice(list(d.args))


def pbt_scheduler(st: Study, mutable: tuple[str, ...]):
    """Ray's PBT over the study's float domains: every `perturbation_interval` (evaluated) epochs a trial in
    the bottom quarter continues from a top-quarter trial's checkpoint with its values x0.8 or x1.2 or
    resampled, kept inside the searched range. Synchronous: all trials reach the epoch before any is
    compared, so with fewer slots than trials no trial is judged against others that have not run yet,
    and a donor is at most one interval ahead when the trial continuing from it starts."""
    from ray.tune.schedulers import PopulationBasedTraining

    domains = {d.key: d for d in st.search if d.key in mutable}

    def clip(config: dict) -> dict:
        for k, d in domains.items():
            config[k] = min(max(float(config[k]), d.args[0]), d.args[1])
        return config

    return PopulationBasedTraining(time_attr="epoch", perturbation_interval=st.perturbation_interval,
                                   hyperparam_mutations={k: tune_domain(d) for k, d in domains.items()},
                                   custom_explore_fn=clip, synch=True,
                                   require_attrs=False)  # results between evaluations lack the metric


def optuna_db(root: str) -> Path:
    """Where the driver's Optuna study file is: <sweep>/optuna.db of a local sweep; for a remote one a local file
    (SQLite needs one) in the driver's folder on this machine, copied to <sweep>/optuna.db by `save_optuna`."""
    from search.folder import spool_dir

    return Path(root) / "optuna.db" if not is_remote(root) else spool_dir(root) / "optuna.db"


def optuna_storage(root: str):
    """The Optuna study kept in the sweep folder (optuna.db, one study per gentune study): `gentune dashboard`
    opens it. A remote sweep's copy is fetched first when it is newer than this machine's (a driver on
    another head node ran it last)."""
    import optuna

    db = optuna_db(root)
    db.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(root):
        folder = Folder(root)
        stored = folder.listing().get("optuna.db")
        if stored is not None and (not db.exists() or stored[1] > db.stat().st_mtime_ns):
            folder.download("optuna.db", db)
    return optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")


def save_optuna(root: str) -> None:
    """A remote sweep's Optuna study, copied to <sweep>/optuna.db (after each study, and on the way out)."""
    db = optuna_db(root)
    if is_remote(root) and db.is_file():
        Folder(root).upload(db, "optuna.db")
