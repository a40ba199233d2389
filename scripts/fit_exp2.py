"""Fit the polynomial of the CPU kernels' 2^x (exp2_poly in kernels/cpu/self_attn_cpu_kernel.h).

p(r) = 1 + r (c1 + r (c2 + ... + c6 r)) approximates 2^r on [-1/2, 1/2], minimising the largest
relative error max |p(r) / 2^r - 1| (a linear program on a dense grid, solved by HiGHS). The constant
term is fixed at 1 so that 2^0 is exact. The coefficients are rounded to float32 one at a time, from
c1 up, and the ones not yet rounded are refitted after each rounding, so that later coefficients
absorb the earlier ones' rounding errors.

    python scripts/fit_exp2.py

prints the coefficients as the kernel spells them and the fit's relative error. The accuracy of the
whole function in float32 (what tests/cpp/test_cpu_exp.cpp bounds) also depends on the evaluation's
rounding, and is measured there. Needs numpy and scipy (scipy comes with the "train" extra, through
scikit-learn).
"""

import numpy as np
from scipy.optimize import linprog

DEGREE = 6
LO, HI = -0.5, 0.5
GRID = np.linspace(LO, HI, 6001)
# The errors sought are about 1e-9, below HiGHS's default feasibility tolerance: the rows are scaled
# up so that the solver's tolerances stay far below them.
ROW_SCALE = 1e7


def fit(fixed):
    """Minimax fit of the coefficients after `fixed` (c1.. already rounded); returns them and the error."""
    x, w = GRID, 2.0**-GRID
    known = 1 + sum(float(c) * x ** (k + 1) for k, c in enumerate(fixed))
    free = DEGREE - len(fixed)
    a = np.stack([x**k * w for k in range(len(fixed) + 1, DEGREE + 1)], 1) * ROW_SCALE
    b = (1 - known * w) * ROW_SCALE
    ones = -np.ones((len(x), 1))
    res = linprog(
        np.r_[np.zeros(free), 1.0],
        A_ub=np.vstack([np.hstack([a, ones]), np.hstack([-a, ones])]),
        b_ub=np.concatenate([b, -b]),
        bounds=[(None, None)] * (free + 1),
        method="highs",
        options=dict(primal_feasibility_tolerance=1e-10, dual_feasibility_tolerance=1e-10),
    )
    if res.status != 0:
        raise RuntimeError(f"the linear program failed: {res.message}")
    return res.x[:free], res.x[-1] / ROW_SCALE


def main():
    exact, err = fit([])
    print(f"minimax relative error, float64 coefficients: {err:.3g}")
    fixed = []
    for _ in range(DEGREE):
        rest, _ = fit(fixed)
        fixed.append(np.float32(rest[0]))
    x = np.linspace(LO, HI, 400001)
    p = np.zeros_like(x)
    for c in reversed(fixed):
        p = p * x + float(c)
    p = 1 + x * p
    print(f"relative error with the float32 coefficients (exact arithmetic): {np.max(np.abs(p / 2**x - 1)):.3g}")
    print("coefficients, highest degree first, as exp2_poly spells them:")
    for k in range(DEGREE, 0, -1):
        print(f"  c{k} = {float(fixed[k - 1]):.8e}f")


if __name__ == "__main__":
    main()
