"""`{{name}}`: uppercases a text column. NULL stays NULL; any other value is
that row's error. Replace it with your migration's logic.

The `wit_world` package is generated from `wit/` by componentize-py at
build time; `componentize-py -d wit -w transformer bindings .` writes it
out for your editor and type checker.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types as t

# The names refill's messages use for each case of `value`.
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


def upper(row: t.Row) -> t.Outcome:
    match row.values[0]:
        case t.Value_Null():
            return t.Outcome_Update([t.Value_Null()])
        case t.Value_Text(text):
            return t.Outcome_Update([t.Value_Text(text.upper())])
        case other:
            return t.Outcome_Error(f"expected text, got {TYPE_NAMES[type(other)]}")


def one(row: t.Row) -> t.Outcome:
    """A row's outcome; an exception is that row's error, not a trap."""
    try:
        return upper(row)
    except Exception as e:
        return t.Outcome_Error(f"{type(e).__name__}: {e}")


class Transform(exports.Transform):
    def describe(self) -> t.Info:
        return t.Info(
            name="{{name}}",
            version="0.1.0",
            description="Uppercases a text column.",
            inputs=[t.Column("value", t.ValueType.TEXT)],
            outputs=[t.Column("upper", t.ValueType.TEXT)],
        )

    def configure(self, params: list[t.Param]) -> None:
        for p in params:
            raise Err(t.ConfigError_Unknown(p.name))

    def transform_batch(self, rows: list[t.Row]) -> list[t.Outcome]:
        return [one(row) for row in rows]
