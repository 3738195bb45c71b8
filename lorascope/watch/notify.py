"""Waking up when the run directory changes.

With the optional ``watchdog`` package (``pip install 'lorascope[watch]'``) the
filesystem's own change notifications are used (inotify on Linux, FSEvents on macOS,
kqueue on the BSDs, ReadDirectoryChangesW on Windows): the watch sleeps until the trainer
writes.  Without it, or where notifications cannot be set up (too many inotify watches,
a file system that has none), it polls every ``--interval`` seconds.  Either way a
poll at the interval backs the notifications up: a network file system may deliver no
events for writes made on another machine.

Only writes wake the watch, and only they are asked of the kernel (watchdog's
``event_filter`` sets the inotify mask): tensorboard's writer opens and closes the event
file for every record, and the open / close / close-without-write events of that and of
our own reads, handled one by one in Python, cost most of a core at a trainer's rate
(bench/README.md); with the mask, a few percent.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

# watchdog event types that mean the folder changed
_WRITES = {"modified", "created", "deleted", "moved", "closed"}
_TREE = {"created", "deleted", "moved"}


class Notifier:
    """``wait(timeout)``: until a change is notified or the timeout passes."""

    def __init__(self, root: Path, use_notifications: bool = True) -> None:
        self.root = Path(root)
        self.kind = "polling"
        self.why = ""
        self._event = threading.Event()
        self._tree = True                  # files may have appeared: walk again
        self._observer = None
        if use_notifications:
            self._start()

    def _start(self) -> None:
        try:
            from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
                                         FileCreatedEvent, FileDeletedEvent, FileModifiedEvent,
                                         FileMovedEvent, FileSystemEventHandler)
            from watchdog.observers import Observer
        except ImportError:
            self.why = "watchdog is not installed (pip install 'lorascope[watch]')"
            return
        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                t = event.event_type
                if t not in _WRITES:
                    return
                if t in _TREE or event.is_directory:
                    outer._tree = True
                outer._event.set()

        try:
            obs = Observer()
            wanted = [FileModifiedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent,
                      DirCreatedEvent, DirDeletedEvent, DirMovedEvent]
            try:
                obs.schedule(Handler(), str(self.root), recursive=True, event_filter=wanted)
            except TypeError:            # a watchdog before 4.0: every event, filtered here
                obs.schedule(Handler(), str(self.root), recursive=True)
            obs.daemon = True
            obs.start()
        except Exception as e:   # no inotify instance left, a file system without events
            self.why = f"no change notifications ({type(e).__name__}: {str(e)[:80]})"
            return
        self._observer = obs
        self.kind = type(obs).__name__.replace("Observer", "").lower() or "notifications"

    @property
    def active(self) -> bool:
        return self._observer is not None

    def wait(self, timeout: float) -> bool:
        """True when woken by a change (False: the timeout passed)."""
        if self._observer is None:
            time.sleep(max(0.0, timeout))
            return False
        hit = self._event.wait(max(0.0, timeout))
        self._event.clear()
        return hit

    def tree_changed(self) -> bool:
        """Whether files or folders were created, deleted or moved since the last call."""
        t, self._tree = self._tree, False
        return t

    def close(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=2)
            except Exception:
                pass
            self._observer = None
