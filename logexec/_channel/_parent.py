"""The parent's end of the channel, as a front holds it: a listener and the workers' config.

See the seam in ``logexec._channel``. This is the one object a front makes in the parent:
it owns the listener thread (``_listener``) and the ``WorkerConfig`` that the front passes
to its workers' initializer, and it holds no reference to the front, so that the listener's
life can follow the workers rather than the front object.
"""

from __future__ import annotations

import os
import threading

from .. import _compat
from .._dispatch import Dispatcher
from ._guard import OnWorkerExit
from ._listener import Listener
from ._portable import Address
from ._worker import Levels, LevelsUpdate, WorkerConfig, current_levels, level_changes

# Key size for the listener's HMAC handshake: the size of a SHA-256 block's security level.
KEY_SIZE = 32


class LogChannel:
    """A listener to start and stop, and the config its workers need to reach it.

    ``dispatcher`` gets every record (see ``_dispatch``); ``on_worker_exit``, if given, is
    told on the listener thread of each worker whose connection ended (``WorkerExit``).
    """

    def __init__(self, dispatcher: Dispatcher, on_worker_exit: OnWorkerExit | None = None) -> None:
        # A fresh random key per channel: only this channel's workers can connect.
        self.config = WorkerConfig(os.urandom(KEY_SIZE))
        self._listener = Listener(dispatcher, self.config.key, on_worker_exit)

    def open(self) -> WorkerConfig:
        """Bind the socket workers connect to (idempotent), before any worker starts.

        Returns ``config``, now with the address and the transport the workers follow.
        Raises ``RuntimeError`` once the channel was stopped, ``OSError`` if no socket can
        be made.
        """
        self.config.address = self._listener.bind()
        self.config.transport = self._listener.transport
        return self.config

    def start(self) -> None:
        """Start the listener thread (idempotent). Under fork, only after the workers forked."""
        self._listener.start()

    def stop(self, wait: bool = True) -> None:
        """Handle every record the workers wrote, then stop: only once the last worker is gone."""
        self._listener.stop(wait)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until every record is handled and everything is closed."""
        return self._listener.wait_stopped(timeout)

    @property
    def thread(self) -> threading.Thread | None:
        """The listener thread, once started (a front must not wait for itself on it)."""
        return self._listener.thread

    @property
    def address(self) -> Address:
        """Where workers connect (a path, an abstract name, or a portable address)."""
        return self._listener.address

    @property
    def transport(self) -> str:
        """The transport chosen at ``open()`` (see ``_transports``)."""
        return self._listener.transport


class LevelTracker:
    """A front's side of the workers' levels: the base they start from, and the update
    each task carries once the parent's levels changed (see ``LevelsUpdate``).

    ``base`` is fixed when the tracker is made, before any worker starts (a front puts it
    in ``WorkerConfig.levels``). ``update()``, called under the front's submit lock, costs
    one dict look-up while no level changes (``_compat.LevelWatch``); after a change it
    makes one update, of the loggers that differ from the base only, shared by every task
    until the next change.
    """

    __slots__ = ("_levels", "_update", "_watch", "base")

    def __init__(self) -> None:
        self._watch = _compat.LevelWatch()
        self.base: Levels = current_levels()
        self._levels = self.base
        self._update: LevelsUpdate | None = None

    def update(self) -> LevelsUpdate | None:
        """What the next task carries: None while the levels are the base's."""
        if self._watch.changed():
            # Arm before reading, so that a change made meanwhile is seen next time.
            self._watch.arm()
            levels = current_levels()
            if levels != self._levels:
                self._levels = levels
                version = self._update[0] + 1 if self._update else 1
                self._update = (version, level_changes(self.base, levels), levels[1])
        return self._update
