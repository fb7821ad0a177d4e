""":meth:`imgsearch.Catalog.search` from the arguments to its :class:`SearchResult`: every argument
checked before any model work, the query's words read into filters
(:mod:`~imgsearch.search.understanding`), the text embedded, and then, in one transaction on the
database that answers (:mod:`~imgsearch.search.routing`), the hits by mode
(:mod:`~imgsearch.search.hybrid`) and their total and facets (:mod:`~imgsearch.search.facets`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection

from imgsearch.access import tenancy
from imgsearch.db import citus
from imgsearch.embed.model import MAX_TEXT_CHARS
from imgsearch.errors import InvalidQuery
from imgsearch.ingest.vectors import Vector
from imgsearch.learning import adapter, interleave
from imgsearch.learning import queries as learned_queries
from imgsearch.learning.tuning import Adapters
from imgsearch.records import Hit, ModelInfo, SearchResult
from imgsearch.search import facets as facet_counts
from imgsearch.search import hybrid, plans, queries, request, understanding
from imgsearch.search.boosting import Boosting
from imgsearch.search.filters import Filters
from imgsearch.search.hybrid import Fusion
from imgsearch.search.request import Options

__all__ = ["Asked", "Fusion", "Searcher", "search"]

if TYPE_CHECKING:
    from imgsearch.context import Context
    from imgsearch.search.plans import Plan
    from imgsearch.search.routing import Router


DEFAULT_FUSION = Fusion()
T = TypeVar("T")


@dataclass(eq=False)
class Searcher:
    """What one catalog's searches share: its :class:`~imgsearch.context.Context`, the router to
    the database that answers, each tenant's vocabulary and query adapter, and the plan hook."""

    context: Context
    router: Router
    vocabularies: understanding.Vocabularies = field(default_factory=understanding.Vocabularies)
    adapters: Adapters = field(default_factory=Adapters)  # each tenant's active query adapter
    on_search_plan: Callable[[Plan], None] | None = None  # told each statement's plan
    recorder: learned_queries.Recorder = field(init=False)  # writes the searches' rows

    def __post_init__(self) -> None:
        settings = self.context.settings
        self.recorder = learned_queries.Recorder(self.context.engine, settings.record_in_background)

    def before_learning(self) -> None:
        """Before boosts are learned from the feedback: this catalog's searches' rows written, and
        which tenants have boosts read again at the next search."""
        self.recorder.flush()
        self.router.forget_graphs()


@dataclass(frozen=True)
class Asked:
    """A search's arguments besides its filters and options."""

    query: queries.Query
    mode: str | None = None
    parse: bool = True
    facets: bool = False
    total: bool | int = False  # an int: count up to that many matches (facets.TRACK_TOTAL)
    consistent: bool = False
    fusion: hybrid.Fusion | None = None  # None: the default weights and constant
    min_probability: float | None = None
    boost: bool = True  # blend the tenant's learned boosts (imgsearch.search.boosting)
    client_id: str | None = None  # who searched, recorded with the search (User Behavior Insights)
    adapter: bool | None = None  # the tenant's query adapter (None: for text and image queries)
    interleave: str | None = None  # "A,B": two variants' hits drafted in turns (imgsearch.learning.interleave)
    regions: bool = True  # an image by the closer of its whole row and its best region (where it has some)


def check_flags(parse: Any, facets: Any, total: Any, boost: Any = True) -> None:
    for name, value in (("parse", parse), ("facets", facets), ("boost", boost)):
        if not isinstance(value, bool):
            raise InvalidQuery(f"{name} must be true or false, got {value!r}")
    count_limit(total)


def count_limit(total: Any) -> int | None:
    """What ``total`` asks to count up to: None for every match (``True``) or none (``False``),
    else the bound (a whole number from 1 to :data:`~imgsearch.search.facets.MAX_TRACK_TOTAL`)."""
    if isinstance(total, bool):
        return None
    if not isinstance(total, int) or not 1 <= total <= facet_counts.MAX_TRACK_TOTAL:
        raise InvalidQuery(
            f"total must be true, false or a whole number from 1 to {facet_counts.MAX_TRACK_TOTAL:,} "
            f"(count up to that many matches), got {total!r}"
        )
    return total


def _check_client(client_id: Any) -> None:
    if client_id is not None and (
        not isinstance(client_id, str) or not 1 <= len(client_id) <= 200 or "\x00" in client_id
    ):
        raise InvalidQuery(f"client_id must be a string of 1 to 200 characters, got {client_id!r}")


def search(
    searcher: Searcher, filters: Filters, asked: Asked, k: Any, offset: Any, group_by_product: Any,
    diversity: Any, expand: Any, min_score: Any,
) -> SearchResult:  # fmt: skip
    """See :meth:`imgsearch.Catalog.search`: every argument checked before any model work."""
    query = asked.query
    check_flags(asked.parse, asked.facets, asked.total, asked.boost)
    options = request.options_for(
        searcher.context.settings, query.text, k, offset, group_by_product, diversity, expand, min_score,
        asked.min_probability, on_plan=searcher.on_search_plan, boosting=_boosting(searcher, asked),
        regions=asked.regions,
    )  # fmt: skip
    filters.check()
    if asked.adapter is not None and not isinstance(asked.adapter, bool):
        raise InvalidQuery(f"adapter must be true, false or null, got {asked.adapter!r}")
    _check_client(asked.client_id)
    settings = searcher.context.settings
    variants = None if asked.interleave is None else interleave.parse(asked.interleave)
    query.check(filters)
    text = query.text
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise InvalidQuery("text must be a non-empty string")
    if text is not None and len(text) > MAX_TEXT_CHARS:  # as typed: what parsing leaves may be shorter
        raise InvalidQuery(f"text query is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    mode = hybrid.check_mode(asked.mode, text)
    if mode is not None:
        hybrid.check_options(mode, options)
    fusion = DEFAULT_FUSION if asked.fusion is None else asked.fusion.check()
    searcher.context.follow_model_switch()
    notice = None
    if text is not None and mode in (None, "hybrid") and _embeds_no_text(searcher):
        mode = "lexical"  # a semantic search of a text is refused by the embedder, naming the model
        notice = (
            f"the catalog's model {searcher.context.active_model.name!r} embeds no text (an image-only "
            "backbone): the text was matched against the products' text alone"
        )
    query_id = learned_queries.new_query_id()
    teams = None
    if variants is None:
        result = _answer(searcher, filters, options, asked, mode, fusion)
    else:
        answers = []
        wanted = options.k + options.offset  # the page drafted from the first hits of both
        for name in variants:  # each variant's own search, then their hits drafted in turns
            flags = interleave.VARIANTS[name]
            variant = replace(asked, boost=flags["boost"], adapter=flags["adapter"])
            own = replace(options, k=wanted, offset=0, boosting=_boosting(searcher, variant))
            answers.append(_answer(searcher, filters, own, variant, mode, fusion))
        result, teams = interleave.team_draft(answers[0], answers[1], wanted, query_id.int, skip=options.offset)
    result.query_id = str(query_id)
    result.notice = notice
    if settings.record_queries:
        attributes = _attributes(asked, filters, result, options)
        if variants is not None:
            attributes["interleave"] = {"variants": list(variants), "teams": teams}
        searcher.recorder.record(
            query_id,
            tenant=filters.tenant_name(),
            client_id=asked.client_id,
            user_query=text,
            attributes=attributes,
            offset=options.offset,
            hits=result,
        )
    return result


def _embeds_no_text(searcher: Searcher) -> bool:
    """Whether the active model is an image-only backbone (loaded to know: its first search
    would load it anyway)."""
    context = searcher.context
    if context.active_model.external:
        return False
    embedder = context.embedder
    embedder.load()
    return embedder.image_only


def _boosting(searcher: Searcher, asked: Asked) -> Boosting | None:
    """The boosts a search blends: its text's (normalised), at the catalog's lift; None: off."""
    if not asked.boost:
        return None
    text = asked.query.text
    norm = learned_queries.normalized(text if isinstance(text, str) else None)
    settings = searcher.context.settings
    return Boosting(norm, settings.boost_max_lift, settings.boost_product_weight).check()


def _answer(
    searcher: Searcher, filters: Filters, options: Options, asked: Asked, mode: str | None, fusion: hybrid.Fusion
) -> SearchResult:
    """The hits: the query's words read into filters (the query as typed when they leave none)."""
    text = asked.query.text
    understood = None
    parsed = filters
    if text is not None and asked.parse:
        understood = _understand(searcher, text, filters)
        parsed = _with_understood(filters, understood)
    result = _run(searcher, parsed, options, asked, mode, fusion, understood)
    if understood is not None and understood.filters and not result and parsed is not filters:
        # what was read left nothing: the query as typed, and the answer says so
        understood = replace(understood, fallback=True)
        result = _run(searcher, filters, options, asked, mode, fusion, None)
    result.understood = understood
    return result


def _understand(searcher: Searcher, text: str, filters: Filters) -> understanding.Understood:
    tenant = filters.tenant_name()

    def read(what: Callable[[Connection, str | None], T]) -> T:  # under the tenant's policies
        with searcher.context.engine.begin() as conn:
            if tenant is not None:
                tenancy.scope(conn, tenant)
            if citus.on_coordinator(conn):
                plans.planner_settings(conn)  # a Citus cluster routes a statement planned for its values
            return what(conn, tenant)

    # the stamp only when the last one is old enough to ask again: no round trip for most searches
    vocabulary = searcher.vocabularies.get(
        tenant, lambda: read(understanding.stamp), lambda: read(understanding.read)
    )
    given = [
        name for name in ("category", "brand", "price_min", "price_max") if getattr(filters, name) is not None
    ]
    given += [f"attributes.{key}" for key in filters.attributes or {}]
    return understanding.parse(text, vocabulary, given)


def _with_understood(filters: Filters, understood: understanding.Understood) -> Filters:
    """``filters`` with what the query said (only where the caller gave nothing: the parse
    leaves those words in the text)."""
    if not understood.filters:
        return filters
    changes: dict[str, Any] = {}
    for name in ("category", "brand", "price_min", "price_max"):
        if getattr(understood, name) is not None:
            changes[name] = getattr(understood, name)
    if understood.attributes:
        changes["attributes"] = {**(filters.attributes or {}), **understood.attributes}
    return replace(filters, **changes)


def _run(
    searcher: Searcher,
    filters: Filters,
    options: Options,
    asked: Asked,
    mode: str | None,
    fusion: hybrid.Fusion,
    understood: understanding.Understood | None,
) -> SearchResult:
    query = asked.query
    text = query.text
    if understood is not None and text is not None:
        # the words left go to both sides; when the words were all filters, the query as typed
        # without its prices still says what to look like ("red shoes")
        text = (
            understood.text
            or " ".join(
                filter(None, [understood.category, understood.brand, *understood.attributes.values()])
            )
            or text
        )
        query = replace(query, text=text)
    vector = None if mode == "lexical" else query.embed(searcher.context)  # checked in search()
    searched = query.model(searcher.context)  # an image query's: the image model, when there is one
    if vector is not None and _adapts(asked):
        tenant = filters.tenant_name()
        weights = None if tenant is None else searcher.adapters.get(searcher.context.engine, tenant, searched)
        if weights is not None:
            vector = adapter.apply(weights, vector)
    chosen: list[str] = []

    def run(conn: Connection, model: ModelInfo, found: Vector | None, rows: Filters, opts: Options) -> Any:
        # the default: hybrid for a text when the catalog has product text, unless an option
        # re-ranks images (diversity), which only a semantic search can take
        fits = text is not None and opts.diversity is None
        picked = mode or ("hybrid" if fits and hybrid.has_text(conn, rows) else "semantic")
        chosen.append(picked)
        hits: list[Hit]
        if picked == "semantic":
            hits = hybrid.ranked(request.run(conn, model, found, rows, opts), opts.offset)
        else:
            hybrid.check_options(picked, opts)
            assert text is not None
            hits = hybrid.run(conn, model, found, rows, opts, text, picked, fusion)
        counted = None
        if asked.facets or asked.total is not False:
            lexical_text = text if picked == "lexical" else None
            limit = count_limit(asked.total)
            counted = facet_counts.count(conn, model, rows, lexical_text, facets=asked.facets, limit=limit)
        return hits, counted

    # a semantic search's statements each answer alone (a far filter's second pass replaces the
    # first's answer): its first statement may be a transaction of its own; hits fused from words
    # and images, or counted with their total and facets, come from one transaction's statements
    alone = not (asked.facets or asked.total is not False) and (text is None or mode == "semantic")
    hits, counted = searcher.router.search(
        searched, filters, options, vector, query, asked.consistent, run, alone
    )
    if text is not None and vector is not None:
        hits = request.with_probability(hits, searcher.context.embedder.probability, asked.min_probability)
    return SearchResult(
        hits,
        total=None if counted is None else counted.total,
        total_relation=None if counted is None else counted.relation,
        facets=counted if asked.facets else None,
        mode=chosen[-1] if chosen else (mode or "semantic"),
    )


def _adapts(asked: Asked) -> bool:
    """Whether the query's vector goes through the tenant's adapter: text and image queries
    unless ``adapter=False``, a vector only with ``adapter=True`` (stored images never)."""
    if asked.adapter is False or asked.query.stored:
        return False
    return asked.adapter is True or asked.query.text is not None or asked.query.image is not None


def _attributes(asked: Asked, filters: Filters, result: SearchResult, options: Options) -> dict[str, Any]:
    """What a recorded search was (User Behavior Insights' ``query_attributes``)."""
    query = asked.query
    kinds = ("text", "image", "similar_to", "similar_to_product", "vector")
    kind = next((name for name in kinds if getattr(query, name) is not None), "vector")
    given = {
        name: getattr(filters, name)
        for name in ("category", "price_min", "price_max", "brand", "attributes")
        if getattr(filters, name) is not None
    }
    if filters.where is not None:
        given["where"] = True
    found: dict[str, Any] = {"kind": kind, "mode": result.mode, "k": options.k, "filters": given}
    if kind in ("similar_to", "similar_to_product"):
        found[kind] = getattr(query, kind)
    found["boost"] = any(hit.boost is not None for hit in result)
    return found
