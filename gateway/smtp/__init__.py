"""SMTP intake: receive and validate; spool durably before the 250.

The first stage. ``server`` runs the protocol (aiosmtpd with the gateway's
limits), ``data`` reads DATA, ``intake`` decides MAIL, RCPT and DATA,
``access`` says who may send, ``slots`` who may hold a connection slot,
``recipients`` parses and judges fax numbers.
It hands its work on only through the spool and the store; it asks the
documents stage what to fax before it answers DATA (the one planned
dependency between stages).
"""
