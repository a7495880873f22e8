"""`gentune status` (where a sweep stands) and `gentune ui` (the MLflow UI over a sweep's store)."""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from search.commands import Help
from trainables.errors import GentuneError
from trainables.storage import Folder, is_remote


def planned_trials(info: dict) -> dict[str, int] | None:
    """Trials per study as the sweep's spec asks (with its overrides and --smoke): as sweep.json records them,
    else (sweeps from before it did) from the spec, where it still parses."""
    planned = info.get("trials")
    if isinstance(planned, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in planned.values()):
        return planned
    try:
        from search.spec import parse_spec

        spec = parse_spec(info["spec"], list(info.get("overrides") or []), bool(info.get("smoke")))
        return {s.name: s.trials for s in spec.studies}
    except GentuneError:  # an old sweep's spec that no longer parses (its data moved): the planned counts show as unknown
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from analysis.status import read_status, read_sweep_json
    from analysis.status_text import format_status

    # A tracking server that is down should cost seconds, not MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    info = read_sweep_json(args.sweep)
    st = read_status(args.sweep, tracking_uri=args.tracking_uri or None, planned=planned_trials(info))
    if args.json:
        print(json.dumps(st.to_dict(), indent=2, default=str))
    else:
        print(format_status(st, trials=not args.brief))
    return 0


# ---------------------------------------------------------------- ui


def resolve_store(sweep: str | None, tracking_uri: str | None) -> tuple[str, str | None, Path | None]:
    """(backend store URI, experiment id or None, artifacts folder or None) for `gentune ui`."""
    from analysis.sweepdata import check_store, read_sweep_json, sqlite_path, tracking_uri_of

    if sweep:
        info = read_sweep_json(sweep)
        remote = is_remote(sweep)  # a remote sweep is tracked on a server (`gentune sweep` refuses it otherwise)
        root = Path(sweep).expanduser().resolve() if not remote else None
        uri = tracking_uri or (tracking_uri_of(root, info) if root else str(info.get("tracking_uri") or ""))
        exp_id = str(info.get("experiment_id") or "") or None
        artifacts = root / "mlartifacts" if root else None
    elif tracking_uri:
        uri, exp_id, artifacts = tracking_uri, None, None
    else:
        raise GentuneError("give a sweep folder (e.g. runs/quickstart) or --tracking-uri URI")
    db = sqlite_path(uri)
    if db is not None:
        if not db.exists():
            raise GentuneError(f"MLflow store {db} does not exist (has the sweep started tracking yet?)")
        check_store(uri, "--tracking-uri" if tracking_uri else str(Path(sweep or ".") / "sweep.json"))
        if artifacts is None:
            artifacts = db.parent / "mlartifacts"
    elif uri.startswith("file:") or "://" not in uri:
        p = Path(uri[5:] if uri.startswith("file:") else uri).expanduser()
        if not p.exists():
            raise GentuneError(f"MLflow store {uri} does not exist")
    return uri, exp_id, artifacts


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise GentuneError(f"cannot listen on {host}:{port} ({e.strerror or e}); check --host and --port") from None
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(uri: str, host: str, port: int, artifacts: Path | None, workers: int) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if artifacts is not None:
        # Runs logged by `gentune sweep` keep their own file:// artifact URIs (the experiment's location is this
        # folder), which the server reads directly; anything logged through this server lands here too, never in
        # the working directory (MLflow's default ./mlartifacts).
        cmd += ["--serve-artifacts", "--artifacts-destination", artifacts.resolve().as_uri()]
    else:
        cmd += ["--no-serve-artifacts"]
    return cmd


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, probe: str = "/health", what: str = "the MLflow server") -> None:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy: it is our own host
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GentuneError(f"{what} exited with code {proc.returncode} before it served {url} "
                               "(its log is above; with --quiet add --debug-server to see it)")
        try:
            with opener.open(f"{url}{probe}", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise GentuneError(f"{what} did not answer at {url} within {timeout:.0f}s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End the server and everything it started (uvicorn, its workers): they share its process group."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        proc.poll()  # reap the leader so it does not linger as a zombie
        time.sleep(0.1)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def check_ui_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise GentuneError(f"--port must be 1-65535 (or 0 for a free one), got {args.port}")
    if args.workers < 1:
        raise GentuneError(f"--workers must be >= 1, got {args.workers}")
    if not args.timeout > 0:  # (also nan)
        raise GentuneError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    try:
        socket.getaddrinfo(args.host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise GentuneError(f"--host {args.host!r} is not an address of this machine ({e.strerror or e})") from None


def cmd_ui(args: argparse.Namespace) -> int:
    check_ui_args(args)
    uri, exp_id, artifacts = resolve_store(args.sweep, args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        # Already a server: nothing to start.
        url = uri.rstrip("/") + (f"/#/experiments/{exp_id}/runs?workflowType=machine_learning" if exp_id else "/")
        print(f"this sweep is tracked on the MLflow server {uri}: open {url}")
        return 0
    host = args.host
    port = args.port if args.port else free_port(host)
    if not port_free(host, port):
        raise GentuneError(f"port {port} on {host} is in use (another `gentune ui` or MLflow server?); pick another with --port")
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    url = base + (f"/#/experiments/{exp_id}/runs?workflowType=machine_learning" if exp_id else "/")
    cmd = server_command(uri, host, port, artifacts, args.workers)
    if not args.quiet:
        print(f"gentune ui: starting the MLflow server over {uri} on {host}:{port}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    # MLflow 3's server also starts a job runner and seven task consumers for GenAI features (online scoring,
    # trace archival) that browsing a sweep never uses: leave them off unless the user asks for them.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    hint = ("each study is a run with its trials nested under it (click + to expand); Columns adds a metric column; "
            "tick two runs and Compare to compare them") if exp_id else ""
    return serve(args, cmd, base, url, env, "/health", "the MLflow server", "ui", hint)


def serve(args: argparse.Namespace, cmd: list[str], base: str, url: str, env: dict, probe: str, what: str, name: str,
          hint: str) -> int:
    """Run a local web server until Ctrl-C: print its URL on stdout once it answers, stop it and its children."""
    host = args.host
    quiet_server = args.quiet and not args.debug_server
    # The server gets its own process group, so Ctrl-C reaches gentune alone and gentune ends the server and its
    # workers together; SIGTERM/SIGHUP to gentune do the same.
    # The server's log goes to stderr, so stdout carries the URL alone (URL=$(gentune ui ... | head -1) works).
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if quiet_server else sys.stderr,
                            stderr=subprocess.DEVNULL if quiet_server else None, start_new_session=True, env=env)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then keeps ignoring it.
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        wait_ready(base, proc, args.timeout, probe, what)
        print(url, flush=True)
        if not args.quiet:
            if host not in ("127.0.0.1", "localhost", "::1"):
                print(f"gentune {name}: warning: listening on {host}: other machines can reach this UI, which has no login",
                      file=sys.stderr)
            if hint:
                print(f"gentune {name}: {hint}", file=sys.stderr)
            print(f"gentune {name}: serving until Ctrl-C", file=sys.stderr, flush=True)
        rc = proc.wait()
        raise GentuneError(f"{what} stopped by itself (exit code {rc})")
    except KeyboardInterrupt:
        if not args.quiet:
            print(f"gentune {name}: stopped", file=sys.stderr)
        return 0
    finally:
        stop(proc)
        for s, h in old.items():
            signal.signal(s, h)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard over the Optuna studies `gentune sweep` keeps in <sweep>/optuna.db."""
    import shutil

    check_ui_args(args)
    from analysis.sweepdata import check_optuna_db, read_sweep_json, remote_view

    info = read_sweep_json(args.sweep)  # a missing or damaged sweep.json is one error naming it
    # a remote sweep's optuna.db is copied to this machine's cache (the dashboard needs a file)
    root = remote_view(Folder(args.sweep))[0] if is_remote(args.sweep) else Path(args.sweep).expanduser()
    db = root / "optuna.db"
    if not (db.exists() or db.is_symlink()):
        raise GentuneError(f"sweep {info['name']} has no stored Optuna study (optuna.db is missing in {args.sweep}): only "
                           "searched studies keep one, a remote sweep's is stored when each study ends, and only "
                           "sweeps made since gentune stored them have it")
    check_optuna_db(db)
    exe = Path(sys.executable).parent / "optuna-dashboard"
    exe_s = str(exe) if exe.is_file() else shutil.which("optuna-dashboard")
    if not exe_s:
        raise GentuneError("optuna-dashboard is not installed in this environment: pip install optuna-dashboard")
    host = args.host
    port = args.port if args.port else free_port(host)
    if not port_free(host, port):
        raise GentuneError(f"port {port} on {host} is in use; pick another with --port")
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    uri = f"sqlite:///{db.resolve()}"
    if not args.quiet:
        print(f"gentune dashboard: starting optuna-dashboard over {uri} on {host}:{port}", file=sys.stderr, flush=True)
    cmd = [exe_s, uri, "--host", host, "--port", str(port)] + (["--quiet"] if args.quiet and not args.debug_server else [])
    return serve(args, cmd, base, base + "/dashboard", dict(os.environ), "/api/studies", "optuna-dashboard", "dashboard",
                 "one Optuna study per gentune study: history, importances, parallel coordinates, Pareto front")


def register(sub) -> None:
    fmt = Help
    p = sub.add_parser("status", formatter_class=fmt,
                       help="where a sweep stands: trials by state, best so far per study, time used and left (read-only; "
                            "safe while the sweep runs)")
    p.add_argument("sweep", help="sweep folder (the one holding sweep.json, e.g. runs/quickstart)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store to read instead of the one sweep.json names")
    p.add_argument("--brief", action="store_true", help="per-study summary only, without the table of trials")
    p.add_argument("--json", action="store_true", help="print the status as JSON (for scripts)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("ui", formatter_class=fmt,
                       help="serve the MLflow UI over a sweep's store and print its URL; runs until Ctrl-C")
    p.add_argument("sweep", nargs="?", default=None, help="sweep folder (holding sweep.json and mlflow.db)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store to serve instead of (or without) a sweep folder, e.g. sqlite:///runs/quickstart/mlflow.db")
    p.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="interface to listen on; the UI has no login, so keep 127.0.0.1 unless you trust the network")
    p.add_argument("--port", type=int, default=5000, metavar="P", help="port to listen on; 0 picks a free one")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to answer")
    p.add_argument("--quiet", action="store_true", help="print only the URL (no progress lines, no server log)")
    p.add_argument("--debug-server", action="store_true", help="show the MLflow server's log even with --quiet")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("dashboard", formatter_class=fmt,
                       help="open optuna-dashboard on a sweep's stored Optuna studies (bound to 127.0.0.1)",
                       description="Serve optuna-dashboard over <sweep>/optuna.db, the Optuna study of each searched "
                                   "study as Tune's searcher ran it, until Ctrl-C. Prints the URL on stdout.")
    p.add_argument("sweep", help="sweep folder (holding sweep.json and optuna.db)")
    p.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="interface to listen on; the dashboard has no login, so keep 127.0.0.1 unless you trust the network")
    p.add_argument("--port", type=int, default=8080, metavar="P", help="port to listen on; 0 picks a free one")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the dashboard to answer")
    p.add_argument("--quiet", action="store_true", help="print only the URL (no progress lines, no server log)")
    p.add_argument("--debug-server", action="store_true", help="show the dashboard's log even with --quiet")
    p.set_defaults(func=cmd_dashboard, workers=1)
