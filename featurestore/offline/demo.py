"""A realistic synthetic data set: entities with trends, weekly seasonality, business-hour
activity, 8-12 categories and a few single-event entities. Deterministic for (seed, end).

`demo_chunks` yields DataFrames of events (columns of the ingest file format), entity by
entity, so a store receives each entity's events in one segment; `write_demo` fills a store
and writes `demo_entities.csv`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featurestore.offline.files import frame_to_columns
from featurestore.store.base import EventStore

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SPAN_DAYS = 90
MEAN_EVENTS = 200
SINGLE_EVENT_SHARE = 0.03
NO_CATEGORY_SHARE = 0.05
MISSING_IDS = 5
ENTITIES_PER_CHUNK = 500
ENTITY_LIST = "demo_entities.csv"
# Activity by UTC hour: quiet nights, busy business hours.
_HOUR_WEIGHTS = np.array(
    [1, 1, 1, 1, 1, 2, 3, 5, 7, 9, 10, 10, 9, 10, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], dtype=np.float64
)


@dataclass(frozen=True)
class DemoSummary:
    entities: int
    events: int
    accepted: int
    categories: int
    end_ms: int


def entity_name(index: int) -> str:
    return f"user_{index:05d}"


def default_end_ms(now_ms: int) -> int:
    """Now, floored to the hour."""
    return now_ms - now_ms % HOUR_MS


def demo_chunks(entities: int, seed: int, end_ms: int) -> Iterator[pd.DataFrame]:
    """Event frames (entity_id, timestamp, value, category, event_id), entity by entity."""
    rng = np.random.default_rng(seed)
    n_categories = int(rng.integers(8, 13))
    categories = np.array([f"cat_{chr(ord('a') + i)}" for i in range(n_categories)], dtype=object)
    popularity = 1.0 / np.arange(1, n_categories + 1) ** 1.1
    popularity /= popularity.sum()
    counts = np.maximum(2, rng.poisson(MEAN_EVENTS, entities))
    counts[rng.random(entities) < SINGLE_EVENT_SHARE] = 1
    if entities > 1 and not (counts == 1).any():  # "some entities with a single event", always
        counts[-1] = 1
    for first in range(0, entities, ENTITIES_PER_CHUNK):
        last = min(entities, first + ENTITIES_PER_CHUNK)
        yield _chunk(
            rng,
            np.arange(first, last),
            counts[first:last],
            end_ms=end_ms,
            categories=categories,
            popularity=popularity,
        )


def _chunk(
    rng: np.random.Generator,
    ids: np.ndarray,
    counts: np.ndarray,
    *,
    end_ms: int,
    categories: np.ndarray,
    popularity: np.ndarray,
) -> pd.DataFrame:
    owner = np.repeat(np.arange(ids.size), counts)
    total = owner.size
    start_ms = end_ms - SPAN_DAYS * DAY_MS
    day = rng.integers(0, SPAN_DAYS, total)
    hour = rng.choice(24, total, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    ts = start_ms + day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, total)
    ts = np.minimum(ts, end_ms)
    level = rng.lognormal(mean=4.0, sigma=0.6, size=ids.size)
    slope = rng.normal(0.0, 0.004, ids.size) * level  # per day
    weekly = rng.uniform(0.0, 0.15, ids.size) * level
    noise = rng.uniform(0.05, 0.25, ids.size) * level
    days = (ts - start_ms) / DAY_MS
    weekday = (ts // DAY_MS + 3) % 7
    value = (
        level[owner]
        + slope[owner] * days
        + weekly[owner] * np.sin(2 * np.pi * weekday / 7)
        + noise[owner] * rng.standard_normal(total)
    )
    favourite = rng.choice(categories.size, ids.size, p=popularity)
    picked = np.where(
        rng.random(total) < 0.6,
        favourite[owner],
        rng.choice(categories.size, total, p=popularity),
    )
    category = categories[picked]
    category[rng.random(total) < NO_CATEGORY_SHARE] = None
    entity = np.array([entity_name(i) for i in ids], dtype=object)[owner]
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    event_id = np.char.add(np.char.add(entity.astype(str), "-"), within.astype(str)).astype(object)
    return pd.DataFrame(
        {
            "entity_id": entity,
            "timestamp": ts,
            "value": np.round(value, 4),
            "category": category,
            "event_id": event_id,
        }
    )


def write_demo(
    store: EventStore,
    data_dir: Path,
    *,
    entities: int,
    seed: int,
    end_ms: int,
    progress=None,
    on_commit=None,
) -> DemoSummary:
    """Fill `store` with the demo data set and write `DATA_DIR/demo_entities.csv`."""
    per_entity: dict[str, int] = {}
    total = accepted = 0
    for index, frame in enumerate(demo_chunks(entities, seed, end_ms)):
        result = store.ingest(frame_to_columns(frame), request_id=f"demo:{seed}:{end_ms}:{index}")
        accepted += result.stored_now
        if on_commit is not None:
            on_commit(result.entity_ids)
        total += len(frame)
        per_entity.update(frame["entity_id"].value_counts(sort=False).to_dict())
        if progress is not None:
            progress(len(frame))
    listing = pd.DataFrame(
        {
            "entity_id": [entity_name(i) for i in range(entities)]
            + [f"user_missing_{i}" for i in range(MISSING_IDS)]
        }
    )
    listing["n_events"] = listing["entity_id"].map(per_entity).fillna(0).astype(np.int64)
    listing.to_csv(data_dir / ENTITY_LIST, index=False)
    return DemoSummary(entities, total, accepted, len(store.category_names()), end_ms)
