// Training-mode BatchNorm, alone and with the plain LIF population it feeds, as torch operators:
// torch.ops.spiking_attn.batchnorm_lif and torch.ops.spiking_attn.batchnorm
//
//   batchnorm_lif(y, weight, bias, steps, eps, dv, vth, lif_bias, kind, alpha, detach_reset, v_init)
//       -> (spikes, mean, var)
//   batchnorm(y, weight, bias, eps) -> (z, mean, var)
//   y: [R, C] rows of a weight layer's output, R = steps * M (time-major, as LinearBN folds [T, B, N, C]);
//   z = (y - mean) / sqrt(var + eps) * weight + bias over the batch statistics of each channel. batchnorm_lif
//   returns the spikes of the population fed with z: h = (z + v (1 - dv)) + lif_bias, s = h > vth,
//   v = h (1 - s), over the steps (column j of step t is row t * M + j / C, channel j % C). mean and var
//   (biased) come back for the running statistics, which the caller updates.
//
// Separately, BatchNorm reads y twice and writes z, the population reads z, and its backward pass writes
// dL/dz that BatchNorm's backward reads twice. Fused, z never reaches memory: the forward pass reads y once for
// the statistics and once for the spikes; the backward pass recomputes z from y, runs time back, writes
// dL/dz once with the two channel sums BatchNorm's backward needs, and turns it into dL/dy in place.
// batchnorm alone is nn.BatchNorm1d's work, but it takes a gradient broadcast from a sum or a mean (zero
// strides) at the speed of a dense one, where torch's kernel for [R, C] rows runs 5x slower on it.
//
// The statistics are summed in fixed blocks of rows merged in a fixed order (Chan's pairwise update, in
// double), and the backward sums in fixed chunks, so the result does not depend on the thread count. The
// arithmetic differs from nn.BatchNorm1d followed by the population (BatchNorm's own reductions run in
// another order), so values agree to rounding, not bit for bit: a spike whose membrane lands on the
// threshold within rounding may differ. native_ops.set_fused_batchnorm is therefore opt-in.
//
// batchnorm_lif takes only the plain population: parameters that are scalars or one per channel, no
// gradient for them, no decay of a synaptic current (du = 1), reset to zero. native_ops.py checks that
// before calling.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

#define BN_INLINE [[gnu::always_inline]] inline

constexpr int64_t STAT_ROWS = 32;   // rows per block of the statistics (a block of 512 channels fits in L2)
constexpr int64_t GRAD_SAMPLES = 8; // columns' samples per chunk of the backward sums

enum { SG_ATAN = 0, SG_SIGMOID = 1, SG_FAST_SIGMOID = 2 };

// Surrogate derivative at z = h - vth (surrogate.py's formulas, as lif_kernel_body.h evaluates them).
template <typename scalar_t>
BN_INLINE scalar_t surrogate(scalar_t z, int kind, scalar_t alpha, scalar_t atan_k) {
    if (kind == SG_ATAN) {
        const scalar_t w = z * atan_k;
        return (alpha / 2) / (1 + w * w);
    }
    if (kind == SG_SIGMOID) {
        const scalar_t s = 1 / (1 + std::exp(-(z * alpha)));
        return (1 - s) * s * alpha;
    }
    const scalar_t w = 1 + alpha * std::fabs(z);
    return 1 / (w * w);
}

// Per-channel constants of one call, each expanded to C values.
template <typename scalar_t>
struct Channels {
    std::vector<scalar_t> a, b, kv, vth, lb;  // z = y a + b; 1 - dv; threshold; the population's bias
};

template <typename scalar_t>
std::vector<scalar_t> expand(const at::Tensor &p, int64_t c) {
    TORCH_CHECK(p.numel() == 1 || p.numel() == c, "spiking_attn::batchnorm_lif: a parameter has ", p.numel(),
                " values; expected 1 or ", c, " (one per channel)");
    const at::Tensor q = p.to(at::CPU(c10::CppTypeToScalarType<scalar_t>::value)).contiguous();
    const scalar_t *d = q.data_ptr<scalar_t>();
    std::vector<scalar_t> out(c);
    for (int64_t i = 0; i < c; ++i) out[i] = q.numel() == 1 ? d[0] : d[i];
    return out;
}

// Batch mean and biased variance of every channel of y [R, C], in double: blocks of STAT_ROWS rows each
// give a mean and a sum of squared deviations (two passes over a block that stays in cache), merged in
// block order by Chan's update.
template <typename scalar_t>
void statistics(const scalar_t *y, int64_t rows, int64_t c, std::vector<double> &mean, std::vector<double> &var) {
    const int64_t blocks = (rows + STAT_ROWS - 1) / STAT_ROWS;
    std::vector<double> bmean(blocks * c), bm2(blocks * c);
    at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
        std::vector<scalar_t> sum(c), m2(c);
        for (int64_t blk = lo; blk < hi; ++blk) {
            const int64_t r0 = blk * STAT_ROWS, r1 = std::min(rows, r0 + STAT_ROWS);
            const scalar_t count = static_cast<scalar_t>(r1 - r0);
            std::fill(sum.begin(), sum.end(), scalar_t(0));
            std::fill(m2.begin(), m2.end(), scalar_t(0));
            for (int64_t r = r0; r < r1; ++r) {
                const scalar_t *row = y + r * c;
                for (int64_t ch = 0; ch < c; ++ch) sum[ch] += row[ch];
            }
            for (int64_t ch = 0; ch < c; ++ch) sum[ch] /= count;  // the block's mean
            for (int64_t r = r0; r < r1; ++r) {
                const scalar_t *row = y + r * c;
                for (int64_t ch = 0; ch < c; ++ch) {
                    const scalar_t d = row[ch] - sum[ch];
                    m2[ch] += d * d;
                }
            }
            for (int64_t ch = 0; ch < c; ++ch) {
                bmean[blk * c + ch] = sum[ch];
                bm2[blk * c + ch] = m2[ch];
            }
        }
    });
    mean.assign(c, 0.0);
    std::vector<double> m2(c, 0.0);
    double n = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const double nb = static_cast<double>(std::min(rows, (blk + 1) * STAT_ROWS) - blk * STAT_ROWS), total = n + nb;
        for (int64_t ch = 0; ch < c; ++ch) {
            const double delta = bmean[blk * c + ch] - mean[ch];
            mean[ch] += delta * nb / total;
            m2[ch] += bm2[blk * c + ch] + delta * delta * n * nb / total;
        }
        n = total;
    }
    var.resize(c);
    for (int64_t ch = 0; ch < c; ++ch) var[ch] = m2[ch] / static_cast<double>(rows);
}

// Vector lanes of one channel tile, and the population's constants of the tile.
template <typename scalar_t>
struct Tile {
    static constexpr int64_t L = 64 / sizeof(scalar_t);
    typedef scalar_t vec __attribute__((vector_size(64), aligned(sizeof(scalar_t))));
    vec a, b, kv, vth, lb;
    Tile(const Channels<scalar_t> &k, int64_t c0) {
        a = load(k.a.data() + c0);
        b = load(k.b.data() + c0);
        kv = load(k.kv.data() + c0);
        vth = load(k.vth.data() + c0);
        lb = load(k.lb.data() + c0);
    }
    BN_INLINE static vec load(const scalar_t *p) { return *reinterpret_cast<const vec *>(p); }
    BN_INLINE static void store(scalar_t *p, vec x) { *reinterpret_cast<vec *>(p) = x; }
    // h of one step from the input y and the membrane v (which it resets); the spike into s.
    BN_INLINE vec step(vec y, vec &v, vec &s) const {
        const vec h = ((y * a + b) + v * kv) + lb;
        s = h > vth ? vec{} + 1 : vec{};
        v = h * (1 - s);
        return h;
    }
};

// The same step for one channel (the channels after the last whole tile): the same operations in the
// same order (the file is compiled without contracting a * b + c into one rounding), so the same bits.
template <typename scalar_t>
BN_INLINE scalar_t step1(const Channels<scalar_t> &k, int64_t ch, scalar_t y, scalar_t &v, scalar_t &s) {
    const scalar_t h = ((y * k.a[ch] + k.b[ch]) + v * k.kv[ch]) + k.lb[ch];
    s = h > k.vth[ch] ? scalar_t(1) : scalar_t(0);
    v = h * (1 - s);
    return h;
}

// The spikes of the columns of samples [lo, hi) of one step's M samples, all channels.
template <typename scalar_t>
BN_INLINE void fire(const scalar_t *y, scalar_t *spikes, int64_t steps, int64_t n, int64_t c, int64_t lo, int64_t hi,
                    const Channels<scalar_t> &k, scalar_t v_init) {
    using P = Tile<scalar_t>;
    for (int64_t m = lo; m < hi; ++m) {
        int64_t c0 = 0;
        for (; c0 + P::L <= c; c0 += P::L) {
            const P p(k, c0);
            typename P::vec v = p.vth * v_init, s;
            for (int64_t t = 0; t < steps; ++t) {
                const int64_t o = t * n + m * c + c0;
                p.step(P::load(y + o), v, s);
                P::store(spikes + o, s);
            }
        }
        for (int64_t ch = c0; ch < c; ++ch) {
            scalar_t v = k.vth[ch] * v_init, s;
            for (int64_t t = 0; t < steps; ++t) {
                step1(k, ch, y[t * n + m * c + ch], v, s);
                spikes[t * n + m * c + ch] = s;
            }
        }
    }
}

// Surrogate derivative of a vector at z = h - vth.
template <typename vec, typename scalar_t>
BN_INLINE vec surrogate_vec(vec z, int kind, scalar_t alpha, scalar_t atan_k) {
    if (kind == SG_ATAN) {
        const vec w = z * atan_k;
        return (alpha / 2) / (1 + w * w);
    }
    if (kind == SG_SIGMOID) {
        vec e;
        for (size_t l = 0; l < sizeof(vec) / sizeof(scalar_t); ++l) e[l] = std::exp(-(z[l] * alpha));
        const vec s = 1 / (1 + e);
        return (1 - s) * s * alpha;
    }
    const vec w = 1 + alpha * (z < 0 ? -z : z);
    return 1 / (w * w);
}

// Backward through the population for the columns of samples [lo, hi): dL/dz into gz (the caller's dL/dy
// buffer), and the channel sums of dL/dz and dL/dz (y - mean) added into s1, s2. hbuf holds steps * L values.
template <typename scalar_t>
BN_INLINE void through_time(const scalar_t *g, const scalar_t *y, scalar_t *gz, int64_t steps, int64_t n, int64_t c,
                            int64_t lo, int64_t hi, const Channels<scalar_t> &k, const scalar_t *mean, scalar_t v_init,
                            int kind, scalar_t alpha, scalar_t atan_k, bool detach, scalar_t *s1, scalar_t *s2,
                            scalar_t *hbuf) {
    using P = Tile<scalar_t>;
    using vec = typename P::vec;
    for (int64_t m = lo; m < hi; ++m) {
        int64_t c0 = 0;
        for (; c0 + P::L <= c; c0 += P::L) {
            const P p(k, c0);
            vec v = p.vth * v_init, s;
            for (int64_t t = 0; t < steps; ++t) P::store(hbuf + t * P::L, p.step(P::load(y + t * n + m * c + c0), v, s));
            const vec mu = P::load(mean + c0);
            vec gv{}, a1{}, a2{};
            for (int64_t t = steps - 1; t >= 0; --t) {
                const int64_t o = t * n + m * c + c0;
                const vec h = P::load(hbuf + t * P::L);
                const vec fired = h > p.vth ? vec{} + 1 : vec{};
                vec gs = P::load(g + o);
                if (!detach) gs = gs - gv * h;  // through the reset v = h (1 - s)
                const vec gh = gs * surrogate_vec(h - p.vth, kind, alpha, atan_k) + gv * (1 - fired);
                gv = gh * p.kv;
                P::store(gz + o, gh);
                a1 += gh;
                a2 += gh * (P::load(y + o) - mu);
            }
            P::store(s1 + c0, P::load(s1 + c0) + a1);
            P::store(s2 + c0, P::load(s2 + c0) + a2);
        }
        for (int64_t ch = c0; ch < c; ++ch) {
            scalar_t v = k.vth[ch] * v_init, s;
            for (int64_t t = 0; t < steps; ++t) hbuf[t] = step1(k, ch, y[t * n + m * c + ch], v, s);
            scalar_t gv = 0, a1 = 0, a2 = 0;
            for (int64_t t = steps - 1; t >= 0; --t) {
                const int64_t o = t * n + m * c + ch;
                const scalar_t h = hbuf[t], fired = h > k.vth[ch] ? scalar_t(1) : scalar_t(0);
                scalar_t gs = g[o];
                if (!detach) gs -= gv * h;
                const scalar_t gh = gs * surrogate(h - k.vth[ch], kind, alpha, atan_k) + gv * (1 - fired);
                gv = gh * k.kv[ch];
                gz[o] = gh;
                a1 += gh;
                a2 += gh * (y[o] - mean[ch]);
            }
            s1[ch] += a1;
            s2[ch] += a2;
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BN_TARGETS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BN_TARGETS
#endif
BN_TARGETS void fire_columns(const float *y, float *s, int64_t T, int64_t n, int64_t c, int64_t lo, int64_t hi,
                             const Channels<float> &k, float v0) {
    fire(y, s, T, n, c, lo, hi, k, v0);
}
BN_TARGETS void fire_columns(const double *y, double *s, int64_t T, int64_t n, int64_t c, int64_t lo, int64_t hi,
                             const Channels<double> &k, double v0) {
    fire(y, s, T, n, c, lo, hi, k, v0);
}
BN_TARGETS void back_columns(const float *g, const float *y, float *gz, int64_t T, int64_t n, int64_t c, int64_t lo,
                             int64_t hi, const Channels<float> &k, const float *mean, float v0, int kind, float alpha,
                             float atan_k, bool detach, float *s1, float *s2, float *hbuf) {
    through_time(g, y, gz, T, n, c, lo, hi, k, mean, v0, kind, alpha, atan_k, detach, s1, s2, hbuf);
}
BN_TARGETS void back_columns(const double *g, const double *y, double *gz, int64_t T, int64_t n, int64_t c,
                             int64_t lo, int64_t hi, const Channels<double> &k, const double *mean, double v0, int kind,
                             double alpha, double atan_k, bool detach, double *s1, double *s2, double *hbuf) {
    through_time(g, y, gz, T, n, c, lo, hi, k, mean, v0, kind, alpha, atan_k, detach, s1, s2, hbuf);
}

// dL/dy = a (dz - S1 / R) - (y - mean) a invstd^2 S2 / R = a dz - q1 - (y - mean) q2 over rows [lo, hi) into out
// (which may be dz itself).
template <typename scalar_t>
BN_INLINE void to_input(scalar_t *out, const scalar_t *gz, const scalar_t *y, int64_t c, int64_t lo, int64_t hi,
                        const scalar_t *a, const scalar_t *q1, const scalar_t *q2, const scalar_t *mean) {
    for (int64_t r = lo; r < hi; ++r) {
        const scalar_t *gr = gz + r * c, *yr = y + r * c;
        scalar_t *o = out + r * c;
        for (int64_t ch = 0; ch < c; ++ch) o[ch] = a[ch] * gr[ch] - q1[ch] - (yr[ch] - mean[ch]) * q2[ch];
    }
}
BN_TARGETS void to_input_rows(float *out, const float *gz, const float *y, int64_t c, int64_t lo, int64_t hi,
                              const float *a, const float *q1, const float *q2, const float *mean) {
    to_input(out, gz, y, c, lo, hi, a, q1, q2, mean);
}
BN_TARGETS void to_input_rows(double *out, const double *gz, const double *y, int64_t c, int64_t lo, int64_t hi,
                              const double *a, const double *q1, const double *q2, const double *mean) {
    to_input(out, gz, y, c, lo, hi, a, q1, q2, mean);
}

// z = y a + b over rows [lo, hi) (BatchNorm alone).
template <typename scalar_t>
BN_INLINE void normalise(scalar_t *z, const scalar_t *y, int64_t c, int64_t lo, int64_t hi, const scalar_t *a,
                         const scalar_t *b) {
    for (int64_t r = lo; r < hi; ++r)
        for (int64_t ch = 0; ch < c; ++ch) z[r * c + ch] = y[r * c + ch] * a[ch] + b[ch];
}
BN_TARGETS void normalise_rows(float *z, const float *y, int64_t c, int64_t lo, int64_t hi, const float *a,
                               const float *b) {
    normalise(z, y, c, lo, hi, a, b);
}
BN_TARGETS void normalise_rows(double *z, const double *y, int64_t c, int64_t lo, int64_t hi, const double *a,
                               const double *b) {
    normalise(z, y, c, lo, hi, a, b);
}

// The channel sums of g and g (y - mean) over rows [lo, hi), added into s1, s2 (BatchNorm alone).
template <typename scalar_t>
BN_INLINE void gradient_sums(const scalar_t *g, const scalar_t *y, const scalar_t *mean, int64_t c, int64_t lo,
                             int64_t hi, scalar_t *s1, scalar_t *s2) {
    for (int64_t r = lo; r < hi; ++r)
        for (int64_t ch = 0; ch < c; ++ch) {
            s1[ch] += g[r * c + ch];
            s2[ch] += g[r * c + ch] * (y[r * c + ch] - mean[ch]);
        }
}
BN_TARGETS void gradient_sums_rows(const float *g, const float *y, const float *mean, int64_t c, int64_t lo,
                                   int64_t hi, float *s1, float *s2) {
    gradient_sums(g, y, mean, c, lo, hi, s1, s2);
}
BN_TARGETS void gradient_sums_rows(const double *g, const double *y, const double *mean, int64_t c, int64_t lo,
                                   int64_t hi, double *s1, double *s2) {
    gradient_sums(g, y, mean, c, lo, hi, s1, s2);
}

template <typename scalar_t>
Channels<scalar_t> channels(const at::Tensor &a, const at::Tensor &b, const at::Tensor &dv, const at::Tensor &vth,
                            const at::Tensor &lb, int64_t c) {
    Channels<scalar_t> k{expand<scalar_t>(a, c), expand<scalar_t>(b, c), expand<scalar_t>(dv, c),
                         expand<scalar_t>(vth, c), expand<scalar_t>(lb, c)};
    for (auto &x : k.kv) x = 1 - x;
    return k;
}

// The batch statistics of y [R, C] and the affine map they give, z = y a + b: mean, var (biased), a, b, each [C]
// in y's dtype. False if any of them is not finite (NaN or Inf in y, weight or bias).
bool batch_affine(const at::Tensor &y, const at::Tensor &weight, const at::Tensor &bias, double eps,
                  std::vector<at::Tensor> &out) {
    const int64_t rows = y.size(0), c = y.size(1);
    out = {at::empty({c}, y.options()), at::empty({c}, y.options()), at::empty({c}, y.options()),
           at::empty({c}, y.options())};
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "spiking_attn::batch_affine", [&] {
        std::vector<double> mean, var;
        statistics(y.data_ptr<scalar_t>(), rows, c, mean, var);
        const std::vector<scalar_t> w = expand<scalar_t>(weight, c), beta = expand<scalar_t>(bias, c);
        scalar_t *mp = out[0].data_ptr<scalar_t>(), *vp = out[1].data_ptr<scalar_t>();
        scalar_t *ap = out[2].data_ptr<scalar_t>(), *bp = out[3].data_ptr<scalar_t>();
        for (int64_t ch = 0; ch < c; ++ch) {
            const double invstd = 1.0 / std::sqrt(var[ch] + eps);
            mp[ch] = static_cast<scalar_t>(mean[ch]);
            vp[ch] = static_cast<scalar_t>(var[ch]);
            ap[ch] = static_cast<scalar_t>(w[ch] * invstd);
            bp[ch] = static_cast<scalar_t>(beta[ch] - mean[ch] * (w[ch] * invstd));
            finite = finite && std::isfinite(mean[ch]) && std::isfinite(var[ch]) && std::isfinite(ap[ch]) &&
                     std::isfinite(bp[ch]);
        }
    });
    return finite;
}

constexpr const char *NONFINITE = "spiking_attn-nonfinite: the BatchNorm's input, weight or bias holds NaN or Inf values";

// BatchNorm's backward from the channel sums s1 = sum dL/dz, s2 = sum dL/dz (y - mean): dL/dy (rows of gz, y into
// out), and dL/dweight = s2 invstd, dL/dbias = s1 where autograd asks for them (edges 1 and 2: autograd counts
// the tensor inputs only, y, weight, bias, ...).
template <typename scalar_t>
void batchnorm_backward(AutogradContext *ctx, const scalar_t *gz, const at::Tensor &y, scalar_t *out,
                        const at::Tensor &weight, const at::Tensor &mean_t, const at::Tensor &var_t, double eps,
                        const std::vector<double> &s1, const std::vector<double> &s2, at::Tensor &grad_w,
                        at::Tensor &grad_b) {
    const int64_t rows = y.size(0), c = y.size(1);
    const std::vector<scalar_t> w = expand<scalar_t>(weight, c);
    const scalar_t *vp = var_t.data_ptr<scalar_t>(), *mp = mean_t.data_ptr<scalar_t>(), *yp = y.data_ptr<scalar_t>();
    std::vector<scalar_t> a(c), q1(c), q2(c), invstd(c);
    for (int64_t ch = 0; ch < c; ++ch) {
        const double is = 1.0 / std::sqrt(static_cast<double>(vp[ch]) + eps);
        invstd[ch] = static_cast<scalar_t>(is);
        a[ch] = static_cast<scalar_t>(w[ch] * is);
        q1[ch] = static_cast<scalar_t>(w[ch] * is * s1[ch] / rows);
        q2[ch] = static_cast<scalar_t>(w[ch] * is * is * is * s2[ch] / rows);
    }
    const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, c));
    at::parallel_for(0, rows, grain, [&](int64_t lo, int64_t hi) {
        to_input_rows(out, gz, yp, c, lo, hi, a.data(), q1.data(), q2.data(), mp);
    });
    if (ctx->needs_input_grad(1)) {
        grad_w = at::empty({c}, y.options());
        for (int64_t ch = 0; ch < c; ++ch) grad_w.data_ptr<scalar_t>()[ch] = static_cast<scalar_t>(s2[ch] * invstd[ch]);
        grad_w = grad_w.reshape(weight.sizes()).to(weight.scalar_type());
    }
    if (ctx->needs_input_grad(2)) {
        grad_b = at::empty({c}, y.options());
        for (int64_t ch = 0; ch < c; ++ch) grad_b.data_ptr<scalar_t>()[ch] = static_cast<scalar_t>(s1[ch]);
        grad_b = grad_b.reshape(weight.sizes()).to(weight.scalar_type());
    }
}

// Per-chunk partial sums [chunks, C] added in chunk order, in double: the same on any thread count.
template <typename scalar_t>
void add_chunks(const std::vector<scalar_t> &part, int64_t chunks, int64_t c, std::vector<double> &total) {
    total.assign(c, 0.0);
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
        for (int64_t ch = 0; ch < c; ++ch) total[ch] += part[chunk * c + ch];
}

void check_rows(const at::Tensor &y, const at::Tensor &weight, const at::Tensor &bias, const char *name) {
    TORCH_CHECK(y.dim() == 2 && y.size(0) > 1 && y.size(1) > 0, "spiking_attn::", name,
                ": y must be [R, C] with more than one row and at least one channel");
    TORCH_CHECK(weight.numel() == y.size(1) && bias.numel() == y.size(1), "spiking_attn::", name,
                ": weight and bias need one value per channel");
}

struct BatchNormLIF : public torch::autograd::Function<BatchNormLIF> {
    static variable_list forward(AutogradContext *ctx, const at::Tensor &y_in, const at::Tensor &weight,
                                 const at::Tensor &bias, int64_t steps, double eps, const at::Tensor &dv,
                                 const at::Tensor &vth, const at::Tensor &lif_bias, int64_t kind, double alpha,
                                 bool detach_reset, double v_init) {
        check_rows(y_in, weight, bias, "batchnorm_lif");
        TORCH_CHECK(kind >= SG_ATAN && kind <= SG_FAST_SIGMOID, "spiking_attn::batchnorm_lif: unknown surrogate kind ",
                    kind);
        TORCH_CHECK(steps > 0 && y_in.size(0) % steps == 0, "spiking_attn::batchnorm_lif: rows must be steps * M");
        const at::Tensor y = y_in.contiguous();
        const int64_t rows = y.size(0), c = y.size(1), n = rows / steps * c;
        std::vector<at::Tensor> st;
        TORCH_CHECK(batch_affine(y, weight, bias, eps, st), NONFINITE);
        at::Tensor spikes = at::empty_like(y);
        bool in_domain = true;
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "spiking_attn::batchnorm_lif", [&] {
            const Channels<scalar_t> k = channels<scalar_t>(st[2], st[3], dv, vth, lif_bias, c);
            const std::vector<scalar_t> decay = expand<scalar_t>(dv, c);  // (checked as given: 1 - dv may round)
            for (int64_t ch = 0; ch < c; ++ch)  // (lif_step's domains: dv in [0, 1], vth > 0; NaN fails each test)
                in_domain = in_domain && decay[ch] >= 0 && decay[ch] <= 1 && k.vth[ch] > 0 &&
                            std::isfinite(k.vth[ch]) && std::isfinite(k.lb[ch]);
            if (!in_domain) return;
            const scalar_t *yp = y.data_ptr<scalar_t>();
            scalar_t *sp = spikes.data_ptr<scalar_t>();
            const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, c * steps));
            at::parallel_for(0, n / c, grain, [&](int64_t lo, int64_t hi) {
                fire_columns(yp, sp, steps, n, c, lo, hi, k, static_cast<scalar_t>(v_init));
            });
        });
        TORCH_CHECK(in_domain, "spiking_attn-params: a parameter lies outside its domain");
        ctx->save_for_backward({y, weight, st[0], st[1], st[2], st[3], dv, vth, lif_bias});
        ctx->saved_data["steps"] = steps;
        ctx->saved_data["eps"] = eps;
        ctx->saved_data["kind"] = kind;
        ctx->saved_data["alpha"] = alpha;
        ctx->saved_data["detach"] = detach_reset;
        ctx->saved_data["v_init"] = v_init;
        ctx->mark_non_differentiable({st[0], st[1]});
        return {spikes, st[0], st[1]};
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        TORCH_CHECK(!at::GradMode::is_enabled(),
                    "spiking_attn-second-order: the fused BatchNorm and LIF give first-order gradients only; "
                    "turn native_ops.set_fused_batchnorm off for a gradient of a gradient");
        const auto saved = ctx->get_saved_variables();
        const at::Tensor &y = saved[0];
        const int64_t steps = ctx->saved_data["steps"].toInt(), rows = y.size(0), c = y.size(1), n = rows / steps * c;
        const int kind = static_cast<int>(ctx->saved_data["kind"].toInt());
        const bool detach = ctx->saved_data["detach"].toBool();
        const double alpha = ctx->saved_data["alpha"].toDouble(), v_init = ctx->saved_data["v_init"].toDouble();
        at::Tensor g = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(y);
        at::Tensor grad_y = at::empty_like(y), grad_w, grad_b;
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "spiking_attn::batchnorm_lif_backward", [&] {
            const Channels<scalar_t> k = channels<scalar_t>(saved[4], saved[5], saved[6], saved[7], saved[8], c);
            const scalar_t *gp = g.data_ptr<scalar_t>(), *yp = y.data_ptr<scalar_t>();
            const scalar_t *mp = saved[2].data_ptr<scalar_t>();
            scalar_t *gy = grad_y.data_ptr<scalar_t>();
            const int64_t samples = n / c, chunks = (samples + GRAD_SAMPLES - 1) / GRAD_SAMPLES;
            // (rounded once from double, as lif_kernel_body.h's lif_backward does: the same surrogate bits)
            const scalar_t atan_k = static_cast<scalar_t>(3.14159265358979323846 / 2 * alpha);
            std::vector<scalar_t> part1(chunks * c, 0), part2(chunks * c, 0);
            at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
                std::vector<scalar_t> hbuf(steps * Tile<scalar_t>::L);
                for (int64_t chunk = lo; chunk < hi; ++chunk)
                    back_columns(gp, yp, gy, steps, n, c, chunk * GRAD_SAMPLES,
                                 std::min(samples, (chunk + 1) * GRAD_SAMPLES), k, mp, static_cast<scalar_t>(v_init),
                                 kind, static_cast<scalar_t>(alpha), atan_k, detach, part1.data() + chunk * c,
                                 part2.data() + chunk * c, hbuf.data());
            });
            std::vector<double> s1, s2;
            add_chunks(part1, chunks, c, s1);
            add_chunks(part2, chunks, c, s2);
            batchnorm_backward(ctx, gy, y, gy, saved[1], saved[2], saved[3], ctx->saved_data["eps"].toDouble(), s1, s2,
                               grad_w, grad_b);
        });
        return {grad_y, grad_w, grad_b, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
                at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

// BatchNorm alone in training mode, with the same statistics and gradient sums as batchnorm_lif (for the
// BatchNorms whose output is a current, not a population's input).
struct BatchNormRows : public torch::autograd::Function<BatchNormRows> {
    static variable_list forward(AutogradContext *ctx, const at::Tensor &y_in, const at::Tensor &weight,
                                 const at::Tensor &bias, double eps) {
        check_rows(y_in, weight, bias, "batchnorm");
        const at::Tensor y = y_in.contiguous();
        const int64_t rows = y.size(0), c = y.size(1);
        std::vector<at::Tensor> st;
        TORCH_CHECK(batch_affine(y, weight, bias, eps, st), NONFINITE);
        at::Tensor z = at::empty_like(y);
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "spiking_attn::batchnorm", [&] {
            const scalar_t *yp = y.data_ptr<scalar_t>(), *ap = st[2].data_ptr<scalar_t>(), *bp = st[3].data_ptr<scalar_t>();
            scalar_t *zp = z.data_ptr<scalar_t>();
            const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, c));
            at::parallel_for(0, rows, grain, [&](int64_t lo, int64_t hi) { normalise_rows(zp, yp, c, lo, hi, ap, bp); });
        });
        ctx->save_for_backward({y, weight, st[0], st[1]});
        ctx->saved_data["eps"] = eps;
        ctx->mark_non_differentiable({st[0], st[1]});
        return {z, st[0], st[1]};
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        TORCH_CHECK(!at::GradMode::is_enabled(),
                    "spiking_attn-second-order: the project's BatchNorm kernel gives first-order gradients only; "
                    "turn native_ops.set_fused_batchnorm off for a gradient of a gradient");
        const auto saved = ctx->get_saved_variables();
        const at::Tensor &y = saved[0];
        const int64_t rows = y.size(0), c = y.size(1);
        // (a gradient broadcast from a sum or a mean arrives with zero strides: one copy, then the fast loops)
        at::Tensor g = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(y);
        at::Tensor grad_y = at::empty_like(y), grad_w, grad_b;
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "spiking_attn::batchnorm_backward", [&] {
            const scalar_t *gp = g.data_ptr<scalar_t>(), *yp = y.data_ptr<scalar_t>();
            const scalar_t *mp = saved[2].data_ptr<scalar_t>();
            const int64_t chunks = (rows + STAT_ROWS - 1) / STAT_ROWS;
            std::vector<scalar_t> part1(chunks * c, 0), part2(chunks * c, 0);
            at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
                for (int64_t chunk = lo; chunk < hi; ++chunk)
                    gradient_sums_rows(gp, yp, mp, c, chunk * STAT_ROWS, std::min(rows, (chunk + 1) * STAT_ROWS),
                                       part1.data() + chunk * c, part2.data() + chunk * c);
            });
            std::vector<double> s1, s2;
            add_chunks(part1, chunks, c, s1);
            add_chunks(part2, chunks, c, s2);
            batchnorm_backward(ctx, gp, y, grad_y.data_ptr<scalar_t>(), saved[1], saved[2], saved[3],
                               ctx->saved_data["eps"].toDouble(), s1, s2, grad_w, grad_b);
        });
        return {grad_y, grad_w, grad_b, at::Tensor()};
    }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> batchnorm_lif(const at::Tensor &y, const at::Tensor &weight,
                                                             const at::Tensor &bias, int64_t steps, double eps,
                                                             const at::Tensor &dv, const at::Tensor &vth,
                                                             const at::Tensor &lif_bias, int64_t kind, double alpha,
                                                             bool detach_reset, double v_init) {
    auto out = BatchNormLIF::apply(y, weight, bias, steps, eps, dv, vth, lif_bias, kind, alpha, detach_reset, v_init);
    return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batchnorm(const at::Tensor &y, const at::Tensor &weight,
                                                         const at::Tensor &bias, double eps) {
    auto out = BatchNormRows::apply(y, weight, bias, eps);
    return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(spiking_attn, m) {
    m.def("batchnorm_lif(Tensor y, Tensor weight, Tensor bias, int steps, float eps, Tensor dv, Tensor vth, "
          "Tensor lif_bias, int kind, float alpha, bool detach_reset, float v_init) -> (Tensor, Tensor, Tensor)");
    m.def("batchnorm(Tensor y, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(spiking_attn, CompositeImplicitAutograd, m) {
    m.impl("batchnorm_lif", batchnorm_lif);
    m.impl("batchnorm", batchnorm);
}
