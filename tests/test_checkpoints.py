"""search/checkpoints.py on a real Ray Tune run: no experiment-state save per checkpoint, and each trial keeps exactly
what CheckpointConfig says (its last and its best-scored checkpoint) once fit() returns."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# a score that peaks at epoch 3 of 8: the best checkpoint is not the last
SCORES = [0.1, 0.5, 0.9, 0.4, 0.3, 0.2, 0.25, 0.15]


def _trainable(config):
    from ray import tune

    for epoch, score in enumerate(SCORES, start=1):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "epoch.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "score": score + config["shift"]}, checkpoint=tune.Checkpoint.from_directory(d))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    here = Path(__file__).resolve().parent  # the workers import this module's trainable by its name
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}})
    yield
    ray.shutdown()


def _fit(root: Path, deferred: bool) -> tuple[int, object]:
    """A 2-trial run with num_to_keep=1 scored by `score`; returns (experiment-state saves, ResultGrid)."""
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController

    from search.checkpoints import deferred as defer

    saves = []
    real = TuneController.save_to_dir

    def counted(self):  # the real save, counted
        saves.append(1)
        return real(self)

    TuneController.save_to_dir = counted
    try:
        tuner = tune.Tuner(tune.with_resources(_trainable, {"cpu": 1}), param_space={"shift": tune.grid_search([0.0, 0.01])},
                           run_config=tune.RunConfig(name="ck", storage_path=str(root), verbose=0,
                                                     checkpoint_config=tune.CheckpointConfig(
                                                         num_to_keep=1, checkpoint_score_attribute="score",
                                                         checkpoint_score_order="max")))
        if deferred:
            with defer():
                grid = tuner.fit()
        else:
            grid = tuner.fit()
    finally:
        TuneController.save_to_dir = real
    return len(saves), grid


def _kept_epochs(root: Path) -> list[list[int]]:
    out = []
    for trial in sorted(p for p in (root / "ck").iterdir() if p.is_dir()):
        out.append(sorted(json.loads((c / "epoch.json").read_text())["epoch"] for c in trial.glob("checkpoint_*")))
    return out


def test_deferred_deletion_saves_the_state_on_tunes_period_and_keeps_the_last_and_the_best(tmp_path, ray_local):
    os.environ.pop("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", None)
    forced_saves, _ = _fit(tmp_path / "tune", deferred=False)
    saves, grid = _fit(tmp_path / "gentune", deferred=True)
    checkpoints = 2 * len(SCORES)
    # Tune alone saves its whole state for (nearly) every one of the 16 checkpoints; deferred, only on its period
    # (one at the start, one at the end, any every 10 s between)
    assert forced_saves >= checkpoints - 2, forced_saves
    assert saves <= 4, saves
    best = SCORES.index(max(SCORES)) + 1
    # each trial: its best epoch (3) and its last (8), nothing else (the run took far less than Tune's period,
    # so every deletion waited in the queue until fit() ended)
    assert _kept_epochs(tmp_path / "gentune") == [[best, len(SCORES)]] * 2
    assert _kept_epochs(tmp_path / "tune") == [[best, len(SCORES)]] * 2
    for r in grid:
        assert json.loads((Path(r.checkpoint.path) / "epoch.json").read_text())["epoch"] == len(SCORES)


def _slow_trainable(config):
    import time

    from ray import tune

    for epoch in range(1, 13):
        time.sleep(0.4)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "epoch.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "score": -abs(epoch - 3)}, checkpoint=tune.Checkpoint.from_directory(d))


def test_deletions_wait_for_a_stored_state_and_then_happen_while_the_run_goes_on(tmp_path, ray_local, monkeypatch):
    """Tune saving every second (its TUNE_GLOBAL_CHECKPOINT_S): superseded checkpoints are deleted during the run
    once a save that no longer names them is stored, not only when fit() ends."""
    import threading
    import time

    from ray import tune

    from search.checkpoints import deferred

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    peak, stop = [0], threading.Event()

    def watch() -> None:  # the most checkpoint folders any trial had at once
        while not stop.is_set():
            for t in (tmp_path / "slow").glob("_slow_trainable_*"):
                peak[0] = max(peak[0], len(list(t.glob("checkpoint_*"))))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    tuner = tune.Tuner(tune.with_resources(_slow_trainable, {"cpu": 1}), param_space={"x": tune.grid_search([0, 1])},
                       run_config=tune.RunConfig(name="slow", storage_path=str(tmp_path), verbose=0,
                                                 checkpoint_config=tune.CheckpointConfig(
                                                     num_to_keep=1, checkpoint_score_attribute="score",
                                                     checkpoint_score_order="max")))
    try:
        with deferred():
            tuner.fit()
    finally:
        stop.set()
        watcher.join()
    root = tmp_path / "slow"
    kept = [sorted(json.loads((c / "epoch.json").read_text())["epoch"] for c in t.glob("checkpoint_*"))
            for t in sorted(root.glob("_slow_trainable_*"))]
    assert kept == [[3, 12]] * 2  # the best (epoch 3) and the last
    assert 2 <= peak[0] < 12, peak  # 12 checkpoints each, never all of them on disk at once


def test_a_run_that_raises_keeps_what_was_queued(tmp_path, ray_local):
    """An exception out of fit() (the driver is going down): queued checkpoints stay, a resume may name them."""
    from search import checkpoints

    with pytest.raises(RuntimeError, match="driver down"):
        with checkpoints.deferred():
            checkpoints._queue_delete(__import__("pyarrow.fs").fs.LocalFileSystem(), str(tmp_path / "c1"))
            (tmp_path / "c1").mkdir()
            raise RuntimeError("driver down")
    assert (tmp_path / "c1").is_dir()
    # outside deferred(), a deletion is immediate, as Tune's own
    checkpoints._queue_delete(__import__("pyarrow.fs").fs.LocalFileSystem(), str(tmp_path / "c1"))
    assert not (tmp_path / "c1").exists()


def _searcher(db: Path):
    import optuna

    from search.searcher import DefineByRun, evaluated_optuna_search
    from search.spec import Domain

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return evaluated_optuna_search(4, space=DefineByRun((Domain("lr", "uniform", (0.0, 1.0)),), {}), metric="acc",
                                   mode="max", sampler=optuna.samplers.RandomSampler(seed=0),
                                   storage=optuna.storages.RDBStorage(f"sqlite:///{db}"), study_name="s")


def test_a_searcher_restored_from_an_older_save_takes_the_replayed_end_of_a_trial_optuna_has(tmp_path, caplog):
    """Tune saves its searcher every few seconds, not with every result: a driver restarted from such a save
    replays the end of a trial whose completion Optuna already stored. Nothing is told twice, nothing raises."""
    import optuna

    s = _searcher(tmp_path / "o.db")
    s.suggest("t1")
    s.on_trial_result("t1", {"epoch": 2, "acc": 0.5})
    s.save(str(tmp_path / "snapshot.pkl"))  # Tune's last state save before the driver died
    s.on_trial_result("t1", {"epoch": 4, "acc": 0.7})
    s.on_trial_complete("t1", {"epoch": 4, "acc": 0.7})

    again = _searcher(tmp_path / "o.db")
    again.restore(str(tmp_path / "snapshot.pkl"))
    with caplog.at_level("WARNING"):
        again.on_trial_result("t1", {"epoch": 4, "acc": 0.7})
        again.on_trial_complete("t1", {"epoch": 4, "acc": 0.7})
    assert not [r for r in caplog.records if "t1" in r.getMessage() or "finished" in r.getMessage()], caplog.text
    (t,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}").trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == 0.7 and t.intermediate_values == {2: 0.5, 4: 0.7}


def test_the_searchers_saved_state_does_not_grow_with_finished_trials(tmp_path):
    """Tune pickles the searcher into every state save: finished trials are not kept in it."""
    s = _searcher(tmp_path / "o.db")
    sizes = {}
    for i in range(1, 41):
        s.suggest(f"t{i}")
        s.on_trial_result(f"t{i}", {"epoch": 4, "acc": i / 100})
        s.on_trial_complete(f"t{i}", {"epoch": 4, "acc": i / 100})
        if i in (10, 40):
            s.save(str(tmp_path / f"s{i}.pkl"))
            sizes[i] = (tmp_path / f"s{i}.pkl").stat().st_size
    # 30 more finished trials add only their ids (a few bytes each); holding the finished trials, or Optuna's
    # in-memory copy of the study, added 200-450 bytes per trial
    assert sizes[40] - sizes[10] < 30 * 20, sizes


@pytest.mark.parametrize("stopped_as, state, value", [("pruned", "PRUNED", 0.4), ("complete", "COMPLETE", 0.4)])
def test_a_trial_stopped_at_a_rung_reaches_optuna_as_told(tmp_path, stopped_as, state, value):
    """gentune tells a trial ASHA stopped (its last epoch 2 of 4) as PRUNED; benchmarks.search's tpe+asha-complete
    tells it as Ray's OptunaSearch does, COMPLETE at its rung value. Both keep the rung value in the study."""
    import optuna

    from search.searcher import DefineByRun, evaluated_optuna_search
    from search.spec import Domain

    s = evaluated_optuna_search(4, stopped_as=stopped_as, space=DefineByRun((Domain("lr", "uniform", (0.0, 1.0)),), {}),
                                metric="acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0),
                                storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"), study_name="s")
    s.suggest("t1")
    s.on_trial_complete("t1", {"epoch": 2, "acc": 0.4})
    (t,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}").trials
    assert t.state.name == state and t.value == value and t.intermediate_values == {2: 0.4}
