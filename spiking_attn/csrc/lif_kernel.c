/* Fused CUBA-LIF forward and backward over a [T, n] float32 sequence (see neuron.py for the equations).
 *
 * Each call handles the neuron columns [lo, hi) for all T steps, in blocks small enough that the
 * per-neuron state (u, v and their gradients) stays in L1 cache while the inner loop vectorises.
 * Python splits the columns across threads; ctypes releases the GIL during the call.
 * Compiled without FP contraction, so every product and sum is rounded as the torch path rounds it.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

enum { SG_ATAN = 0, SG_SIGMOID = 1, SG_FAST_SIGMOID = 2 };

static inline float surrogate(float x, int kind, float alpha) {
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

MULTIVERSION
void lif_forward(const float *x, float *spikes, float *h_seq, int64_t T, int64_t n, int64_t lo, int64_t hi,
                 float du, float dv, float vth, float bias) {
    const float ku = 1.0f - du, kv = 1.0f - dv;
    float u[BLOCK], v[BLOCK];
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
        const int64_t m = (hi - i0) < BLOCK ? (hi - i0) : BLOCK;
        memset(u, 0, sizeof(float) * m);
        memset(v, 0, sizeof(float) * m);
        for (int64_t t = 0; t < T; ++t) {
            const float *xt = x + t * n + i0;
            float *st = spikes + t * n + i0, *ht = h_seq + t * n + i0;
            for (int64_t j = 0; j < m; ++j) {
                float cur = xt[j];
                if (du != 1.0f) { cur = u[j] * ku + xt[j]; u[j] = cur; }
                float h = cur + v[j] * kv;
                h = h + bias;
                float s = h > vth ? 1.0f : 0.0f;
                ht[j] = h;
                st[j] = s;
                v[j] = h * (1.0f - s);
            }
        }
    }
}

/* acc[0..3] receive the partial sums for d/d(du), d/d(dv), d/d(vth), d/d(bias); need[] says which.
 * u_seq (the current per step) is only read when the du gradient is needed. */
MULTIVERSION
void lif_backward(const float *grad_spikes, const float *h_seq, const float *spikes, const float *u_seq,
                  float *grad_x, int64_t T, int64_t n, int64_t lo, int64_t hi, float du, float dv, float vth,
                  int sg_kind, float alpha, int detach_reset, const int *need, double *acc) {
    const float ku = 1.0f - du, kv = 1.0f - dv;
    float gv[BLOCK], gu[BLOCK];
    double a_du = 0, a_dv = 0, a_vth = 0, a_bias = 0;
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
        const int64_t m = (hi - i0) < BLOCK ? (hi - i0) : BLOCK;
        memset(gv, 0, sizeof(float) * m);
        memset(gu, 0, sizeof(float) * m);
        for (int64_t t = T - 1; t >= 0; --t) {
            const int64_t off = t * n + i0;
            const float *gst = grad_spikes + off, *ht = h_seq + off, *st = spikes + off;
            float *gxt = grad_x + off;
            float s_vth = 0, s_bias = 0, s_dv = 0, s_du = 0;
            for (int64_t j = 0; j < m; ++j) {
                const float h = ht[j];
                const float sg = surrogate(h - vth, sg_kind, alpha);
                const float g_spike = detach_reset ? gst[j] : gst[j] - gv[j] * h;
                const float via_spike = g_spike * sg;
                const float gh = via_spike + gv[j] * (1.0f - st[j]);
                s_vth -= via_spike;
                s_bias += gh;
                if (need[1] && t > 0) {
                    const float v_prev = ht[j - n] * (1.0f - st[j - n]);
                    s_dv -= gh * v_prev;
                }
                gv[j] = gh * kv;
                float gx = gh;
                if (du != 1.0f || need[0]) {
                    gx = gh + gu[j] * ku;
                    gu[j] = gx;
                    if (need[0] && t > 0) s_du -= gx * u_seq[off - n + j];
                }
                gxt[j] = gx;
            }
            a_vth += s_vth; a_bias += s_bias; a_dv += s_dv; a_du += s_du;
        }
    }
    acc[0] = a_du; acc[1] = a_dv; acc[2] = a_vth; acc[3] = a_bias;
}
