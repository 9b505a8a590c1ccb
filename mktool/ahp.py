"""Analytic Hierarchy Process (层次分析法): weights from a pairwise-comparison matrix.

The weights are the principal eigenvector of the matrix (power iteration; the matrices are
tiny), and Saaty's consistency ratio CR = CI / RI with CI = (λmax − n) / (n − 1) tells whether
the analyst's comparisons contradict each other: CR ≥ 0.10 is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

# Saaty's random consistency index by matrix size.
RANDOM_INDEX = {1: 0.0, 2: 0.0, 3: 0.58, 4: 0.90, 5: 1.12, 6: 1.24, 7: 1.32, 8: 1.41, 9: 1.45, 10: 1.49}
MAX_CONSISTENCY_RATIO = 0.10


@dataclass(frozen=True)
class AhpResult:
    weights: tuple[float, ...]  # sum to 1
    lambda_max: float
    consistency_index: float
    consistency_ratio: float

    @property
    def consistent(self) -> bool:
        return self.consistency_ratio < MAX_CONSISTENCY_RATIO


def check_matrix(matrix: list[list[float]]) -> str | None:
    """Why ``matrix`` is not a valid comparison matrix, or None."""
    n = len(matrix)
    if n == 0 or any(len(row) != n for row in matrix):
        return f"must be square (got {n} rows of lengths {[len(r) for r in matrix]})"
    if n > max(RANDOM_INDEX):
        return f"at most {max(RANDOM_INDEX)} criteria are supported"
    for i in range(n):
        if abs(matrix[i][i] - 1) > 1e-9:
            return f"diagonal entry [{i + 1}][{i + 1}] must be 1, got {matrix[i][i]}"
        for j in range(n):
            if matrix[i][j] <= 0:
                return f"entry [{i + 1}][{j + 1}] must be positive, got {matrix[i][j]}"
            if abs(matrix[i][j] * matrix[j][i] - 1) > 1e-6:
                return (f"entries [{i + 1}][{j + 1}] = {matrix[i][j]:g} and [{j + 1}][{i + 1}] = {matrix[j][i]:g} "
                        "must be reciprocal (a_ji = 1 / a_ij)")
    return None


def ahp_weights(matrix: list[list[float]], *, iterations: int = 1000, tol: float = 1e-12) -> AhpResult:
    """Principal eigenvector (normalised to sum 1), λmax, CI and CR of a reciprocal matrix."""
    n = len(matrix)
    w = [1.0 / n] * n
    for _ in range(iterations):
        nxt = [sum(matrix[i][j] * w[j] for j in range(n)) for i in range(n)]
        total = sum(nxt)
        nxt = [x / total for x in nxt]
        done = max(abs(a - b) for a, b in zip(nxt, w)) < tol
        w = nxt
        if done:
            break
    aw = [sum(matrix[i][j] * w[j] for j in range(n)) for i in range(n)]
    lambda_max = sum(aw[i] / w[i] for i in range(n)) / n
    ci = (lambda_max - n) / (n - 1) if n > 2 else 0.0
    ri = RANDOM_INDEX[n]
    cr = ci / ri if ri > 0 else 0.0
    return AhpResult(tuple(w), lambda_max, max(ci, 0.0), max(cr, 0.0))
