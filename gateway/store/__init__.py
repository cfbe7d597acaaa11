"""The job store: the only link between the stages, and the only code that speaks SQL."""

from gateway.store.core import (
    FINAL_STATES,
    IN_FLIGHT_STATES,
    MIGRATIONS,
    SCHEMA_VERSION,
    AsyncStore,
    Job,
    NewMessage,
    State,
    Store,
    StoreError,
    new_id,
)

__all__ = [
    "FINAL_STATES", "IN_FLIGHT_STATES", "MIGRATIONS", "SCHEMA_VERSION", "AsyncStore", "Job", "NewMessage",
    "State", "Store", "StoreError", "new_id",
]
