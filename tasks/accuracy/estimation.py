"""Accuracy and area from a stratified random sample: the estimators of Olofsson et al. (2014).

Olofsson, P., Foody, G. M., Herold, M., Stehman, S. V., Woodcock, C. E., Wulder, M. A. (2014). Good practices
for estimating area and assessing accuracy of land change. Remote Sensing of Environment 148: 42–57.

Plain numpy, no I/O. The inputs are the error matrix of sample *counts* ``n[i, j]`` (row i: the stratum,
i.e. the map class, of the sample unit; column j: its reference class) and the mapped area of every
stratum (in pixels, or any area unit: the areas come back in that unit). Stratum i's weight is its share
of the map, ``W_i = A_m,i / A``. The formulas, numbered as in the paper:

- eq. 4  the error matrix in area proportions: ``p_ij = W_i n_ij / n_i.``
- eq. 1  overall accuracy ``O = sum_j p_jj``;  eq. 2  user's accuracy ``U_i = p_ii / p_i.``;
  eq. 3  producer's accuracy ``P_j = p_jj / p_.j``
- eq. 5  ``V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1)``;  eq. 6  ``V(U_i) = U_i (1 - U_i) / (n_i. - 1)``
- eq. 7  ``V(P_j) = 1/N_.j^2 [ N_j.^2 (1 - P_j)^2 U_j (1 - U_j) / (n_j. - 1)
                            + P_j^2 sum_{i != j} N_i.^2 (n_ij / n_i.) (1 - n_ij / n_i.) / (n_i. - 1) ]``
  with ``N_i.`` the mapped area of stratum i and ``N_.j = sum_i N_i. n_ij / n_i.`` the estimated area of class j
- eq. 8/9  the area of class k: ``A_k = A p_.k`` with ``p_.k = sum_i W_i n_ik / n_i.``
- eq. 10 ``S(p_.k) = sqrt( sum_i W_i^2 (n_ik / n_i.) (1 - n_ik / n_i.) / (n_i. - 1) )``;  eq. 11 ``S(A_k) = A S(p_.k)``
- 95 % confidence intervals: estimate ± 1.96 S.

Here the map classes (strata) and the reference classes are the same list of codes, so the matrix is
square; a stratum may have area 0 (a class no pixel was mapped as) and then no sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z95 = 1.96  # the half-width of a 95 % interval in standard errors (normal quantile, as the paper rounds it)


class EstimationError(ValueError):
    """A sample the estimators cannot use (a stratum without enough labelled units, mismatched inputs)."""


@dataclass(frozen=True)
class Estimates:
    """Everything the stratified estimators give, per class in the order of `classes`."""

    classes: list  # class codes (rows = strata = map classes; columns = reference classes)
    counts: np.ndarray  # n_ij, sample counts
    mapped_area: np.ndarray  # A_m,i, per stratum, in the input's unit
    proportions: np.ndarray  # p_ij, the error matrix in area proportions (eq. 4)
    overall: float
    overall_se: float
    users: np.ndarray  # U_i (NaN for a stratum without sample)
    users_se: np.ndarray
    producers: np.ndarray  # P_j (NaN for a class with no estimated area)
    producers_se: np.ndarray
    area: np.ndarray  # A_k, estimated area of each reference class, in the input's unit
    area_se: np.ndarray

    @property
    def total_area(self) -> float:
        return float(self.mapped_area.sum())

    @property
    def area_ci(self) -> tuple[np.ndarray, np.ndarray]:
        """The 95 % confidence interval of each class's area (lower, upper)."""
        return self.area - Z95 * self.area_se, self.area + Z95 * self.area_se


def stratified_estimates(counts, mapped_area) -> Estimates:
    """The estimates of Olofsson et al. (2014) from sample counts ``counts[i, j]`` and the strata's mapped areas.

    Every stratum with mapped area needs at least two sample units (the variances divide by n_i. - 1);
    EstimationError names the strata that have fewer.
    """
    n = np.asarray(counts, dtype=float)
    area_m = np.asarray(mapped_area, dtype=float)
    k = len(area_m)
    if n.shape != (k, k):
        raise EstimationError(f"the error matrix is {n.shape}, but there are {k} strata: it must be {k} × {k}")
    if (n < 0).any() or (area_m < 0).any():
        raise EstimationError("sample counts and mapped areas must not be negative")
    total = area_m.sum()
    if total <= 0:
        raise EstimationError("the mapped areas add up to 0: there is nothing to estimate")
    n_i = n.sum(axis=1)  # n_i. : sample units per stratum
    short = [i for i in range(k) if area_m[i] > 0 and n_i[i] < 2]
    if short:
        raise EstimationError(
            f"strata {short} (row indices) have mapped area but fewer than 2 labelled sample units; label more"
        )
    weights = area_m / total  # W_i
    sampled = n_i > 0
    # The share of stratum i's sample in each reference class: n_ij / n_i. (0 for an empty stratum of area 0).
    share = np.divide(n, n_i[:, None], out=np.zeros_like(n), where=sampled[:, None])
    proportions = weights[:, None] * share  # eq. 4
    diag = np.diag(proportions)
    row_total, col_total = proportions.sum(axis=1), proportions.sum(axis=0)  # p_i. (= W_i) and p_.j
    denominator = np.where(sampled, n_i - 1, np.inf)  # n_i. - 1; an unsampled stratum has weight 0 here

    overall = float(diag.sum())  # eq. 1
    users = np.divide(diag, row_total, out=np.full(k, np.nan), where=row_total > 0)  # eq. 2
    producers = np.divide(diag, col_total, out=np.full(k, np.nan), where=col_total > 0)  # eq. 3
    u0 = np.nan_to_num(users)
    overall_se = float(np.sqrt(np.sum(weights**2 * u0 * (1 - u0) / denominator)))  # eq. 5
    users_se = np.where(sampled, np.sqrt(u0 * (1 - u0) / denominator), np.nan)  # eq. 6

    # eq. 7: N_i. is the mapped area of stratum i, N_.j the estimated area of reference class j.
    big_n_i = area_m
    big_n_j = (big_n_i[:, None] * share).sum(axis=0)
    cell_var = share * (1 - share) / denominator[:, None]  # (n_ij/n_i.)(1 - n_ij/n_i.)/(n_i. - 1)
    producers_se = np.full(k, np.nan)
    for j in range(k):
        if big_n_j[j] <= 0:
            continue
        p_j = producers[j]
        own = big_n_i[j] ** 2 * (1 - p_j) ** 2 * u0[j] * (1 - u0[j]) / denominator[j]
        others = sum(big_n_i[i] ** 2 * cell_var[i, j] for i in range(k) if i != j)
        producers_se[j] = np.sqrt((own + p_j**2 * others) / big_n_j[j] ** 2)

    area = total * col_total  # eq. 8/9
    area_se = total * np.sqrt(np.sum(weights[:, None] ** 2 * cell_var, axis=0))  # eq. 10, 11
    return Estimates(
        classes=list(range(k)),
        counts=n,
        mapped_area=area_m,
        proportions=proportions,
        overall=overall,
        overall_se=overall_se,
        users=users,
        users_se=users_se,
        producers=producers,
        producers_se=producers_se,
        area=area,
        area_se=area_se,
    )


def count_matrix(map_classes, reference_classes, classes: list) -> np.ndarray:
    """The error matrix of sample counts: rows the map class (stratum) of each unit, columns its reference class."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for c in (*map_classes, *reference_classes) if c not in index}, key=str)
    if unknown:
        raise EstimationError(f"classes {unknown} are not among the strata and classes {classes}")
    n = np.zeros((len(classes), len(classes)))
    for m, r in zip(map_classes, reference_classes, strict=True):
        n[index[m], index[r]] += 1
    return n


# ------------------------------------------------------------------------------------ sample design


def sample_size(weights, anticipated_users, target_se: float, population: float | None = None) -> int:
    """The total sample size for a target standard error of overall accuracy (Olofsson et al. 2014, eq. 13,
    after Cochran 1977): ``n = (sum_i W_i S_i / S(O))^2`` with ``S_i = sqrt(U_i (1 - U_i))`` the anticipated
    standard deviation of stratum i, from its anticipated user's accuracy U_i; with `population` (the number of
    pixels), the finite-population correction ``n / (1 + sum_i W_i S_i^2 / (N S(O)^2))``."""
    w = np.asarray(weights, dtype=float)
    u = np.asarray(anticipated_users, dtype=float)
    if not 0 < target_se < 1:
        raise EstimationError(f"the target standard error must be between 0 and 1, not {target_se}")
    if ((u <= 0) | (u >= 1)).any():
        raise EstimationError(f"anticipated user's accuracies must be between 0 and 1 (exclusive), not {u.tolist()}")
    s = np.sqrt(u * (1 - u))
    n = (np.sum(w * s) / target_se) ** 2
    if population:
        n = n / (1 + np.sum(w * s**2) / (population * target_se**2))
    return int(np.ceil(n))


def allocate(n_total: int, weights, available, minimum: int) -> np.ndarray:
    """Share `n_total` units among the strata: proportional to area, but at least `minimum` per stratum (all of a
    stratum's pixels if it has fewer), the floor raised strata taken out and the rest re-shared proportionally
    among the others (largest remainders round it to exactly the total, unless the floors alone exceed it).

    Why: proportional allocation gives small strata (the rare classes, change) too few units to estimate their
    user's accuracy, and equal allocation wastes units on the large ones; a floor per stratum with the rest
    proportional is the compromise Olofsson et al. (2014, §5.1.2) recommend.
    """
    w = np.asarray(weights, dtype=float)
    cap = np.asarray(available, dtype=int)
    k = len(w)
    n = np.zeros(k, dtype=int)
    fixed = np.zeros(k, dtype=bool)
    present = cap > 0
    while True:
        free = present & ~fixed
        remaining = n_total - n[fixed].sum()
        if not free.any() or remaining <= 0:
            break
        share = remaining * w[free] / w[free].sum()
        base = np.floor(share).astype(int)
        extra = remaining - base.sum()
        order = np.argsort(-(share - base), kind="stable")[:extra]
        base[order] += 1
        proposal = np.zeros(k, dtype=int)
        proposal[free] = base
        low = free & (proposal < np.minimum(minimum, cap))
        high = free & (proposal > cap)
        if not low.any() and not high.any():
            n[free] = proposal[free]
            break
        n[low] = np.minimum(minimum, cap[low])
        n[high] = cap[high]
        fixed |= low | high
    # Strata whose floor was not reached because the total ran out still get their floor.
    short = present & (n < np.minimum(minimum, cap))
    n[short] = np.minimum(minimum, cap[short])
    return n
