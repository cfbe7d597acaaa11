"""The job store: the only link between the stages, and the only code that speaks SQL."""

from gateway.store.base import (
    WAKE_JOBS,
    WAKE_NOTICES,
    WAKE_RECEIPTS,
    Location,
    PostgreSQL,
    database_errors,
    location,
    unreachable_errors,
)
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
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION, StoreError, StoreUnavailable, StoreUnreachable
from gateway.store.states import FINAL_STATES, IN_FLIGHT_STATES, Delay, Ending, State, delay_of
from gateway.store.wakeups import WAKE_ALL, Wakeups

__all__ = [
    "FINAL_STATES", "IN_FLIGHT_STATES", "MIGRATIONS", "SCHEMA_VERSION", "AsyncStore", "Delay",
    "Ending", "Instance", "Job", "Location", "NewMessage", "NewPart", "Notice", "NoticeKind", "NoticeState",
    "OpenSet", "Part", "PartTaken", "PostgreSQL", "Quota", "QuotaReached", "State", "Store", "StoreError",
    "StoreUnavailable", "StoreUnreachable", "alert", "alert_subject", "ar_mail", "delay_of",
    "is_alert", "is_ar_mail", "kind_family", "location", "new_id", "number_tail", "WAKE_ALL", "WAKE_JOBS",
    "WAKE_NOTICES", "WAKE_RECEIPTS", "Wakeups", "database_errors", "unreachable_errors",
]
