"""Work done in a forked child process beside this one, on another core.

Python threads do not help when both sides run Python (imports, MLflow's schema migrations): they
take turns on the GIL and together took longer than one after the other. A forked child runs on its
own core with everything imported so far, so only what is not imported yet is paid twice.

The child only builds things on disk whose next reader checks them (a cache entry, a tracking
store); it reports nothing but whether it finished and its stage timings. Whatever goes wrong in it,
the caller does the work itself afterwards and meets any error there, as it would have without the
child: an error is never raised from, or lost in, the child.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Callable

from champion import timings


def die_with_parent(parent: int) -> None:
    """In a child process: be killed when `parent` dies (Linux), so that nothing is left behind,
    blocked forever and holding the parent's stdout open (whoever waits on that would hang)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above: nobody would signal us
            os._exit(1)


class Forked:
    """`work()` running in a forked child from construction until `join` (or `stop`)."""

    def __init__(self, work: Callable[[], None]) -> None:
        parent, recorded = os.getpid(), len(timings.stages())
        sys.stdout.flush()
        sys.stderr.flush()  # nothing buffered is written twice
        self._read: int | None
        self._read, write = os.pipe()
        try:
            self.pid: int | None = os.fork()
        except OSError:  # no memory or process left for a child: the caller does the work itself
            self.pid = None
            os.close(write)
            return
        if self.pid == 0:  # the child: it never returns from here
            os.close(self._read)
            code = 1
            try:
                die_with_parent(parent)
                work()
                os.write(write, json.dumps(timings.stages()[recorded:]).encode())  # well under a pipe's buffer
                code = 0
            except BaseException:  # noqa: BLE001 - not lost: the parent does the work again and meets the error itself
                pass
            finally:
                os._exit(code)  # no atexit handlers, no flushing of the parent's buffers
        os.close(write)

    def join(self) -> bool:
        """Wait for the child; whether `work` finished. Its stages are recorded here, marked `beside`."""
        if self.pid is None:
            self._close()
            return False
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        with os.fdopen(self._read, "rb") as pipe:
            said = pipe.read()
        self._read = None
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            return False
        for s in json.loads(said or b"[]"):
            timings.record(f"{s['stage']} (beside, in a child process)", s["start"], s["end"], s.get("cpu"), beside=True)
        return True

    def stop(self) -> None:
        """Kill the child if it is still running (this process is failing or was interrupted)."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None
        self._close()

    def _close(self) -> None:
        if self._read is not None:
            os.close(self._read)
            self._read = None
