/* Fused CUBA-LIF forward and backward over a [T, n] sequence: the compiled engine of neuron.py.
 *
 * The equations are those of `lif_step` in neuron.py, evaluated in the same order with the same
 * roundings (the file is compiled without FP contraction), so the spikes equal the reference's bit for
 * bit. The body lives in lif_kernel_body.h and is instantiated here twice: for float (suffix _f32) and
 * for double (suffix _f64).
 *
 * Every parameter and modulation tensor reaches the kernel as an `operand`: column c of step t reads
 * data[t * tstride + ((c / div) % mod) * mod2 + (c / div2) % mod2]. A scalar has mod = mod2 = 1; a
 * per-channel tensor over [B, N, D] has div = 1, mod = D; a per-sample one has div = N*D, mod = B; one
 * per sample and channel ([B, 1, D]) uses both runs: div = N*D, mod = B, div2 = 1, mod2 = D; a full
 * tensor has div = 1, mod = n. The Python side (lif_kernel.py) derives the descriptor from the
 * tensor's shape (and expands the rare shapes two runs cannot describe), so every broadcastable shape
 * runs here.
 *
 * Each call handles the neuron columns [lo, hi) for all T steps. Python splits the columns across
 * threads; ctypes releases the GIL.
 * The forward pass writes only the spikes (and, on request, the membrane and the surrogate argument).
 * The backward pass re-runs the forward dynamics of a few columns into a small local buffer and then
 * walks back through time.
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

typedef struct {
    const void *data;    /* REAL values; NULL if the operand is absent */
    int64_t tstride;     /* elements between time steps; 0: constant in time */
    int64_t div, mod;    /* column c reads data[t * tstride + ((c / div) % mod) * mod2 + (c / div2) % mod2] */
    int64_t div2, mod2;  /* a second run of dimensions (per sample and channel, say); 1, 1 if none */
} operand_t;

/* Operand slots, in the order lif_kernel.py passes them. */
enum { OP_DU, OP_DV, OP_VTH, OP_BIAS, OP_THETA_DECAY, OP_THETA_STEP, OP_GAIN, OP_SHIFT, N_OPS };

/* Feature flags. */
/* F_ACC_GAIN / F_ACC_SHIFT: the per-step gradient of the gain / shift is summed in the operand's own
 * layout (allowed when no other thread's columns read the same elements) instead of one value per
 * step and column. */
/* F_SUBTRACT: reset by subtraction (v = h - thr after a spike) instead of to zero. */
enum { F_DECAY_U = 1, F_ADAPTIVE = 2, F_GAIN = 4, F_SHIFT = 8, F_DETACH = 16, F_PARAMS = 32, F_ACC_GAIN = 64,
       F_ACC_SHIFT = 128, F_SUBTRACT = 256 };

/* Surrogates the kernel evaluates itself; SG_TABLE reads precomputed values (any surrogate object). */
enum { SG_ATAN = 0, SG_SIGMOID = 1, SG_FAST_SIGMOID = 2, SG_TABLE = 3 };

#define REAL float
#define MASKINT int32_t
#define SFX(name) name##_f32
#define EXPR expf
#include "lif_kernel_body.h"
#undef REAL
#undef MASKINT
#undef SFX
#undef EXPR

#define REAL double
#define MASKINT int64_t
#define SFX(name) name##_f64
#define EXPR exp
#include "lif_kernel_body.h"
#undef REAL
#undef MASKINT
#undef SFX
#undef EXPR
