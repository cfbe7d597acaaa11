"""The administrator's tools: the ``fax-gateway`` command.

``cli`` parses the command line, ``jobs`` holds the job commands, ``actions``
the operator actions they share, ``checks`` is ``check-config``, ``demo`` runs
everything on one machine, ``troubleshooting`` writes the README's tables.
"""
