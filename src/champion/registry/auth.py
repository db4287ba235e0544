"""Credentials for the team's MLflow server: an API key header, and one message when a credential is refused.

Basic auth (`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`) and bearer tokens
(`MLFLOW_TRACKING_TOKEN`) are MLflow's own: its REST client sends them, and champion adds nothing.
What champion adds is an API key header for servers behind a gateway that wants one:
`ApiKeyHeaderProvider` is registered under MLflow's `mlflow.request_header_provider` entry point
(pyproject.toml), so MLflow consults it for every request its REST client makes
(`mlflow.utils.rest_utils.http_request`): tracking and registry calls, and the artefact uploads,
downloads and listings of `mlflow-artifacts:` (proxied) artefacts, which go through the same
function. Artefacts the client writes to S3 or a filesystem itself never pass through it, and
presigned multipart transfers go straight to the object store, so no key goes there.

The key is sent only to the tracking server: MLflow hands a provider no URL, so the provider reads
which host the request goes to from the `host_creds` argument of the `http_request` call that is
asking (`_request_origin`), and adds the key only when its scheme, host and port are those of the
tracking URI. Where that cannot be read (a future MLflow that asks from elsewhere), no key is sent:
the request then fails as unauthenticated, which says so, rather than leaking the key.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider

from champion.errors import ConfigError

# The rest of MLflow (mlflow, mlflow.utils.rest_utils, .exceptions, .credentials) is imported inside the
# functions that use it: MLflow imports this module through its `mlflow.request_header_provider` entry
# point while MLflow itself may still be importing (rest_utils reaches that registry), so only the base
# class above is imported here.

# Variable names carry no double underscore: CHAMPION_<SECTION>__<KEY> is the config's own form.
API_KEY_ENV = "CHAMPION_API_KEY"
LEGACY_API_KEY_ENV = "AM_SC_API_KEY"  # the name the seed scripts read
API_KEY_HEADER_ENV = "CHAMPION_API_KEY_HEADER"
DEFAULT_API_KEY_HEADER = "X-Api-Key"

CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (basic auth), or MLFLOW_TRACKING_TOKEN "
    f"(bearer token), or {API_KEY_ENV} (sent as the {{header}} header)"
)

# RFC 9110 token: what an HTTP field name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the key must not replace: MLflow's own credentials and what requests computes per request.
_RESERVED_HEADERS = {"authorization", "host", "content-length", "content-type", "transfer-encoding", "cookie"}
_DEFAULT_PORTS = {"http": 80, "https": 443}

_logger = logging.getLogger(__name__)


def api_key() -> str | None:
    """The API key: CHAMPION_API_KEY, else AM_SC_API_KEY (an empty value counts as unset)."""
    return os.environ.get(API_KEY_ENV) or os.environ.get(LEGACY_API_KEY_ENV) or None


def api_key_header() -> str:
    """The header that carries the key: CHAMPION_API_KEY_HEADER, else X-Api-Key.

    Raises:
        ConfigError: the name is not an HTTP header name, or is one MLflow or HTTP itself sets.
    """
    name = os.environ.get(API_KEY_HEADER_ENV) or DEFAULT_API_KEY_HEADER
    if not _HEADER_NAME.match(name):
        raise ConfigError(
            f"{API_KEY_HEADER_ENV}={name!r} is not an HTTP header name (letters, digits and !#$%&'*+.^_`|~- only); "
            f"unset it to send the key as {DEFAULT_API_KEY_HEADER}"
        )
    if name.lower() in _RESERVED_HEADERS:
        raise ConfigError(
            f"{API_KEY_HEADER_ENV}={name!r} would replace a header MLflow or HTTP sets itself; "
            f"choose another name (default {DEFAULT_API_KEY_HEADER}). For bearer tokens set MLFLOW_TRACKING_TOKEN."
        )
    return name


def check_environment() -> None:
    """Fail before any work when the API key settings could not be sent as they are.

    Raises:
        ConfigError: a bad header name, or a key holding characters an HTTP header cannot carry.
    """
    api_key_header()
    key = api_key()
    if key is not None and (key != key.strip() or any(ord(c) < 32 or ord(c) == 127 for c in key)):
        source = API_KEY_ENV if os.environ.get(API_KEY_ENV) else LEGACY_API_KEY_ENV
        raise ConfigError(
            f"{source} holds a control character or leading/trailing white space, which an HTTP header "
            "cannot carry; set it to the key alone (no newline)"
        )


def origin(uri: str | None) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URI, default ports filled in; None for any other URI."""
    if not uri:
        return None
    try:
        parts = urlsplit(uri)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:  # a malformed port: not a place to send a key to
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower(), port or _DEFAULT_PORTS[scheme]


def is_tracking_server(url: str | None, tracking_uri: str | None) -> bool:
    """The host rule: `url` has the scheme, host and port of the tracking URI (the key goes only there)."""
    target = origin(url)
    return target is not None and target == origin(tracking_uri)


def _request_origin() -> str | None:
    """The host the MLflow request being prepared goes to: `host_creds.host` of the calling
    `mlflow.utils.rest_utils.http_request` frame, or None when the caller is not that function.

    MLflow's provider interface passes no URL; reading the caller's argument is the one way to
    tell the tracking server from another host without patching MLflow.
    """
    from mlflow.utils import rest_utils

    target = inspect.unwrap(rest_utils.http_request).__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is target:
            return getattr(frame.f_locals.get("host_creds"), "host", None)
        frame = frame.f_back
    return None


class ApiKeyHeaderProvider(RequestHeaderProvider):
    """Adds the API key header to MLflow's requests to the tracking server (see the module docstring)."""

    def in_context(self) -> bool:
        return api_key() is not None

    def request_headers(self) -> dict[str, str]:
        import mlflow

        key = api_key()
        if key is None:
            return {}
        host = _request_origin()
        if host is None:
            # Fail closed, and say why once: a request champion cannot place gets no key.
            _warn_once(
                f"{API_KEY_ENV} not sent: MLflow asked for request headers from outside "
                "mlflow.utils.rest_utils.http_request, so the destination is unknown"
            )
            return {}
        if not is_tracking_server(host, mlflow.get_tracking_uri()):
            return {}
        return {api_key_header(): key}


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        _logger.warning(message)


# --- refused credentials ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    status: int  # 401 or 403
    said: str  # the server's own words, shortened ("" when it gave none)


def refusal(exc: BaseException) -> Refusal | None:
    """The tracking server refusing the credentials (401 or 403) in `exc` or an exception it was
    raised from, else None. MLflow reports it as an MlflowException (REST calls) or as requests'
    HTTPError (artefact transfers through the server). An object store's refusal is not the
    server's and is left alone: a botocore error in the chain (MLflow maps S3's AccessDenied to the
    same error codes), or an HTTPError from another host (a presigned URL)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(type(e).__module__.split(".")[0] in ("botocore", "boto3") for e in chain):
        return None
    for e in chain:
        if isinstance(e, MlflowException):
            status, text = e.get_http_status_code(), e.message
            # A plain-text answer reaches us as "... failed with error code 401 != 200. Response body: '...'".
            body = re.search(r"Response body: '(.*)'", text, re.DOTALL)
            text = body.group(1) if body else text
        else:
            response = getattr(e, "response", None)
            if not is_tracking_server(getattr(response, "url", None), mlflow.get_tracking_uri()):
                continue
            status, text = getattr(response, "status_code", None), getattr(response, "text", "") or ""
        if status in (401, 403):
            said = " ".join(text.split())
            return Refusal(status, said if len(said) <= 160 else said[:157] + "...")
    return None


def sent_credentials() -> str:
    """What MLflow sends to the tracking server, in words (never the secrets themselves)."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    sent = []
    if creds.username and creds.password:
        sent.append(f"basic auth as user {creds.username!r}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        sent.append("a bearer token (MLFLOW_TRACKING_TOKEN)")
    if api_key() is not None:
        sent.append(f"an API key in header {_header_for_message()}")
    if sent:
        return " and ".join(sent)
    if creds.username or creds.password:
        given, missing = (
            ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
            if creds.username
            else ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME")
        )
        return f"nothing ({given} is set but {missing} is not, and basic auth needs both)"
    return "nothing (no credentials are set)"


def refusal_message(refused: Refusal, action: str, uri: str) -> str:
    """The one message for a refused or missing credential: what was refused, what was sent, what to set."""
    variables = CREDENTIAL_VARIABLES.format(header=_header_for_message())
    said = f" (the server said: {refused.said!r})" if refused.said else ""
    if refused.status == 401:
        return (
            f"MLflow at {uri} refused to {action}: 401 Unauthorized{said}, the server did not accept the credentials "
            f"(sent: {sent_credentials()}). Set {variables} for this server."
        )
    return (
        f"MLflow at {uri} refused to {action}: 403 Forbidden{said}, the credentials are valid but lack the permission "
        f"(sent: {sent_credentials()}). Ask the server's admin for EDIT permission on this experiment or model, "
        f"or set {variables} to credentials that have it."
    )


def _header_for_message() -> str:
    try:
        return api_key_header()
    except ConfigError:
        return DEFAULT_API_KEY_HEADER
