"""A record's journey: the worker encodes it, the parent rebuilds it (``LogRecord`` <-> bytes).

Records travel as a flat tuple of the standard ``LogRecord`` fields in a fixed order plus a
dict of the user's ``extra`` attributes, not as a pickled ``LogRecord``: a tuple is smaller,
quicker to pickle and to load, and the parent rebuilds the record without running
``LogRecord.__init__`` (which reads the clock, the pid and the thread again). Every front
uses this, whatever carries the bytes: the process channel frames them
(``logexec._channel``), Dask ships them in its events.

No record is lost because of its content, and neither side fails because of it:

* **Worker side** (``record_values``, ``encode_values``; ``_encode``): never raises, whatever
  the record holds. The exact ``LogRecord`` class takes a fast path; anything odd (a deleted
  field, a subclass whose property raises, a name that is not a str) takes a careful path
  that reads each field on its own and puts a default or a marker where a field cannot be
  read. A value that will not pickle travels as its ``repr()``.
* **Parent side** (``decode_values``, ``build_record``, ``decode_record``; ``_rebuild``):
  raises nothing but ``ProtocolError``, whatever the bytes. A payload that pickled in the
  worker but will not unpickle here (a class the parent cannot import, a constructor that
  refuses its own arguments) is unpickled again with only the failing objects replaced by
  ``Unrebuilt`` placeholders. ``ProtocolError`` means the bytes are not a record this
  package could have written: the listener closes that one connection.
"""

from ._encode import MESSAGE_FAILURE_PREFIX, encode_values, record_values, render_exception, render_message
from ._fields import PICKLE_PROTOCOL, RECORD_FIELDS, VALUES_SIZE
from ._rebuild import ProtocolError, Unrebuilt, build_record, decode_record, decode_values

__all__ = [
    "MESSAGE_FAILURE_PREFIX",
    "PICKLE_PROTOCOL",
    "RECORD_FIELDS",
    "VALUES_SIZE",
    "ProtocolError",
    "Unrebuilt",
    "build_record",
    "decode_record",
    "decode_values",
    "encode_values",
    "record_values",
    "render_exception",
    "render_message",
]
