"""The packaged JSON Schemas (screener/schemas/) as the tests use them: a registry that
resolves cross-file `$ref`s offline, validators, and one-line error lists."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_BASE = "https://screener.example/schemas/"
SCHEMA_NAMES = (
    "market_data",
    "candle",
    "top_movers",
    "top5",
    "health",
    "livez",
    "readyz",
    "error",
    "live_ranking",
    "symbol",
)
TOP5_RANKING = "top5.schema.json#/$defs/ranking"
OPENAPI_SCHEMAS = "#/components/schemas/"
"""Where screener/schemas/openapi.json embeds the packaged schemas."""


def packaged_schema(name: str) -> dict[str, Any]:
    """`screener/schemas/<name>.schema.json`, read from the installed package."""
    path = resources.files("screener").joinpath(f"schemas/{name}.schema.json")
    document: dict[str, Any] = orjson.loads(path.read_bytes())
    return document


def component_name(name: str) -> str:
    """The OpenAPI component of a packaged schema: `top_movers` -> `TopMovers`."""
    return "".join(part.capitalize() for part in name.split("_"))


def embedded_schema(name: str) -> dict[str, Any]:
    """The packaged schema `name` as openapi.json embeds it: without `$id` and `$schema` (the
    document's `jsonSchemaDialect` says which), and with every `$ref` a JSON pointer from the
    document's root (`#/components/schemas/...`). An embedded `$id` would make the schema's
    own `#/$defs/...` and `other.schema.json#...` refs resolve against that `$id`, which
    OpenAPI tools do not all honour: from the root, every tool resolves them."""
    own = OPENAPI_SCHEMAS + component_name(name)

    def pointer(ref: str) -> str:
        file, _, fragment = ref.partition("#")
        target = (
            OPENAPI_SCHEMAS + component_name(file.removesuffix(".schema.json")) if file else own
        )
        return target + fragment

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: pointer(v) if k == "$ref" else rewrite(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    schema = packaged_schema(name)
    del schema["$id"], schema["$schema"]
    embedded: dict[str, Any] = rewrite(schema)
    return embedded


@cache
def schema_registry() -> Registry[Any]:
    """Every packaged schema under its `$id`, so cross-file `$ref`s resolve offline."""
    resources_ = [Resource.from_contents(packaged_schema(n)) for n in SCHEMA_NAMES]
    return Registry().with_resources((r.id(), r) for r in resources_ if r.id() is not None)


@cache
def schema_validator(ref: str) -> Draft202012Validator:
    """A validator for `name` (a schema file's stem) or a reference relative to the schemas'
    base URI (e.g. `TOP5_RANKING`)."""
    uri = SCHEMA_BASE + (ref if ref.endswith(".json") or "#" in ref else f"{ref}.schema.json")
    return Draft202012Validator({"$ref": uri}, registry=schema_registry())


def schema_errors(ref: str, document: Any) -> list[str]:
    """What is wrong with `document` against the schema `ref` (empty: it matches)."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in schema_validator(ref).iter_errors(document)
    ]


def check_document(ref: str, document: Any) -> None:
    errors = schema_errors(ref, document)
    if errors:
        raise AssertionError(f"not a valid {ref} document: {errors}: {document!r}")
