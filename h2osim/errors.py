"""The two exceptions every h2osim command turns into one line on stderr and exit code 2.

``TraceError`` is a trace file (or array set) that breaks the format contract
(docs/trace-format.md); ``UserError`` is any other bad input the user can fix (a missing
install, a model without attention weights). Both say what to do in their message.
See docs/architecture.md for where they are raised and caught.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input that is not a ValueError (e.g. a missing install); the message says what to do."""


class TraceError(ValueError):
    """A trace file or array set that breaks the v1 contract; the message says what."""
