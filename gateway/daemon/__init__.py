"""The daemon: wires the stages together and runs them.

``app`` builds every component and wires the wake-ups between stages,
``run`` handles readiness, signals and reload, ``http`` is the listener the
stages add routes to, ``health`` and ``metrics`` are what an operator
watches, ``logs`` the log lines.
"""
