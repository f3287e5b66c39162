// Causal linear attention over spike trains as a running state: torch.ops.spiking_attn.causal_scan
//
//   causal_scan(q, k, v) -> out        q, k: [..., N, Dk]   v: [..., N, Dv]   out: [..., N, Dv]
//   out[i] = sum_{j <= i} (q[i] . k[j]) v[j]  =  q[i] S_i,   S_i = sum_{j <= i} k[j]^T v[j]   ([Dk, Dv])
//
// One head at a time, token by token, with the state S in a [Dk, Dv] buffer that stays in the L1 cache,
// so q, k and v are read once and out is written once (the blocked form in attention.py materialises
// scores, block states and their prefix sums, each as large as q, and autograd keeps them all).
// Every product skips the zero entries of the factor it reads by element: on spike trains (firing rates
// of 0.05-0.45) a token adds only the rows of S its active keys select and reads only the rows its
// active queries select. The arithmetic is the same for any finite values (a skipped zero times an
// infinity gives 0, not NaN); only the speed needs zeros.
//
// On spikes every sum is a sum of integers, exact in float32 below 2^24 in any order, so the output
// equals the masked quadratic product (Q K^T * tril) V bit for bit. Gradients are float sums whose order
// differs from autograd's; they agree to rounding (tests/test_causal_scan.py).
//
// Backward, with G = dL/dout and R_i = sum_{j >= i} q[j]^T G[j] ([Dk, Dv]):
//   dq[i] = S_i G[i]^T          (a forward scan, S kept transposed so this is a sum of rows)
//   dk[i] = R_i v[i]^T,  dv[i] = k[i] R_i      (a reverse scan: rows of R, and a gather of its columns)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

#define SCAN_INLINE [[gnu::always_inline]] inline

// dst[0:n] += a * src[0:n]; written so that -O2 vectorises the body (a fixed-width block, then a tail).
template <typename scalar_t>
SCAN_INLINE void axpy(scalar_t *__restrict dst, scalar_t a, const scalar_t *__restrict src, int64_t n) {
    constexpr int64_t W = 64 / sizeof(scalar_t);
    int64_t e = 0;
    for (; e + W <= n; e += W)
        for (int64_t l = 0; l < W; ++l) dst[e + l] += a * src[e + l];
    for (; e < n; ++e) dst[e] += a * src[e];
}

// The positions of a's nonzero entries, without a branch per entry (on spikes a branch per entry is
// mispredicted at every firing rate but the extremes, and those misses cost more than the arithmetic).
template <typename scalar_t>
SCAN_INLINE int64_t nonzeros(const scalar_t *a, int64_t na, int64_t *active) {
    int64_t m = 0;
    for (int64_t d = 0; d < na; ++d) {
        active[m] = d;
        m += a[d] != 0;
    }
    return m;
}

// S += a^T b over the nonzero entries of a: row d of S (length nb) gains a[d] * b.
template <typename scalar_t>
SCAN_INLINE void add_outer(scalar_t *s, const scalar_t *a, int64_t na, const scalar_t *b, int64_t nb, int64_t *active) {
    const int64_t m = nonzeros(a, na, active);
    for (int64_t j = 0; j < m; ++j) axpy(s + active[j] * nb, a[active[j]], b, nb);
}

// out[0:nb] = sum_d a[d] * S[d, :] over the nonzero entries of a.
template <typename scalar_t>
SCAN_INLINE void read_rows(scalar_t *out, const scalar_t *s, const scalar_t *a, int64_t na, int64_t nb, int64_t *active) {
    std::fill(out, out + nb, scalar_t(0));
    const int64_t m = nonzeros(a, na, active);
    for (int64_t j = 0; j < m; ++j) axpy(out, a[active[j]], s + active[j] * nb, nb);
}

// out[d] = sum_e a[e] * S[d, e] over the nonzero entries of a, for every row d of S ([na, nb]): a
// gather, for the one product whose state is read by columns.
template <typename scalar_t>
SCAN_INLINE void read_columns(scalar_t *out, const scalar_t *s, int64_t na, const scalar_t *a, int64_t nb,
                         int64_t *active) {
    const int64_t m = nonzeros(a, nb, active);
    for (int64_t d = 0; d < na; ++d) {
        scalar_t acc = 0;
        for (int64_t j = 0; j < m; ++j) acc += a[active[j]] * s[d * nb + active[j]];
        out[d] = acc;
    }
}

template <typename scalar_t>
SCAN_INLINE void forward_impl(const scalar_t *q, const scalar_t *k, const scalar_t *v,
                                                 scalar_t *out, int64_t lo, int64_t hi, int64_t n, int64_t dk,
                                                 int64_t dv) {
    std::vector<scalar_t> state(dk * dv);
    std::vector<int64_t> active(std::max(dk, dv));
    for (int64_t h = lo; h < hi; ++h) {
        const scalar_t *qh = q + h * n * dk, *kh = k + h * n * dk, *vh = v + h * n * dv;
        scalar_t *oh = out + h * n * dv;
        std::fill(state.begin(), state.end(), scalar_t(0));
        for (int64_t i = 0; i < n; ++i) {
            add_outer(state.data(), kh + i * dk, dk, vh + i * dv, dv, active.data());  // S_i = S_{i-1} + k_i^T v_i
            read_rows(oh + i * dv, state.data(), qh + i * dk, dk, dv, active.data());  // out_i = q_i S_i
        }
    }
}

template <typename scalar_t>
SCAN_INLINE void backward_impl(const scalar_t *q, const scalar_t *k, const scalar_t *v,
                                                  const scalar_t *g, scalar_t *gq, scalar_t *gk, scalar_t *gv,
                                                  int64_t lo, int64_t hi, int64_t n, int64_t dk, int64_t dv) {
    std::vector<scalar_t> st(dv * dk), r(dk * dv);
    std::vector<int64_t> active(std::max(dk, dv));
    for (int64_t h = lo; h < hi; ++h) {
        const scalar_t *qh = q + h * n * dk, *kh = k + h * n * dk, *vh = v + h * n * dv, *gh = g + h * n * dv;
        if (gq != nullptr) {  // forward scan: S_i^T [Dv, Dk]; dq_i = sum_e G_i[e] S_i^T[e, :]
            std::fill(st.begin(), st.end(), scalar_t(0));
            for (int64_t i = 0; i < n; ++i) {
                add_outer(st.data(), vh + i * dv, dv, kh + i * dk, dk, active.data());
                read_rows(gq + h * n * dk + i * dk, st.data(), gh + i * dv, dv, dk, active.data());
            }
        }
        if (gk == nullptr && gv == nullptr) continue;
        std::fill(r.begin(), r.end(), scalar_t(0));  // reverse scan: R_i [Dk, Dv]
        for (int64_t i = n - 1; i >= 0; --i) {
            add_outer(r.data(), qh + i * dk, dk, gh + i * dv, dv, active.data());
            if (gk != nullptr) read_columns(gk + h * n * dk + i * dk, r.data(), dk, vh + i * dv, dv, active.data());
            if (gv != nullptr) read_rows(gv + h * n * dv + i * dv, r.data(), kh + i * dk, dk, dv, active.data());  // k_i R_i
        }
    }
}

// The scans compiled once per instruction set and picked when the library loads (GCC's function
// multiversioning on x86-64; elsewhere one build): the helpers above are inlined into each version, so
// their fixed-width blocks run in 512- or 256-bit registers where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SCAN_TARGETS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SCAN_TARGETS
#endif
SCAN_TARGETS void forward_heads(const float *q, const float *k, const float *v, float *out, int64_t lo, int64_t hi,
                                int64_t n, int64_t dk, int64_t dv) {
    forward_impl(q, k, v, out, lo, hi, n, dk, dv);
}
SCAN_TARGETS void forward_heads(const double *q, const double *k, const double *v, double *out, int64_t lo,
                                int64_t hi, int64_t n, int64_t dk, int64_t dv) {
    forward_impl(q, k, v, out, lo, hi, n, dk, dv);
}
SCAN_TARGETS void backward_heads(const float *q, const float *k, const float *v, const float *g, float *gq, float *gk,
                                 float *gv, int64_t lo, int64_t hi, int64_t n, int64_t dk, int64_t dv) {
    backward_impl(q, k, v, g, gq, gk, gv, lo, hi, n, dk, dv);
}
SCAN_TARGETS void backward_heads(const double *q, const double *k, const double *v, const double *g, double *gq,
                                 double *gk, double *gv, int64_t lo, int64_t hi, int64_t n, int64_t dk, int64_t dv) {
    backward_impl(q, k, v, g, gq, gk, gv, lo, hi, n, dk, dv);
}

void check_operands(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v) {
    TORCH_CHECK(q.dim() >= 2 && k.dim() == q.dim() && v.dim() == q.dim(),
                "spiking_attn::causal_scan: q, k and v must be [..., N, D] of one rank");
    TORCH_CHECK(q.sizes() == k.sizes(), "spiking_attn::causal_scan: q and k must have one shape");
    TORCH_CHECK(v.sizes().slice(0, v.dim() - 1) == q.sizes().slice(0, q.dim() - 1),
                "spiking_attn::causal_scan: v must match q in every axis but the last");
    TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
                "spiking_attn::causal_scan: q, k and v must have one dtype");
    TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
                "spiking_attn::causal_scan: CPU tensors only");
}

// The number of heads: every axis but the last two (counted from the sizes, so that an empty key width
// still gives its heads, whose outputs are then zeros).
int64_t leading(const at::Tensor &t) {
    int64_t heads = 1;
    for (int64_t d = 0; d + 2 < t.dim(); ++d) heads *= t.size(d);
    return heads;
}

// Heads per chunk of torch's intra-op pool: about 2^16 multiply-adds of state per chunk.
int64_t grain(int64_t n, int64_t dk, int64_t dv) { return std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, n * dk * dv / 16)); }

struct CausalScan : public torch::autograd::Function<CausalScan> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &q_in, const at::Tensor &k_in,
                              const at::Tensor &v_in) {
        check_operands(q_in, k_in, v_in);
        const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
        const int64_t n = q.size(-2), dk = q.size(-1), dv = v.size(-1), heads = leading(q);
        at::Tensor out = at::empty_like(v);
        AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "spiking_attn::causal_scan", [&] {
            const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
            scalar_t *op = out.data_ptr<scalar_t>();
            at::parallel_for(0, heads, grain(n, dk, dv), [&](int64_t lo, int64_t hi) {
                forward_heads(qp, kp, vp, op, lo, hi, n, dk, dv);
            });
        });
        ctx->save_for_backward({q, k, v});
        return out;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        TORCH_CHECK(!at::GradMode::is_enabled(),
                    "spiking_attn-second-order: the causal scan gives first-order gradients only");
        const auto saved = ctx->get_saved_variables();
        const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
        const int64_t n = q.size(-2), dk = q.size(-1), dv = v.size(-1), heads = leading(q);
        at::Tensor g = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(v);
        at::Tensor gq, gk, gv;
        if (ctx->needs_input_grad(0)) gq = at::empty_like(q);
        if (ctx->needs_input_grad(1)) gk = at::empty_like(k);
        if (ctx->needs_input_grad(2)) gv = at::empty_like(v);
        AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "spiking_attn::causal_scan_backward", [&] {
            auto ptr = [](at::Tensor &t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
            scalar_t *gqp = ptr(gq), *gkp = ptr(gk), *gvp = ptr(gv);
            const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
            const scalar_t *gp = g.data_ptr<scalar_t>();
            at::parallel_for(0, heads, grain(n, dk, dv), [&](int64_t lo, int64_t hi) {
                backward_heads(qp, kp, vp, gp, gqp, gkp, gvp, lo, hi, n, dk, dv);
            });
        });
        return {gq, gk, gv};
    }
};

at::Tensor causal_scan(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v) {
    return CausalScan::apply(q, k, v);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(spiking_attn, m) {
    m.def("causal_scan(Tensor q, Tensor k, Tensor v) -> Tensor");
}

TORCH_LIBRARY_IMPL(spiking_attn, CompositeImplicitAutograd, m) {
    m.impl("causal_scan", causal_scan);
}
