/* Fused CUBA-LIF forward and backward over a [T, n] float32 sequence (see neuron.py for the equations).
 *
 * Each call handles the neuron columns [lo, hi) for all T steps, in blocks small enough that the
 * per-neuron state stays in cache while the inner loops vectorise. Python splits the columns across
 * threads; ctypes releases the GIL during the call.
 *
 * The forward pass writes only the spikes. The backward pass re-runs the forward dynamics of a block
 * from the saved input into a small local buffer and then walks back through time: one extra pass
 * over data already in cache, instead of a [T, n] membrane tensor written, kept and read back.
 *
 * Options are hoisted out of the inner loops (each combination is inlined as its own loop). The file is
 * compiled without FP contraction, so products and sums round as the torch fallback rounds them.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 512
#define INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

enum { SG_ATAN = 0, SG_SIGMOID = 1, SG_FAST_SIGMOID = 2 };

INLINE float surrogate(float x, const int kind, float alpha) {
    if (kind == SG_ATAN) {
        float z = x * (3.14159265358979323846f / 2.0f * alpha);
        return (alpha / 2.0f) / (1.0f + z * z);
    }
    if (kind == SG_SIGMOID) {
        float s = 1.0f / (1.0f + expf(-(x * alpha)));
        return (1.0f - s) * s * alpha;
    }
    float z = 1.0f + alpha * fabsf(x);
    return 1.0f / (z * z);
}

/* One step of the dynamics for m columns: u (if decay_u) and v are updated in place and h is returned
 * through h_out; the spike is 1 where h > vth. Written as straight-line code so that it vectorises. */
#define LIF_STEP_BODY(CURRENT)                      \
    const float cur = (CURRENT);                    \
    const float h = (cur + v[j] * kv) + bias;       \
    const float s = h > vth ? 1.0f : 0.0f;          \
    v[j] = h * (1.0f - s);

/* Forward over one block of m columns: writes spikes (stride n) and returns how many inputs were NaN
 * or infinite (x - x is 0 for every finite x and NaN otherwise), a check that costs no extra pass. */
INLINE int64_t forward_block(const float *x, float *spikes, int64_t T, int64_t n, int64_t i0, int64_t m,
                             float ku, float kv, float vth, float bias, const int decay_u) {
    int64_t non_finite = 0;
    float u[BLOCK], v[BLOCK];
    memset(u, 0, sizeof(float) * m);
    memset(v, 0, sizeof(float) * m);
    for (int64_t t = 0; t < T; ++t) {
        const float *restrict xt = x + t * n + i0;
        float *restrict st = spikes + t * n + i0;
        if (decay_u) {
#pragma omp simd reduction(+ : non_finite)
            for (int64_t j = 0; j < m; ++j) {
                non_finite += (xt[j] - xt[j]) != 0.0f;
                u[j] = u[j] * ku + xt[j];
                LIF_STEP_BODY(u[j])
                st[j] = s;
            }
        } else {
#pragma omp simd reduction(+ : non_finite)
            for (int64_t j = 0; j < m; ++j) {
                non_finite += (xt[j] - xt[j]) != 0.0f;
                LIF_STEP_BODY(xt[j])
                st[j] = s;
            }
        }
    }
    return non_finite;
}

/* Re-run the dynamics of one block into the local buffers h_loc and (if decay_u) u_loc, stride m. */
INLINE void recompute_block(const float *x, float *h_loc, float *u_loc, int64_t T, int64_t n, int64_t i0,
                            int64_t m, float ku, float kv, float vth, float bias, const int decay_u) {
    float u[BLOCK], v[BLOCK];
    memset(u, 0, sizeof(float) * m);
    memset(v, 0, sizeof(float) * m);
    for (int64_t t = 0; t < T; ++t) {
        const float *restrict xt = x + t * n + i0;
        float *restrict ht = h_loc + t * m;
        if (decay_u) {
            float *restrict ut = u_loc + t * m;
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) {
                u[j] = u[j] * ku + xt[j];
                ut[j] = u[j];
                LIF_STEP_BODY(u[j])
                ht[j] = h;
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) {
                LIF_STEP_BODY(xt[j])
                ht[j] = h;
            }
        }
    }
}

/* Returns the number of non-finite inputs in the columns [lo, hi). */
MULTIVERSION
int64_t lif_forward(const float *x, float *spikes, int64_t T, int64_t n, int64_t lo, int64_t hi,
                    float du, float dv, float vth, float bias) {
    int64_t non_finite = 0;
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
        const int64_t m = (hi - i0) < BLOCK ? (hi - i0) : BLOCK;
        non_finite += forward_block(x, spikes, T, n, i0, m, 1.0f - du, 1.0f - dv, vth, bias, du != 1.0f);
    }
    return non_finite;
}

/* Backward through time for one block, from the membrane h_loc (and current u_loc) of every step.
 * acc gets the partial sums for d/d(du), d/d(dv), d/d(vth), d/d(bias) when params is set. */
INLINE void backward_block(const float *grad_spikes, const float *h_loc, const float *u_loc, float *grad_x,
                           int64_t T, int64_t n, int64_t i0, int64_t m, float ku, float kv, float vth,
                           float alpha, const int sg_kind, const int detach, const int decay_u,
                           const int params, double *acc) {
    float gv[BLOCK], gu[BLOCK];
    memset(gv, 0, sizeof(float) * m);
    memset(gu, 0, sizeof(float) * m);
    for (int64_t t = T - 1; t >= 0; --t) {
        const float *restrict gst = grad_spikes + t * n + i0;
        const float *restrict ht = h_loc + t * m;
        float *restrict gxt = grad_x + t * n + i0;
        float s_du = 0, s_dv = 0, s_vth = 0, s_bias = 0;
        const int prev = params && t > 0;
#pragma omp simd reduction(+ : s_du, s_dv, s_vth, s_bias)
        for (int64_t j = 0; j < m; ++j) {
            const float h = ht[j];
            const float sg = surrogate(h - vth, sg_kind, alpha);
            const float g_spike = detach ? gst[j] : gst[j] - gv[j] * h;
            const float via_spike = g_spike * sg;
            const float not_fired = h > vth ? 0.0f : 1.0f;
            const float gh = via_spike + gv[j] * not_fired;
            gv[j] = gh * kv;
            float gx = gh;
            if (decay_u) { gx = gh + gu[j] * ku; gu[j] = gx; }
            gxt[j] = gx;
            if (params) {
                s_vth += via_spike;
                s_bias += gh;
                if (prev) {
                    const float h_prev = ht[j - m];
                    s_dv += gh * (h_prev > vth ? 0.0f : h_prev);
                    s_du += gx * u_loc[(t - 1) * m + j];
                }
            }
        }
        if (params) { acc[0] -= s_du; acc[1] -= s_dv; acc[2] -= s_vth; acc[3] += s_bias; }
    }
}

#define BACKWARD_ARGS grad_spikes, h_loc, u_loc, grad_x, T, n, i0, m, ku, kv, vth, alpha

/* Returns 0 on success, -1 if the local buffers could not be allocated. */
MULTIVERSION
int lif_backward(const float *grad_spikes, const float *x, float *grad_x, int64_t T, int64_t n, int64_t lo,
                 int64_t hi, float du, float dv, float vth, float bias, int sg_kind, float alpha,
                 int detach_reset, int params, double *acc) {
    const int decay_u = du != 1.0f || params;
    const float ku = 1.0f - du, kv = 1.0f - dv;
    float *h_loc = malloc(sizeof(float) * T * BLOCK * (decay_u ? 2 : 1));
    if (!h_loc) return -1;
    float *u_loc = decay_u ? h_loc + T * BLOCK : 0;
    acc[0] = acc[1] = acc[2] = acc[3] = 0.0;
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
        const int64_t m = (hi - i0) < BLOCK ? (hi - i0) : BLOCK;
        if (decay_u) {
            recompute_block(x, h_loc, u_loc, T, n, i0, m, ku, kv, vth, bias, 1);
            backward_block(BACKWARD_ARGS, sg_kind, detach_reset, 1, params, acc);
            continue;
        }
        /* the common training case: no current decay, no parameter sums */
        recompute_block(x, h_loc, 0, T, n, i0, m, 0.0f, kv, vth, bias, 0);
        if (sg_kind == SG_ATAN && !detach_reset)
            backward_block(BACKWARD_ARGS, SG_ATAN, 0, 0, 0, acc);
        else if (sg_kind == SG_ATAN)
            backward_block(BACKWARD_ARGS, SG_ATAN, 1, 0, 0, acc);
        else if (sg_kind == SG_SIGMOID)
            backward_block(BACKWARD_ARGS, SG_SIGMOID, detach_reset, 0, 0, acc);
        else
            backward_block(BACKWARD_ARGS, SG_FAST_SIGMOID, detach_reset, 0, 0, acc);
    }
    free(h_loc);
    return 0;
}
