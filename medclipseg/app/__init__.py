"""The Gradio annotation app: ``layout`` (the page), ``handlers`` (what each action does),
``api`` (the endpoints for scripts), ``render`` (pictures and numbers), ``launch`` (settings and server).

``build_app(service)`` returns the ``gr.Blocks``; ``main()`` is what ``python app.py`` runs.
Gradio is imported only when one of them is called.
"""


def build_app(service, *, team=None):
    """``team``: a medclipseg.team.access.Team (logins and roles); None: the open, one-person app."""
    from medclipseg.app.layout import build_app as build

    return build(service, team=team)


def main(argv=None) -> None:
    from medclipseg.app.launch import main as run

    run(argv)


__all__ = ["build_app", "main"]
