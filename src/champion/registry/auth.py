"""Credentials for the team's MLflow server: an API key header, credentials kept to the tracking
server's origin, and one message when a credential is refused.

Basic auth (`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`) and bearer tokens
(`MLFLOW_TRACKING_TOKEN`) are MLflow's own: its REST client puts them in the Authorization header.
champion adds an API key header for servers behind a gateway that wants one, through MLflow's
supported plugin point for this: `ApiKeyAuthProvider` is registered under the
`mlflow.request_auth_provider` entry point (pyproject.toml) as `champion-api-key`, and
`setup_tracking` selects it (`MLFLOW_TRACKING_AUTH=champion-api-key`). MLflow then hands every request
its REST client makes (`mlflow.utils.rest_utils.http_request`: tracking and registry calls, and the
uploads, downloads and listings of `mlflow-artifacts:` artefacts) to `ApiKeyAuth`, a `requests`
AuthBase that sees the request's URL. Artefacts the client writes to S3 or a filesystem itself never
pass through it, and presigned multipart transfers go straight to the object store.

`ApiKeyAuth` adds the key only when the request goes to the tracking URI's scheme, host and port,
and it follows the request through redirects: before `requests` follows one to another origin, the
key and the Authorization header are taken off (`requests` itself drops only Authorization, and only
when the host name changes), so no credential reaches another origin.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
from requests.auth import AuthBase

from champion.errors import ConfigError

# The rest of MLflow (mlflow, .exceptions, .credentials) is imported inside the functions that use it:
# MLflow imports this module through its `mlflow.request_auth_provider` entry point while MLflow itself
# may still be importing, so only the base class above is imported here.

# Variable names carry no double underscore: CHAMPION_<SECTION>__<KEY> is the config's own form.
API_KEY_ENV = "CHAMPION_API_KEY"
LEGACY_API_KEY_ENV = "AM_SC_API_KEY"  # the name the seed scripts read
API_KEY_HEADER_ENV = "CHAMPION_API_KEY_HEADER"
DEFAULT_API_KEY_HEADER = "X-Api-Key"
# MLflow's variable naming the request auth provider, and this module's provider name in it.
TRACKING_AUTH_ENV = "MLFLOW_TRACKING_AUTH"
PROVIDER_NAME = "champion-api-key"

CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (basic auth), or MLFLOW_TRACKING_TOKEN "
    f"(bearer token), or {API_KEY_ENV} (sent as the {{header}} header)"
)

# RFC 9110 token: what an HTTP field name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the key must not replace: MLflow's own credentials and what requests computes per request.
_RESERVED_HEADERS = {"authorization", "host", "content-length", "content-type", "transfer-encoding", "cookie"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    chosen = os.environ.get(TRACKING_AUTH_ENV)
    if chosen and chosen != PROVIDER_NAME and key is not None:
        source = API_KEY_ENV if os.environ.get(API_KEY_ENV) else LEGACY_API_KEY_ENV
        raise ConfigError(
            f"{source} is set, but {TRACKING_AUTH_ENV}={chosen!r} selects another MLflow auth provider, so the "
            f"key could not be sent; unset {TRACKING_AUTH_ENV} (champion then selects {PROVIDER_NAME!r}) or unset {source}"
        )
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


def use_provider() -> None:
    """Select this module's auth provider for MLflow's requests, unless the user chose another one
    (`check_environment` refuses an API key that the other one would not send)."""
    os.environ.setdefault(TRACKING_AUTH_ENV, PROVIDER_NAME)


class ApiKeyAuth(AuthBase):
    """The API key on requests to the tracking server, and no credential after a redirect elsewhere."""

    def __call__(self, request):  # requests.PreparedRequest
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
        key = api_key()
        if key is not None and is_tracking_server(request.url, tracking_uri):
            request.headers[api_key_header()] = key
        header = _header_for_message()

        def strip_on_redirect(response, **_: object):
            # Runs before requests builds the next hop from `response.request`, on every hop.
            if response.is_redirect:
                target = urljoin(response.url, response.headers["location"])
                if origin(target) != origin(response.url):
                    for name in (header, "Authorization"):
                        response.request.headers.pop(name, None)
            return response

        request.register_hook("response", strip_on_redirect)
        return request


class ApiKeyAuthProvider(RequestAuthProvider):
    """MLflow's plugin for `MLFLOW_TRACKING_AUTH=champion-api-key` (see the module docstring)."""

    def get_name(self) -> str:
        return PROVIDER_NAME

    def get_auth(self) -> ApiKeyAuth:
        return ApiKeyAuth()


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
