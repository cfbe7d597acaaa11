"""Receipts (AR): the provider's callback and AR mails, matched to jobs.

``callback`` is the HTTP route and the matching rules, ``armail`` reads the
provider's receipt mails. What a receipt decides goes into the store, with a
notice queued for the notifier.
"""
