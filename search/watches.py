"""Tune callbacks that watch a running study: trials waiting for resources, and a Ctrl-C reaching Tune."""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from trainables.storage import Folder

PENDING_WARN_S = float(os.environ.get("GENTUNE_PENDING_WARN_S", "120"))


def pending_watch(study: str, root: str):
    """A Tune callback that says, once, when trials wait long for resources the cluster does not offer.

    It prints one line naming what each waiting trial asks for and what the cluster has, and writes
    <sweep>/waiting.json for `gentune status`; the file goes when every trial has been placed."""
    import ray
    from ray.tune import Callback

    class PendingWatch(Callback):
        def __init__(self) -> None:
            self.since: dict[str, float] = {}
            self.last_running = time.time()
            self.warned = False
            self.written = -1.0  # when waiting.json was last written (0: it is not there; -1: one a driver before may have left)
            self.checked = 0.0

        def on_step_end(self, iteration, trials, **info):
            now = time.time()
            if now - self.checked < 1.0:  # Tune's loop steps many times a second: a look each second is enough
                return  # (asking Ray for the cluster's resources each step cost 20 ms per result, benchmarks.scale)
            self.checked = now
            pending = [t for t in trials if t.status == "PENDING"]
            if any(t.status == "RUNNING" for t in trials):
                self.last_running = now
            self.since = {t.trial_id: self.since.get(t.trial_id, now) for t in pending}
            if not pending:
                if self.written:
                    Folder(root).delete("waiting.json")
                    self.written = 0.0
                return
            asks = pending[0].placement_group_factory.required_resources
            total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU") or k in asks}
            never_fits = any(v > total.get(k, 0) for k, v in asks.items())
            # waiting is normal while other trials run; it is news when nothing has run for a while,
            # or when a trial asks for more than the whole cluster has
            stuck = now - max(self.last_running, min(self.since.values())) >= PENDING_WARN_S
            if not (stuck or (never_fits and now - min(self.since.values()) >= min(PENDING_WARN_S, 30))):
                return
            free = {k: v for k, v in ray.available_resources().items() if k in total}
            wait_s = now - min(self.since.values())
            msg = (f"{len(pending)} trial(s) of study {study} waiting {wait_s:.0f} s for resources: each asks "
                   f"{_res(asks)}; the cluster has {_res(total)} in all, {_res(free)} free")
            if now - self.written >= 10:  # a step is a fraction of a second: not a write to the store each
                Folder(root).write_bytes("waiting.json", json.dumps(
                    {"study": study, "message": msg, "trials": len(pending), "asks": asks, "cluster": total,
                     "since": now - wait_s, "updated": now}, indent=2).encode())
                self.written = now
            if not self.warned:
                print(f"gentune sweep: {msg}", file=sys.stderr, flush=True)
                self.warned = True

    return PendingWatch()


# Studies whose tuner.fit() a Ctrl-C reached (sigint_watch), in this driver process.
SIGINTS: set[str] = set()


def sigint_watch(study: str):
    """A Tune callback that notes a Ctrl-C reaching Tune's run of `study` in SIGINTS.

    Tune's handler only ends its loop; its cleanup then marks the running trials TERMINATED like
    finished ones, so after the last planned trial has started nothing else tells an interrupted study
    from a finished one. setup() runs after Tune has installed its handler: this wraps it."""
    from ray.tune import Callback

    class SigintWatch(Callback):
        def setup(self, **info):
            import importlib
            import threading

            if threading.current_thread() is not threading.main_thread():
                return  # Tune installs no handler there either
            tune_handler = signal.getsignal(signal.SIGINT)

            def noted(sig, frame):
                # by module, not by this closure's global: Tune pickles its callbacks by value with the
                # experiment, and the copy restored on --resume would note into a copy of the set
                importlib.import_module("search.watches").SIGINTS.add(study)
                if callable(tune_handler):
                    tune_handler(sig, frame)
                elif tune_handler != signal.SIG_IGN:
                    raise KeyboardInterrupt

            signal.signal(signal.SIGINT, noted)

    return SigintWatch()


def _res(d: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(d.items())) or "nothing"
