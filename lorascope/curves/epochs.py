"""Level shifts at epoch boundaries.

At each boundary the level just after is compared with the level just before (each side
a line through the neighbouring epoch, or through its half next to the boundary where the
curve bends), against mid-epoch controls where the same test should find nothing. The
stretch after an upward excursion that does not start at a boundary (until the loss holds
one level again) is not judged: a boundary inside it is the excursion's aftermath.
"""
from __future__ import annotations

import math

import numpy as np

from lorascope import signals as sg
from lorascope.curves.model import Episode
from lorascope.curves.params import Thresholds


def disturbed(cur: sg.Curve, eps: list[Episode], bounds: list[int], tol: int,
              settle: int, min_z: float, segs: list) -> list[tuple[int, int]]:
    """[start, end) index ranges after clear upward excursions (``min_z`` standard errors)
    that start between boundaries: from the onset until the loss has held one level for
    ``settle`` points (at most n/20 points after the excursion's last high point)."""
    out = []
    for e in eps:
        if e.kind not in ("excursion", "spike") or e.onset is None:
            continue
        if e.data.get("z", 0.0) < min_z:
            continue
        if bounds and min(abs(e.onset - b) for b in bounds) <= tol:
            continue
        a = int(np.searchsorted(cur.steps, e.onset))
        if e.end is not None:
            b = min(cur.n, int(np.searchsorted(cur.steps, e.end, side="right")) + settle)
        else:
            # it stays up: disturbed until the loss holds one level again (a segment of
            # settle points after the peak), at most n/20 points after the peak
            pk = int(np.searchsorted(cur.steps, e.peak if e.peak is not None else e.onset))
            cap = min(cur.n, pk + max(settle, cur.n // 20))
            held = [sg_ for sg_ in segs if cur.full_index(sg_.start) >= pk
                    and (cur.full_index(sg_.end) if sg_.end < len(cur.ds_y) else cur.n) - cur.full_index(sg_.start) >= settle]
            b = min(cap, cur.full_index(held[0].start)) if held else cap
            b = max(b, pk + 1)
        out.append((a, b))
    return out


def epoch_analysis(cur: sg.Curve, bounds_all: list[int], T: Thresholds,
                   dist: list[tuple[int, int]]) -> dict | None:
    st = cur.steps
    bounds = sorted({int(b) for b in bounds_all if st[0] < b <= st[-1]})
    if not bounds or cur.n < 10:
        return None
    q = lambda k: T.rule("loss.epoch_jump", k)  # noqa: E731
    edges = [0] + [int(np.searchsorted(st, b)) for b in bounds] + [cur.n]
    thr = math.log(q("min_ratio")) if cur.mode == "log" else None
    y = cur.y
    x = st.astype(float)

    def edge(a: int, b: int, at: float) -> tuple[float, float]:
        """The level at ``at`` from a line through y[a:b]; the half next to the boundary
        where the far half bends the line (the two disagree beyond their noise)."""
        m = b - a
        vf, sf = sg.linear_edge(x[a:b], y[a:b], at)
        if m < 12:
            return vf, sf
        h = m // 2
        ha, hb = (b - h, b) if b <= at else (a, a + h)
        vh, sh = sg.linear_edge(x[ha:hb], y[ha:hb], at)
        if abs(vf - vh) > 1.0 * math.sqrt(max(sh * sh - sf * sf, 0.0)):
            return vh, sh
        return vf, sf

    zmin = q("min_z") * (1.5 if len(bounds) == 1 else 1.0)

    def jump_at(i: int, lo: int, hi: int):
        for a, b in dist:
            if a <= i < b:
                return None
            if b <= i:
                lo = max(lo, b)
            elif a > i:
                hi = min(hi, a)
        side = min(i - lo, hi - i, int(q("max_side_points")))
        if side < 3:
            return None
        at = (x[i - 1] + x[i]) / 2
        vb, sb = edge(i - side, i, at)
        va, sa = edge(i, i + side, at)
        j = va - vb
        se = max(math.hypot(sb, sa), 1e-12)
        sig = abs(j) >= zmin * se and (thr is None or abs(j) >= thr)
        return j, se, sig, side

    res = []
    for k, b in enumerate(bounds):
        r = jump_at(edges[k + 1], edges[k], edges[k + 2])
        if r is not None:
            res.append((b, edges[k + 1]) + r)
    ctrl = []
    for k in range(len(edges) - 1):
        lo, hi = edges[k], edges[k + 1]
        r = jump_at((lo + hi) // 2, lo, hi) if hi - lo >= 12 else None
        if r is not None:
            ctrl.append(r)
    if not res:
        return None
    ups = [r for r in res if r[4] and r[2] > 0]
    downs = [r for r in res if r[4] and r[2] < 0]
    main = ups if len(ups) >= len(downs) else downs
    ctrl_sig = sum(1 for c in ctrl if c[2]) / max(1, len(ctrl))
    need = max(1, math.ceil(q("min_fraction") * len(res)))
    max_ctrl = q("max_control_share")
    fires = len(main) >= need and ctrl_sig <= max_ctrl

    def pooled(rs):
        return sum(r[0] for r in rs) / max(math.sqrt(sum(r[1] ** 2 for r in rs)), 1e-12)

    z_all = pooled([r[2:4] for r in res])
    if not fires and len(res) >= 2 and abs(z_all) >= q("min_z"):
        sign = 1.0 if z_all > 0 else -1.0
        same = [r for r in res if sign * r[2] > 0]
        mean_j = sum(r[2] for r in res) / len(res)
        z_ctrl = pooled([c[:2] for c in ctrl]) if ctrl else 0.0
        if (len(same) >= need and (thr is None or abs(mean_j) >= thr) and ctrl_sig <= max_ctrl
                and abs(z_ctrl) < 0.5 * q("min_z")):
            fires, main = True, same
            ups = same if sign > 0 else []
    direction = "up" if main is ups else "down"
    # the first boundary of the pattern in its direction, whether or not it alone is clear
    return {"fires": fires, "jumps": main, "all": res, "boundaries": bounds, "ctrl_sig": ctrl_sig,
            "z_pooled": z_all, "direction": direction}


def running_average(cur: sg.Curve, name: str, bounds_idx: list[int], declared: bool) -> bool:
    """Is the series a running mean that restarts each epoch (kohya's loss/average in some
    versions)? Then shifts at the boundaries are a logging artifact."""
    if declared:
        return True
    low = name.lower()
    if "average" in low or "avg" in low or "ema" in low.split("/"):
        return True
    early, late = [], []
    edges = [0] + bounds_idx + [cur.n]
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = hi - lo
        if m < 20:
            continue
        d = np.diff(cur.y[lo:hi])
        early.extend(np.abs(d[: m // 10]))
        late.extend(np.abs(d[m // 2:]))
    if len(early) >= 5 and len(late) >= 5:
        return float(np.median(early)) > 4 * max(float(np.median(late)), 1e-12)
    return False


def epoch_shift(cur: sg.Curve, series: str, bounds: list[int], T: Thresholds,
                eps: list[Episode], declared_running_average: bool,
                segs: list | None = None) -> tuple[Episode | None, dict | None]:
    if cur.n < int(T.rule("loss.epoch_jump", "min_curve_points")):
        return None, None
    st = cur.steps
    span = max(1, int(st[-1] - st[0]))
    tol = max(int(0.01 * span), int(np.median(np.diff(st))) if cur.n > 1 else 1, 1)
    inside = sorted({int(b) for b in bounds if st[0] < b <= st[-1]})
    settle = max(3 * int(T.rule("loss.spike", "max_points")), cur.n // 50)
    segs = segs or []
    dist = disturbed(cur, eps, inside, tol, settle, float(T.rule("loss.spike", "min_z")), segs)
    ej = epoch_analysis(cur, bounds, T, dist)
    if ej is None:
        return None, None
    ej["tol"] = tol
    ej["disturbed"] = dist
    if not ej["fires"]:
        return None, ej
    jumps = ej["jumps"]
    idx_bounds = [r[1] for r in ej["all"]]
    artifact = running_average(cur, series, idx_bounds, declared_running_average)
    ev_rows = []
    for b, i, j, se, _sig, _w in jumps[:5]:
        ev_rows.append((b, cur.level(float(np.median(cur.y[max(0, i - 5):i]))),
                        cur.level(float(np.median(cur.y[i:i + 5]))), j, abs(j) / se))
    # the staircase begins at the first boundary that steps in its direction by half its
    # typical step, whether or not that one alone is clear of the noise (the pattern is)
    sign = 1.0 if ej["direction"] == "up" else -1.0
    typical = float(np.median([abs(r[2]) for r in jumps]))
    b0 = next((r[0] for r in ej["all"] if sign * r[2] >= 0.5 * typical), jumps[0][0])
    b0 = min(b0, jumps[0][0])
    ep = Episode("epoch_shift", series, onset=b0, last=jumps[-1][0], magnitude=float(
        sum(abs(r[2]) for r in jumps) / len(jumps)),
        data={"direction": ej["direction"], "n_jumps": len(jumps), "n_bounds": len(ej["all"]),
              "ctrl_sig": ej["ctrl_sig"], "z_pooled": ej["z_pooled"], "rows": ev_rows,
              "steps": [r[0] for r in jumps], "artifact": artifact, "mode": cur.mode, "tol": tol})
    return ep, ej
