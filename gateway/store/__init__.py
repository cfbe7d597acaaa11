"""The job store: the only link between the stages, and the only code that speaks SQL."""

from gateway.store.base import DATABASE_ERRORS, Location, PostgreSQL, location
from gateway.store.core import AsyncStore, Store
from gateway.store.instances import Instance
from gateway.store.jobs import Job, NewMessage, Quota, QuotaReached, new_id
from gateway.store.outbox import (
    Notice,
    NoticeKind,
    NoticeState,
    alert,
    alert_subject,
    ar_mail,
    is_alert,
    is_ar_mail,
    kind_family,
)
from gateway.store.partials import NewPart, OpenSet, Part, PartTaken
from gateway.store.receipts import number_tail
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION, StoreError, StoreUnavailable
from gateway.store.states import FINAL_STATES, IN_FLIGHT_STATES, Delay, Ending, State, delay_of

__all__ = [
    "DATABASE_ERRORS", "FINAL_STATES", "IN_FLIGHT_STATES", "MIGRATIONS", "SCHEMA_VERSION", "AsyncStore", "Delay",
    "Ending", "Instance", "Job", "Location", "NewMessage", "NewPart", "Notice", "NoticeKind", "NoticeState",
    "OpenSet", "Part", "PartTaken", "PostgreSQL", "Quota", "QuotaReached", "State", "Store", "StoreError",
    "StoreUnavailable", "alert", "alert_subject", "ar_mail", "delay_of", "is_alert", "is_ar_mail", "kind_family",
    "location", "new_id", "number_tail",
]
