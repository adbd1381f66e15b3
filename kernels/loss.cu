// Loss kernels: every loss of src/ops/loss/cpu/ (the reference), forward and backward, in f32.
// Host side: src/ops/loss/cuda.rs.
//
// Layout: y, pred, grad are row-major [batch, classes]. One warp per row (ROWS_PER_BLOCK
// rows per block of 32*ROWS_PER_BLOCK threads, grid-stride over rows); each lane takes
// the classes lane, lane+32, ... so loads are coalesced, and a row of any length is handled
// in passes over global memory (the row stays in L1/L2 between passes) instead of being
// held in shared memory. Row sums use shuffle-xor butterflies: every lane ends with the
// same bits, and the order of the additions is fixed, so results do not depend on timing.
//
// Each row kernel writes, per row, up to three loss partial sums and a flag into `terms`
// (struct of arrays: terms[t*batch + row], t = 0..3; see loss_write_terms), then loss_reduce (one
// block) sums them in a fixed order (strided per-thread sums, shuffle tree, shared memory)
// and writes out[0] = the loss, out[1] = the flag (0: inputs fine). No atomics: the loss is
// bit-reproducible run to run.
//
// The formulas, their operation order and the numerically careful forms follow src/ops/loss/cpu/
// (read the comments there): clipping with TF clip_by_value gradient semantics, the fused
// stable softmax+focal from logits with `r = -log(p)/q`, and the softmax residual
// `p_j * (sum over c != j of v_c) - q_j * v_j` whose "sum over the others" is built from
// exclusive prefix and suffix scans (additions only, never `W - v_j`).
//
// `grad` may be null (loss only); when given it also serves as per-element scratch between
// passes (each element is only ever touched by the lane that owns it).

#include <float.h>
#include <limits.h>
#include <math.h>

#include "kernel_abi.cuh"  // ROWS_PER_BLOCK, LOSS_REDUCE_THREADS, LOSS_TERMS_PER_ROW
#include "sigmoid.cuh"     // ff_sigmoid

#define LOSS_FULL 0xffffffffu
#define LOSS_THREADS (32 * ROWS_PER_BLOCK)
static_assert(LOSS_TERMS_PER_ROW == 4, "loss_write_terms and loss_reduce handle four terms per row");

// Flags (terms[3*batch + row], combined with max over rows).
#define LOSS_FLAG_NONFINITE 1.0f  // a NaN/Inf in y or pred
#define LOSS_FLAG_ROWSUM 2.0f     // keras/ce on probabilities: a row sum not positive/finite

// The clip bounds as TF computes them in f32: the f64 values rounded to f32 (0.99999988).
#define LOSS_CLIP_LO ((float)1e-7)
#define LOSS_CLIP_HI ((float)(1.0 - 1e-7))

__device__ __forceinline__ float loss_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(LOSS_FULL, v, o);
    return v;
}

__device__ __forceinline__ float loss_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(LOSS_FULL, v, o));
    return v;
}

// Max of the row and the first index holding it (ties go to the lower index, as the
// reference's strict `>` scan). Symmetric combine, so every lane ends with the same pair.
__device__ __forceinline__ void loss_warp_argmax(float& best, int& idx) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(LOSS_FULL, best, o);
        const int oi = __shfl_xor_sync(LOSS_FULL, idx, o);
        if (ob > best || (ob == best && oi < idx)) {
            best = ob;
            idx = oi;
        }
    }
}

// Sum over the lanes strictly below this one (exclusive prefix scan of the warp).
__device__ __forceinline__ float loss_warp_exclusive_prefix(float v, int lane) {
    float x = __shfl_up_sync(LOSS_FULL, v, 1);
    if (lane == 0) x = 0.0f;
    for (int d = 1; d < 32; d <<= 1) {
        const float t = __shfl_up_sync(LOSS_FULL, x, d);
        if (lane >= d) x += t;
    }
    return x;
}

// Sum over the lanes strictly above this one (exclusive suffix scan of the warp).
__device__ __forceinline__ float loss_warp_exclusive_suffix(float v, int lane) {
    float x = __shfl_down_sync(LOSS_FULL, v, 1);
    if (lane == 31) x = 0.0f;
    for (int d = 1; d < 32; d <<= 1) {
        const float t = __shfl_down_sync(LOSS_FULL, x, d);
        if (lane + d < 32) x += t;
    }
    return x;
}

// Rust's f32::is_finite.
__device__ __forceinline__ bool loss_finite(float x) { return fabsf(x) <= FLT_MAX; }
// Rust's f32::signum for non-NaN x: +1 for +0, -1 for -0.
__device__ __forceinline__ float loss_signum(float x) { return copysignf(1.0f, x); }
__device__ __forceinline__ float loss_clamp(float x) {
    return x < LOSS_CLIP_LO ? LOSS_CLIP_LO : (x > LOSS_CLIP_HI ? LOSS_CLIP_HI : x);
}

// The focusing parameter of a row (src/loss.rs GammaBins): without a table `gamma_fixed`;
// with one (`bins - 1` ascending edges, then `bins` gammas) the gamma of the bin holding the
// true class's probability p_t: bin b has edges[b-1] <= p_t < edges[b].
__device__ __forceinline__ float loss_row_gamma(float gamma_fixed, const float* __restrict__ table, int bins,
                                                float p_t) {
    if (!table) return gamma_fixed;
    int b = 0;
    while (b < bins - 1 && table[b] <= p_t) ++b;
    return table[bins - 1 + b];
}

// The modulating base of a class of probability p (complement q): focal's 1 - p for
// gamma >= 0, AdaFocal's inverse focal 1 + p below zero (the exponent is |gamma|).
__device__ __forceinline__ float loss_mod_base(float gamma, float p, float q) { return gamma < 0.0f ? 1.0f + p : q; }

// The row's true class: the first largest label (one-hot: the 1), the same in every lane.
__device__ __forceinline__ int loss_true_class(const float* __restrict__ yr, int classes, int lane) {
    float best = -INFINITY;
    int idx = INT_MAX;
    for (int c = lane; c < classes; c += 32) {
        if (yr[c] > best) {
            best = yr[c];
            idx = c;
        }
    }
    loss_warp_argmax(best, idx);
    return idx == INT_MAX ? 0 : idx;
}

__device__ __forceinline__ void loss_write_terms(float* terms, int batch, int row, float t0, float t1, float t2,
                                                 float flag) {
    terms[row] = t0;
    terms[batch + row] = t1;
    terms[2 * batch + row] = t2;
    terms[3 * batch + row] = flag;
}

// ------------------------------------------------------------------------------------------
// focal on probabilities (the practitioner's loss):
//   p = clip(pred), sum_c -a_c y (1-p)^g ln p   (t0, mean over the batch in loss_reduce),
//   sum |p| (t1, times l1), sum p^2 (t2, times l2);
//   grad = 0 where pred lies strictly outside the clip bounds, else
//   -a y ((1-p)^g / p - g (1-p)^(g-1) ln p) / batch + l1 sign(p) + 2 l2 p.
// alpha: per-class weights, or null for the scalar alpha_scalar. g: loss_row_gamma of the
// row's clipped p_t (flsd-53, adafocal), or gamma_fixed for every row. A negative g is the
// inverse focal form: (1+p)^|g| in place of (1-p)^g, d/dp sign +1 (see loss_mod_base).
__global__ void __launch_bounds__(LOSS_THREADS)
    loss_focal_probs_rows(const float* __restrict__ y, const float* __restrict__ pred, const float* __restrict__ alpha,
                          float alpha_scalar, float gamma_fixed, const float* __restrict__ gamma_table, int gamma_bins,
                          float l1, float l2, float inv_batch, int batch, int classes, float* __restrict__ grad,
                          float* __restrict__ terms) {
    const int lane = threadIdx.x & 31;
    const float lo = LOSS_CLIP_LO, hi = LOSS_CLIP_HI;
    const float two_l2 = 2.0f * l2;
    for (int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); row < batch;
         row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t base = (size_t)row * classes;
        float signed_gamma = gamma_fixed;
        if (gamma_table) {
            const int t = loss_true_class(y + base, classes, lane);
            signed_gamma = loss_row_gamma(gamma_fixed, gamma_table, gamma_bins, loss_clamp(pred[base + t]));
        }
        const float gamma = fabsf(signed_gamma);
        const float slope = signed_gamma < 0.0f ? 1.0f : -1.0f;
        const float gm1 = gamma - 1.0f;
        float focal = 0.0f, abs_sum = 0.0f, sq_sum = 0.0f;
        bool bad = false;
        for (int c = lane; c < classes; c += 32) {
            const float x = pred[base + c], yy = y[base + c];
            bad |= !(loss_finite(x) && loss_finite(yy));
            const float a = alpha ? alpha[c] : alpha_scalar;
            const float p = loss_clamp(x);
            const float b = loss_mod_base(signed_gamma, p, 1.0f - p);
            const float ln_p = logf(p);
            const float bg = powf(b, gamma);
            focal += -a * yy * bg * ln_p;
            abs_sum += fabsf(p);
            sq_sum += p * p;
            if (grad) {
                float g = 0.0f;
                if (!(x < lo || x > hi)) {
                    const float d_focal = -a * yy * (bg / p + slope * gamma * powf(b, gm1) * ln_p);
                    g = d_focal * inv_batch + l1 * loss_signum(p) + two_l2 * p;
                }
                grad[base + c] = g;
            }
        }
        focal = loss_warp_sum(focal);
        abs_sum = loss_warp_sum(abs_sum);
        sq_sum = loss_warp_sum(sq_sum);
        const bool any_bad = __any_sync(LOSS_FULL, bad);
        if (lane == 0) loss_write_terms(terms, batch, row, focal, abs_sum, sq_sum, any_bad ? LOSS_FLAG_NONFINITE : 0.0f);
    }
}

// ------------------------------------------------------------------------------------------
// Fused stable softmax + focal from logits; with alpha 1, gamma 0, l1 = l2 = 0 and smoothed
// labels it is exactly `ce` from logits, and with alpha 1 and a per-row gamma `flsd-53` and
// `adafocal`, which this kernel also serves. A negative gamma (inverse focal) uses b = 1 + p:
// value -a y b^|g| logp, w = a y b^|g| (1 + |g| p logp / b).
//
// Per row (see src/ops/loss/cpu/focal.rs focal_logits): m = max z (first argmax `arg`),
// s = sum_{c != arg} exp(z_c - m), logp_c = (z_c - m) - log1p(s), p = exp(logp),
// q = -expm1(logp); r = -logp/q (series 1 + q/2 + q^2/3 + q^3/4 below 1e-4);
// w_c = a_c y_c q^g (1 + g p r); loss t0 = sum -a y q^g logp, t1 = sum|p|, t2 = sum p^2;
// grad_j = p_j (gl_j - sum_c p_c gl_c) + (p_j * others_j - q_j w_j) / batch, with
// gl = l1 sign(p) + 2 l2 p and others_j = sum over c != j of w_c.
// Labels are smoothed as y*keep + add (keep 1, add 0: unchanged).

struct LossSoftmaxRow {
    float m, lse;
};

__device__ __forceinline__ void loss_log_softmax_at(float z, LossSoftmaxRow r, float& logp, float& p, float& q) {
    logp = (z - r.m) - r.lse;
    p = expf(logp);
    q = -expm1f(logp);
}

// A row's softmax statistics, the same in every lane: m = max z (first argmax `arg`) and the
// log-sum-exp without the dominant class, log1p(sum_{c != arg} exp(z_c - m)); `bad` is set
// when the row's logits or labels hold a NaN or an infinity.
__device__ __forceinline__ LossSoftmaxRow loss_softmax_row(const float* __restrict__ z, const float* __restrict__ yr,
                                                          int classes, int lane, bool& bad) {
    float best = -INFINITY;
    int arg = INT_MAX;
    bool b = false;
    for (int c = lane; c < classes; c += 32) {
        const float zc = z[c];
        b |= !(loss_finite(zc) && loss_finite(yr[c]));
        if (zc > best) {
            best = zc;
            arg = c;
        }
    }
    loss_warp_argmax(best, arg);
    bad = __any_sync(LOSS_FULL, b);
    float s = 0.0f;
    for (int c = lane; c < classes; c += 32)
        if (c != arg) s += expf(z[c] - best);
    return LossSoftmaxRow{best, log1pf(loss_warp_sum(s))};
}

// w of one class for the signed gamma `gamma`; qg receives the modulating factor b^|gamma|.
__device__ __forceinline__ float loss_focal_weight(float a, float yy, float gamma, float logp, float p, float q,
                                                   float& qg) {
    if (gamma < 0.0f) {
        const float b = 1.0f + p, g = -gamma;
        qg = powf(b, g);
        return a * yy * qg * (1.0f + g * p * logp / b);
    }
    qg = powf(q, gamma);
    const float r = q < 1e-4f ? 1.0f + q * (0.5f + q * ((float)(1.0 / 3.0) + q * 0.25f)) : -logp / q;
    return a * yy * qg * (1.0f + gamma * p * r);
}

__global__ void __launch_bounds__(LOSS_THREADS)
    loss_softmax_focal_rows(const float* __restrict__ y, const float* __restrict__ logits,
                            const float* __restrict__ alpha, float alpha_scalar, float gamma_fixed,
                            const float* __restrict__ gamma_table, int gamma_bins, float l1, float l2, float keep,
                            float add, float inv_batch, int batch, int classes, float* __restrict__ grad,
                            float* __restrict__ terms) {
    const int lane = threadIdx.x & 31;
    const float two_l2 = 2.0f * l2;
    const int tiles = (classes + 31) / 32;
    for (int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); row < batch;
         row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t base = (size_t)row * classes;
        const float* z = logits + base;
        const float* yr = y + base;
        // Passes 1-2: finiteness, the first argmax, the log-sum-exp.
        bool any_bad;
        const LossSoftmaxRow sm = loss_softmax_row(z, yr, classes, lane, any_bad);
        float gamma = gamma_fixed;
        if (gamma_table) {
            float logp_t, p_t, q_t;
            loss_log_softmax_at(z[loss_true_class(yr, classes, lane)], sm, logp_t, p_t, q_t);
            gamma = loss_row_gamma(gamma_fixed, gamma_table, gamma_bins, p_t);
        }
        // Pass 3: loss terms and the dot product of the L1/L2 gradient with p.
        float focal = 0.0f, abs_sum = 0.0f, sq_sum = 0.0f, dot = 0.0f;
        for (int c = lane; c < classes; c += 32) {
            float logp, p, q;
            loss_log_softmax_at(z[c], sm, logp, p, q);
            const float a = alpha ? alpha[c] : alpha_scalar;
            const float yy = yr[c] * keep + add;
            const float qg = powf(loss_mod_base(gamma, p, q), fabsf(gamma));
            focal += -a * yy * qg * logp;
            abs_sum += fabsf(p);
            sq_sum += p * p;
            dot += p * (l1 * loss_signum(p) + two_l2 * p);
        }
        focal = loss_warp_sum(focal);
        abs_sum = loss_warp_sum(abs_sum);
        sq_sum = loss_warp_sum(sq_sum);
        dot = loss_warp_sum(dot);
        if (lane == 0) loss_write_terms(terms, batch, row, focal, abs_sum, sq_sum, any_bad ? LOSS_FLAG_NONFINITE : 0.0f);
        if (!grad) continue;
        float* g = grad + base;
        // Pass 4a, right to left: sum of w over the classes after c, parked in g[c].
        float carry = 0.0f;
        for (int t = tiles - 1; t >= 0; --t) {
            const int c = t * 32 + lane;
            float w = 0.0f;
            if (c < classes) {
                float logp, p, q, qg;
                loss_log_softmax_at(z[c], sm, logp, p, q);
                const float a = alpha ? alpha[c] : alpha_scalar;
                w = loss_focal_weight(a, yr[c] * keep + add, gamma, logp, p, q, qg);
            }
            const float after = loss_warp_exclusive_suffix(w, lane);
            if (c < classes) g[c] = after + carry;
            carry += __shfl_sync(LOSS_FULL, after + w, 0);
        }
        // Pass 4b, left to right: sum of w over the classes before c; the gradient.
        carry = 0.0f;
        for (int t = 0; t < tiles; ++t) {
            const int c = t * 32 + lane;
            float w = 0.0f, logp = 0.0f, p = 0.0f, q = 0.0f;
            if (c < classes) {
                float qg;
                loss_log_softmax_at(z[c], sm, logp, p, q);
                const float a = alpha ? alpha[c] : alpha_scalar;
                w = loss_focal_weight(a, yr[c] * keep + add, gamma, logp, p, q, qg);
            }
            const float before = loss_warp_exclusive_prefix(w, lane);
            if (c < classes) {
                const float others = (carry + before) + g[c];
                const float gl = l1 * loss_signum(p) + two_l2 * p;
                g[c] = p * (gl - dot) + (p * others - q * w) * inv_batch;
            }
            carry += __shfl_sync(LOSS_FULL, before + w, 31);
        }
    }
}

// ------------------------------------------------------------------------------------------
// dual-focal (src/ops/loss/cpu/focal.rs dual_focal): per row, k the true class, p_k its probability
// (clipped pred, or the stable softmax from logits), j the class of the largest p_j < p_k
// (first on a tie; none: p_j = 0), u = q_k + p_j, t0 = -u^g log p_k (mean in loss_reduce);
// A = g u^(g-1) log p_k, computed as g u^g (log p_k / u) (0 where u = 0). Gradient from probabilities: A - u^g/p_k at k, -A at
// j, 0 elsewhere and where pred is clipped; from logits: p_c (u^g - A p_k + A p_j) - [c=j] A p_j,
// at k the equal A p_k u - q_k u^g. Divided by the batch.
__global__ void __launch_bounds__(LOSS_THREADS)
    loss_dual_focal_rows(const float* __restrict__ y, const float* __restrict__ pred, float gamma, int from_logits,
                         float inv_batch, int batch, int classes, float* __restrict__ grad,
                         float* __restrict__ terms) {
    const int lane = threadIdx.x & 31;
    for (int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); row < batch;
         row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t base = (size_t)row * classes;
        const float* x = pred + base;
        const float* yr = y + base;
        // The statistics are computed on probabilities too (for the finiteness check), used
        // only from logits.
        bool any_bad;
        const LossSoftmaxRow sm = loss_softmax_row(x, yr, classes, lane, any_bad);
        // The probability of class c as the reference computes it.
        auto prob = [&](int c) {
            if (!from_logits) return loss_clamp(x[c]);
            float logp, p, q;
            loss_log_softmax_at(x[c], sm, logp, p, q);
            return p;
        };
        const int k = loss_true_class(yr, classes, lane);
        float p_k, logp_k, q_k;
        if (from_logits) {
            loss_log_softmax_at(x[k], sm, logp_k, p_k, q_k);
        } else {
            p_k = loss_clamp(x[k]);
            logp_k = logf(p_k);
            q_k = 1.0f - p_k;
        }
        // The largest probability strictly below p_k, and its class (INT_MAX: none).
        float p_j = -INFINITY;
        int j = INT_MAX;
        for (int c = lane; c < classes; c += 32) {
            const float p = prob(c);
            if (p < p_k && p > p_j) {
                p_j = p;
                j = c;
            }
        }
        loss_warp_argmax(p_j, j);
        if (j == INT_MAX) p_j = 0.0f;
        const float u = q_k + p_j;
        const float ug = powf(u, gamma);
        if (lane == 0) loss_write_terms(terms, batch, row, -ug * logp_k, 0.0f, 0.0f, any_bad ? LOSS_FLAG_NONFINITE : 0.0f);
        if (!grad) continue;
        // g u^g (log p_k / u): every factor bounded (see the CPU reference).
        const float a = u > 0.0f ? gamma * ug * (logp_k / u) : 0.0f;
        for (int c = lane; c < classes; c += 32) {
            float d;
            if (from_logits) {
                d = c == k ? a * p_k * u - q_k * ug : prob(c) * (ug - a * p_k + a * p_j) - (c == j ? a * p_j : 0.0f);
            } else if (x[c] < LOSS_CLIP_LO || x[c] > LOSS_CLIP_HI) {
                d = 0.0f;
            } else {
                d = c == k ? a - ug / p_k : (c == j ? -a : 0.0f);
            }
            grad[base + c] = d * inv_batch;
        }
    }
}

// ------------------------------------------------------------------------------------------
// sigmoid-focal (src/ops/loss/cpu/sigmoid.rs sigmoid_focal): per element, with q = 1 - p, m = p (1-y) + q y
// and ce the binary cross-entropy, value a_t ce m^g (t0, times inv_n = 1/(batch*classes) in
// loss_reduce); a_t = a y + (1-a)(1-y), or 1 where a < 0. From probabilities (clipped):
// grad a_t (ce' m^g + g ce m^(g-1) (1-2y)) inv_n with ce' = -y/p + (1-y)/q (0 where pred is
// clipped); from logits p = sigmoid(z), q = sigmoid(-z), ce = y softplus(-z) + (1-y) softplus(z):
// grad a_t m^g ((p (1-y) - q y) + g ce (1-2y) p q / m) inv_n, the second term 0 where m = 0.

// ln(1 + e^x) = max(x, 0) + log1p(e^-|x|).
__device__ __forceinline__ float loss_softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

__global__ void __launch_bounds__(LOSS_THREADS)
    loss_sigmoid_focal_rows(const float* __restrict__ y, const float* __restrict__ pred,
                            const float* __restrict__ alpha, float alpha_scalar, float gamma, int from_logits,
                            float inv_n, int batch, int classes, float* __restrict__ grad,
                            float* __restrict__ terms) {
    const int lane = threadIdx.x & 31;
    for (int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); row < batch;
         row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t base = (size_t)row * classes;
        float total = 0.0f;
        bool bad = false;
        for (int c = lane; c < classes; c += 32) {
            const float x = pred[base + c], yy = y[base + c];
            bad |= !(loss_finite(x) && loss_finite(yy));
            const float a = alpha ? alpha[c] : alpha_scalar;
            const float a_t = a < 0.0f ? 1.0f : a * yy + (1.0f - a) * (1.0f - yy);
            const float not_y = 1.0f - yy;
            float p, q, ce;
            if (from_logits) {
                p = ff_sigmoid(x);
                q = ff_sigmoid(-x);
                ce = yy * loss_softplus(-x) + not_y * loss_softplus(x);
            } else {
                p = loss_clamp(x);
                q = 1.0f - p;
                ce = -(yy * logf(p) + not_y * logf(q));
            }
            const float m = p * not_y + q * yy;
            const float mg = powf(m, gamma);
            total += a_t * ce * mg;
            if (!grad) continue;
            const float two_y = 1.0f - yy - yy;
            float g;
            if (from_logits) {
                const float focus = m > 0.0f ? gamma * ce * two_y * (p * q / m) : 0.0f;
                g = a_t * mg * ((p * not_y - q * yy) + focus);
            } else if (x < LOSS_CLIP_LO || x > LOSS_CLIP_HI) {
                g = 0.0f;
            } else {
                const float dce = -yy / p + not_y / q;
                g = a_t * (dce * mg + gamma * ce * powf(m, gamma - 1.0f) * two_y);
            }
            grad[base + c] = g * inv_n;
        }
        total = loss_warp_sum(total);
        const bool any_bad = __any_sync(LOSS_FULL, bad);
        if (lane == 0) loss_write_terms(terms, batch, row, total, 0.0f, 0.0f, any_bad ? LOSS_FLAG_NONFINITE : 0.0f);
    }
}

// ------------------------------------------------------------------------------------------
// calibrated-mse: mean((y-p)^2) + facture * mean((0.5-p)^2) over all entries; p = pred, or
// softmax(pred) (exp(z - max) / sum) with from_logits. t0 = sum (y-p)^2, t1 = sum (0.5-p)^2;
// grad = (2 (p-y) + facture*2 (p-0.5)) / n, chained through the softmax from logits.
__global__ void __launch_bounds__(LOSS_THREADS)
    loss_calibrated_mse_rows(const float* __restrict__ y, const float* __restrict__ pred, float facture, float n,
                             int from_logits, int batch, int classes, float* __restrict__ grad,
                             float* __restrict__ terms) {
    const int lane = threadIdx.x & 31;
    const float two_facture = facture * 2.0f;
    for (int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); row < batch;
         row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t base = (size_t)row * classes;
        const float* x = pred + base;
        const float* yr = y + base;
        float m = -INFINITY;
        bool bad = false;
        for (int c = lane; c < classes; c += 32) {
            bad |= !(loss_finite(x[c]) && loss_finite(yr[c]));
            m = fmaxf(m, x[c]);
        }
        const bool any_bad = __any_sync(LOSS_FULL, bad);
        float esum = 1.0f;
        if (from_logits) {
            m = loss_warp_max(m);
            esum = 0.0f;
            for (int c = lane; c < classes; c += 32) esum += expf(x[c] - m);
            esum = loss_warp_sum(esum);
        }
        float fit = 0.0f, calib = 0.0f, dot = 0.0f;
        for (int c = lane; c < classes; c += 32) {
            const float p = from_logits ? expf(x[c] - m) / esum : x[c];
            const float yy = yr[c];
            fit += (yy - p) * (yy - p);
            calib += (0.5f - p) * (0.5f - p);
            if (grad) {
                const float gc = (2.0f * (p - yy) + two_facture * (p - 0.5f)) / n;
                dot += p * gc;
                grad[base + c] = gc;
            }
        }
        fit = loss_warp_sum(fit);
        calib = loss_warp_sum(calib);
        if (lane == 0) loss_write_terms(terms, batch, row, fit, calib, 0.0f, any_bad ? LOSS_FLAG_NONFINITE : 0.0f);
        if (grad && from_logits) {
            dot = loss_warp_sum(dot);
            for (int c = lane; c < classes; c += 32) {
                const float p = expf(x[c] - m) / esum;
                grad[base + c] = p * (grad[base + c] - dot);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The Keras probability path (keras-focal with focal = 1, ce on probabilities with focal = 0;
// keras-focal from logits with from_logits = 1, through a plain softmax first):
// y' = y*keep + add; s = sum p; o = p/s; oc = clip(o);
// ce:    value -y' ln oc,                 d = -y'/oc
// focal: value (1-oc)^g a (-y' ln oc),    d = a (-g (1-oc)^(g-1) (-y' ln oc) + (1-oc)^g (-y'/oc))
// dout = 0 where o lies strictly outside the clip bounds, else d; t0 = sum of the values;
// grad_j = (dout_j - sum_c dout_c o_c) / s / batch, chained through the softmax from logits.
// A row whose sum is not positive and finite sets LOSS_FLAG_ROWSUM (the host reports it).
__global__ void __launch_bounds__(LOSS_THREADS)
    loss_keras_rows(const float* __restrict__ y, const float* __restrict__ pred, const float* __restrict__ alpha,
                    float alpha_scalar, float gamma, float keep, float add, int focal, int from_logits,
                    float inv_batch, int batch, int classes, float* __restrict__ grad, float* __restrict__ terms) {
    const int lane = threadIdx.x & 31;
    const float lo = LOSS_CLIP_LO, hi = LOSS_CLIP_HI;
    const float gm1 = gamma - 1.0f;
    for (int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); row < batch;
         row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t base = (size_t)row * classes;
        const float* x = pred + base;
        const float* yr = y + base;
        float m = -INFINITY;
        bool bad = false;
        for (int c = lane; c < classes; c += 32) {
            bad |= !(loss_finite(x[c]) && loss_finite(yr[c]));
            m = fmaxf(m, x[c]);
        }
        const bool any_bad = __any_sync(LOSS_FULL, bad);
        float esum = 1.0f;
        if (from_logits) {
            m = loss_warp_max(m);
            esum = 0.0f;
            for (int c = lane; c < classes; c += 32) esum += expf(x[c] - m);
            esum = loss_warp_sum(esum);
        }
        float s = 0.0f;
        for (int c = lane; c < classes; c += 32) s += from_logits ? expf(x[c] - m) / esum : x[c];
        s = loss_warp_sum(s);
        const bool row_ok = s > 0.0f && loss_finite(s);
        float total = 0.0f, dot = 0.0f;
        for (int c = lane; c < classes; c += 32) {
            const float p = from_logits ? expf(x[c] - m) / esum : x[c];
            const float o = p / s;
            const float oc = loss_clamp(o);
            const float yy = yr[c] * keep + add;
            float value, d;
            if (focal) {
                const float a = alpha ? alpha[c] : alpha_scalar;
                const float q = 1.0f - oc;
                const float cce = -yy * logf(oc);
                const float qg = powf(q, gamma);
                value = qg * a * cce;
                d = a * (-gamma * powf(q, gm1) * cce + qg * (-yy / oc));
            } else {
                value = -yy * logf(oc);
                d = -yy / oc;
            }
            total += value;
            const float dout = (o < lo || o > hi) ? 0.0f : d;
            dot += dout * o;
            if (grad) grad[base + c] = dout;
        }
        total = loss_warp_sum(total);
        float flag = any_bad ? LOSS_FLAG_NONFINITE : 0.0f;
        if (!row_ok) flag = fmaxf(flag, LOSS_FLAG_ROWSUM);
        if (lane == 0) loss_write_terms(terms, batch, row, total, 0.0f, 0.0f, flag);
        if (!grad) continue;
        dot = loss_warp_sum(dot);
        float dot2 = 0.0f;
        for (int c = lane; c < classes; c += 32) {
            const float gc = (grad[base + c] - dot) / s * inv_batch;
            if (from_logits) dot2 += (expf(x[c] - m) / esum) * gc;
            grad[base + c] = gc;
        }
        if (from_logits) {
            dot2 = loss_warp_sum(dot2);
            for (int c = lane; c < classes; c += 32) {
                const float p = expf(x[c] - m) / esum;
                grad[base + c] = p * (grad[base + c] - dot2);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The batch loss from the row partials: S_t = sum over rows of terms[t*batch + row], in a
// fixed order (thread i sums rows i, i+256, ..., then a shuffle tree per warp and the first
// warp over the warps' sums). mode 0: loss = S0*c0 + c1*S1 + c2*S2 (focal: c0 = 1/batch,
// c1 = l1, c2 = l2; keras/ce: c1 = c2 = 0); mode 1: loss = S0/c0 + c1*(S1/c0) (calibrated-mse:
// c0 = batch*classes, c1 = facture). out[0] = loss, out[1] = max of the row flags.
// One block of LOSS_REDUCE_THREADS threads.
__global__ void __launch_bounds__(LOSS_REDUCE_THREADS)
    loss_reduce(const float* __restrict__ terms, int batch, int mode, float c0, float c1, float c2,
                float* __restrict__ out) {
    __shared__ float partial[LOSS_REDUCE_THREADS / 32][4];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, flag = 0.0f;
    for (int i = threadIdx.x; i < batch; i += LOSS_REDUCE_THREADS) {
        s0 += terms[i];
        s1 += terms[batch + i];
        s2 += terms[2 * batch + i];
        flag = fmaxf(flag, terms[3 * batch + i]);
    }
    s0 = loss_warp_sum(s0);
    s1 = loss_warp_sum(s1);
    s2 = loss_warp_sum(s2);
    flag = loss_warp_max(flag);
    if (lane == 0) {
        partial[warp][0] = s0;
        partial[warp][1] = s1;
        partial[warp][2] = s2;
        partial[warp][3] = flag;
    }
    __syncthreads();
    if (warp == 0) {
        const bool have = lane < LOSS_REDUCE_THREADS / 32;
        s0 = loss_warp_sum(have ? partial[lane][0] : 0.0f);
        s1 = loss_warp_sum(have ? partial[lane][1] : 0.0f);
        s2 = loss_warp_sum(have ? partial[lane][2] : 0.0f);
        flag = loss_warp_max(have ? partial[lane][3] : 0.0f);
        if (lane == 0) {
            out[0] = mode == 1 ? s0 / c0 + c1 * (s1 / c0) : s0 * c0 + c1 * s1 + c2 * s2;
            out[1] = flag;
        }
    }
}
