"""Small types shared by the data modules, kept apart so that none of them has to import another for a name."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, int], None]
"""A progress callback: (description, done, total); total is 0 when unknown."""
