"""Which inputs went silent while the rest of the rig kept sending (ROS-free).

A watched input (a camera) is *silent* once the rig has been active for more than
``silent_after_ns`` without it: some input arrived in that span, with no pause of the whole rig
longer than ``silent_after_ns`` (a bag that ended, a paused replay: nothing is silent then, the
node is idle). A camera that has sent nothing since start-up goes silent the same way, so a
mistyped topic is reported too. Every change is an event: ``("silent", name, gap_ns)`` when it
goes silent, ``("back", name, silent_for_ns)`` when its next message arrives.

Times are the caller's clock (integer ns; the node's ROS clock, so a slowed replay on sim time
keeps the same threshold in bag time). A clock that runs backwards restarts the timers.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SilenceWatch"]


class SilenceWatch:
    """Args:
        watched: the inputs to report (e.g. the camera names).
        silent_after_ns: ``> 0``; how long the rig may run without one of them.
    """

    def __init__(self, watched: Iterable[str], silent_after_ns: int):
        if silent_after_ns <= 0:
            raise ValueError(f"silent_after_ns must be > 0, got {silent_after_ns}")
        self.silent_after_ns = int(silent_after_ns)
        self._since: dict[str, int | None] = dict.fromkeys(watched)  # start of each input's current gap
        self._silent: dict[str, int] = {}  # silent input -> when its gap began
        self._last_any: int | None = None

    def arrived(self, name: str, now_ns: int) -> list[tuple[str, str, int]]:
        """An input arrived at ``now_ns`` (``name`` need not be watched: any input shows the rig runs).
        Returns the events this arrival reveals (see the module docstring)."""
        now, events = int(now_ns), []
        if self._last_any is None or now < self._last_any or now - self._last_any > self.silent_after_ns:
            for n in self._since:  # start-up, a pause of the whole rig, or the clock ran back: restart
                self._since[n] = now
        self._last_any = now
        if name in self._since:
            self._since[name] = now
            if name in self._silent:
                events.append(("back", name, now - self._silent.pop(name)))
        for n, since in self._since.items():
            if n not in self._silent and now - since > self.silent_after_ns:
                self._silent[n] = since
                events.append(("silent", n, now - since))
        return events

    def silent(self) -> list[str]:
        """The inputs silent now, in watch order."""
        return [n for n in self._since if n in self._silent]
