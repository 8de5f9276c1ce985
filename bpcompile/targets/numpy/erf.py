"""The error function erf(x) that generated NumPy modules embed.

A generated module may import NumPy and nothing else (no SciPy, no loops over
elements through the ``math`` module), so a model that uses erf carries its own
copy: ``ERF_SOURCE`` is the source text of ``def _erf(x):`` and of the
``_ERF_*`` constant tuples it reads, to be pasted verbatim at the top level of a
module that has done ``import numpy as np``.

``_erf`` follows the algorithm of fdlibm's s_erf.c (Sun Microsystems, 1993, as
found in FreeBSD's msun and glibc), with the same rational approximations and
coefficients, vectorised: each interval's elements are gathered by index and
computed together, with no loop over elements.  It takes a float64 or float32
array or scalar of any shape and returns erf of it in the same shape and dtype
(float32 is computed in float64 and rounded once).  Like a NumPy ufunc, a 0-d
input gives a NumPy scalar.  Its float64 results are within one unit in the
last place of the true erf on the whole real line (tests/test_erf.py measures
them against mpmath); it emits no NumPy floating-point warnings for any input,
inf and nan included.

``load()`` runs the text the way a generated module does and returns ``_erf``.
"""

ERF_SOURCE = '''\
# erf(x), vectorised with NumPy, after fdlibm's s_erf.c.  Its copyright notice,
# which the licence asks to keep:
#
# ====================================================
# Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
#
# Developed at SunPro, a Sun Microsystems, Inc. business.
# Permission to use, copy, modify, and distribute this
# software is freely granted, provided that this notice
# is preserved.
# ====================================================
#
# The coefficients below are those of fdlibm s_erf.c (FreeBSD lib/msun/src/s_erf.c,
# glibc sysdeps/ieee754/dbl-64/s_erf.c), in its decimal spelling; each parses to
# the double whose bits s_erf.c gives in hex.  Every tuple lists its polynomial's
# coefficients from the constant term up.

# erf(x) = x + x*_ERF_EFX for |x| < 2**-28 (first term of the power series)
_ERF_EFX = 1.28379167095512586316e-01  # 2/sqrt(pi) - 1

# |x| < 0.84375: erf(x) = x + x*P(x*x)/Q(x*x)  (pp0..pp4, 1 qq1..qq5)
_ERF_PP = (
    1.28379167095512558561e-01,
    -3.25042107247001499370e-01,
    -2.84817495755985104766e-02,
    -5.77027029648944159157e-03,
    -2.37630166566501626084e-05,
)
_ERF_QQ = (
    1.0,
    3.97917223959155352819e-01,
    6.50222499887672944485e-02,
    5.08130628187576562776e-03,
    1.32494738004321644526e-04,
    -3.96022827877536812320e-06,
)

# 0.84375 <= |x| < 1.25: erf(|x|) = erx + P(s)/Q(s) with s = |x| - 1, and
# erx = erf(1) rounded to 24 bits  (pa0..pa6, 1 qa1..qa6)
_ERF_ERX = 8.45062911510467529297e-01
_ERF_PA = (
    -2.36211856075265944077e-03,
    4.14856118683748331666e-01,
    -3.72207876035701323847e-01,
    3.18346619901161753674e-01,
    -1.10894694282396677476e-01,
    3.54783043256182359371e-02,
    -2.16637559486879084300e-03,
)
_ERF_QA = (
    1.0,
    1.06420880400844228286e-01,
    5.40397917702171048937e-01,
    7.18286544141962662868e-02,
    1.26171219808761642112e-01,
    1.36370839120290507362e-02,
    1.19844998467991074170e-02,
)

# 1.25 <= |x| < 6: erf(|x|) = 1 - erfc(|x|), with
#     erfc(x) = exp(-x*x - 0.5625 + R(s)/S(s)) / x,   s = 1/(x*x),
# R/S on [1.25, 1/0.35) (ra0..ra7, 1 sa1..sa8) ...
_ERF_RA = (
    -9.86494403484714822705e-03,
    -6.93858572707181764372e-01,
    -1.05586262253232909814e+01,
    -6.23753324503260060396e+01,
    -1.62396669462573470355e+02,
    -1.84605092906711035994e+02,
    -8.12874355063065934246e+01,
    -9.81432934416914548592e+00,
)
_ERF_SA = (
    1.0,
    1.96512716674392571292e+01,
    1.37657754143519042600e+02,
    4.34565877475229228821e+02,
    6.45387271733267880336e+02,
    4.29008140027567833386e+02,
    1.08635005541779435134e+02,
    6.57024977031928170135e+00,
    -6.04244152148580987438e-02,
)
# ... and on [1/0.35, 6) (rb0..rb6, 1 sb1..sb7)
_ERF_RB = (
    -9.86494292470009928597e-03,
    -7.99283237680523006574e-01,
    -1.77579549177547519889e+01,
    -1.60636384855821916062e+02,
    -6.37566443368389627722e+02,
    -1.02509513161107724954e+03,
    -4.83519191608651397019e+02,
)
_ERF_SB = (
    1.0,
    3.03380607434824582924e+01,
    3.25792512996573918826e+02,
    1.53672958608443695994e+03,
    3.19985821950859553908e+03,
    2.55305040643316442583e+03,
    4.74528541206955367215e+02,
    -2.24409524465858183362e+01,
)

# The interval ends, as s_erf.c tests them on the high 32 bits of |x|:
# 2**-28 (0x3e300000), 0.84375 (0x3feb0000), 1.25 (0x3ff40000),
# 1/0.35 rounded up to 2.8571434020996094 (0x4006db6e), 6 (0x40180000).
_ERF_BOUNDS = (2.0**-28, 0.84375, 1.25, 2.8571434020996094, 6.0)


def _erf(x):
    """erf(x) elementwise, in the shape and float dtype of x (float32 is computed in float64)."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float16) else np.dtype(np.float64)
    # erf is odd: work on a = |x|, flattened, and give the result the sign of x
    # at the end (so erf(-0.0) = -0.0).  Each interval's elements are gathered
    # by index and only they are computed, so inf and nan never enter the
    # arithmetic.  Underflow is expected (erf(x) ~ 1.128*x is subnormal for
    # subnormal x), and comparisons with nan may flag "invalid" on some
    # platforms: both are silenced.
    with np.errstate(under="ignore", invalid="ignore"):
        x = x.astype(np.float64, copy=False)
        a = np.abs(x).ravel()
        # |x| >= 6, inf included: erf(|x|) = 1 - erfc(|x|) is 1 to within 2**-55,
        # so 1.0 after rounding; np.minimum keeps nan as nan.  The intervals
        # below overwrite their own elements.
        y = np.minimum(a, 1.0)
        # below[i]: |x| < _ERF_BOUNDS[i]; interval i is below[i] and not below[i - 1]
        below = [a < b for b in _ERF_BOUNDS]
        tiny, small, mid, near, far = [np.flatnonzero(below[0])] + [
            np.flatnonzero(below[i] ^ below[i - 1]) for i in range(1, len(below))]

        # |x| < 2**-28: erf(x) = x + x*efx, the next term being below 2**-84
        # relative.  For subnormal x the product is rounded once, to the
        # subnormal spacing, and the sum is exact.
        t = a[tiny]
        y[tiny] = t + t * _ERF_EFX

        # 2**-28 <= |x| < 0.84375: erf(x) = x + x*P(z)/Q(z), z = x*x
        t = a[small]
        z = t * t
        p = np.full_like(z, _ERF_PP[-1])
        for c in _ERF_PP[-2::-1]:  # Horner, in place
            p *= z
            p += c
        q = np.full_like(z, _ERF_QQ[-1])
        for c in _ERF_QQ[-2::-1]:
            q *= z
            q += c
        y[small] = t + t * (p / q)

        # 0.84375 <= |x| < 1.25: erf(x) = erx + P(s)/Q(s), s = |x| - 1
        s = a[mid] - 1.0
        p = np.full_like(s, _ERF_PA[-1])
        for c in _ERF_PA[-2::-1]:
            p *= s
            p += c
        q = np.full_like(s, _ERF_QA[-1])
        for c in _ERF_QA[-2::-1]:
            q *= s
            q += c
        y[mid] = _ERF_ERX + p / q

        # 1.25 <= |x| < 6: erf(x) = 1 - erfc(x),
        #     erfc(x) = exp(-z*z - 0.5625) * exp((z - x)*(z + x) + R(s)/S(s)) / x,
        # s = 1/(x*x), with R/S from one table on [1.25, 1/0.35) ("near") and the
        # other on [1/0.35, 6) ("far").  z is x with the low 32 bits of its
        # float64 zeroed: z*z and -z*z - 0.5625 are exact, and (z - x)*(z + x)
        # carries the rest of -x*x.
        for index, rs, ss in ((near, _ERF_RA, _ERF_SA), (far, _ERF_RB, _ERF_SB)):
            t = a[index]
            s = 1.0 / (t * t)
            r = np.full_like(s, rs[-1])
            for c in rs[-2::-1]:
                r *= s
                r += c
            q = np.full_like(s, ss[-1])
            for c in ss[-2::-1]:
                q *= s
                q += c
            z = (t.view(np.uint64) & np.uint64(0xFFFFFFFF00000000)).view(np.float64)
            erfc = np.exp(-z * z - 0.5625) * np.exp((z - t) * (z + t) + r / q) / t
            y[index] = 1.0 - erfc

        y = np.copysign(y.reshape(x.shape), x).astype(dtype, copy=False)
    return y[()]  # a NumPy scalar for 0-d x, as a ufunc gives
'''


def load():
    """``_erf`` as a generated module would have it: ERF_SOURCE run with only ``np`` defined."""
    import numpy as np

    namespace = {"np": np}
    exec(compile(ERF_SOURCE, "<ERF_SOURCE>", "exec"), namespace)
    return namespace["_erf"]
