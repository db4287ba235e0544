"""Following an alias while serving: when `@alias` moves, the version it names takes over.

`champion serve --reload-on-alias-change SECONDS` asks the registry that often which version the
alias names, and SIGHUP asks at once. A new version is loaded and verified beside the served one and
takes over from the next batch (requests in flight finish on the old one); one that fails to load (a
hash mismatch, say) is reported and the old one kept. A pinned `--version` has nothing to follow.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Coroutine

from champion.deploy.model import ServedModel, load_model
from champion.progress import say
from champion.registry import tracking


class AliasFollower:
    """Swaps `state["model"]` for the version `alias` moves to, on a timer, on SIGHUP, or both."""

    def __init__(self, state: dict[str, Any], alias: str | None, quiet: bool):
        self.state = state  # the app's: handlers read "model" from it per request
        self.alias = alias  # None: a pinned version
        self.quiet = quiet
        self.switching = asyncio.Lock()  # the timer and SIGHUP never load the same version twice at once
        self.tasks: set[asyncio.Task] = set()
        self.sighup = False

    def start(self, reload_seconds: float | None, sighup: bool) -> None:
        """Check every `reload_seconds` (with an alias), and on SIGHUP when `sighup`; in the running loop."""
        if self.alias and reload_seconds:
            self._spawn(self._watch(reload_seconds))
        if sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hangup)
            self.sighup = True

    def stop(self) -> None:
        if self.sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in list(self.tasks):
            task.cancel()

    def hangup(self) -> None:
        if self.alias is None:
            say(f"SIGHUP: serving pinned version {self.state['model'].version}, nothing to follow", False)
            return
        self._spawn(self.follow())

    async def follow(self) -> None:
        """Serve the version the alias names now, if it moved and that version loads."""
        async with self.switching:
            current = self.state["model"]
            try:
                new = await self._moved_to(current)
            except Exception as exc:  # noqa: BLE001 - keep serving what is loaded; say why not the new one
                say(f"@{self.alias} of {current.registry_name}: not reloaded, still serving v{current.version}: {exc}", False)
                return
            if new is None:
                return
            self.state["model"] = new  # requests prepared for the old model are still answered by it
            say(f"@{self.alias} moved: now serving {new.registry_name} v{new.version} (was v{current.version})", self.quiet)

    async def _moved_to(self, current: ServedModel) -> ServedModel | None:
        """The version the alias names, loaded and verified; None while it is still `current`'s."""
        loop = asyncio.get_running_loop()
        mv = await loop.run_in_executor(None, tracking.model_version, current.registry_name, self.alias, None)
        if str(mv.version) == current.version:
            return None
        return await loop.run_in_executor(None, load_model, current.registry_name, self.alias, str(mv.version))

    async def _watch(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.follow()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self.tasks.discard)
