"""The OpenAPI 3.1 description of the shop-integration API, served at /api/openapi.json."""

from __future__ import annotations

from django.conf import settings

from gallery.cards import card_json_schema
from gallery.filters import FILTERS, MAX_VALUE_CHARS

QUERY_TEXT = "Words to search for; capped at {} characters. Empty: a varied starting grid."
TRAIL_TEXT = (
    "Comma-separated product ids clicked before, oldest first; prefix p pins a step (the grid keeps looking "
    "like it), n marks it 'not like this' (what looks more like it than like the liked steps sinks). A suffix "
    "says what a step should keep: c the same colour, a any colour, s the same shape in other colours. "
    "Products the grid clicked from showed and the shopper passed over come after new ones about as alike. "
    "Example: 12,p34c,n56."
)
START_TEXT = (
    "Where the trail began: the text search it started from; empty or absent, the starting grid of the home "
    "page (as the page's own links say). What that first grid showed and the shopper passed over counts as "
    "seen: new products about as alike come before it."
)
IMAGE_TEXT = "JPEG, PNG, WebP or GIF; at most {} MiB and {} megapixels."


def _filter_params() -> list[dict[str, object]]:
    return [
        {
            "name": f.name,
            "in": "query",
            "required": False,
            "description": f.description,
            "schema": {"type": "string", "maxLength": MAX_VALUE_CHARS},
        }
        for f in FILTERS
    ]


def _k_param() -> dict[str, object]:
    return {
        "name": "k",
        "in": "query",
        "required": False,
        "description": "How many results (default 25).",
        "schema": {"type": "integer", "minimum": 1, "maximum": settings.API_MAX_K, "default": settings.GRID_SIZE},
    }


def _error(description: str) -> dict[str, object]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _too_long() -> dict[str, object]:
    return _error(f"The address (path and query string) is over {settings.REQUEST_URI_MAX_CHARS} characters")


FILTERS_APPLIED = {
    "type": "object",
    "description": "The filters applied, by name (only those given).",
    "properties": {f.name: {"type": "string"} for f in FILTERS},
    "additionalProperties": False,
}


def _results(description: str, query: dict[str, object], **extra: dict[str, object]) -> dict[str, object]:
    """A 200 response holding ``query``, the filters applied and the result list (and nothing else)."""
    properties = {"query": query, **extra, "filters": FILTERS_APPLIED, "results": RESULTS}
    schema = {"type": "object", "required": list(properties), "properties": properties, "additionalProperties": False}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json(schema: dict[str, object], description: str) -> dict[str, object]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


SERVER_ERROR = "The server failed (JSON like every /api/ answer; the cause goes to the server's log)"


_COUNT = {"type": "integer", "minimum": 0}
STATUS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["encoder", "index", "products", "awaiting_embedding"],
    "properties": {
        "encoder": {
            "type": "object",
            "required": ["space", "name", "projection", "note"],
            "properties": {
                "space": {"type": "string", "description": "The embedding space served (encoder id, + head)"},
                "name": {"type": "string"},
                "projection": {"type": ["string", "null"]},
                "note": {"type": ["string", "null"], "description": "Why the preferred encoder is not in use"},
            },
        },
        "index": {
            "description": "The published index; null before the first build",
            "oneOf": [
                {"type": "null"},
                {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                {
                    "type": "object",
                    "required": ["version", "space", "count", "dim", "n_trees", "built_at", "matches_active_space"],
                    "properties": {
                        "version": {"type": "string"},
                        "space": {"type": "string"},
                        "count": _COUNT,
                        "dim": _COUNT,
                        "n_trees": _COUNT,
                        "built_at": {"type": "string"},
                        "build_seconds": {"type": "number"},
                        "matches_active_space": {"type": "boolean"},
                    },
                },
            ],
        },
        "products": {
            "type": "object",
            "description": "Products with an image, by embedding state",
            "required": ["total", "pending", "processing", "done", "failed"],
            "properties": {name: _COUNT for name in ("total", "pending", "processing", "done", "failed")},
        },
        "delivery": {
            "description": "This node's copy of the build published to the index store (INDEX_STORE); "
            "null when builds are served where they are made",
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["store", "published", "serving", "behind", "build_lag_seconds", "error"],
                    "properties": {
                        "store": {"enum": ["dir", "s3"]},
                        "published": {"type": ["string", "null"], "description": "The store's build"},
                        "serving": {"type": ["string", "null"], "description": "The build this node serves"},
                        "behind": {"type": "boolean"},
                        "build_lag_seconds": {"type": "number", "description": "How much older the served build is"},
                        "checked_at": {"type": ["string", "null"]},
                        "checked_seconds_ago": {"type": ["number", "null"]},
                        "checking": {"type": "boolean", "description": "The fetcher looked at the store lately"},
                        "fetched_at": {"type": ["string", "null"]},
                        "fetch_seconds": {"type": ["number", "null"]},
                        "error": {"type": ["string", "null"], "description": "Why the node cannot fetch"},
                        "failing_since": {"type": ["string", "null"]},
                    },
                },
            ],
        },
        "awaiting_embedding": _COUNT,
        "embedding_per_second": {"type": ["number", "null"], "description": "Over the last five minutes"},
    },
}

RESULTS = {
    "type": "array",
    "items": {"$ref": "#/components/schemas/Product"},
    "description": "Best first; never the query product, never duplicates.",
}


_WORDS = {"type": "array", "items": {"type": "string"}}
# How a text search's results came about (gallery.search.SearchResult.explanation).
SEARCH_EXPLANATION: dict[str, dict[str, object]] = {
    "notice": {"type": "string", "description": "The line the page shows when not every word matched; or empty"},
    "words": {**_WORDS, "description": "The words searched: stop words dropped, words joined or corrected"},
    "matched": {**_WORDS, "description": "Words some result holds"},
    "unmatched": {**_WORDS, "description": "Words no result holds"},
    "corrections": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Typed word -> the catalog's word searched instead",
    },
    "related": {
        "type": "object",
        "additionalProperties": _WORDS,
        "description": "Typed word few products hold -> words also searched, ranked after it",
    },
    "complete": {"type": "integer", "minimum": 0, "description": "The first this many results hold every word"},
    "partial": {"type": "boolean", "description": "Some results hold only some of the words"},
}


def openapi_spec() -> dict[str, object]:
    """The API description; limits come from the running settings, a product's fields from ``Card``."""
    card = card_json_schema()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Visual gallery API",
            "version": "1.0",
            "description": "Text search, click-to-refine visual similarity and search by photo over the catalog.",
        },
        "paths": {
            "/api/search": {
                "get": {
                    "summary": "Products matching the words of q (stems, typos, column values), best first",
                    "parameters": [
                        {
                            "name": "q",
                            "in": "query",
                            "required": False,
                            "description": QUERY_TEXT.format(settings.SEARCH_QUERY_MAX_CHARS),
                            "schema": {"type": "string"},
                        },
                        _k_param(),
                        *_filter_params(),
                    ],
                    "responses": {
                        "200": _results("Matching products", {"type": "string"}, **SEARCH_EXPLANATION),
                        "400": _error("Invalid k"),
                        "414": _too_long(),
                        "500": _error(SERVER_ERROR),
                    },
                }
            },
            "/api/similar/{id}": {
                "get": {
                    "summary": "Products that look most like a product, or like a whole refinement trail",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}},
                        {
                            "name": "trail",
                            "in": "query",
                            "required": False,
                            "description": TRAIL_TEXT,
                            "schema": {"type": "string", "pattern": "^([pn]?[0-9]+[cas]?)(,[pn]?[0-9]+[cas]?)*$"},
                        },
                        {
                            "name": "q",
                            "in": "query",
                            "required": False,
                            "description": START_TEXT,
                            "schema": {"type": "string"},
                        },
                        _k_param(),
                        *_filter_params(),
                    ],
                    "responses": {
                        "200": _results("Similar products", {"type": "integer"}, trail={"type": "string"}),
                        "400": _error("Invalid k, trail or filter"),
                        "404": _error("No such product"),
                        "409": _error("The product's image is not embedded yet (or could not be)"),
                        "414": _too_long(),
                        "503": _error("The similarity index is being built or repaired; see Retry-After"),
                        "500": _error(SERVER_ERROR),
                    },
                }
            },
            "/api/products/{id}": {
                "get": {
                    "summary": "One product as the catalog holds it, on sale or not (grids show only those on sale)",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Product"}, "The product"),
                        "404": _error("No such product"),
                        "414": _too_long(),
                        "500": _error(SERVER_ERROR),
                    },
                }
            },
            "/api/products/{id}/availability": {
                "post": {
                    "summary": "Take a product off sale or put it back, and/or set its stock (staff session + CSRF)",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "minProperties": 1,
                                    "properties": {
                                        "active": {"type": "boolean"},
                                        "stock": {"type": ["integer", "null"], "minimum": 0},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Product"}, "The product as it is now"),
                        "400": _error("The body is not {active, stock}"),
                        "403": _error("Not signed in as staff allowed to change products, or no CSRF token"),
                        "404": _error("No such product"),
                        "405": _error("Only POST"),
                        "414": _too_long(),
                        "500": _error(SERVER_ERROR),
                    },
                }
            },
            "/api/search-by-image": {
                "post": {
                    "summary": "Products that look most like an uploaded photo (the photo is not stored)",
                    "parameters": [_k_param(), *_filter_params()],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {
                                            "type": "string",
                                            "format": "binary",
                                            "description": IMAGE_TEXT.format(
                                                settings.IMAGE_MAX_BYTES // 2**20,
                                                settings.IMAGE_MAX_PIXELS // 1_000_000,
                                            ),
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _results("Similar products", {"const": "image"}),
                        "400": _error("Not an image we read, too large in pixels, truncated or empty"),
                        "413": _error("The request body is over the size limit"),
                        "414": _too_long(),
                        "429": _error("Too many photo searches from this client; see Retry-After"),
                        "503": _error("The similarity index is being built or repaired; see Retry-After"),
                        "500": _error(SERVER_ERROR),
                    },
                }
            },
            "/api/status": {
                "get": {
                    "summary": "Active encoder, published index and embedding queue",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Status"}, "Status"),
                        "414": _too_long(),
                        "500": _error(SERVER_ERROR),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string", "description": "A sentence to show a person"}},
                    "additionalProperties": False,
                },
                "Status": STATUS,
                "Product": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [*card, "url", "view_url"],
                    "properties": {
                        **card,
                        "url": {"type": "string"},
                        "view_url": {
                            "type": "string",
                            "description": "The shop's product page, through the gallery (noted as a conversion)",
                        },
                        "score": {
                            "type": "number",
                            "description": "Cosine similarity (similar and photo results only)",
                        },
                    },
                },
            }
        },
    }
