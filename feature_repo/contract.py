"""The use case's event contract: the fields and limits every validator applies.

The bus and push decoders (`streaming.events`), the batch suites
(`expectations.suites`) and the scoring API (`serving.schemas`) import these,
so an event one of them accepts the others accept too.
"""

from __future__ import annotations

TRANSACTION_FIELDS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
REPORT_FIELDS = ("TRANSACTION_ID", "REPORT_DATETIME")

MAX_ID = 2**63 - 1
"""Ids land as int64."""
MAX_AMOUNT = 10_000_000.0
"""Amounts must be below this: at or above it is a unit or parsing error upstream, not a card payment."""
MAX_FIELD_CHARS = 64
"""The longest text a field may hold, applied to every string value of a required field."""
MAX_EVENT_BYTES = 4096
"""Payloads above this are refused unparsed; a rejection keeps at most this many bytes of its payload."""
