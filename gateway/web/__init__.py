"""The web pages on the HTTP listener: the sender's status page (``/fax/``) and the administrator's console
(``/admin/``), server-rendered from Jinja2 templates with autoescaping, plain CSS, no JavaScript."""
