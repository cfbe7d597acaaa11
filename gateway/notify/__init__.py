"""Notifications: the receipts, notices and alerts queued in the store, sent through the relay.

``notifier`` is the relay loop; ``compose`` writes the mails.
"""
