"""Sorting-free Triton kernels for the sampling ops (launchers: triton_backend.py).

Each program owns ROWS rows (1 on a GPU: one row per program streams its whole vocab; more in the
interpreter, where per-op overhead dominates) and walks the vocab in chunks of BLOCK, so a "pass" is
one read of the row. All state lives in registers; nothing is read back by the host, so the kernels
can be captured in a CUDA graph.

Sampling is rejection sampling with a rising pivot. The kept set of every filter is
{i : pred(p_i)} for a predicate that only gets truer as p grows (top-k: fewer than k tokens are
strictly more likely; top-p: the mass strictly above is < top_p * mass), so the kept set is
everything above some unknown threshold. Each pass draws NC independent candidates from the row
restricted to p > low, and in the same pass counts/sums the probs above the previous pass's
candidates. The first candidate (in draw order) whose predicate holds is the sample; if none holds,
all probs <= the largest candidate are rejected too, so low rises to it, and the candidates drawn
in this pass (from p > that largest candidate) are checked in the next. Every candidate is drawn in
proportion to p on a support that contains the whole kept set, so the accepted one is distributed
exactly as p restricted to the kept set. Rows without a count/mass filter accept their first
candidate after one pass.

Drawing in one pass without knowing the row's mass up front: the chunks race with keys
mass_c / Exp(1), so the winning chunk is chosen with probability mass_c / mass; after the pass the
winning chunk (only it) is re-read and the token found by inverse CDF inside it. Both uniforms come
from one Philox draw keyed by the row's seed with counter (chunk*NC+j, stream<<8|pass, offset), so a
row's sample depends on its seed, offset and probs only, never on its neighbours in the batch.

Exact thresholds (renorm, mask logits, and the top-k step of "top_k_first" sampling) come from a
deterministic search on the float's order-preserving integer key: one pass finds the valid keys'
range, then each pass evaluates the predicate at NB evenly spaced keys inside the current interval
and keeps the sub-interval where it flips. The key range is 2**32 wide, so ceil(32 / log2(NB+1))
passes always settle it (the launcher's bound); in practice it stops as soon as no token lies
strictly inside (top-k 50 of 151936: ~4 passes; top-p 0.9: ~10).
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.random import philox

INT32_MAX = tl.constexpr(2147483647)
INT32_MIN = tl.constexpr(-2147483648)

# search predicate modes
SEARCH_TOP_K = 0
SEARCH_TOP_P = 1
# what the threshold kernel writes
WRITE_RENORM = 0
WRITE_MASKED_LOGITS = 1


@triton.jit
def _to_key(x):
    """float32 -> int32 with the same order (-0.0 folded into +0.0 first)."""
    b = (x + 0.0).to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _from_key(k):
    b = k ^ ((k >> 31) & 0x7FFFFFFF)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _uniform(r):
    """uint32 -> float32 uniform with both ends open: (m + 0.5) / 2**23 for a 23-bit m."""
    return ((r >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def _search_threshold(row_ptr, V: tl.constexpr, k, top_p, active, L0,
                      MODE: tl.constexpr, OTHER: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK: tl.constexpr, NB: tl.constexpr, MAX_PASSES: tl.constexpr,
                      STAGES: tl.constexpr):
    """Exclusive key threshold L per row: the filter keeps exactly the tokens with key > L.

    Returns (L, count of keys > L, sum of probs with key > L). Keys <= L0 are never kept.
    """
    cols = tl.arange(0, BLOCK)
    jj = tl.arange(0, NB)
    # Per-element accumulators, reduced once after each pass: no cross-thread reduction (and no
    # barrier) inside the streaming loops.
    acnt = tl.zeros([ROWS, BLOCK], tl.int32)
    atot = tl.zeros([ROWS, BLOCK], tl.float32)
    amin = tl.full([ROWS, BLOCK], INT32_MAX, tl.int32)
    amax = tl.full([ROWS, BLOCK], INT32_MIN, tl.int32)
    for start in tl.range(0, V, BLOCK, num_stages=STAGES):
        offs = start + cols
        x = tl.load(row_ptr[:, None] + offs[None, :], mask=(offs < V)[None, :], other=OTHER)
        key = _to_key(x)
        valid = key > L0[:, None]
        acnt += valid.to(tl.int32)
        if MODE == 1:
            atot += tl.where(valid, x, 0.0)
        amin = tl.minimum(amin, tl.where(valid, key, INT32_MAX))
        amax = tl.maximum(amax, tl.where(valid, key, INT32_MIN))
    cnt = tl.sum(acnt, 1)
    tot = tl.sum(atot, 1)
    mn = tl.min(amin, 1)
    mx = tl.max(amax, 1)
    # Invariant: tokens with key <= L are rejected, tokens with key > H are kept; the kept set is
    # settled once no token lies in (L, H] except ties at one key (which share one verdict: kept,
    # since everything strictly above them is above H).
    L = tl.where(cnt > 0, mn - 1, L0)
    H = tl.where(cnt > 0, mx, L0)
    cnt_l = cnt
    sum_l = tot
    cnt_h = tl.zeros([ROWS], tl.int32)
    budget = top_p * tot
    done = (active == 0) | (cnt_l == cnt_h) | (H.to(tl.int64) - L.to(tl.int64) <= 1)
    if MODE == 0:
        done = done | (cnt_l <= k)  # at most k tokens left at all: every one of them is kept
    it = 0
    while (it < MAX_PASSES) & (tl.min(done.to(tl.int32), 0) == 0):
        width = H.to(tl.int64) - L.to(tl.int64)  # int32 would overflow for logits
        edges = (L[:, None].to(tl.int64) + (width[:, None] * (jj[None, :] + 1)) // (NB + 1))
        edges = edges.to(tl.int32)
        ecnt3 = tl.zeros([ROWS, NB, BLOCK], tl.int32)
        esum3 = tl.zeros([ROWS, NB, BLOCK], tl.float32)
        for start in tl.range(0, V, BLOCK, num_stages=STAGES):
            offs = start + cols
            x = tl.load(row_ptr[:, None] + offs[None, :], mask=(offs < V)[None, :], other=OTHER)
            gt = _to_key(x)[:, None, :] > edges[:, :, None]
            ecnt3 += gt.to(tl.int32)
            if MODE == 1:
                esum3 += tl.where(gt, x[:, None, :], 0.0)
        ecnt = tl.sum(ecnt3, 2)
        esum = tl.zeros([ROWS, NB], tl.float32)
        if MODE == 1:
            esum = tl.sum(esum3, 2)
        if MODE == 0:
            keep = ecnt < k[:, None]
        else:
            keep = (esum < budget[:, None]) | (esum <= 0.0)
        # keep is monotone in the edge (counts and same-order float sums of nested sets only
        # shrink), so the rejected edges are a prefix: L moves to its last, H to the first kept.
        il = tl.max(tl.where(keep, -1, jj[None, :]), 1)
        ih = tl.min(tl.where(keep, jj[None, :], NB), 1)
        sel_l = jj[None, :] == il[:, None]
        sel_h = jj[None, :] == ih[:, None]
        upd = done == 0
        has_l = upd & (il >= 0)
        has_h = upd & (ih < NB)
        L = tl.where(has_l, tl.sum(tl.where(sel_l, edges, 0), 1), L)
        cnt_l = tl.where(has_l, tl.sum(tl.where(sel_l, ecnt, 0), 1), cnt_l)
        sum_l = tl.where(has_l, tl.sum(tl.where(sel_l, esum, 0.0), 1), sum_l)
        H = tl.where(has_h, tl.sum(tl.where(sel_h, edges, 0), 1), H)
        cnt_h = tl.where(has_h, tl.sum(tl.where(sel_h, ecnt, 0), 1), cnt_h)
        done = done | (cnt_l == cnt_h) | (H.to(tl.int64) - L.to(tl.int64) <= 1)
        if MODE == 0:
            done = done | (cnt_l <= k)
        it += 1
    return L, cnt_l, sum_l


@triton.jit
def threshold_kernel(x_ptr, stride, out_ptr, out_stride, B, param_ptr, param_stride,
                     V: tl.constexpr,
                     MODE: tl.constexpr, WRITE: tl.constexpr, OTHER: tl.constexpr,
                     ROWS: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
                     MAX_PASSES: tl.constexpr, STAGES: tl.constexpr):
    """top_k / top_p renorm (WRITE=0) and top_k_mask_logits (WRITE=1), one program per ROWS rows."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    r = tl.where(row_ok, rows, B - 1).to(tl.int64)
    row_ptr = x_ptr + r * stride
    L0 = _to_key(tl.full([ROWS], OTHER, tl.float32))
    if MODE == 0:
        k = tl.load(param_ptr + r * param_stride).to(tl.int32)
        top_p = tl.zeros([ROWS], tl.float32)
        active = ((k > 0) & (k < V)).to(tl.int32)
    else:
        k = tl.zeros([ROWS], tl.int32)
        top_p = tl.load(param_ptr + r * param_stride).to(tl.float32)
        active = (top_p < 1.0).to(tl.int32)
    L, _, sum_l = _search_threshold(row_ptr, V, k, top_p, active, L0, MODE, OTHER, ROWS, BLOCK,
                                    NB, MAX_PASSES, STAGES)
    cols = tl.arange(0, BLOCK)
    if WRITE == 0:
        if MODE == 0:  # the count search skips sums; one more pass is cheaper than NB sums each
            sum_l = tl.zeros([ROWS], tl.float32)
            for start in tl.range(0, V, BLOCK, num_stages=STAGES):
                offs = start + cols
                x = tl.load(row_ptr[:, None] + offs[None, :], mask=(offs < V)[None, :], other=0.0)
                sum_l += tl.sum(tl.where(_to_key(x) > L[:, None], x, 0.0), 1)
        inv = 1.0 / sum_l
    out_row = out_ptr + r * out_stride
    for start in tl.range(0, V, BLOCK, num_stages=STAGES):
        offs = start + cols
        m = row_ok[:, None] & (offs < V)[None, :]
        x = tl.load(row_ptr[:, None] + offs[None, :], mask=m, other=OTHER)
        kept = _to_key(x) > L[:, None]
        if WRITE == 0:
            y = tl.where(kept, x * inv[:, None], 0.0)
        else:
            y = tl.where(kept, x, float("-inf"))
        tl.store(out_row[:, None] + offs[None, :], y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _draw_pass(row_ptr, V: tl.constexpr, low, floor, cand, seed, c1, c2, c3,
               CHECK: tl.constexpr, COUNT: tl.constexpr, MASS: tl.constexpr,
               IGNORE_FLOOR: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
               NC: tl.constexpr, STAGES: tl.constexpr):
    """One pass: draw NC candidates from p restricted to (p > low) & (p >= floor), and, if CHECK,
    count/sum the probs strictly above each of the previous candidates `cand`.

    Returns each new candidate's race key (0: the support was empty) and index, the support's mass
    (with IGNORE_FLOOR: of p > low only), and the counts / sums above `cand`.
    """
    cols = tl.arange(0, BLOCK)
    jj = tl.arange(0, NC)
    zero = tl.zeros([ROWS, NC], tl.uint32)
    best_key = tl.zeros([ROWS, NC], tl.float32)
    best_chunk = tl.zeros([ROWS, NC], tl.int32)
    mass = tl.zeros([ROWS], tl.float32)
    # per-element accumulators for the checks, reduced after the loop (as in _search_threshold)
    acnt = tl.zeros([ROWS, NC, BLOCK], tl.int32)
    asum = tl.zeros([ROWS, NC, BLOCK], tl.float32)
    for start in tl.range(0, V, BLOCK, num_stages=STAGES):
        offs = start + cols
        x = tl.load(row_ptr[:, None] + offs[None, :], mask=(offs < V)[None, :], other=0.0)
        above = x > low[:, None]
        m = tl.sum(tl.where(above & (x >= floor[:, None]), x, 0.0), 1)
        if IGNORE_FLOOR:
            mass += tl.sum(tl.where(above, x, 0.0), 1)
        else:
            mass += m
        # the chunk race: the chunk with the largest mass / Exp(1) wins with prob. mass / total
        chunk = start // BLOCK
        _, r1, _, _ = philox(seed[:, None], zero + (chunk * NC + jj)[None, :].to(tl.uint32),
                             zero + c1[:, None], zero + c2[:, None], zero + c3[:, None])
        key = m[:, None] / -tl.log(_uniform(r1))
        better = key > best_key
        best_key = tl.where(better, key, best_key)
        best_chunk = tl.where(better, chunk, best_chunk)
        if CHECK:
            gt = x[:, None, :] > cand[:, :, None]
            if COUNT:
                acnt += gt.to(tl.int32)
            if MASS:
                asum += tl.where(gt, x[:, None, :], 0.0)
    ccnt = tl.sum(acnt, 2)
    csum = tl.zeros([ROWS, NC], tl.float32)
    if MASS:
        csum = tl.sum(asum, 2)
    # Inverse CDF inside each winning chunk only (re-read: NC chunks, not the vocab), with the
    # other uniform of the same Philox draw: the first position whose running sum passes u * mass.
    r0, _, _, _ = philox(seed[:, None], zero + (best_chunk * NC + jj[None, :]).to(tl.uint32),
                         zero + c1[:, None], zero + c2[:, None], zero + c3[:, None])
    offs3 = best_chunk[:, :, None] * BLOCK + cols[None, None, :]
    x3 = tl.load(row_ptr[:, None, None] + offs3, mask=offs3 < V, other=0.0)
    w3 = tl.where((x3 > low[:, None, None]) & (x3 >= floor[:, None, None]), x3, 0.0)
    cs = tl.cumsum(w3, 2)
    target = _uniform(r0) * tl.sum(w3, 2)
    pos = tl.sum((cs <= target[:, :, None]).to(tl.int32), 2)
    # rounding can put the target past the last token with weight: clamp to it
    pos = tl.minimum(pos, tl.max(tl.where(w3 > 0.0, cols[None, None, :], 0), 2))
    best_idx = tl.minimum(best_chunk * BLOCK + pos, V - 1)
    return best_key, best_idx, mass, ccnt, csum


@triton.jit
def sample_kernel(probs_ptr, stride, B, out_ptr, idx_ptr, k_ptr, k_stride, p_ptr, p_stride,
                  minp_ptr, minp_stride, seed_ptr, seed_stride, off_ptr, off_stride, passes_ptr,
                  V: tl.constexpr,
                  HAS_INDICES: tl.constexpr, HAS_K: tl.constexpr, HAS_P: tl.constexpr,
                  HAS_MINP: tl.constexpr, TOP_K_FIRST: tl.constexpr, MIN_P_FIRST: tl.constexpr,
                  PER_ROW_SEED: tl.constexpr, WRITE_PASSES: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK: tl.constexpr, NC: tl.constexpr, NB: tl.constexpr,
                  SEARCH_BLOCK: tl.constexpr, SEARCH_PASSES: tl.constexpr,
                  MAX_ROUNDS: tl.constexpr, STAGES: tl.constexpr):
    """Every *_sampling_from_probs op: output row i samples from probs[indices[i] or i]."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    r = tl.where(row_ok, rows, B - 1)
    if HAS_INDICES:
        src = tl.load(idx_ptr + r).to(tl.int64)
    else:
        src = r.to(tl.int64)
    row_ptr = probs_ptr + src * stride
    jj = tl.arange(0, NC)

    k = tl.zeros([ROWS], tl.int32)
    k_on = rows < 0  # all False
    if HAS_K:
        k = tl.load(k_ptr + r * k_stride).to(tl.int32)
        k_on = (k > 0) & (k < V)
    top_p = tl.full([ROWS], 1.0, tl.float32)
    if HAS_P:
        top_p = tl.load(p_ptr + r * p_stride).to(tl.float32)
    p_on = top_p < 1.0
    low = tl.zeros([ROWS], tl.float32)  # exclusive: tokens with p <= low are rejected
    floor = tl.zeros([ROWS], tl.float32)  # inclusive: tokens with p < floor are rejected
    if TOP_K_FIRST:
        # top-k exactly first; the rejection loop then only has to apply top-p inside it
        lk, _cnt, _sum = _search_threshold(row_ptr, V, k, top_p, k_on.to(tl.int32),
                                           tl.zeros([ROWS], tl.int32), 0, 0.0, ROWS,
                                           SEARCH_BLOCK, NB, SEARCH_PASSES, STAGES)
        low = _from_key(lk)
        k_on = rows < 0
    if HAS_MINP:
        cols = tl.arange(0, BLOCK)
        row_max = tl.zeros([ROWS], tl.float32)
        for start in tl.range(0, V, BLOCK, num_stages=STAGES):
            offs = start + cols
            x = tl.load(row_ptr[:, None] + offs[None, :], mask=(offs < V)[None, :], other=0.0)
            row_max = tl.maximum(row_max, tl.max(x, 1))
        floor = tl.load(minp_ptr + r * minp_stride).to(tl.float32) * row_max

    seed = tl.load(seed_ptr + r * seed_stride)
    off = tl.load(off_ptr + r * off_stride)
    c2 = (off & 0xFFFFFFFF).to(tl.uint32)
    c3 = ((off >> 32) & 0xFFFFFFFF).to(tl.uint32)
    if PER_ROW_SEED:
        stream = tl.zeros([ROWS], tl.uint32)
    else:
        stream = (r.to(tl.uint32) << 8)
    COUNT: tl.constexpr = HAS_K and not TOP_K_FIRST

    # pass 0: first candidates, and the mass that top_p is measured against (min-p's cut only
    # shrinks that mass in vLLM's order)
    IGNORE_FLOOR: tl.constexpr = HAS_MINP and not MIN_P_FIRST
    ckey, cidx, ref, _c0, _s0 = _draw_pass(row_ptr, V, low, floor, low, seed, stream, c2, c3,
                                           False, False, False, IGNORE_FLOOR, ROWS, BLOCK, NC,
                                           STAGES)
    budget = top_p * ref
    cval = tl.load(row_ptr[:, None] + cidx)
    cvalid = (ckey > 0.0) & (cval > low[:, None]) & (cval >= floor[:, None])
    first = tl.min(tl.where(cvalid, jj[None, :], NC), 1)
    out = tl.sum(tl.where(jj[None, :] == first[:, None], cidx, 0), 1)
    done = (row_ok == 0) | ((k_on == 0) & (p_on == 0) & (first < NC))
    stuck = (done == 0) & (first == NC)  # empty support (e.g. an all-zero row)
    done = done | stuck
    passes = tl.where(done, 1, 0)
    it = 1
    while (it < MAX_ROUNDS) & (tl.min(done.to(tl.int32), 0) == 0):
        # if this pass rejects every candidate, everything up to the largest one is rejected too
        sup = tl.maximum(low, tl.max(tl.where(cvalid, cval, 0.0), 1))
        nkey, nidx, _mass, ccnt, csum = _draw_pass(row_ptr, V, sup, floor, cval, seed,
                                                   stream + it, c2, c3, True, COUNT, HAS_P, False,
                                                   ROWS, BLOCK, NC, STAGES)
        acc = cvalid
        if COUNT:
            acc = acc & ((ccnt < k[:, None]) | (k_on[:, None] == 0))
        if HAS_P:
            acc = acc & ((csum < budget[:, None]) | (csum <= 0.0) | (p_on[:, None] == 0))
        first = tl.min(tl.where(acc, jj[None, :], NC), 1)
        got = (done == 0) & (first < NC)
        out = tl.where(got, tl.sum(tl.where(jj[None, :] == first[:, None], cidx, 0), 1), out)
        low = tl.where(done, low, sup)
        cidx = nidx
        cval = tl.load(row_ptr[:, None] + cidx)
        cvalid = (nkey > 0.0) & (cval > low[:, None]) & (cval >= floor[:, None])
        it += 1
        newly = (done == 0) & (got | (tl.max(cvalid.to(tl.int32), 1) == 0))
        stuck = stuck | (newly & (got == 0))
        passes = tl.where(newly, it, passes)
        done = done | newly
    # Out of rounds (or nothing left to draw): fall back to the most likely token, which every
    # filter keeps. WRITE_PASSES lets tests assert this never happens on their distributions.
    stuck = stuck | (done == 0)
    if tl.max(stuck.to(tl.int32), 0) > 0:
        cols = tl.arange(0, BLOCK)
        best = tl.full([ROWS], -1.0, tl.float32)
        best_i = tl.zeros([ROWS], tl.int32)
        for start in tl.range(0, V, BLOCK, num_stages=STAGES):
            offs = start + cols
            x = tl.load(row_ptr[:, None] + offs[None, :], mask=(offs < V)[None, :], other=-1.0)
            cmax = tl.max(x, 1)
            carg = tl.min(tl.where(x == cmax[:, None], offs[None, :], INT32_MAX), 1)
            better = cmax > best
            best_i = tl.where(better, carg, best_i)
            best = tl.where(better, cmax, best)
        out = tl.where(stuck, best_i, out)
        passes = tl.where(stuck, -it, passes)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)
    if WRITE_PASSES:
        tl.store(passes_ptr + rows, passes, mask=row_ok)
