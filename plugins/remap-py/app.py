"""`remap`, written in Python.

Consumes one text column (`value`) and produces one text column (`mapped`)
by looking each value up in a fixed mapping (`map = "open=active,won=closed_won"`),
then in the spec's lookup table `table` if one is named, then falling back
to `default`. NULL stays NULL; a value with no mapping and no default is a
per-row error.

This is the Rust `plugins/remap` rewritten line for line, messages
included: the end-to-end tests compare the outcomes of the two, row by
row. `make plugins` builds it into `plugins/dist/remap-py.wasm` with
componentize-py (see `plugin.toml`); the `wit_world` bindings it imports
are generated from `wit/transform.wit` at build time.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports import types as t

# What Rust's `str::trim` strips: the Unicode White_Space characters.
# Python's own `str.strip()` also strips U+001C..U+001F, so name them.
WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)

# The names the error messages use for each case of `value`.
TYPE_NAMES = {
    t.Value_Null: "null",
    t.Value_Boolean: "boolean",
    t.Value_Integer: "integer",
    t.Value_Float: "float",
    t.Value_Text: "text",
    t.Value_Bytes: "bytes",
    t.Value_Json: "json",
    t.Value_Timestamp: "timestamp",
}


class Remap:
    """A parsed configuration."""

    def __init__(self, mapping: dict[str, str], table: str | None, default: str | None):
        self.mapping = mapping
        self.table = table
        self.default = default

    def transform(self, row: t.Row) -> t.Outcome:
        match row.values[0]:
            case t.Value_Null():
                return set_to(t.Value_Null())
            case t.Value_Text(text):
                pass
            case other:
                return t.Outcome_Error(f"expected text, got {TYPE_NAMES[type(other)]}")
        if text in self.mapping:
            return set_to(t.Value_Text(self.mapping[text]))
        if self.table is not None:
            try:
                mapped = host.lookup(self.table, text)
            except Err as error:
                return t.Outcome_Error(lookup_failure(self.table, error.value))
            if mapped is not None:
                return set_to(t.Value_Text(mapped))
        if self.default is not None:
            return set_to(t.Value_Text(self.default))
        return t.Outcome_Error(f'no mapping for "{text}" and no default')


# Set by `configure`; the host calls it once, before any batch.
configured: Remap | None = None


class Transform(exports.Transform):
    """The component's `refill:transform/transform` export."""

    def describe(self) -> t.Info:
        return t.Info(
            name="remap",
            version="0.1.0",
            description="Maps each text value to another through a fixed table.",
            inputs=[t.Column("value", t.ValueType.TEXT)],
            outputs=[t.Column("mapped", t.ValueType.TEXT)],
        )

    def configure(self, params: list[t.Param]) -> None:
        # A `result<_, config-error>` is refused by raising Err(config-error).
        given: dict[str, str] = {}
        for param in params:
            if param.name not in ("map", "table", "default"):
                raise Err(t.ConfigError_Unknown(param.name))
            given.setdefault(param.name, param.value)
        table = given.get("table")
        if "map" in given:
            mapping = parse_map(given["map"])
        elif table is not None:
            mapping = {}
        else:
            raise Err(t.ConfigError_Missing("map"))
        if not mapping and table is None:
            raise invalid("map", "the mapping is empty")
        if table is not None:
            # Ask once now, so that a table the spec does not declare stops
            # the run before any row is read.
            try:
                host.lookup(table, "")
            except Err as error:
                raise invalid("table", lookup_failure(table, error.value))
        global configured
        configured = Remap(mapping, table, given.get("default"))

    def transform_batch(self, rows: list[t.Row]) -> list[t.Outcome]:
        if configured is None:
            return [t.Outcome_Error("transform-batch called before configure") for _ in rows]
        return [one(configured, row) for row in rows]


def one(remap: Remap, row: t.Row) -> t.Outcome:
    """A row's outcome; an exception is that row's error, not a trap that
    costs the batch a split."""
    try:
        return remap.transform(row)
    except Exception as e:
        return t.Outcome_Error(f"{type(e).__name__}: {e}")


def parse_map(text: str) -> dict[str, str]:
    """Parses `from=to` pairs separated by commas; blanks around them and
    empty pairs are ignored."""
    mapping: dict[str, str] = {}
    for pair in text.split(","):
        pair = pair.strip(WHITESPACE)
        if not pair:
            continue
        source, equals, target = pair.partition("=")
        if not equals:
            raise invalid("map", f"`{pair}` is not a `from=to` pair")
        source, target = source.strip(WHITESPACE), target.strip(WHITESPACE)
        if source in mapping:
            raise invalid("map", f"`{source}` is mapped twice")
        mapping[source] = target
    return mapping


def lookup_failure(table: str, error: host.LookupError) -> str:
    match error:
        case host.LookupError_UnknownTable():
            return f'the spec declares no lookup table "{table}"'
        case host.LookupError_Other(why):
            return f'lookup table "{table}": {why}'


def invalid(name: str, reason: str) -> Err:
    return Err(t.ConfigError_Invalid(t.InvalidParam(name, reason)))


def set_to(value: t.Value) -> t.Outcome:
    """The outcome that writes `value` to the one output column."""
    return t.Outcome_Update([value])
