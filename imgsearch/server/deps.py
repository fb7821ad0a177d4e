"""What routes are given: the catalog, and the caller's key, checked once per request.

A key is checked by :class:`~imgsearch.server.keyring.Keyring` against the database on every
request. A tenant's key scopes everything the request does to its tenant: the routes pass that tenant to
the library, which runs the request's statements under the tenant's row-level security. An admin
key sees every tenant, and may name one.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from imgsearch.access.keys import Principal
from imgsearch.catalog import Catalog
from imgsearch.errors import InvalidInput
from imgsearch.ingest import checks
from imgsearch.server.keyring import Keyring
from imgsearch.server.problems import Forbidden, Unauthorized

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A key from `imgsearch tenant create-key TENANT` (or `--admin`), as `Authorization: Bearer KEY`.",
)


async def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


async def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None:
        raise Unauthorized("no API key: send `Authorization: Bearer KEY`")
    keyring: Keyring = request.app.state.keyring
    principal = await keyring.verify(credentials.credentials)
    if principal is None:
        raise Unauthorized("the API key is malformed, unknown or revoked")
    request.state.principal = principal
    return principal


async def known_query(request: Request) -> None:
    """A query parameter the route doesn't take is a 400 naming it: a typo (``?on_duplicat=reject``)
    would otherwise be ignored, and the request do what it wasn't asked to."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    allowed = _query_names(route.dependant)
    unknown = sorted(set(request.query_params.keys()) - allowed)
    if unknown:
        takes = f"it takes {sorted(allowed)}" if allowed else "it takes none"
        raise InvalidInput(f"unknown query parameters {unknown} for {request.method} {route.path}: {takes}")


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def tenant_of(principal: Principal, requested: Any = None) -> str | None:
    """The tenant a request acts for: a tenant key's own (it may not name one), or for an admin
    key the one it names, if any (None: every tenant)."""
    if principal.admin:
        return None if requested is None else checks.identifier(requested, "tenant")
    if requested is not None:
        raise Forbidden("a tenant's key acts for its own tenant only: leave `tenant` out")
    return principal.tenant


Model = TypeVar("Model", bound=BaseModel)

JSON_TYPES = ("", "application/json")


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body with :func:`json_body`."""
    reference = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}}


async def json_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as ``model``, parsed by pydantic's own JSON parser: a 768-number
    vector costs a tenth of what ``json.loads`` and then validating the objects it made costs, a
    few percent of a search (bench/server/serve.py)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise HTTPException(415, f"send application/json, not {media_type!r}")
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
