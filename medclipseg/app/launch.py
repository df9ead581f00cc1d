"""Starting the app: settings, the service, the server, and clean-up when it stops."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Optional

from medclipseg import settings


def team_from_settings(host: str, directory=None, *, check_open: bool = True):
    """The logins and roles of MEDCLIPSEG_AUTH and of `directory` (the annotation store's users table;
    medclipseg.team.access.Team); ValueError in words for a malformed setting, or for an open server
    (no logins) listening beyond this machine unless MEDCLIPSEG_ALLOW_NO_LOGIN=1 says it is meant to be."""
    from medclipseg.team.access import Team, is_loopback

    team = Team.from_setting(settings.auth_setting(), setting=settings.AUTH_ENV)
    if directory is not None:
        team = team.with_directory(directory)
    if check_open and not team.logins_required and not is_loopback(host) and not settings.allow_no_login():
        raise ValueError(
            f"The app would listen on {host}, beyond this machine, with no login: anyone who reaches it could "
            f"export every label and retrain the model. Set {settings.AUTH_ENV}=\"user:password[:role],...\" "
            f"(roles: annotator, reviewer, admin) or add users with `medclipseg users add`, or set "
            f"{settings.ALLOW_NO_LOGIN_ENV}=1 to run it open anyway.")
    return team


def open_warning(host: str) -> str:
    from medclipseg.team.access import is_loopback

    where = "this machine only" if is_loopback(host) else f"{host}, reachable from other machines"
    return ("WARNING: no login (MEDCLIPSEG_AUTH is not set) and the app listens on " + where + ": whoever reaches "
            "it may annotate, export every label, retrain, promote and roll back, under any name.")


def _stop_on_sigterm() -> None:
    """SIGTERM (docker stop, a Space restart) stops the server like Ctrl+C, so clean-up still runs."""
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="app.py", description="MedCLIPSeg Annotator (Gradio app)")
    parser.add_argument("--host", default=settings.server_host(), help="address to listen on (GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=settings.server_port(), help="port (GRADIO_SERVER_PORT)")
    parser.add_argument("--db", default=None, help="SQLite file (default: MEDCLIPSEG_DB or feedback_db/annotations.db)")
    parser.add_argument("--weights", default=settings.weights_source(),
                        help="model source (default: MEDCLIPSEG_WEIGHTS or the demo)")
    parser.add_argument("--samples", type=int, default=settings.app_samples(),
                        help="Monte-Carlo samples per segmentation (MEDCLIPSEG_SAMPLES)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when available)")
    args = parser.parse_args(argv)

    from medclipseg.annotation.service import AnnotationService, check_samples
    from medclipseg.annotation.store import AnnotationStore, StorageError
    from medclipseg.app.handlers import EXAMPLES_DIR
    from medclipseg.app.layout import PAGE_CSS, build_app

    from medclipseg.annotation import snapshots

    snapshotter = None
    try:
        from medclipseg.annotation.sql import parse_location

        location = parse_location(args.db if args.db is not None else settings.db_location())
        # A malformed setting stops the start before the database is made; so does an open server
        # beyond this machine when the database is new (no users table to give logins).
        new_database = location.is_sqlite and not location.path.exists() and settings.snapshot_target() is None
        team_from_settings(args.host, check_open=new_database)
        settings.queue_order()  # an unknown MEDCLIPSEG_QUEUE_ORDER stops the start, in words
        settings.cache_mb()  # so does a cache budget that is not a positive number
        settings.precision()  # and an unknown precision
        check_samples(args.samples)  # before the database is made: a bad setting leaves nothing behind
        db_path = location.path  # None for PostgreSQL: the server keeps the rows, no snapshots
        snapshot_dir = settings.snapshot_target() if db_path is not None else None
        if snapshots.hub_snapshots.is_hub_target(snapshot_dir):
            snapshots.hub_snapshots.parse_target(snapshot_dir)  # a malformed address stops the start, in words
        if snapshot_dir is not None:
            # A fresh container: the newest snapshot in the bucket becomes the live database.
            restored = snapshots.restore(db_path, snapshot_dir)
            if restored is not None:
                print(f"Restored the annotation database from {restored}", flush=True)
        store = AnnotationStore(location)
        try:
            team = team_from_settings(args.host, directory=store)  # the users table counts too
        except ValueError:
            store.close()
            raise
        service = AnnotationService(store, weights=args.weights, device=args.device, num_samples=args.samples,
                                    precision=settings.precision())
    except (ValueError, StorageError, OSError) as exc:
        raise SystemExit(f"app.py: error: {exc}") from None
    try:
        if snapshot_dir is not None:
            snapshotter = snapshots.Snapshotter(db_path, snapshot_dir, interval=settings.snapshot_seconds()).start()
            print(f"Snapshots every {settings.snapshot_seconds()} s into {snapshot_dir}", flush=True)
        service.scratch.remove_orphans()  # files of a server that was killed before it could clean up
        service.predictor  # load now, so that the first request does not wait for it
        # Keeps the queue ranked by the current version, also after a promotion by another process.
        service.start_background_rescoring()
        demo = build_app(service, team=team)
        demo.queue(default_concurrency_limit=8, max_size=256)
        print(f"MedCLIPSeg Annotator: model {service.model_id}, database {service.store.location.label}", flush=True)
        if team.logins_required:
            roles = ", ".join(f"{name} ({role})" for name, role in team.users.items())
            print(f"Logins required: {roles}", flush=True)
        else:
            print(open_warning(args.host), file=sys.stderr, flush=True)
        _stop_on_sigterm()
        demo.launch(server_name=args.host, server_port=args.port,
                    auth=team.authenticate if team.logins_required else None, max_file_size="512mb", css=PAGE_CSS,
                    allowed_paths=[str(EXAMPLES_DIR)], show_error=True)
    finally:
        service.close()
        if snapshotter is not None:
            last = snapshotter.stop()  # what was acknowledged up to the stop is kept
            if last is not None:
                print(f"Last snapshot: {last.path}", flush=True)
