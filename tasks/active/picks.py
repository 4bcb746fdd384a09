"""Which units to label next: the most uncertain, stratified by predicted class, thinned in space.

Allocation rule (equal allocation): the `count` picks are shared equally among the predicted classes
that have candidates (a unit's class is its majority predicted class); the remainder of the division
goes to the classes whose best candidate is the most uncertain. Equal rather than proportional
allocation, because the rare classes are the ones a model gets wrong and a proportional share would
give them no label at all. A class with fewer admissible candidates than its share gives the rest to
the other classes, filled by score in a second pass.

Thinning: a pick must lie at least `min_distance_px` (between unit centroids, in pixels) from every
earlier pick. Picks are made greedily, highest score first, taking the classes in turn (round robin),
so one class's picks cannot crowd out another's by taking its space first.

Candidates are units with a score (some predicted pixel) that are not in `exclude` (already labelled,
or queued earlier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.active.units import UnitTable


@dataclass(frozen=True)
class Picks:
    unit: np.ndarray  # int32 unit ids, in the order picked
    label: np.ndarray  # uint8 predicted (majority) class of each pick
    score: np.ndarray  # float32 score of each pick
    quota: dict[int, int]  # the equal allocation per predicted class, before redistribution


def equal_allocation(count: int, classes: np.ndarray, best_scores: np.ndarray) -> dict[int, int]:
    """`count` shared equally among `classes`; the remainder to the classes with the highest best score."""
    if len(classes) == 0:
        return {}
    base, extra = divmod(count, len(classes))
    order = np.lexsort((classes, -best_scores))  # highest best score first, then lowest code
    quota = {int(c): base for c in classes}
    for i in order[:extra]:
        quota[int(classes[i])] += 1
    return quota


def _far_enough(row: float, col: float, picked_rc: list[tuple[float, float]], min_distance: float) -> bool:
    if min_distance <= 0 or not picked_rc:
        return True
    rc = np.asarray(picked_rc)
    return bool(np.min(np.hypot(rc[:, 0] - row, rc[:, 1] - col)) >= min_distance)


def pick_units(
    table: UnitTable, count: int, min_distance_px: float = 0.0, exclude: np.ndarray | list | None = None
) -> Picks:
    """Up to `count` unit ids to label next (fewer only if the candidates or the thinning run out)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    ok = np.isfinite(table.score) & (table.label > 0)
    if exclude is not None and len(exclude):
        ok &= ~np.isin(table.unit, np.asarray(exclude))
    cand = np.nonzero(ok)[0]
    cand = cand[np.lexsort((table.unit[cand], -table.score[cand]))]  # by score, ties by id
    classes = np.unique(table.label[cand])
    best = np.array([table.score[cand[table.label[cand] == c][0]] for c in classes], dtype=np.float64)
    quota = equal_allocation(count, classes, best)

    queues = {int(c): list(cand[table.label[cand] == c]) for c in classes}
    taken: dict[int, int] = dict.fromkeys(quota, 0)
    picked: list[int] = []
    picked_rc: list[tuple[float, float]] = []

    def take(i: int) -> bool:
        if not _far_enough(table.row[i], table.col[i], picked_rc, min_distance_px):
            return False
        picked.append(int(i))
        picked_rc.append((table.row[i], table.col[i]))
        return True

    active = [c for c in sorted(quota, key=lambda c: -best[list(classes).index(c)]) if quota[c] > 0]
    while active and len(picked) < count:  # round robin over classes, each its best admissible unit
        for c in list(active):
            queue = queues[c]
            while queue:
                if take(queue.pop(0)):
                    taken[c] += 1
                    break
            if taken[c] >= quota[c] or not queue:
                active.remove(c)
    if len(picked) < count:  # classes short of candidates: the rest by score, still thinned
        chosen = set(picked)
        for i in cand:
            if len(picked) >= count:
                break
            if int(i) not in chosen:
                take(i)
    idx = np.asarray(picked, dtype=np.int64)
    return Picks(table.unit[idx], table.label[idx], table.score[idx], quota)


def random_units(table: UnitTable, count: int, seed: int, exclude: np.ndarray | list | None = None) -> np.ndarray:
    """`count` unit ids drawn uniformly without replacement among those with a prediction, not excluded."""
    ok = table.n_pixels > 0
    if exclude is not None and len(exclude):
        ok &= ~np.isin(table.unit, np.asarray(exclude))
    pool = table.unit[ok]
    rng = np.random.default_rng(seed)
    return rng.choice(pool, size=min(count, pool.size), replace=False).astype(np.int32)
