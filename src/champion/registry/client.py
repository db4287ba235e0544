"""The lowest layer of the registry package: an MLflow client, and MLflow's failures as champion's errors.

Everything that talks to MLflow goes through `registry_errors`, so that an outage or a refused
credential is one message that says what was being done, never an empty answer. The paged searches
are here too: MLflow answers at most 1000 items a page, and a caller that forgot the next page would
read a partial registry as the whole.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

from champion import names
from champion.errors import ChampionError, RegistryError

# MLflow (seconds to import) is imported inside the functions that use it: `champion --help` and
# `champion serve` import this module.


def client():
    from mlflow import MlflowClient

    return MlflowClient()


# `scheme://user:password@host`: credentials MLFLOW_TRACKING_URI may carry, and MLflow's messages repeat.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by `***` (`https://***@host`)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


@contextlib.contextmanager
def registry_errors(action: str) -> Iterator[None]:
    """Turn any failure to talk to MLflow into a RegistryError that says what was being done.

    A lost connection must never be read as an empty answer ("no champion"), so nothing is
    swallowed here: callers that expect "not found" check for it explicitly first.
    """
    try:
        yield
    except ChampionError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with context, never swallowed
        import mlflow

        uri = redact(mlflow.get_tracking_uri())
        if refused := credential_error(exc, action):
            raise refused from exc
        raise RegistryError(
            f"MLflow could not {action} at {uri}: {type(exc).__name__}: {redact(_first_line(exc))}. "
            "Check that the tracking server is running and MLFLOW_TRACKING_URI is right."
        ) from exc


def credential_error(exc: BaseException, action: str) -> RegistryError | None:
    """The one error for a refused or missing credential (401/403 from the server), naming the
    variables to set; None when `exc` is not that. A refusal is not an outage: no "is it running"."""
    from champion.registry import auth  # lazy: it subclasses an MLflow class, and importing MLflow takes seconds

    refused = auth.refusal(exc)
    if refused is None:
        return None
    import mlflow

    return RegistryError(redact(auth.refusal_message(refused, action, mlflow.get_tracking_uri())))


def is_not_found(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def paged(search: Any, *args: Any, limit: int | None = None, **kwargs: Any) -> list:
    """Every item an MLflow client search finds (`search_runs`, `search_model_versions`, ...), all pages.

    Args:
        search: The bound client method; it takes `max_results` and `page_token`.
        limit: At most this many items (None: all of them).
    """
    found: list = []
    token = None
    while limit is None or len(found) < limit:
        page = search(*args, max_results=1000 if limit is None else min(1000, limit - len(found)), page_token=token, **kwargs)
        found.extend(page)
        token = page.token
        if not token:
            break
    return found


def registered_models() -> list:
    """Every registered model, all pages of the search (it answers at most 1000 at a time), without
    the hidden `<name>@lease` models that serialise alias moves (`champion.registry.lease`)."""
    with registry_errors("list the registered models"):
        return [m for m in paged(client().search_registered_models) if not names.is_lease_model(m)]


def model_versions(filter_string: str, action: str) -> list:
    """Every model version `filter_string` finds, all pages of the search (at most 1000 a page)."""
    with registry_errors(action):
        return paged(client().search_model_versions, filter_string)
