"""`evil-py`: a hostile, diagnostic Python guest for the host's sandbox tests.

Consumes one column of any type (`value`, which it ignores) and produces one
text column (`result`). On every row it does what `mode` says and reports
what happened, so a test can tell what the sandbox let through:

- `entropy`: writes `"{time.time()} {random.random()} {os.urandom(8).hex()}
  {time.monotonic()}"`. The host pins the wall clock and seeds randomness
  per run, so two runs of the same spec must agree on this text;
- `open`: reads `/etc/passwd`;
- `preopens`: lists `/`;
- `socket`: connects to 127.0.0.1:5432 (PostgreSQL on the test machines),
  with a one-second timeout, through `socket.create_connection` (which
  looks the address up first);
- `tcp`: opens a TCP socket and connects it to 127.0.0.1:5432 directly,
  with no name lookup;
- `sleep`: sleeps for an hour (`time.sleep(3600)`), then writes
  `slept {time.monotonic()}`: the host's sleep is over at once and moves the
  guest's monotonic clock forward instead, so this must return quickly
  with a clock past 3600;
- `env`: writes `environ={...} argv=[...]`, the `repr` of the environment
  and of `sys.argv` (the host grants neither, so both should be empty);
- `print`: writes `mb` MiB to stdout, a first line `evil-py prints {mb} MiB`
  then `mb` lines of `x`, each 1 MiB long counting its newline, then writes
  `printed` (the host caps what reaches the log). It writes with `os.write`
  until every byte is taken: `sys.stdout` here is a text wrapper over an
  unbuffered file, and its `write` silently drops what one short write of
  the stream (8 KiB) does not take.

- `raise`: raises `ValueError: evil-py raises on row {key}` out of
  `transform-batch` for rows whose value is the text `boom`, a trap the host
  must report with the exception's type and message (other rows get `ok`).

In every other mode an exception becomes the row's `error` outcome,
`"{type(e).__name__}: {e}"`. If `open`, `preopens`, `socket` or `tcp` succeeds, the
row is updated to text starting with `ACCESS:`, which a sandbox test must
never see.

Config: `mode` (required), `mb` (for `print`; default 100).

componentize-py snapshots the interpreter after importing this module when
it builds the component, and only the modules imported by then are in it:
a module first imported inside a transform is missing at run time. Hence
the imports below, `encodings.idna` included (`socket.create_connection`
encodes the host name with it).
"""

import encodings.idna  # noqa: F401  (see above)
import os
import random
import socket
import sys
import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types as t

MODES = ("entropy", "open", "preopens", "socket", "tcp", "sleep", "env", "print", "raise")
MIB = 1024 * 1024

# Set by `configure`.
mode: str | None = None
mb = 100


def entropy() -> str:
    return f"{time.time()} {random.random()} {os.urandom(8).hex()} {time.monotonic()}"


def open_passwd() -> str:
    with open("/etc/passwd") as passwd:
        text = passwd.read()
    return f"ACCESS: read {len(text)} characters of /etc/passwd"


def preopens() -> str:
    return f"ACCESS: / holds {os.listdir('/')!r}"


def connect() -> str:
    with socket.create_connection(("127.0.0.1", 5432), timeout=1) as conn:
        return f"ACCESS: connected to {conn.getpeername()!r}"


def tcp() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
        conn.settimeout(1)
        conn.connect(("127.0.0.1", 5432))
        return f"ACCESS: connected to {conn.getpeername()!r}"


def sleep() -> str:
    time.sleep(3600)
    return f"slept {time.monotonic()}"


def env() -> str:
    return f"environ={dict(os.environ)!r} argv={sys.argv!r}"


def write_all(data: bytes) -> None:
    """Writes every byte of `data` to stdout."""
    view = memoryview(data)
    while view:
        written = os.write(1, view)
        if written == 0:
            raise BlockingIOError("stdout takes no more bytes")
        view = view[written:]


def flood() -> str:
    write_all(f"evil-py prints {mb} MiB\n".encode())
    line = b"x" * (MIB - 1) + b"\n"
    for _ in range(mb):
        write_all(line)
    return "printed"


ACTIONS = {
    "entropy": entropy,
    "open": open_passwd,
    "preopens": preopens,
    "socket": connect,
    "tcp": tcp,
    "sleep": sleep,
    "env": env,
    "print": flood,
}


def outcome(action) -> t.Outcome:
    try:
        return t.Outcome_Update([t.Value_Text(action())])
    except Exception as e:  # the whole point: report whatever the sandbox raised
        return t.Outcome_Error(f"{type(e).__name__}: {e}")


class Transform(exports.Transform):
    """The component's `refill:transform/transform` export."""

    def describe(self) -> t.Info:
        return t.Info(
            name="evil-py",
            version="0.1.0",
            description="Tries what a sandboxed Python guest must not do, and says what happened.",
            inputs=[t.Column("value", t.ValueType.ANY)],
            outputs=[t.Column("result", t.ValueType.TEXT)],
        )

    def configure(self, params: list[t.Param]) -> None:
        global mode, mb
        given = {}
        for param in params:
            if param.name not in ("mode", "mb"):
                raise Err(t.ConfigError_Unknown(param.name))
            given.setdefault(param.name, param.value)
        if "mode" not in given:
            raise Err(t.ConfigError_Missing("mode"))
        if given["mode"] not in MODES:
            reason = f"`{given['mode']}` is not one of {', '.join(MODES)}"
            raise Err(t.ConfigError_Invalid(t.InvalidParam("mode", reason)))
        text = given.get("mb", "100")
        if not (text.isascii() and text.isdigit()):
            reason = f"`{text}` is not a whole number of MiB"
            raise Err(t.ConfigError_Invalid(t.InvalidParam("mb", reason)))
        mode, mb = given["mode"], int(text)

    def transform_batch(self, rows: list[t.Row]) -> list[t.Outcome]:
        if mode is None:
            return [t.Outcome_Error("transform-batch called before configure") for _ in rows]
        if mode == "raise":
            return [raise_on_boom(row) for row in rows]
        return [outcome(ACTIONS[mode]) for _ in rows]


def key_text(key: t.Key) -> str:
    return str(key.value)


def raise_on_boom(row: t.Row) -> t.Outcome:
    value = row.values[0] if row.values else None
    if isinstance(value, t.Value_Text) and value.value == "boom":
        raise ValueError(f"evil-py raises on row {key_text(row.key)}")
    return t.Outcome_Update([t.Value_Text("ok")])
