"""Documents: what in a mail is faxed, checked before the 250.

``mime`` walks the message under bounds, ``headers`` reads the headers a
receipt quotes, ``policy`` decides what to fax and builds the one fax
document, ``formats`` knows the file types (libmagic, PDF, images), ``fit``
makes a document over the provider's limit fit (``render`` draws its pages as
black-and-white fax pages), and ``examiner`` runs all of it away from the
event loop.
"""
