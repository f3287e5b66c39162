// The LIF kernel as a torch operator with its autograd written in C++: torch.ops.spiking_attn.lif
//
// lif_kernel.c is linked in unchanged; this file only gives it torch's calling convention. Through ctypes
// (lif_kernel.py) every call goes through a Python autograd.Function, whose bookkeeping costs about as much
// as the arithmetic at the sizes of the project's models. Here a call costs a few microseconds on top of
// the kernel, the backward pass runs without Python, and the column chunks run on torch's own thread pool
// (at::parallel_for), so no second pool competes with torch's waiting workers.
//
//   lif(x, du, dv, vth, bias, kind, alpha, detach_reset, subtract, v_init) -> spikes
//       the plain population: parameters that are scalars or one per channel (x's last axis), a
//       surrogate the kernel knows (kind 0..2), no modulation, no adaptive threshold, no membrane output.
//       native_ops.py checks that before calling; every other case runs the ctypes path, which handles
//       them all. The parameters' values are checked here against their domains (cheaper than from
//       Python, on every call). Spikes and input gradients equal the ctypes path's bit for bit (the same
//       kernel; every column is computed alone); parameter gradients are summed here, by torch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

extern "C" {
typedef struct {
    const void *data;
    int64_t tstride, div, mod, div2, mod2;
} operand_t;

int64_t lif_forward_f32(const float *, float *, float *, float *, int64_t, int64_t, int64_t, int64_t,
                        const operand_t *, int, double);
int64_t lif_forward_f64(const double *, double *, double *, double *, int64_t, int64_t, int64_t, int64_t,
                        const operand_t *, int, double);
int lif_backward_f32(const float *, const float *, const float *, const float *, float *, float *const *, int64_t,
                     int64_t, int64_t, int64_t, const operand_t *, int, int, double, double);
int lif_backward_f64(const double *, const double *, const double *, const double *, double *, double *const *,
                     int64_t, int64_t, int64_t, int64_t, const operand_t *, int, int, double, double);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One name per kernel for both types, so the dispatch lambdas below are type-generic.
inline int64_t lif_forward(const float *x, float *s, int64_t T, int64_t n, int64_t lo, int64_t hi,
                           const operand_t *ops, int flags, double v_init) {
    return lif_forward_f32(x, s, nullptr, nullptr, T, n, lo, hi, ops, flags, v_init);
}
inline int64_t lif_forward(const double *x, double *s, int64_t T, int64_t n, int64_t lo, int64_t hi,
                           const operand_t *ops, int flags, double v_init) {
    return lif_forward_f64(x, s, nullptr, nullptr, T, n, lo, hi, ops, flags, v_init);
}
inline int lif_backward(const float *g, const float *x, float *gx, float *const *pg, int64_t T, int64_t n, int64_t lo,
                        int64_t hi, const operand_t *ops, int flags, int kind, double alpha, double v_init) {
    return lif_backward_f32(g, nullptr, x, nullptr, gx, pg, T, n, lo, hi, ops, flags, kind, alpha, v_init);
}
inline int lif_backward(const double *g, const double *x, double *gx, double *const *pg, int64_t T, int64_t n,
                        int64_t lo, int64_t hi, const operand_t *ops, int flags, int kind, double alpha,
                        double v_init) {
    return lif_backward_f64(g, nullptr, x, nullptr, gx, pg, T, n, lo, hi, ops, flags, kind, alpha, v_init);
}

// Feature flags and operand slots of lif_kernel.c.
constexpr int F_DECAY_U = 1, F_DETACH = 16, F_PARAMS = 32, F_SUBTRACT = 256;
constexpr int N_OPS = 8;
// Work below this many elements (columns x steps) runs on one thread; above it, torch's pool takes chunks
// of at least this size.
constexpr int64_t GRAIN = 1 << 16;

// The operand descriptor of a parameter broadcast over the population: a scalar, or one value per
// channel of the last axis (the only shapes lif() accepts; native_ops.py checks before calling).
operand_t describe(const at::Tensor &p, int64_t channels) {
    operand_t op{p.data_ptr(), 0, 1, 1, 1, 1};
    if (p.numel() != 1) {
        TORCH_CHECK(p.numel() == channels, "spiking_attn::lif: a parameter has ", p.numel(),
                    " values; expected 1 or ", channels, " (one per channel)");
        op.mod = channels;
    }
    return op;
}

// Whether every value of the parameters lies in its domain (lif_step's): du, dv in [0, 1]; vth > 0;
// bias finite. NaN fails every test. native_ops.py turns a failure into neuron.check_params' message.
template <typename scalar_t>
bool params_in_domain(const std::vector<at::Tensor> &params) {
    for (int k = 0; k < 4; ++k) {
        const scalar_t *p = params[k].data_ptr<scalar_t>();
        for (int64_t i = 0, m = params[k].numel(); i < m; ++i) {
            const scalar_t v = p[i];
            const bool ok = k <= 1 ? (v >= 0 && v <= 1) : k == 2 ? (v > 0 && std::isfinite(v)) : std::isfinite(v);
            if (!ok) return false;
        }
    }
    return true;
}

template <typename F>
void for_columns(int64_t n, int64_t per_column, F &&body) {
    // Chunks of whole columns; at::parallel_for runs them on torch's intra-op pool (OpenMP: the library is
    // built with -fopenmp). In a child made by fork, whose OpenMP threads do not exist, native_ops.py has
    // set torch to one thread, and at::parallel_for then runs the body on the calling thread.
    const int64_t grain = std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, per_column));
    at::parallel_for(0, n, grain, [&](int64_t lo, int64_t hi) { body(lo, hi); });
}

struct LIFFunction : public torch::autograd::Function<LIFFunction> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x_in, const at::Tensor &du,
                              const at::Tensor &dv, const at::Tensor &vth, const at::Tensor &bias, int64_t kind,
                              double alpha, bool detach_reset, bool subtract, double v_init) {
        TORCH_CHECK(x_in.dim() >= 2, "spiking_attn::lif: x must be [T, ...]");
        const at::Tensor x = x_in.contiguous();
        const int64_t T = x.size(0), n = T ? x.numel() / T : 0, channels = x.size(-1);
        std::vector<at::Tensor> params{du.to(x.scalar_type()).contiguous(), dv.to(x.scalar_type()).contiguous(),
                                       vth.to(x.scalar_type()).contiguous(), bias.to(x.scalar_type()).contiguous()};
        bool in_domain = true;
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spiking_attn::lif_params",
                                   [&] { in_domain = params_in_domain<scalar_t>(params); });
        TORCH_CHECK(in_domain, "spiking_attn-params: a parameter lies outside its domain");
        const bool du_grad = du.requires_grad();  // (grad mode is off inside forward)
        const bool decay_u = du_grad || (params[0].numel() == 1 ? params[0].item<double>() != 1.0
                                                               : !params[0].eq(1).all().item<bool>());
        const int flags = (decay_u ? F_DECAY_U : 0) | (detach_reset ? F_DETACH : 0) |
                          (subtract ? F_SUBTRACT : 0);
        at::Tensor spikes = at::empty_like(x);
        std::atomic<int64_t> bad{0}, failed{0};
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spiking_attn::lif", [&] {
            operand_t ops[N_OPS];
            for (int k = 0; k < N_OPS; ++k) ops[k] = operand_t{nullptr, 0, 1, 1, 1, 1};
            for (int k = 0; k < 4; ++k) ops[k] = describe(params[k], channels);
            const scalar_t *xp = x.data_ptr<scalar_t>();
            scalar_t *sp = spikes.data_ptr<scalar_t>();
            for_columns(n, T, [&](int64_t lo, int64_t hi) {
                const int64_t count = lif_forward(xp, sp, T, n, lo, hi, ops, flags, v_init);
                if (count < 0) failed += 1;
                else bad += count;
            });
        });
        TORCH_CHECK(failed.load() == 0, "spiking_attn::lif: the kernel could not allocate its work buffer");
        TORCH_CHECK(bad.load() == 0, "spiking_attn-nonfinite: x contains ", bad.load(), " NaN or Inf value(s)");
        ctx->save_for_backward({x, params[0], params[1], params[2], params[3]});
        ctx->saved_data["flags"] = static_cast<int64_t>(flags);
        ctx->saved_data["kind"] = kind;
        ctx->saved_data["alpha"] = alpha;
        ctx->saved_data["v_init"] = v_init;
        return spikes;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        TORCH_CHECK(!at::GradMode::is_enabled(),
                    "spiking_attn-second-order: the compiled LIF kernel gives first-order gradients only; for a "
                    "gradient of a gradient (create_graph=True) use engine='spikingjelly', which runs on autograd");
        const auto saved = ctx->get_saved_variables();
        const at::Tensor &x = saved[0];
        const int64_t T = x.size(0), n = T ? x.numel() / T : 0, channels = x.size(-1);
        int flags = static_cast<int>(ctx->saved_data["flags"].toInt());
        const int kind = static_cast<int>(ctx->saved_data["kind"].toInt());
        const double alpha = ctx->saved_data["alpha"].toDouble(), v_init = ctx->saved_data["v_init"].toDouble();
        bool need[4];
        bool any = false;
        for (int k = 0; k < 4; ++k) any |= (need[k] = ctx->needs_input_grad(1 + k));
        if (any) flags |= F_PARAMS;
        at::Tensor g = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(x);
        at::Tensor grad_x = at::empty_like(x);
        std::vector<at::Tensor> outputs(4);
        for (int k = 0; k < 4; ++k)
            if (need[k]) outputs[k] = at::zeros({n}, x.options());
        std::atomic<int64_t> failed{0};
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spiking_attn::lif_backward", [&] {
            operand_t ops[N_OPS];
            for (int k = 0; k < N_OPS; ++k) ops[k] = operand_t{nullptr, 0, 1, 1, 1, 1};
            for (int k = 0; k < 4; ++k) ops[k] = describe(saved[1 + k], channels);
            scalar_t *pg[N_OPS] = {nullptr};
            for (int k = 0; k < 4; ++k)
                if (need[k]) pg[k] = outputs[k].data_ptr<scalar_t>();
            const scalar_t *gp = g.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
            scalar_t *gx = grad_x.data_ptr<scalar_t>();
            for_columns(n, 2 * T, [&](int64_t lo, int64_t hi) {
                const int status = lif_backward(gp, xp, gx, pg, T, n, lo, hi, ops, flags, kind, alpha, v_init);
                if (status != 0) failed += 1;
            });
        });
        TORCH_CHECK(failed.load() == 0, "spiking_attn::lif: the kernel could not allocate its work buffer");
        variable_list result{grad_x};
        for (int k = 0; k < 4; ++k) {
            if (!need[k]) {
                result.push_back(at::Tensor());
                continue;
            }
            // one value per column: sum over everything but the channel, then to the parameter's shape (the
            // saved parameter has the input's shape: forward only changed its dtype and layout)
            const at::Tensor &param = saved[1 + k];
            at::Tensor per_column = outputs[k].view({n / channels, channels});
            at::Tensor reduced = param.numel() == 1 ? per_column.sum() : per_column.sum(0);
            result.push_back(reduced.reshape(param.sizes()));
        }
        for (int k = 0; k < 5; ++k) result.push_back(at::Tensor());
        return result;
    }
};

at::Tensor lif(const at::Tensor &x, const at::Tensor &du, const at::Tensor &dv, const at::Tensor &vth,
               const at::Tensor &bias, int64_t kind, double alpha, bool detach_reset, bool subtract, double v_init) {
    return LIFFunction::apply(x, du, dv, vth, bias, kind, alpha, detach_reset, subtract, v_init);
}

}  // namespace

TORCH_LIBRARY(spiking_attn, m) {
    m.def("lif(Tensor x, Tensor du, Tensor dv, Tensor vth, Tensor bias, int kind, float alpha, bool detach_reset, "
          "bool subtract, float v_init) -> Tensor");
}

TORCH_LIBRARY_IMPL(spiking_attn, CompositeImplicitAutograd, m) {
    m.impl("lif", lif);
}
