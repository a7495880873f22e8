"""Trial checkpoints deleted only once Tune's stored experiment state no longer names them, so that Tune need not
save that state with every checkpoint.

Tune with CheckpointConfig(num_to_keep=k) deletes a trial's superseded checkpoint the moment the next one is
registered and, so that the experiment state in storage never names a deleted checkpoint (a resume would fail on
it), forces a save of the whole state (every trial, the searcher) every k checkpoints of any trial, waiting on
remote storage for the previous upload first. That state grows with the number of trials (about 19 KB each), so
a sweep paid for it once per result: 20-28 ms a save at 200 trials here, 600 ms per result on an S3 server
(benchmarks/RESULTS.md, "Scale"). Ray's own source calls it "a non-performant workaround".

`deferred()` wraps a `tuner.fit()` in the driver instead:
- a checkpoint Tune decides to delete waits in a queue, and Tune saves its state on its own period (every 10 s,
  longer when a save is slow: Tune's `checkpoint_period="auto"`), as it does without num_to_keep;
- after a save whose upload has finished (Tune's syncer thread for it ended without an exception), the
  checkpoints queued before that save are deleted: the stored state no longer names them. A resume after a
  crash therefore always finds the checkpoint the stored state names, and restarts a trial from it (at most
  the epochs since the last save run again; MLflow and Optuna keep each epoch once);
- when fit() returns (Tune has saved and uploaded its final state, waiting for it) every queued checkpoint is
  deleted. A driver killed meanwhile leaves its queue's checkpoints behind: disk, not consistency; the next
  `--resume` of that study deletes them when it ends (`prune`).

Disk per trial: what CheckpointConfig keeps (the last and the best one) plus those superseded since the last
uploaded save (about 10 s of training).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator


_lock = threading.Lock()
_active = False
_queue: list[tuple[Any, str]] = []  # (pyarrow filesystem, path) of checkpoints Tune has let go of, oldest first
# per save whose upload is under way: (Tune's upload thread, the checkpoints queued before that save)
_uploading: list[tuple[Any, list[tuple[Any, str]]]] = []
_installed = False


def _delete(items: list[tuple[Any, str]]) -> None:
    from ray.train._internal.storage import _delete_fs_path

    for fs, path in items:
        _delete_fs_path(fs=fs, fs_path=path)  # logs and goes on if the store refuses


def _queue_delete(fs, fs_path: str) -> None:
    """Stands in for Tune's immediate deletion of a superseded checkpoint while `deferred()` is active."""
    with _lock:
        if _active:
            _queue.append((fs, fs_path))
            return
    _delete([(fs, fs_path)])


def _take_all() -> list[tuple[Any, str]]:
    """Everything waiting, uploads or not, taken out of the bookkeeping."""
    with _lock:
        out = [item for _, batch in _uploading for item in batch] + _queue
        _uploading.clear()
        _queue.clear()
    return out


def _install() -> None:
    """Patch three points of Tune in this (driver) process; each is checked to exist so that a Ray upgrade that moves
    them fails here, loudly, instead of silently going back to a save per checkpoint."""
    global _installed
    if _installed:
        return
    from ray.train._internal import checkpoint_manager
    from ray.tune.execution import experiment_state

    manager = experiment_state._ExperimentCheckpointManager
    for owner, name in ((checkpoint_manager, "_delete_fs_path"), (manager, "on_trial_checkpoint"),
                        (manager, "sync_up_experiment_state")):
        if not hasattr(owner, name):
            raise RuntimeError(f"gentune: Ray's {owner.__name__}.{name} is gone; search/checkpoints.py needs updating")
    original_sync = manager.sync_up_experiment_state
    original_force = manager.on_trial_checkpoint

    def on_trial_checkpoint(self, trial) -> None:
        if not _active:  # no forced save: the queue keeps what the stored state names
            original_force(self, trial)

    def sync_up_experiment_state(self, save_fn, force: bool = False, wait: bool = False) -> None:
        if not _active:
            return original_sync(self, save_fn, force=force, wait=wait)
        # an upload that has ended releases what was queued before its save; a failed one puts it back in the queue
        done: list[tuple[Any, str]] = []
        with _lock:
            while _uploading and not (_uploading[0][0] is not None and _uploading[0][0].is_running):
                proc, batch = _uploading.pop(0)
                if proc is not None and "exception" not in getattr(proc, "_result", {}):
                    done += batch
                else:
                    _queue[:0] = batch
        _delete(done)
        launched = self._last_sync_time
        original_sync(self, save_fn, force=force, wait=wait)
        if self._last_sync_time != launched:  # this save's upload was launched (and with wait=True, has ended)
            if wait:
                _delete(_take_all())
            else:
                with _lock:
                    if _queue:
                        _uploading.append((getattr(self._storage.syncer, "_sync_process", None), _queue[:]))
                        _queue.clear()

    checkpoint_manager._delete_fs_path = _queue_delete
    manager.on_trial_checkpoint = on_trial_checkpoint
    manager.sync_up_experiment_state = sync_up_experiment_state
    _installed = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Around one tuner.fit(): checkpoint deletions wait for a stored state that no longer names them (module doc).
    On a normal return (Tune's final state saved and uploaded) every queued checkpoint is deleted; on an exception
    they stay (a resume may need them)."""
    global _active
    _install()
    _take_all()
    with _lock:
        _active = True
    ok = False
    try:
        yield
        ok = True
    finally:
        with _lock:
            _active = False
        left = _take_all()
        if ok:
            _delete(left)


def prune(grid) -> int:
    """After a study: delete each trial's checkpoint folders that Tune no longer tracks (its last and its kept
    best ones), which a killed driver's queue left behind. Returns how many were deleted."""
    import posixpath

    from ray.train._internal.storage import _list_at_fs_path

    removed = 0
    for r in grid:
        kept = {c.path for c, _ in (r.best_checkpoints or [])}
        if r.checkpoint is None:
            continue
        kept.add(r.checkpoint.path)
        fs, trial = r.checkpoint.filesystem, posixpath.dirname(r.checkpoint.path.rstrip("/"))
        try:
            names = _list_at_fs_path(fs, trial)
        except Exception:  # a listing the store refuses: nothing is deleted
            continue
        for name in {n.split("/")[0] for n in names}:
            path = posixpath.join(trial, name)
            if name.startswith("checkpoint_") and path not in kept:
                _delete([(fs, path)])
                removed += 1
    return removed
