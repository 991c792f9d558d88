"""Signal numbers to names."""

from __future__ import annotations

import signal


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        if signal.SIGRTMIN <= num <= signal.SIGRTMAX:
            return f"SIGRTMIN+{num - signal.SIGRTMIN}"
        return f"SIG{num}"
