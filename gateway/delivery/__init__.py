"""Delivery: store each spooled document where the provider can fetch it, and submit the fax.

``worker`` claims jobs from the store and turns every outcome into state;
``storage`` (S3 or local), ``provider`` (123-fax.net) raise the outcome types
of :mod:`gateway.outcomes`; ``recovery`` makes what a crash left readable;
``simulator`` is a provider that sends no fax.
"""
