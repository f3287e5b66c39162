/* Body of the fused LIF kernel, instantiated by lif_kernel.c for REAL = float and REAL = double.
 * SFX(name) adds the type suffix; EXPR is exp for REAL; MASKINT is the integer of REAL's width.
 *
 * Forward, per neuron column (equations of neuron.lif_step, same order of operations):
 *   x' = x * gain                                  (if a gain is given)
 *   u  = u * (1 - du) + x'                          (u is skipped when du == 1 everywhere: then u = x')
 *   h  = (u + v * (1 - dv)) + bias
 *   th = (th - vth) * (1 - theta_decay) + vth        (adaptive threshold only; th starts at vth)
 *   thr = th (or vth) + shift                       (shift only if given)
 *   s  = h > thr;  v = h * (1 - s)  (or v = h - s * thr with F_SUBTRACT);  th = th + theta_step * s
 * with u = 0 and v = v_init * vth before the first step (v_init: a fraction, 0 by default).
 *
 * Loop order: blocks of BLOCK columns, whose operand values are gathered once; inside a block, groups
 * of W columns (one 32-byte vector, written with GCC's vector extensions) whose parameters and state
 * stay in registers while time runs. A per-channel parameter therefore costs the same as a scalar one,
 * and the options are tested once per vector and step, not per element. The plain population (the
 * common training case) runs STRIP groups side by side (forward_plain, backward_plain): the T steps of
 * one group form a chain of dependent operations, and with T = 4 a single chain leaves the core
 * waiting on its latency.
 */

#define W ((int64_t)(32 / sizeof(REAL)))
typedef REAL SFX(vec) __attribute__((vector_size(32), aligned(sizeof(REAL)), may_alias));
typedef MASKINT SFX(mask) __attribute__((vector_size(32), aligned(sizeof(REAL)), may_alias));
#define VEC SFX(vec)
#define MASK SFX(mask)
#define STRIP 4  /* groups the plain paths run side by side (at most 4: lif_backward's buffer) */
_Static_assert(STRIP <= 4, "lif_backward's work buffer holds [T, 4, W] values");

/* Load / store the first w lanes (w == W except at the end of a block). */
INLINE VEC SFX(ld)(const REAL *p, int64_t w) {
    if (w == W) return *(const VEC *)p;
    VEC r = {0};
    for (int64_t k = 0; k < w; ++k) r[k] = p[k];
    return r;
}

INLINE void SFX(st)(REAL *p, VEC v, int64_t w) {
    if (w == W) {
        *(VEC *)p = v;
        return;
    }
    for (int64_t k = 0; k < w; ++k) p[k] = v[k];
}

/* 1 where the mask is set, else 0. */
INLINE VEC SFX(ones)(MASK m) {
    const VEC one = (VEC){0} + (REAL)1;
    return (VEC)(m & (MASK)one);
}

/* Surrogate derivative g(z) of the spike function at z = h - thr (formulas of surrogate.py). */
INLINE VEC SFX(surrogate)(VEC z, const int kind, const REAL alpha, const REAL atan_k) {
    if (kind == SG_ATAN) {
        const VEC w = z * atan_k;
        return (alpha / 2) / (1 + w * w);
    }
    if (kind == SG_SIGMOID) {
        VEC e;
        for (int64_t k = 0; k < W; ++k) e[k] = EXPR(-(z[k] * alpha));
        const VEC s = 1 / (1 + e);
        return (1 - s) * s * alpha;
    }
    const MASK negative = z < 0;
    const VEC magnitude = (VEC)(((MASK)(-z) & negative) | ((MASK)z & ~negative));
    const VEC w = 1 + alpha * magnitude;
    return 1 / (w * w);
}

/* The operand values of one block of columns, padded to a whole number of vectors. Time-invariant
 * operands are stored as values; time-varying ones (gain, shift) as indices into one step. */
typedef struct {
    REAL ku[BLOCK], kv[BLOCK], vth[BLOCK], bias[BLOCK], kth[BLOCK], step[BLOCK], gain[BLOCK], shift[BLOCK];
    int64_t gain_idx[BLOCK], shift_idx[BLOCK], scratch[BLOCK];
    const REAL *gain_data, *shift_data;
    int64_t gain_ts, shift_ts;
    REAL v_init;               /* the membrane before the first step, as a fraction of vth */
    int64_t loaded_at[N_OPS];  /* first column of the block each operand was last loaded for; -1: never */
} SFX(block_consts);

/* idx[j] = the element of the operand read by column i0 + j (see operand_t). */
INLINE void SFX(indices)(const operand_t *op, int64_t i0, int64_t m, int64_t *idx) {
    int64_t r = i0 % op->div, q = (i0 / op->div) % op->mod;      /* first run */
    int64_t r2 = i0 % op->div2, q2 = (i0 / op->div2) % op->mod2;  /* second run */
    for (int64_t j = 0; j < m; ++j) {
        idx[j] = q * op->mod2 + q2;
        if (++r == op->div) {
            r = 0;
            if (++q == op->mod) q = 0;
        }
        if (++r2 == op->div2) {
            r2 = 0;
            if (++q2 == op->mod2) q2 = 0;
        }
    }
}

/* dst[j] = value of a time-invariant operand for column i0 + j. */
INLINE void SFX(load)(const operand_t *op, int64_t i0, int64_t m, REAL *dst, int64_t *scratch) {
    const REAL *p = (const REAL *)op->data;
    if (op->mod == 1 && op->mod2 == 1) {
        for (int64_t j = 0; j < m; ++j) dst[j] = p[0];
        return;
    }
    SFX(indices)(op, i0, m, scratch);
    for (int64_t j = 0; j < m; ++j) dst[j] = p[scratch[j]];
}

/* Whether operand k must be (re)loaded for the block at i0: not if it was loaded for a block at a
 * multiple of its period (div * mod columns, of the outer run) before, since the block then reads the
 * same values. */
INLINE int SFX(stale)(SFX(block_consts) *c, const operand_t *ops, int k, int64_t i0) {
    const operand_t *op = &ops[k];
    const int64_t p1 = op->mod == 1 ? 1 : op->div * op->mod, p2 = op->mod2 == 1 ? 1 : op->div2 * op->mod2;
    const int64_t period = p1 > p2 ? p1 : p2;  /* nested runs: the outer one's period repeats both */
    if (c->loaded_at[k] >= 0 && (i0 - c->loaded_at[k]) % period == 0) return 0;
    c->loaded_at[k] = i0;
    return 1;
}

/* Fill the block's operand values for all BLOCK lanes, so the last group of a short block reads defined
 * values in every lane (the extra lanes are never stored) and a reused block has every value. */
INLINE void SFX(load_consts)(SFX(block_consts) *c, const operand_t *ops, int64_t i0, const int flags) {
    const int64_t m = BLOCK;
    if (SFX(stale)(c, ops, OP_DV, i0)) {
        SFX(load)(&ops[OP_DV], i0, m, c->kv, c->scratch);
        for (int64_t j = 0; j < m; ++j) c->kv[j] = 1 - c->kv[j];
    }
    if (SFX(stale)(c, ops, OP_VTH, i0)) SFX(load)(&ops[OP_VTH], i0, m, c->vth, c->scratch);
    if (SFX(stale)(c, ops, OP_BIAS, i0)) SFX(load)(&ops[OP_BIAS], i0, m, c->bias, c->scratch);
    if ((flags & F_DECAY_U) && SFX(stale)(c, ops, OP_DU, i0)) {
        SFX(load)(&ops[OP_DU], i0, m, c->ku, c->scratch);
        for (int64_t j = 0; j < m; ++j) c->ku[j] = 1 - c->ku[j];
    }
    if ((flags & F_ADAPTIVE) && SFX(stale)(c, ops, OP_THETA_DECAY, i0)) {
        SFX(load)(&ops[OP_THETA_DECAY], i0, m, c->kth, c->scratch);
        for (int64_t j = 0; j < m; ++j) c->kth[j] = 1 - c->kth[j];
    }
    if ((flags & F_ADAPTIVE) && SFX(stale)(c, ops, OP_THETA_STEP, i0))
        SFX(load)(&ops[OP_THETA_STEP], i0, m, c->step, c->scratch);
    c->gain_data = (const REAL *)ops[OP_GAIN].data;
    c->gain_ts = ops[OP_GAIN].tstride;
    c->shift_data = (const REAL *)ops[OP_SHIFT].data;
    c->shift_ts = ops[OP_SHIFT].tstride;
    if ((flags & F_GAIN) && SFX(stale)(c, ops, OP_GAIN, i0)) {
        if (c->gain_ts) SFX(indices)(&ops[OP_GAIN], i0, m, c->gain_idx);
        else SFX(load)(&ops[OP_GAIN], i0, m, c->gain, c->scratch);
    }
    if ((flags & F_SHIFT) && SFX(stale)(c, ops, OP_SHIFT, i0)) {
        if (c->shift_ts) SFX(indices)(&ops[OP_SHIFT], i0, m, c->shift_idx);
        else SFX(load)(&ops[OP_SHIFT], i0, m, c->shift, c->scratch);
    }
}

/* A block_consts with nothing loaded yet, or NULL. */
INLINE SFX(block_consts) *SFX(new_consts)(void) {
    SFX(block_consts) *c = malloc(sizeof(SFX(block_consts)));
    if (c)
        for (int k = 0; k < N_OPS; ++k) c->loaded_at[k] = -1;
    return c;
}

/* Whether the W columns from j0 read W consecutive elements of a time-varying operand (channels of
 * one sample, say): then a step's values are one vector load instead of W scalar reads. The indices
 * wrap inside one step, so consecutive indices never read past the step's end. */
INLINE int SFX(consecutive)(const int64_t *idx, int64_t ts) {
    if (!ts) return 0;
    for (int64_t k = 1; k < W; ++k)
        if (idx[k] != idx[0] + k) return 0;
    return 1;
}

/* Add the first w lanes of g into p at the columns' indices (one vector when they are consecutive). */
INLINE void SFX(accumulate)(REAL *p, const int64_t *idx, VEC g, int64_t w, int run) {
    if (run && w == W) {
        *(VEC *)(p + idx[0]) += g;
        return;
    }
    for (int64_t k = 0; k < w; ++k) p[idx[k]] += g[k];
}

/* Gain or shift of the W columns from j0 at step t; run: the indices are consecutive. */
INLINE VEC SFX(modulation)(const REAL *values, const int64_t *idx, const REAL *data, int64_t ts, int64_t t,
                           int64_t j0, int run) {
    if (!ts) return *(const VEC *)(values + j0);
    if (run) return *(const VEC *)(data + t * ts + idx[j0]);
    VEC r;
    for (int64_t k = 0; k < W; ++k) r[k] = data[t * ts + idx[j0 + k]];
    return r;
}

/* The parameters and state of the group of columns j0 .. j0 + W - 1 of a block. */
#define GROUP_SETUP                                                                          \
    const int decay_u = flags & F_DECAY_U, adaptive = flags & F_ADAPTIVE;                    \
    const int gain = flags & F_GAIN, shift = flags & F_SHIFT, subtract = flags & F_SUBTRACT;  \
    const VEC kv = *(const VEC *)(c->kv + j0), vth = *(const VEC *)(c->vth + j0);            \
    const VEC bias = *(const VEC *)(c->bias + j0);                                           \
    VEC ku = {0}, kth = {0}, step = {0};                                                     \
    if (decay_u) ku = *(const VEC *)(c->ku + j0);                                            \
    if (adaptive) {                                                                          \
        kth = *(const VEC *)(c->kth + j0);                                                   \
        step = *(const VEC *)(c->step + j0);                                                 \
    }                                                                                        \
    const int gain_run = gain && SFX(consecutive)(c->gain_idx + j0, c->gain_ts);               \
    const int shift_run = shift && SFX(consecutive)(c->shift_idx + j0, c->shift_ts);          \
    VEC u = {0}, v = vth * c->v_init, th = vth;

/* One step at t with input XV: updates u, v, th (before the jump); defines h, thr and s. */
#define LIF_STEP(XV)                                                                         \
    VEC cur = (XV);                                                                          \
    if (gain) cur = cur * SFX(modulation)(c->gain, c->gain_idx, c->gain_data, c->gain_ts, t, j0, gain_run); \
    if (decay_u) { u = u * ku + cur; cur = u; }                                              \
    const VEC h = (cur + v * kv) + bias;                                                     \
    VEC thr = vth;                                                                           \
    if (adaptive) { th = (th - vth) * kth + vth; thr = th; }                                 \
    if (shift) thr = thr + SFX(modulation)(c->shift, c->shift_idx, c->shift_data, c->shift_ts, t, j0, shift_run); \
    const VEC s = SFX(ones)(h > thr);                                                        \
    if (subtract) v = h - s * thr;                                                           \
    else v = h * (1 - s);

/* Forward over W columns (the first w valid) at column col = i0 + j0. Writes spikes (and membrane v,
 * and z = h - thr, when those pointers are set) with stride n. Counts, per lane, the inputs that are
 * NaN or infinite into *bad (x - x is 0 for every finite x and NaN otherwise): no extra pass. */
INLINE void SFX(forward_group)(const REAL *x, REAL *spikes, REAL *membrane, REAL *zout, int64_t T, int64_t n,
                               int64_t col, int64_t j0, int64_t w, const SFX(block_consts) *c, const int flags,
                               MASK *bad) {
    GROUP_SETUP
    for (int64_t t = 0; t < T; ++t) {
        const int64_t o = t * n + col;
        const VEC xt = SFX(ld)(x + o, w);
        *bad -= (xt - xt) != 0;  /* a set mask lane is -1 */
        LIF_STEP(xt)
        if (adaptive) th = th + step * s;
        SFX(st)(spikes + o, s, w);
        if (membrane) SFX(st)(membrane + o, v, w);
        if (zout) SFX(st)(zout + o, h - thr, w);
    }
}

/* The parameters of the STRIP groups from column j0 of a block, and their membranes before the first
 * step (the plain paths below). */
INLINE void SFX(strip_setup)(const SFX(block_consts) *c, int64_t j0, VEC *kv, VEC *vth, VEC *bias, VEC *v) {
    for (int q = 0; q < STRIP; ++q) {
        kv[q] = *(const VEC *)(c->kv + j0 + q * W);
        vth[q] = *(const VEC *)(c->vth + j0 + q * W);
        bias[q] = *(const VEC *)(c->bias + j0 + q * W);
        v[q] = vth[q] * c->v_init;
    }
}

/* One step of a plain population: h = (x + v * kv) + bias, s = h > vth, v = h * (1 - s) (LIF_STEP's
 * operations without its options); returns h, sets *s and *v. */
INLINE VEC SFX(plain_step)(VEC x, VEC *v, VEC kv, VEC vth, VEC bias, VEC *s) {
    const VEC h = (x + *v * kv) + bias;
    *s = SFX(ones)(h > vth);
    *v = h * (1 - *s);
    return h;
}

/* The plain population (no decay of u, adaptive threshold, modulation, reset by subtraction, membrane
 * or z output) over the m columns of the block at column i0, STRIP groups at a time: their parameters
 * and membranes stay in registers while time runs, and the STRIP independent chains of dependent steps
 * overlap (one group alone leaves the core waiting on its chain's latency when T is small). The
 * operations per element and their order are forward_group's: the same bits. */
INLINE void SFX(forward_plain)(const REAL *x, REAL *spikes, int64_t T, int64_t n, int64_t i0, int64_t m,
                               const SFX(block_consts) *c, MASK *bad) {
    MASK nonfinite = {0};  /* local: *bad may alias the spike stores, which would chain every iteration */
    int64_t j0 = 0;
    for (; j0 + STRIP * W <= m; j0 += STRIP * W) {
        VEC kv[STRIP], vth[STRIP], bias[STRIP], v[STRIP];
        SFX(strip_setup)(c, j0, kv, vth, bias, v);
        for (int64_t t = 0; t < T; ++t)
            for (int q = 0; q < STRIP; ++q) {
                const int64_t o = t * n + i0 + j0 + q * W;
                const VEC xt = *(const VEC *)(x + o);
                nonfinite -= (xt - xt) != 0;
                VEC s;
                SFX(plain_step)(xt, &v[q], kv[q], vth[q], bias[q], &s);
                *(VEC *)(spikes + o) = s;
            }
    }
    *bad += nonfinite;
    for (; j0 < m; j0 += W) {
        const int64_t w = (m - j0) < W ? (m - j0) : W;
        SFX(forward_group)(x, spikes, 0, 0, T, n, i0 + j0, j0, w, c, 0, bad);
    }
}

/* Returns the number of non-finite inputs in the columns [lo, hi), or -1 if memory ran out. */
MULTIVERSION
int64_t SFX(lif_forward)(const REAL *x, REAL *spikes, REAL *membrane, REAL *zout, int64_t T, int64_t n,
                         int64_t lo, int64_t hi, const operand_t *ops, int flags, double v_init) {
    MASK bad = {0};
    SFX(block_consts) *c = SFX(new_consts)();
    if (!c) return -1;
    c->v_init = (REAL)v_init;
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
        const int64_t m = (hi - i0) < BLOCK ? (hi - i0) : BLOCK;
        SFX(load_consts)(c, ops, i0, flags);
        if ((flags & (15 | F_SUBTRACT)) == 0 && !membrane && !zout) { /* the plain case */
            SFX(forward_plain)(x, spikes, T, n, i0, m, c, &bad);
            continue;
        }
        for (int64_t j0 = 0; j0 < m; j0 += W) {
            const int64_t w = (m - j0) < W ? (m - j0) : W;
            SFX(forward_group)(x, spikes, membrane, zout, T, n, i0 + j0, j0, w, c, flags, &bad);
        }
    }
    free(c);
    int64_t non_finite = 0;
    for (int64_t k = 0; k < W; ++k) non_finite += bad[k];
    return non_finite;
}

/* Forward and backward through time for W columns (the first w valid) at column col = i0 + j0. The
 * forward pass is re-run into the local buffers (W per step: h always; the threshold thr if adaptive
 * or shifted; the decayed threshold th before its jump if adaptive; u if decay_u), then walked back.
 *
 * grad_spikes, grad_membrane (optional) and table (surrogate values, SG_TABLE only) are [T, n];
 * grad_x receives dL/dx. pg[k] is NULL or the gradient output of operand k: [T, n] per step if the
 * operand changes with time, else [n], summed over time (the caller reduces it to the operand's shape);
 * with F_ACC_GAIN / F_ACC_SHIFT, a time-varying gain / shift's gradient is summed here into the
 * operand's own layout (zeroed by the caller) instead.
 */
INLINE void SFX(backward_group)(const REAL *grad_spikes, const REAL *grad_membrane, const REAL *x,
                                const REAL *table, REAL *grad_x, REAL *const *pg, REAL *h_loc, REAL *thr_loc,
                                REAL *th_loc, REAL *u_loc, int64_t T, int64_t n, int64_t col, int64_t j0, int64_t w,
                                const SFX(block_consts) *c, const int flags, const int kind, const REAL alpha,
                                const REAL atan_k) {
    GROUP_SETUP
    const int detach = flags & F_DETACH, params = flags & F_PARAMS;
    const int thr_kept = adaptive || shift;
    for (int64_t t = 0; t < T; ++t) {
        LIF_STEP(SFX(ld)(x + t * n + col, w))
        *(VEC *)(h_loc + t * W) = h;
        if (thr_kept) *(VEC *)(thr_loc + t * W) = thr;
        if (adaptive) {
            *(VEC *)(th_loc + t * W) = th;
            th = th + step * s;
        }
        if (decay_u) *(VEC *)(u_loc + t * W) = u;
    }
    /* dL/dv, dL/du and dL/dth carried back from step t + 1, and the per-column gradient sums */
    VEC gv = {0}, gu = {0}, gth = {0};
    VEC a_du = {0}, a_dv = {0}, a_vth = {0}, a_bias = {0}, a_td = {0}, a_ts = {0}, a_gain = {0}, a_shift = {0};
    for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t o = t * n + col;
        const VEC h = *(const VEC *)(h_loc + t * W);
        VEC thr = vth, gvt = gv, sg;
        if (thr_kept) thr = *(const VEC *)(thr_loc + t * W);
        if (grad_membrane) gvt = gv + SFX(ld)(grad_membrane + o, w);
        const VEC s = SFX(ones)(h > thr);
        if (kind == SG_TABLE) sg = SFX(ld)(table + o, w);
        else sg = SFX(surrogate)(h - thr, kind, alpha, atan_k);
        VEC g_spike = SFX(ld)(grad_spikes + o, w);
        if (!detach) {
            if (subtract) g_spike = g_spike - gvt * thr;  /* through the reset v = h - s thr */
            else g_spike = g_spike - gvt * h;             /* through the reset v = h (1 - s) */
            if (adaptive) g_spike = g_spike + gth * step;  /* through the jump th += step s */
        }
        const VEC via_spike = g_spike * sg;
        VEC gh = via_spike + gvt * (1 - s), gthr = -via_spike;
        if (subtract) {
            gh = via_spike + gvt;
            gthr = gthr - gvt * s;  /* the subtracted threshold */
        }
        if (shift) {
            if (c->shift_ts) {
                if (pg[OP_SHIFT] && (flags & F_ACC_SHIFT))
                    SFX(accumulate)(pg[OP_SHIFT] + t * c->shift_ts, c->shift_idx + j0, gthr, w, shift_run);
                else if (pg[OP_SHIFT]) SFX(st)(pg[OP_SHIFT] + o, gthr, w);
            }
            else a_shift += gthr;
        }
        if (adaptive) {
            const VEC gtheta = gth + gthr;  /* dL/dth before the jump */
            if (params) {
                VEC th_prev = vth;  /* th after the jump of step t - 1 (vth at the start) */
                if (t > 0) {
                    const VEC sp = SFX(ones)(*(const VEC *)(h_loc + (t - 1) * W) > *(const VEC *)(thr_loc + (t - 1) * W));
                    th_prev = *(const VEC *)(th_loc + (t - 1) * W) + step * sp;
                }
                a_ts += gth * s;
                a_td += -gtheta * (th_prev - vth);
                a_vth += gtheta * (1 - kth);
            }
            gth = gtheta * kth;
            if (params && t == 0) a_vth += gth;  /* th starts at vth */
        } else if (params) {
            a_vth += gthr;
        }
        if (params) {
            VEC v_prev = vth * c->v_init;  /* the membrane before the first step */
            if (t > 0) {
                const VEC hp = *(const VEC *)(h_loc + (t - 1) * W);
                VEC thrp = vth;
                if (thr_kept) thrp = *(const VEC *)(thr_loc + (t - 1) * W);
                const VEC sp = SFX(ones)(hp > thrp);
                if (subtract) v_prev = hp - sp * thrp;
                else v_prev = hp * (1 - sp);
            }
            a_dv += -gh * v_prev;
            a_bias += gh;
        }
        gv = gh * kv;
        VEC gcur = gh;
        if (decay_u) {
            gcur = gh + gu * ku;
            gu = gcur;
            if (params && t > 0) a_du += -gcur * *(const VEC *)(u_loc + (t - 1) * W);
        }
        if (gain) {
            const VEC g = SFX(modulation)(c->gain, c->gain_idx, c->gain_data, c->gain_ts, t, j0, gain_run);
            SFX(st)(grad_x + o, gcur * g, w);
            const VEC through = gcur * SFX(ld)(x + o, w);
            if (c->gain_ts) {
                if (pg[OP_GAIN] && (flags & F_ACC_GAIN))
                    SFX(accumulate)(pg[OP_GAIN] + t * c->gain_ts, c->gain_idx + j0, through, w, gain_run);
                else if (pg[OP_GAIN]) SFX(st)(pg[OP_GAIN] + o, through, w);
            }
            else a_gain += through;
        } else {
            SFX(st)(grad_x + o, gcur, w);
        }
    }
    if (params) {
        if (pg[OP_DV]) SFX(st)(pg[OP_DV] + col, a_dv, w);
        if (pg[OP_VTH]) SFX(st)(pg[OP_VTH] + col, a_vth, w);
        if (pg[OP_BIAS]) SFX(st)(pg[OP_BIAS] + col, a_bias, w);
        if (decay_u && pg[OP_DU]) SFX(st)(pg[OP_DU] + col, a_du, w);
        if (adaptive && pg[OP_THETA_DECAY]) SFX(st)(pg[OP_THETA_DECAY] + col, a_td, w);
        if (adaptive && pg[OP_THETA_STEP]) SFX(st)(pg[OP_THETA_STEP] + col, a_ts, w);
    }
    if (gain && !c->gain_ts && pg[OP_GAIN]) SFX(st)(pg[OP_GAIN] + col, a_gain, w);
    if (shift && !c->shift_ts && pg[OP_SHIFT]) SFX(st)(pg[OP_SHIFT] + col, a_shift, w);
}

/* Backward of the plain population (forward_plain's, with no membrane gradient) over the block's m
 * columns, STRIP groups at a time as in forward_plain: the forward is re-run into h_loc
 * ([T, STRIP * W]), then time runs back with dL/dv in registers. With params, the per-column
 * gradients of dv, vth and bias are summed too (learned parameters). The operations per element, and
 * the order of the sums over time, are backward_group's. */
INLINE void SFX(backward_plain)(const REAL *grad_spikes, const REAL *x, REAL *grad_x, REAL *const *pg, REAL *h_loc,
                                int64_t T, int64_t n, int64_t i0, int64_t m, const SFX(block_consts) *c,
                                const int detach, const int params, const int kind, const REAL alpha,
                                const REAL atan_k) {
    int64_t j0 = 0;
    for (; j0 + STRIP * W <= m; j0 += STRIP * W) {
        VEC kv[STRIP], vth[STRIP], bias[STRIP], v[STRIP];
        SFX(strip_setup)(c, j0, kv, vth, bias, v);
        for (int64_t t = 0; t < T; ++t)
            for (int q = 0; q < STRIP; ++q) {
                VEC s;
                *(VEC *)(h_loc + (t * STRIP + q) * W) =
                    SFX(plain_step)(*(const VEC *)(x + t * n + i0 + j0 + q * W), &v[q], kv[q], vth[q], bias[q], &s);
            }
        VEC gv[STRIP], a_dv[STRIP], a_vth[STRIP], a_bias[STRIP];
        for (int q = 0; q < STRIP; ++q) gv[q] = a_dv[q] = a_vth[q] = a_bias[q] = (VEC){0};
        for (int64_t t = T - 1; t >= 0; --t)
            for (int q = 0; q < STRIP; ++q) {
                const int64_t o = t * n + i0 + j0 + q * W;
                const VEC h = *(const VEC *)(h_loc + (t * STRIP + q) * W);
                const VEC s = SFX(ones)(h > vth[q]);
                const VEC sg = SFX(surrogate)(h - vth[q], kind, alpha, atan_k);
                VEC g_spike = *(const VEC *)(grad_spikes + o);
                if (!detach) g_spike = g_spike - gv[q] * h;
                const VEC via_spike = g_spike * sg;
                const VEC gh = via_spike + gv[q] * (1 - s);
                if (params) {
                    a_vth[q] += -via_spike;
                    VEC v_prev = vth[q] * c->v_init;  /* the membrane after step t - 1 */
                    if (t > 0) {
                        const VEC hp = *(const VEC *)(h_loc + ((t - 1) * STRIP + q) * W);
                        v_prev = hp * (1 - SFX(ones)(hp > vth[q]));
                    }
                    a_dv[q] += -gh * v_prev;
                    a_bias[q] += gh;
                }
                gv[q] = gh * kv[q];
                *(VEC *)(grad_x + o) = gh;
            }
        if (params)
            for (int q = 0; q < STRIP; ++q) {
                const int64_t col = i0 + j0 + q * W;
                if (pg[OP_DV]) *(VEC *)(pg[OP_DV] + col) = a_dv[q];
                if (pg[OP_VTH]) *(VEC *)(pg[OP_VTH] + col) = a_vth[q];
                if (pg[OP_BIAS]) *(VEC *)(pg[OP_BIAS] + col) = a_bias[q];
            }
    }
    for (; j0 < m; j0 += W) {
        const int64_t w = (m - j0) < W ? (m - j0) : W;
        /* (h_loc holds T * W values and more; the other buffers are not read without those options) */
        SFX(backward_group)(grad_spikes, 0, x, 0, grad_x, pg, h_loc, h_loc, h_loc, h_loc, T, n, i0 + j0, j0, w, c,
                            (detach ? F_DETACH : 0) | (params ? F_PARAMS : 0), kind, alpha, atan_k);
    }
}

/* Returns 0 on success, -1 if the local buffers could not be allocated. */
MULTIVERSION
int SFX(lif_backward)(const REAL *grad_spikes, const REAL *grad_membrane, const REAL *x, const REAL *table,
                      REAL *grad_x, REAL *const *pg, int64_t T, int64_t n, int64_t lo, int64_t hi,
                      const operand_t *ops, int flags, int kind, double alpha_d, double v_init) {
    const REAL alpha = (REAL)alpha_d, atan_k = (REAL)(3.14159265358979323846 / 2 * alpha_d);
    const int fast = !(flags & (F_DECAY_U | F_ADAPTIVE | F_GAIN | F_SHIFT | F_SUBTRACT)) && !grad_membrane
                     && kind != SG_TABLE;  /* the plain population: backward_plain, learned parameters or not */
    SFX(block_consts) *c = SFX(new_consts)();
    /* backward_group's four [T, W] buffers, or backward_plain's h ([T, STRIP, W]: STRIP <= 4) */
    REAL *buf = malloc(sizeof(REAL) * T * W * 4);
    if (!buf || !c) {
        free(buf);
        free(c);
        return -1;
    }
    REAL *h_loc = buf, *thr_loc = buf + T * W, *th_loc = buf + 2 * T * W, *u_loc = buf + 3 * T * W;
    c->v_init = (REAL)v_init;
#define GROUP_ARGS grad_x, pg, h_loc, thr_loc, th_loc, u_loc, T, n, i0 + j0, j0, w, c
#define PLAIN_ARGS grad_spikes, x, grad_x, pg, buf, T, n, i0, m, c
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
        const int64_t m = (hi - i0) < BLOCK ? (hi - i0) : BLOCK;
        SFX(load_consts)(c, ops, i0, flags);
        if (fast) { /* the common training cases (no modulation); atan's options inlined */
            const int detach = (flags & F_DETACH) != 0, params = (flags & F_PARAMS) != 0;
            if (kind == SG_ATAN && !detach && !params) SFX(backward_plain)(PLAIN_ARGS, 0, 0, SG_ATAN, alpha, atan_k);
            else if (kind == SG_ATAN && !detach) SFX(backward_plain)(PLAIN_ARGS, 0, 1, SG_ATAN, alpha, atan_k);
            else SFX(backward_plain)(PLAIN_ARGS, detach, params, kind, alpha, atan_k);
            continue;
        }
        for (int64_t j0 = 0; j0 < m; j0 += W) {
            const int64_t w = (m - j0) < W ? (m - j0) : W;
            SFX(backward_group)(grad_spikes, grad_membrane, x, table, GROUP_ARGS, flags, kind, alpha, atan_k);
        }
    }
#undef GROUP_ARGS
#undef PLAIN_ARGS
    free(buf);
    free(c);
    return 0;
}

#undef GROUP_SETUP
#undef LIF_STEP
#undef VEC
#undef MASK
#undef W
#undef STRIP
