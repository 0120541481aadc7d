"""/v1/usage: requests, tokens, cost, errors and durations, grouped, over a time range (from rollups)."""

from __future__ import annotations

from typing import Annotated, get_args

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from chatledger.errors import InvalidRequest
from chatledger.store.usage import GroupBy, UsageQuery, usage

router = APIRouter(tags=["usage"])
GROUPS = get_args(GroupBy)


@router.get("/v1/usage", summary="Usage and cost, grouped",
            description="Totals per group over `from`..`to` (ms since the epoch; hourly resolution, since they "
                        "come from the writer's hourly and daily rollups). `group_by` takes a comma-separated list of "
                        "`day`, `hour`, `model`, `provider`, `api_key`. Each row has requests, errors, tokens, "
                        "cost (USD, where the model's price is known; `unpriced_requests` counts the rest), "
                        "`avg_duration_ms` and `p95_duration_ms` (upper edge of a power-of-two bucket).")
def get_usage(
    request: Request,
    group_by: Annotated[str, Query(description="e.g. `day,model`.")] = "day",
    since: Annotated[int | None, Query(alias="from", ge=0)] = None,
    until: Annotated[int | None, Query(alias="to", ge=0)] = None,
    model: str | None = None,
    provider: str | None = None,
    api_key_hash: str | None = None,
) -> Response:
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or len(set(groups)) != len(groups):
        raise InvalidRequest(f"group_by takes distinct values among {', '.join(GROUPS)}; got {group_by!r}.",
                             param="group_by", code="invalid_parameter")
    if since is not None and until is not None and until <= since:
        raise InvalidRequest("`to` must be after `from`.", param="to", code="invalid_parameter")
    query = UsageQuery(groups, since, until, model, provider, api_key_hash)  # type: ignore[arg-type]
    with request.app.state.reader.engine.connect() as connection:
        result = usage(connection, query)
    # Hundreds of rows of plain numbers and strings: orjson writes them as they are, where FastAPI's
    # encoder would walk every value first (a third of the call for a month by day and model).
    return Response(orjson.dumps(result), media_type="application/json")
