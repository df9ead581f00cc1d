"""Starting the app: settings, the service, the server, and clean-up when it stops."""

from __future__ import annotations

import argparse
import signal
from typing import Optional

from medclipseg import settings


def parse_auth(text: Optional[str]) -> Optional[list]:
    """``"ann:pw1, rev:pw2"`` -> [("ann", "pw1"), ("rev", "pw2")]; None when unset."""
    if not text or not text.strip():
        return None
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"{settings.AUTH_ENV} must be user:password pairs separated by commas.")
        pairs.append((user.strip(), password))
    return pairs or None


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

    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore, StorageError
    from medclipseg.app.handlers import EXAMPLES_DIR
    from medclipseg.app.layout import PAGE_CSS, build_app

    try:
        auth = parse_auth(settings.auth_setting())
        settings.queue_order()  # an unknown MEDCLIPSEG_QUEUE_ORDER stops the start, in words
        service = AnnotationService(None if args.db is None else AnnotationStore(args.db), weights=args.weights,
                                    device=args.device, num_samples=args.samples)
    except (ValueError, StorageError) as exc:
        raise SystemExit(f"app.py: error: {exc}") from None
    try:
        service.scratch.remove_orphans()  # files of a server that was killed before it could clean up
        service.predictor  # load now, so that the first request does not wait for it
        # Keeps the queue ranked by the current version, also after a promotion by another process.
        service.start_background_rescoring()
        demo = build_app(service, auth_enabled=auth is not None)
        demo.queue(default_concurrency_limit=8, max_size=256)
        print(f"MedCLIPSeg Annotator: model {service.model_id}, database {service.store.path}", flush=True)
        _stop_on_sigterm()
        demo.launch(server_name=args.host, server_port=args.port, auth=auth, max_file_size="512mb", css=PAGE_CSS,
                    allowed_paths=[str(EXAMPLES_DIR)], show_error=True)
    finally:
        service.close()
