"""Creates demo/demo.db: a `quotes` table with sample rows for `make demo`.

Statuses are the old enum (open, won, lost, stale) plus a few values the
remap has no mapping for, so the demo shows per-row errors too.
"""
import random
import sqlite3
import sys
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("demo.db"))
path.unlink(missing_ok=True)
db = sqlite3.connect(path)
db.execute("PRAGMA journal_mode = WAL")
db.execute(
    """CREATE TABLE quotes (
        id INTEGER PRIMARY KEY,
        customer TEXT NOT NULL,
        status TEXT,
        status_v2 TEXT,
        amount REAL NOT NULL,
        created_at TEXT NOT NULL
    )"""
)
rng = random.Random(42)
statuses = ["open"] * 40 + ["won"] * 30 + ["lost"] * 20 + ["stale"] * 9 + [None] * 4 + ["Open ", "wn"]
rows = []
for i in range(1, 25_001):
    year = 2022 + (i * 3) // 25_001
    rows.append(
        (
            i,
            f"customer-{rng.randrange(1, 2000)}",
            rng.choice(statuses),
            round(rng.uniform(10, 5000), 2),
            f"{year}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} 12:00:00",
        )
    )
db.executemany("INSERT INTO quotes (id, customer, status, amount, created_at) VALUES (?, ?, ?, ?, ?)", rows)
db.commit()
count = db.execute("SELECT count(*) FROM quotes WHERE created_at < '2024-01-01'").fetchone()[0]
print(f"created {path} with {len(rows)} quotes, {count} of them created before 2024")
