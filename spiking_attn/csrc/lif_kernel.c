/* Fused CUBA-LIF forward and backward over a [T, n] float32 sequence (see neuron.py for the equations).
 *
 * Each call handles the neuron columns [lo, hi) for all T steps, in blocks small enough that the
 * per-neuron state (u, v and their gradients) stays in L1 cache while the inner loop vectorises.
 * Python splits the columns across threads; ctypes releases the GIL during the call.
 * Options are hoisted out of the inner loops: each combination is inlined as its own loop.
 * Compiled without FP contraction, so products and sums round as the torch path rounds them.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 1024
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

INLINE void forward_block(const float *x, float *spikes, float *h_seq, int64_t T, int64_t n, int64_t i0,
                          int64_t m, float ku, float kv, float vth, float bias, const int decay_u) {
    float u[BLOCK], v[BLOCK];
    memset(u, 0, sizeof(float) * m);
    memset(v, 0, sizeof(float) * m);
    for (int64_t t = 0; t < T; ++t) {
        const float *restrict xt = x + t * n + i0;
        float *restrict st = spikes + t * n + i0;
        float *restrict ht = h_seq + t * n + i0;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) {
            float cur = xt[j];
            if (decay_u) { cur = u[j] * ku + xt[j]; u[j] = cur; }
            float h = cur + v[j] * kv;
            h = h + bias;
            const float s = h > vth ? 1.0f : 0.0f;
            ht[j] = h;
            st[j] = s;
            v[j] = h * (1.0f - s);
        }
    }
}

MULTIVERSION
void lif_forward(const float *x, float *spikes, float *h_seq, int64_t T, int64_t n, int64_t lo, int64_t hi,
                 float du, float dv, float vth, float bias) {
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
        const int64_t m = (hi - i0) < BLOCK ? (hi - i0) : BLOCK;
        if (du != 1.0f)
            forward_block(x, spikes, h_seq, T, n, i0, m, 1.0f - du, 1.0f - dv, vth, bias, 1);
        else
            forward_block(x, spikes, h_seq, T, n, i0, m, 0.0f, 1.0f - dv, vth, bias, 0);
    }
}

/* One block of columns, all steps backwards. acc gets the partial sums for d/d(du), d/d(dv), d/d(vth),
 * d/d(bias) when params is set; u_seq (the current per step) is read only for the du gradient. */
INLINE void backward_block(const float *grad_spikes, const float *h_seq, const float *spikes, const float *u_seq,
                           float *grad_x, int64_t T, int64_t n, int64_t i0, int64_t m, float ku, float kv,
                           float vth, float alpha, const int sg_kind, const int detach, const int decay_u,
                           const int params, double *acc) {
    float gv[BLOCK], gu[BLOCK];
    memset(gv, 0, sizeof(float) * m);
    memset(gu, 0, sizeof(float) * m);
    for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t off = t * n + i0;
        const float *restrict gst = grad_spikes + off, *restrict ht = h_seq + off;
        float *restrict gxt = grad_x + off;
        float s_du = 0, s_dv = 0, s_vth = 0, s_bias = 0;
        const int prev = params && t > 0;
#pragma omp simd reduction(+ : s_du, s_dv, s_vth, s_bias)
        for (int64_t j = 0; j < m; ++j) {
            const float h = ht[j];
            const float sg = surrogate(h - vth, sg_kind, alpha);
            const float g_spike = detach ? gst[j] : gst[j] - gv[j] * h;
            const float via_spike = g_spike * sg;
            const float not_fired = h > vth ? 0.0f : 1.0f;  /* recomputed: cheaper than reading the spikes */
            const float gh = via_spike + gv[j] * not_fired;
            gv[j] = gh * kv;
            float gx = gh;
            if (decay_u) { gx = gh + gu[j] * ku; gu[j] = gx; }
            gxt[j] = gx;
            if (params) {
                s_vth += via_spike;
                s_bias += gh;
                if (prev) {
                    const float h_prev = ht[j - n];
                    s_dv += gh * (h_prev > vth ? 0.0f : h_prev);
                    if (u_seq) s_du += gx * u_seq[off - n + j];
                }
            }
        }
        if (params) { acc[0] -= s_du; acc[1] -= s_dv; acc[2] -= s_vth; acc[3] += s_bias; }
    }
}

#define BACKWARD_ARGS grad_spikes, h_seq, spikes, u_seq, grad_x, T, n, i0, m, ku, kv, vth, alpha

MULTIVERSION
void lif_backward(const float *grad_spikes, const float *h_seq, const float *spikes, const float *u_seq,
                  float *grad_x, int64_t T, int64_t n, int64_t lo, int64_t hi, float du, float dv, float vth,
                  int sg_kind, float alpha, int detach_reset, int params, double *acc) {
    const float ku = 1.0f - du, kv = 1.0f - dv;
    const int decay_u = du != 1.0f || u_seq != 0;
    acc[0] = acc[1] = acc[2] = acc[3] = 0.0;
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
        const int64_t m = (hi - i0) < BLOCK ? (hi - i0) : BLOCK;
        /* the common training case gets its own loops: no parameter sums, no current decay */
        if (!params && !decay_u) {
            if (sg_kind == SG_ATAN && !detach_reset)
                backward_block(BACKWARD_ARGS, SG_ATAN, 0, 0, 0, acc);
            else if (sg_kind == SG_ATAN)
                backward_block(BACKWARD_ARGS, SG_ATAN, 1, 0, 0, acc);
            else if (sg_kind == SG_SIGMOID)
                backward_block(BACKWARD_ARGS, SG_SIGMOID, detach_reset, 0, 0, acc);
            else
                backward_block(BACKWARD_ARGS, SG_FAST_SIGMOID, detach_reset, 0, 0, acc);
        } else {
            backward_block(BACKWARD_ARGS, sg_kind, detach_reset, decay_u, params, acc);
        }
    }
}
