"""The Gradio annotation app: ``layout`` (the page), ``handlers`` (what each action does),
``api`` (the endpoints for scripts), ``render`` (pictures and numbers), ``launch`` (settings and server).

``build_app(service)`` returns the ``gr.Blocks``; ``main()`` is what ``python app.py`` runs.
Gradio is imported only when one of them is called.
"""


def build_app(service, *, auth_enabled: bool = False):
    from medclipseg.app.layout import build_app as build

    return build(service, auth_enabled=auth_enabled)


def main(argv=None) -> None:
    from medclipseg.app.launch import main as run

    run(argv)


__all__ = ["build_app", "main"]
