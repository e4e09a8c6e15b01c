"""Native unit tests of `app.py`, without refill and without a component.

`refill build` writes the bindings into `typings/` (componentize-py's
`wit_world` package); their runtime exists only inside the component, so a
stand-in module takes its place here, and `unittest.mock` stands in for the
host's imports (`host.lookup`, `host.log`). Run: `python3 test_app.py`.
"""

import sys
import types
import unittest
from unittest import mock

sys.path.insert(0, "typings")
sys.modules.setdefault("componentize_py_runtime", types.ModuleType("componentize_py_runtime"))

from wit_world.imports import host  # noqa: E402
from wit_world.imports import types as t  # noqa: E402

import app  # noqa: E402


def row(key: int, value: t.Value) -> t.Row:
    return t.Row(t.Key_Integer(key), [value])


class UpperTest(unittest.TestCase):
    def test_text_is_uppercased_and_null_stays_null(self):
        outcomes = app.Transform().transform_batch(
            [row(1, t.Value_Text("hello")), row(2, t.Value_Null())]
        )
        self.assertEqual(
            outcomes,
            [t.Outcome_Update([t.Value_Text("HELLO")]), t.Outcome_Update([t.Value_Null()])],
        )

    def test_another_type_is_that_rows_error(self):
        [outcome] = app.Transform().transform_batch([row(3, t.Value_Integer(42))])
        self.assertEqual(outcome, t.Outcome_Error("expected text, got integer"))

    def test_the_hosts_lookup_can_be_mocked(self):
        # A transform that calls host.lookup(table, key) sees what the mock
        # returns (or raises: componentize_py_types.Err(host.LookupError_...)).
        with mock.patch.object(host, "lookup", return_value="closed_lost") as lookup:
            self.assertEqual(host.lookup("plans", "lost"), "closed_lost")
        lookup.assert_called_once_with("plans", "lost")


if __name__ == "__main__":
    unittest.main()
