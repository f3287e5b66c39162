// A weight product that skips the zeros of its input: torch.ops.spiking_attn.spike_linear
//
//   spike_linear(x, w, max_density) -> y      x: [M, K] (spikes, mostly zeros)   w: [N, K]   y = x w^T: [M, N]
//
// Forward, per row of x: the positions of its nonzero entries (a list built without a branch per entry),
// then y_row = sum over that list, in increasing k, of x[k] * w^T[k, :], 64 (float) or 32 (double)
// outputs at a time in vector registers. A spike is 1, so each term is a row of w^T added: the
// accumulation of a spike-driven layer, with the work proportional to the spikes. Rows are independent
// and each is summed by one thread in one order, so the result does not depend on the thread count. It
// is a different order from the BLAS product's, so the two differ by rounding (the BLAS's own order
// depends on the shape and the CPU).
//
// If more than max_density of the entries of x are nonzero (estimated on up to 64 of its rows), the
// forward pass is the BLAS product instead (a dense product is faster there:
// benchmarks/bench_spike_matmul.py). Backward is two BLAS products
// either way (dx = g w, dw = g^T x): g is dense, and a sparse dw was slower than the BLAS at every rate
// timed.
//
// The row kernel is compiled per instruction set (GCC function multiversioning on x86-64) and chosen at
// load. On spikes every version gives the same sums; on graded input the AVX-512 version fuses each
// multiply-add and the others do not, so there the last bit can depend on the CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

typedef float vf __attribute__((vector_size(64), aligned(4), may_alias));
typedef double vd __attribute__((vector_size(64), aligned(8), may_alias));
template <typename scalar_t> struct Vec;
template <> struct Vec<float> { typedef vf type; };
template <> struct Vec<double> { typedef vd type; };

// Rows [lo, hi) of y = x w^T, with wt = w^T [K, N] contiguous.
template <typename scalar_t>
[[gnu::always_inline]] inline void rows_impl(const scalar_t *x, const scalar_t *wt, scalar_t *y, int64_t lo,
                                             int64_t hi, int64_t k, int64_t n) {
    typedef typename Vec<scalar_t>::type vec;
    constexpr int64_t L = 64 / sizeof(scalar_t), TILE = 4 * L;
    std::vector<int64_t> active(k);
    for (int64_t r = lo; r < hi; ++r) {
        const scalar_t *xr = x + r * k;
        scalar_t *yr = y + r * n;
        int64_t m = 0;
        for (int64_t i = 0; i < k; ++i) {
            active[m] = i;
            m += xr[i] != 0;
        }
        int64_t j0 = 0;
        for (; j0 + TILE <= n; j0 += TILE) {
            vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
            for (int64_t j = 0; j < m; ++j) {
                const scalar_t c = xr[active[j]];
                const vec *w = reinterpret_cast<const vec *>(wt + active[j] * n + j0);
                a0 += c * w[0];
                a1 += c * w[1];
                a2 += c * w[2];
                a3 += c * w[3];
            }
            vec *out = reinterpret_cast<vec *>(yr + j0);
            out[0] = a0;
            out[1] = a1;
            out[2] = a2;
            out[3] = a3;
        }
        for (; j0 + L <= n; j0 += L) {
            vec a = {};
            for (int64_t j = 0; j < m; ++j) a += xr[active[j]] * *reinterpret_cast<const vec *>(wt + active[j] * n + j0);
            *reinterpret_cast<vec *>(yr + j0) = a;
        }
        for (int64_t c = j0; c < n; ++c) {
            scalar_t a = 0;
            for (int64_t j = 0; j < m; ++j) a += xr[active[j]] * wt[active[j] * n + c];
            yr[c] = a;
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ROW_TARGETS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ROW_TARGETS
#endif
ROW_TARGETS void rows(const float *x, const float *wt, float *y, int64_t lo, int64_t hi, int64_t k, int64_t n) {
    rows_impl(x, wt, y, lo, hi, k, n);
}
ROW_TARGETS void rows(const double *x, const double *wt, double *y, int64_t lo, int64_t hi, int64_t k, int64_t n) {
    rows_impl(x, wt, y, lo, hi, k, n);
}

at::Tensor sparse_forward(const at::Tensor &x, const at::Tensor &w) {
    const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
    const at::Tensor wt = w.t().contiguous();  // [K, N]: the rows a spike selects
    at::Tensor y = at::empty({m, n}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spiking_attn::spike_linear", [&] {
        const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = wt.data_ptr<scalar_t>();
        scalar_t *yp = y.data_ptr<scalar_t>();
        const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, k * n / 8));
        at::parallel_for(0, m, grain, [&](int64_t lo, int64_t hi) { rows(xp, wp, yp, lo, hi, k, n); });
    });
    return y;
}

// The fraction of nonzero entries in up to 64 rows of x spread evenly over it: a full count costs as much
// as a sparse product of a narrow layer, and spike rows of one tensor fire at similar rates.
double sampled_density(const at::Tensor &x) {
    const int64_t m = x.size(0), k = x.size(1), samples = std::min<int64_t>(m, 64);
    if (samples == 0 || k == 0) return 0.0;
    int64_t nonzero = 0;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spiking_attn::spike_linear_density", [&] {
        const scalar_t *xp = x.data_ptr<scalar_t>();
        for (int64_t s = 0; s < samples; ++s) {
            const scalar_t *row = xp + (s * m / samples) * k;
            for (int64_t i = 0; i < k; ++i) nonzero += row[i] != 0;
        }
    });
    return static_cast<double>(nonzero) / static_cast<double>(samples * k);
}

struct SpikeLinear : public torch::autograd::Function<SpikeLinear> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x_in, const at::Tensor &w_in,
                              double max_density) {
        TORCH_CHECK(x_in.dim() == 2 && w_in.dim() == 2 && x_in.size(1) == w_in.size(1),
                    "spiking_attn::spike_linear: x must be [M, K] and w [N, K]");
        TORCH_CHECK(x_in.scalar_type() == w_in.scalar_type(), "spiking_attn::spike_linear: x and w must have one dtype");
        TORCH_CHECK(x_in.device().is_cpu() && w_in.device().is_cpu(), "spiking_attn::spike_linear: CPU tensors only");
        const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
        ctx->save_for_backward({x_in, w_in});  // the inputs themselves: a gradient of the gradient reaches them
        return sampled_density(x) <= max_density ? sparse_forward(x, w) : at::mm(x, w.t());
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const at::Tensor &x = saved[0], &w = saved[1];
        at::Tensor g = grads[0].defined() ? grads[0] : at::zeros({x.size(0), w.size(0)}, x.options());
        at::Tensor gx, gw;
        if (ctx->needs_input_grad(0)) gx = at::mm(g, w);
        if (ctx->needs_input_grad(1)) gw = at::mm(g.t(), x);
        return {gx, gw, at::Tensor()};
    }
};

at::Tensor spike_linear(const at::Tensor &x, const at::Tensor &w, double max_density) {
    return SpikeLinear::apply(x, w, max_density);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(spiking_attn, m) {
    m.def("spike_linear(Tensor x, Tensor w, float max_density) -> Tensor");
}

TORCH_LIBRARY_IMPL(spiking_attn, CompositeImplicitAutograd, m) {
    m.impl("spike_linear", spike_linear);
}
