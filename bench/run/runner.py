"""Runs a suite's trials in order, overlapping the dead time between them.

While trial k's load generator drains and its server stops, trial k+1's
server is started and, once ready, its load generator too: their start-up
(an interpreter, imports, connecting) is most of a short trial's wall time.
Measurement windows never overlap in practice -- a generator warms up well
after the previous trial is done -- and a trial whose window did open early is
flagged in its reason ("overlap"), not silently kept.

Except after a server of hundreds of tasks (processes or threads): their exit
(memory returned, sockets closed) takes seconds and weighs on the machine as
the next trial warms up, putting its load generator behind its schedule, and
the next server's start slows that exit in turn.  So after such a server the
next trial begins once it is gone (the measurements: docs/method.md).
"""

from __future__ import annotations

import threading
import time

from bench.run.console import Display, describe
from bench.run.launch import Launched, TrialSpec
from bench.run.trial import Trial
from bench.sample.environment import Placement

# A server tree of more tasks than this is not overlapped (see above).
OVERLAP_MAX_TASKS = 200


class Runner:
    def __init__(self, specs: list[TrialSpec], where: Placement, use_cgroup: bool) -> None:
        self.specs, self.where, self.use_cgroup = specs, where, use_cgroup
        self.live: dict[int, tuple[Trial, threading.Thread | None]] = {}
        self.lock = threading.RLock()
        self.closed = False
        self.previous_done: float | None = None

    def _new(self, index: int) -> Trial:
        spec = self.specs[index]
        ahead = (lambda: self._begin_ahead(index + 1)) if index + 1 < len(self.specs) else None
        return Trial(spec, self.where, Launched.start(spec, self.where, self.use_cgroup), ahead)

    def _begin_ahead(self, index: int) -> None:
        # Called from trial index-1's stderr reader when its window closes.
        with self.lock:
            if self.closed or index in self.live:
                return
            previous = self.live.get(index - 1)
            if previous is not None and previous[0].server_tasks() > OVERLAP_MAX_TASKS:
                return
            trial = self._new(index)
            thread = threading.Thread(target=trial.begin, name=f"begin-{index}", daemon=True)
            self.live[index] = (trial, thread)
            thread.start()

    def run(self, index: int, display: Display) -> dict:
        spec = self.specs[index]
        label = describe(spec.scenario, spec.model, spec.point, spec.repeat)
        display.started(label)
        with self.lock:
            entry = self.live.get(index)
            if entry is None:
                entry = self.live[index] = (self._new(index), None)
        trial, thread = entry
        if thread is None:
            trial.begin()
        else:
            thread.join()
        try:
            record = trial.finish(self.previous_done)
        finally:
            with self.lock:
                self.live.pop(index, None)
        self.previous_done = time.monotonic()
        display.finished(label, record)
        return record

    def drop(self, index: int) -> None:
        """Trial `index` will not run: stop it if it was started ahead."""
        with self.lock:
            entry = self.live.pop(index, None)
        if entry is None:
            return
        trial, thread = entry
        if thread is not None:
            trial.server.kill()
            thread.join(20)
        trial.abort()

    def close(self) -> None:
        """Stop every trial still in flight (after Ctrl-C or an error)."""
        with self.lock:
            self.closed = True
            entries = list(self.live.values())
            self.live.clear()
        for trial, thread in entries:
            if thread is not None:
                trial.server.kill()  # ends its wait for the server to be ready
                thread.join(20)
            trial.abort()
