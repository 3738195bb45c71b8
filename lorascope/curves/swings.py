"""A regime of swings: the loss rises and falls periodically far beyond its noise.

The curve is detrended by a moving average about two wave periods wide (it removes a wave
spanning whole periods; a running median would flip between the two levels of a square
wave), taken over a 5-point running median (single outliers out), at a few
scales so that waves from a few points to a third of the curve are seen; the residual is
winsorized (heavy-tailed per-step losses) and its periodogram searched for a peak. White
(or slowly coloured) noise spreads its power evenly over neighbouring frequencies, so the
strongest ordinate in a scale's band (with the larger of its two neighbours: a wave between
two bins splits its power) is compared with the median power of the 32 ordinates around it.
That ratio is ``min_power`` or more only for a real wave (noise gets there with probability
about (1 + t) e^-t per frequency). The wave's amplitude is read from the peak; its extent
from a complex demodulation at the peak frequency (the envelope of the wave along the run).

Long curves are analysed in up to ``max_chunks`` evenly spaced chunks of ``chunk_points``
points, so the cost stays flat at a million points.
"""
from __future__ import annotations

import math

import numpy as np

from lorascope import signals as sg
from lorascope.curves.model import Episode
from lorascope.curves.params import Thresholds


def _scales(m: int, min_cycles: int, min_period: int) -> list[int]:
    top = m // max(1, min_cycles)
    out = []
    s = max(2 * min_period, 8)
    while s <= top:
        out.append(s)
        s *= 2
    if top >= max(2 * min_period, 8) and (not out or out[-1] < top):
        out.append(top)
    return out


def _peak(r: np.ndarray, s: int, min_period: int) -> tuple[float, int, float] | None:
    """(score, k, power) of the strongest ordinate with a period in (s/2, s]."""
    m = len(r)
    F = np.fft.rfft(r - r.mean())
    P = np.abs(F) ** 2
    k_lo = max(2, int(math.ceil(m / s)))
    k_hi = min(len(P) - 2, int(math.floor(m / max(s / 2.0, min_period))))
    if k_hi < k_lo:
        return None
    band = np.arange(k_lo, k_hi + 1)
    both = P[band] + np.maximum(P[band - 1], P[band + 1])
    j = int(band[np.argmax(both)])
    lo, hi = max(1, j - 17), min(len(P), j + 18)
    nb = np.r_[P[lo:max(lo, j - 1)], P[min(hi, j + 2):hi]]
    if len(nb) < 8:
        return None
    floor = float(np.median(nb)) / math.log(2.0)        # exponential: mean = median / ln 2
    pw = float(P[j] + max(P[j - 1], P[j + 1]))
    return pw / max(floor, 1e-300), j, pw


def _residual(y: np.ndarray, s: int, clip: bool = True) -> tuple[np.ndarray, int]:
    """(residual around a running median two periods of scale ``s`` wide, winsorized, with
    the padded edges cut off; offset of its first point)."""
    n = len(y)
    W = min(2 * s + 1, 2 * (n // 2) - 1)
    # a moving average about two periods wide (a running median of a square wave flips
    # between its two levels), of a 5-point running median (single outliers out)
    from scipy.ndimage import uniform_filter1d
    r = y - uniform_filter1d(sg.rolling_median(y, 5), W, mode="nearest")
    # the padded edges of the running median distort the first and last half-window
    cut = min(s // 2, n // 10)
    off = 0
    if n - 2 * cut >= 3 * s:
        r, off = r[cut:n - cut], cut
    sd = 1.4826 * float(np.median(np.abs(r - np.median(r)))) if len(r) and clip else 0.0
    if sd > 0:
        r = np.clip(r, -3 * sd, 3 * sd)
    return r, off


def _envelope(r: np.ndarray, period: float) -> np.ndarray:
    """Amplitude of the wave of ``period`` along r (complex demodulation, smoothed over
    two periods)."""
    from scipy.ndimage import uniform_filter1d
    t = np.arange(len(r))
    z = r * np.exp(-2j * np.pi * t / period)
    k = max(3, int(round(2 * period)))
    return 2 * np.hypot(uniform_filter1d(z.real, k, mode="nearest"), uniform_filter1d(z.imag, k, mode="nearest"))


def _crossings(r: np.ndarray, period: float, amp: float) -> int:
    """How often the residual, smoothed over a quarter period, crosses from above +amp/2
    to below -amp/2 and back (hysteresis: noise around zero does not count)."""
    from scipy.ndimage import uniform_filter1d
    if len(r) < 3:
        return 0
    sm = uniform_filter1d(r, max(1, int(period // 4)), mode="nearest")
    state, n = 0, 0
    for v in sm[:: max(1, int(period // 8))]:
        if v > 0.5 * amp and state <= 0:
            n += state != 0
            state = 1
        elif v < -0.5 * amp and state >= 0:
            n += state != 0
            state = -1
    return n


def _analyse(y: np.ndarray, T: Thresholds, epoch_period: float | None, chunked: bool):
    """Best wave in one stretch: (score, amplitude, period, scale, tagged) or None. In a
    chunk of a long curve, waves must fit min_cycles twice over (slower ones are the
    curve's wandering, judged on too few periods)."""
    n = len(y)
    min_cycles = int(T.rule("loss.oscillation", "min_cycles")) * (2 if chunked else 1)
    min_period = int(T.rule("loss.oscillation", "min_period"))
    min_power = float(T.rule("loss.oscillation", "min_power"))
    best = None
    for s in _scales(n, min_cycles, min_period):
        rr, _off = _residual(y, s)
        m = len(rr)
        if m < 24:
            continue
        pk = _peak(rr, s, min_period)
        if pk is None:
            continue
        score, k, pw = pk
        period = m / k
        tagged = bool(epoch_period) and any(abs(period * h / epoch_period - 1.0) <= 0.1 for h in (1, 2))
        amp = 2.0 * math.sqrt(pw) / m
        cand = (score, amp, period, s, tagged)
        if best is None or _better(cand, best, min_power):
            best = cand
    return best


def _better(a: tuple, b: tuple, min_power: float) -> bool:
    """Among clear waves the largest (a square or triangle wave also peaks at its odd
    harmonics, weaker in amplitude); otherwise the clearest."""
    if a[0] >= min_power and b[0] >= min_power:
        return a[1] > b[1]
    if (a[0] >= min_power) != (b[0] >= min_power):
        return a[0] >= min_power
    return a[0] > b[0]


def swings(cur: sg.Curve, series: str, T: Thresholds, epoch_steps: float | None) -> Episode | None:
    """The strongest regime of swings of the curve, if it passes the catalog's thresholds."""
    if cur.mode != "log" or cur.n < int(T.rule("loss.oscillation", "min_curve_points")):
        return None
    n = cur.n
    per_pt = float(np.median(np.diff(cur.steps))) if n > 1 else 1.0
    ep = (epoch_steps / per_pt) if epoch_steps and per_pt > 0 else None
    cp = int(T.rule("loss.oscillation", "chunk_points"))
    nch = int(T.rule("loss.oscillation", "max_chunks"))
    if n <= cp:
        starts, L = [0], n
    else:
        L = cp
        starts = sorted(set(np.linspace(0, n - L, nch).astype(int).tolist()))
    best = None
    min_power = float(T.rule("loss.oscillation", "min_power"))
    for a in starts:
        res = _analyse(cur.y[a:a + L], T, ep, len(starts) > 1)
        if res is not None and (best is None or _better(res, best, min_power)):
            best = res
    if best is None:
        return None
    score, amp, period, scale, tagged = best
    min_swing = math.log1p(T.rule("loss.oscillation", "min_swing"))
    # the noise floor of a short curve is read off few frequencies: ask more of it
    need = float(T.rule("loss.oscillation", "min_power")) * max(1.0, math.sqrt(100.0 / max(min(n, L), 1)))
    if score < need or amp < min_swing:
        return None
    # where the wave is: its envelope in every chunk, at the best chunk's period; a wave
    # that reaches the edge of a chunk's residual goes on into the edge cut off
    lim = max(0.5 * amp, min_swing)
    first = last = None
    seen = []
    crossings = 0
    for a in starts:
        r, off = _residual(cur.y[a:a + L], scale, clip=False)
        if len(r) < 3:
            continue
        env = _envelope(r, period)
        on = np.flatnonzero(env >= lim)
        if len(on):
            seen.append(a)
            i0, i1 = int(on[0]), int(on[-1])
            crossings = max(crossings, _crossings(r, period, amp))
            g0 = a if i0 == 0 else a + off + i0
            g1 = min(n, a + L) - 1 if i1 == len(r) - 1 else a + off + i1
            first = g0 if first is None else min(first, g0)
            last = g1 if last is None else max(last, g1)
    if first is None:
        return None
    if len(starts) > 1 and seen[0] != starts[0]:
        # the wave starts somewhere between the last chunk without it and the first with
        # it: read the envelope over that whole stretch
        prev = starts[starts.index(seen[0]) - 1]
        a, b = prev, min(n, seen[0] + L)
        r, off = _residual(cur.y[a:b], scale, clip=False)
        on = np.flatnonzero(_envelope(r, period) >= lim)
        if len(on):
            first = min(first, a + off + int(on[0]))
    min_cycles = int(T.rule("loss.oscillation", "min_cycles"))
    expected = 2.0 * min(L, n) / period
    if crossings < 2 * min_cycles - 1:
        return None      # one hump (a blow-up and its recovery), not a repeating wave
    if crossings > float(T.rule("loss.oscillation", "max_crossing_excess")) * expected:
        return None      # noise crossing the trend far more often than the wave would
    # the envelope is smoothed over two periods: the wave starts about half a period earlier
    first = max(0, first - int(period // 2))
    last = min(n - 1, last)
    cycles = (last - first + 1) / period
    if cycles < min_cycles:
        return None
    pct = 100 * (math.exp(amp) - 1)
    return Episode("swings", series, onset=int(cur.steps[first]), last=int(cur.steps[last]),
                   magnitude=float(amp),
                   data={"score": float(score), "amp_pct": pct, "period_points": float(period),
                         "period_steps": float(period * per_pt), "cycles": float(cycles),
                         "crossings": crossings,
                         "epoch_like": bool(tagged)})
