"""Waiting on the ROS graph: block until given topics have publishers / subscribers (discovery done)."""

from __future__ import annotations

import time

__all__ = ["wait_for_endpoints"]


def wait_for_endpoints(publishers: tuple[str, ...] = (), subscribers: tuple[str, ...] = (),
                       timeout_s: float = 60.0, what: str = "the nodes") -> None:
    """Return once every topic in ``publishers`` has a publisher and every one in ``subscribers`` a subscriber.

    Raises TimeoutError naming ``what`` after ``timeout_s``.
    """
    import rclpy  # lazy: the CLI imports this module (demo) and --help stays quick without rclpy (~70 ms)

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node("graph_probe", context=ctx)
    try:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if all(probe.count_publishers(t) > 0 for t in publishers) and \
                    all(probe.count_subscribers(t) > 0 for t in subscribers):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} did not come up within {timeout_s:.0f} s")
    finally:
        probe.destroy_node()
        rclpy.shutdown(context=ctx)
