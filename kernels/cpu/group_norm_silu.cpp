// GroupNorm (+ SiLU) on the CPU, forward and backward fused (reference/unet.py's
// group_norm_silu and group_norm_silu_backward define every number here).
//
//   h = x + shift[n, c];  x_hat = (h - mean_g) rstd_g;  z = w_c x_hat + b_c;  y = silu(z) or z
//
// One task per (sample, group), spread over torch's own OpenMP workers (the library links the
// libgomp.so.1 torch loaded: see build.py). x is NCHW-contiguous float32, so a group is one
// contiguous block of (C / G) * S values, and a task reads it from cache after its first pass;
// channels_last x (NHWC) is one task per sample: on AVX2 with C a multiple of 8, 8 channels per
// vector in place; otherwise transposed to NCHW in a scratch block and back.
//
// Accuracy (why not ATen's group_norm): the statistics are float64 sums of the float32 h, the
// variance is the second, centred pass (no E[h^2] - E[h]^2 cancellation), and h - mean is taken in
// float64 before rstd multiplies it, so a group of nearly equal values (rstd ~ 1/sqrt(eps)) keeps
// the reference's x_hat. The backward subtracts before it multiplies by rstd, as the reference:
//   dz = dy silu'(z),  dx_hat = w dz,  dx = rstd (dx_hat - mean_g(dx_hat) - x_hat mean_g(dx_hat x_hat))
// with float64 group and channel sums. dweight, dbias are summed over samples in a fixed order
// after the parallel loop: the result does not depend on the thread count.
//
// Built with -ffp-contract=off: in a group of one value dx = rstd (w dz - mean(w dz)) must cancel
// to 0 exactly, so w dz must round as the mean's product does (no fused multiply-add).
//
// Two instruction sets chosen at run time, as philox.cpp: AVX2+FMA (8 floats per vector, exp8 for
// the SiLU) and plain C++ (std::exp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#define DDPM_X86 1
#else
#define DDPM_X86 0
#endif

namespace {

struct Group {  // one (sample, group) task's view
    const float* x;      // its first value; channel k of the group starts at x + k * S
    const float* shift;  // its C / G shift values, or nullptr
    const float* weight; // its C / G weights, or nullptr
    const float* bias;   // its C / G biases, or nullptr
    int64_t channels, S;
    double mean, rstd;
};

inline float param(const float* p, int64_t k, float otherwise) { return p ? p[k] : otherwise; }

inline float silu_scalar(float z) { return z / (1.0f + std::exp(-z)); }

// d silu / dz = s (1 + z (1 - s)), s = sigmoid(z)
inline float silu_grad_scalar(float z) {
    const float s = 1.0f / (1.0f + std::exp(-z));
    return s * (1.0f + z * (1.0f - s));
}

// h = x + shift in float64, as the reference adds them (float32 would round h to ulp(|h|))
inline double h_of(float x, float shift) { return (double)x + (double)shift; }

inline float x_hat_scalar(double h, double mean, double rstd) { return (float)((h - mean) * rstd); }

// ---- plain C++ ------------------------------------------------------------------------------------
void stats_scalar(Group& g, double eps) {
    double sum = 0.0;
    for (int64_t k = 0; k < g.channels; ++k) {
        const float sh = param(g.shift, k, 0.0f);
        const float* row = g.x + k * g.S;
        for (int64_t s = 0; s < g.S; ++s) sum += h_of(row[s], sh);
    }
    const double count = (double)(g.channels * g.S);
    g.mean = sum / count;
    double centred = 0.0;
    for (int64_t k = 0; k < g.channels; ++k) {
        const float sh = param(g.shift, k, 0.0f);
        const float* row = g.x + k * g.S;
        for (int64_t s = 0; s < g.S; ++s) {
            const double d = h_of(row[s], sh) - g.mean;
            centred += d * d;
        }
    }
    g.rstd = 1.0 / std::sqrt(centred / count + eps);
}

void normalise_scalar(const Group& g, int64_t k, int64_t from, bool activation, float* y) {
    const float sh = param(g.shift, k, 0.0f), w = param(g.weight, k, 1.0f), b = param(g.bias, k, 0.0f);
    const float* row = g.x + k * g.S;
    for (int64_t s = from; s < g.S; ++s) {
        const float z = x_hat_scalar(h_of(row[s], sh), g.mean, g.rstd) * w + b;
        y[s] = activation ? silu_scalar(z) : z;
    }
}

// dz into out[from..S); returns the float64 sums of dz and dz x_hat into sums[0], sums[1]
void dz_scalar(const Group& g, int64_t k, int64_t from, bool activation, const float* dy, float* out,
               double* sums) {
    const float sh = param(g.shift, k, 0.0f), w = param(g.weight, k, 1.0f), b = param(g.bias, k, 0.0f);
    const float* row = g.x + k * g.S;
    for (int64_t s = from; s < g.S; ++s) {
        const float x_hat = x_hat_scalar(h_of(row[s], sh), g.mean, g.rstd);
        const float dz = activation ? dy[s] * silu_grad_scalar(x_hat * w + b) : dy[s];
        out[s] = dz;
        sums[0] += (double)dz;
        sums[1] += (double)dz * (double)x_hat;
    }
}

// dx = rstd (w dz - m1 - x_hat m2) in place over dz; returns the float64 sum of dx
double dx_scalar(const Group& g, int64_t k, int64_t from, float m1, float m2, float* dz) {
    const float sh = param(g.shift, k, 0.0f), w = param(g.weight, k, 1.0f), rstd = (float)g.rstd;
    const float* row = g.x + k * g.S;
    double sum = 0.0;
    for (int64_t s = from; s < g.S; ++s) {
        const float x_hat = x_hat_scalar(h_of(row[s], sh), g.mean, g.rstd);
        const float dx = rstd * (w * dz[s] - m1 - x_hat * m2);
        dz[s] = dx;
        sum += (double)dx;
    }
    return sum;
}

#if DDPM_X86
// ---- AVX2 + FMA -----------------------------------------------------------------------------------
#define DDPM_AVX2 __attribute__((target("avx2,fma")))

DDPM_AVX2 inline float hsum(__m256 v) {
    const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}

// The vector passes stay in float32 (float64 lanes are half as wide) without rounding h = x + shift:
// each row's sum is S (x0 + shift) + sum(x - x0) about its first value x0 (x - x0 is exact for
// nearly equal values, so the float32 sum's error scales with the spread, not with |mean|), and
// h - mean = (x - c_hi) - c_lo with c = mean - shift split into two floats, so x_hat keeps ~2 ulp
// where rstd ~ 1/sqrt(eps) magnifies h - mean.
struct Centre {
    __m256 hi, lo, rstd;
};

DDPM_AVX2 inline Centre centre(const Group& g, int64_t k) {
    const double c = g.mean - (double)param(g.shift, k, 0.0f);
    const float hi = (float)c;
    return Centre{_mm256_set1_ps(hi), _mm256_set1_ps((float)(c - (double)hi)), _mm256_set1_ps((float)g.rstd)};
}

DDPM_AVX2 inline __m256 x_hat8(__m256 x, const Centre& c) {
    return _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(x, c.hi), c.lo), c.rstd);
}

// exp(x) for 8 floats: Cephes' expf (the avx_mathfun form), x = n ln2 + r with ln2 split in two
// so that r is exact, then a degree-7 polynomial in r; within ~1 ulp over [-87.3, 88.7] (x is
// clamped to it, where sigmoid is 0 or 1 in float32 anyway). About 1.3x cheaper here than SLEEF's
// 1-ulp variant (the SiLU's exp is most of the fused forward), and no link to libtorch_cpu.
DDPM_AVX2 inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // times 2**n: n + 127 in the exponent field (n in [-126, 128]; 128 only at the clamp's edge,
    // where p < 1 keeps the product finite once split as 2**(n-1) * 2)
    const __m256i half = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
    return _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(half)), _mm256_set1_ps(2.0f));
}

DDPM_AVX2 inline __m256 sigmoid8(__m256 z) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), z))));
}

DDPM_AVX2 void stats_avx2(Group& g, double eps) {
    const int64_t body = g.S & ~int64_t(7);
    double total = 0.0;
    for (int64_t k = 0; k < g.channels; ++k) {
        const float* row = g.x + k * g.S;
        const __m256 x0 = _mm256_set1_ps(row[0]);
        __m256 acc = _mm256_setzero_ps();
        for (int64_t s = 0; s < body; s += 8) acc = _mm256_add_ps(acc, _mm256_sub_ps(_mm256_loadu_ps(row + s), x0));
        double row_sum = (double)hsum(acc);
        for (int64_t s = body; s < g.S; ++s) row_sum += (double)row[s] - (double)row[0];
        total += row_sum + (double)g.S * h_of(row[0], param(g.shift, k, 0.0f));
    }
    const double count = (double)(g.channels * g.S);
    g.mean = total / count;
    g.rstd = 1.0;  // centre(): x - mean unscaled
    double centred = 0.0;
    for (int64_t k = 0; k < g.channels; ++k) {
        const Centre c = centre(g, k);
        const float sh = param(g.shift, k, 0.0f);
        const float* row = g.x + k * g.S;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t s = 0; s < body; s += 8) {
            const __m256 d = x_hat8(_mm256_loadu_ps(row + s), c);
            acc = _mm256_fmadd_ps(d, d, acc);
        }
        double row_sum = (double)hsum(acc);
        for (int64_t s = body; s < g.S; ++s) {
            const double d = h_of(row[s], sh) - g.mean;
            row_sum += d * d;
        }
        centred += row_sum;
    }
    g.rstd = 1.0 / std::sqrt(centred / count + eps);
}

DDPM_AVX2 void normalise_avx2(const Group& g, int64_t k, bool activation, float* y) {
    const __m256 w = _mm256_set1_ps(param(g.weight, k, 1.0f)),
                 b = _mm256_set1_ps(param(g.bias, k, 0.0f));
    const Centre c = centre(g, k);
    const float* row = g.x + k * g.S;
    const int64_t body = g.S & ~int64_t(7);
    for (int64_t s = 0; s < body; s += 8) {
        const __m256 x_hat = x_hat8(_mm256_loadu_ps(row + s), c);
        const __m256 z = _mm256_add_ps(_mm256_mul_ps(x_hat, w), b);
        _mm256_storeu_ps(y + s, activation ? _mm256_mul_ps(z, sigmoid8(z)) : z);
    }
    normalise_scalar(g, k, body, activation, y);
}

DDPM_AVX2 void dz_avx2(const Group& g, int64_t k, bool activation, const float* dy, float* out, double* sums) {
    const __m256 w = _mm256_set1_ps(param(g.weight, k, 1.0f)),
                 b = _mm256_set1_ps(param(g.bias, k, 0.0f)), one = _mm256_set1_ps(1.0f);
    const Centre c = centre(g, k);
    __m256 dz_sum = _mm256_setzero_ps(), dz_x_hat_sum = _mm256_setzero_ps();
    const float* row = g.x + k * g.S;
    const int64_t body = g.S & ~int64_t(7);
    for (int64_t s = 0; s < body; s += 8) {
        const __m256 x_hat = x_hat8(_mm256_loadu_ps(row + s), c);
        __m256 dz = _mm256_loadu_ps(dy + s);
        if (activation) {
            const __m256 z = _mm256_add_ps(_mm256_mul_ps(x_hat, w), b);
            const __m256 sig = sigmoid8(z);
            dz = _mm256_mul_ps(dz, _mm256_mul_ps(sig, _mm256_add_ps(one, _mm256_mul_ps(z, _mm256_sub_ps(one, sig)))));
        }
        _mm256_storeu_ps(out + s, dz);
        dz_sum = _mm256_add_ps(dz_sum, dz);
        dz_x_hat_sum = _mm256_fmadd_ps(dz, x_hat, dz_x_hat_sum);
    }
    sums[0] += hsum(dz_sum);
    sums[1] += hsum(dz_x_hat_sum);
    dz_scalar(g, k, body, activation, dy, out, sums);
}

DDPM_AVX2 double dx_avx2(const Group& g, int64_t k, float m1, float m2, float* dz) {
    const __m256 w = _mm256_set1_ps(param(g.weight, k, 1.0f)),
                 rstd_f = _mm256_set1_ps((float)g.rstd), m1v = _mm256_set1_ps(m1), m2v = _mm256_set1_ps(m2);
    const Centre c = centre(g, k);
    __m256 acc = _mm256_setzero_ps();
    const float* row = g.x + k * g.S;
    const int64_t body = g.S & ~int64_t(7);
    for (int64_t s = 0; s < body; s += 8) {
        const __m256 x_hat = x_hat8(_mm256_loadu_ps(row + s), c);
        const __m256 inner = _mm256_sub_ps(_mm256_sub_ps(_mm256_mul_ps(w, _mm256_loadu_ps(dz + s)), m1v),
                                           _mm256_mul_ps(x_hat, m2v));
        const __m256 dx = _mm256_mul_ps(rstd_f, inner);
        _mm256_storeu_ps(dz + s, dx);
        acc = _mm256_add_ps(acc, dx);
    }
    return (double)hsum(acc) + dx_scalar(g, k, body, m1, m2, dz);
}

bool cpu_has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// ---- channels_last on AVX2 (C a multiple of 8): one sample's (S, C) block, 8 channels per vector
// Per-channel float32 sums over blocks of BLOCK_PIXELS pixels are added to float64 per-channel
// totals; the centring and x_hat are those of the NCHW passes, per channel vectors.
constexpr int64_t BLOCK_PIXELS = 64;

struct SampleNHWC {
    const float* x;      // (S, C)
    const float* shift;  // (C) or nullptr
    const float* weight;
    const float* bias;
    int64_t C, S, G;
};

// sums[c] += sum over pixels of f(p, c-vector) for every channel, f returning 8 floats
template <class F>
DDPM_AVX2 void channel_sums_nhwc(const SampleNHWC& t, double* sums, float* scratch, const F& f) {
    for (int64_t p0 = 0; p0 < t.S; p0 += BLOCK_PIXELS) {
        const int64_t p1 = std::min(t.S, p0 + BLOCK_PIXELS);
        for (int64_t c = 0; c < t.C; c += 8) _mm256_storeu_ps(scratch + c, _mm256_setzero_ps());
        for (int64_t p = p0; p < p1; ++p)
            for (int64_t c = 0; c < t.C; c += 8)
                _mm256_storeu_ps(scratch + c, _mm256_add_ps(_mm256_loadu_ps(scratch + c), f(p, c)));
        for (int64_t c = 0; c < t.C; ++c) sums[c] += (double)scratch[c];
    }
}

// per channel: the group's value of a per-group float64 array, as float32
DDPM_AVX2 void per_channel(const double* by_group, int64_t C, int64_t G, float* out) {
    for (int64_t c = 0; c < C; ++c) out[c] = (float)by_group[c / (C / G)];
}

// stats, then the (hi, lo, rstd) per channel; returns through mean/rstd (G each)
DDPM_AVX2 void stats_nhwc(const SampleNHWC& t, double eps, double* mean, double* rstd, float* hi, float* lo,
                          float* r, double* sums, float* scratch) {
    const int64_t C = t.C, cg = C / t.G;
    const double count = (double)(cg * t.S);
    std::fill(sums, sums + C, 0.0);
    channel_sums_nhwc(t, sums, scratch, [&](int64_t p, int64_t c) DDPM_AVX2 {
        return _mm256_sub_ps(_mm256_loadu_ps(t.x + p * C + c), _mm256_loadu_ps(t.x + c));
    });
    for (int64_t g = 0; g < t.G; ++g) {
        double total = 0.0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
            total += sums[c] + (double)t.S * h_of(t.x[c], param(t.shift, c, 0.0f));
        mean[g] = total / count;
    }
    for (int64_t c = 0; c < C; ++c) {
        const double centre_c = mean[c / cg] - (double)param(t.shift, c, 0.0f);
        hi[c] = (float)centre_c;
        lo[c] = (float)(centre_c - (double)hi[c]);
    }
    std::fill(sums, sums + C, 0.0);
    channel_sums_nhwc(t, sums, scratch, [&](int64_t p, int64_t c) DDPM_AVX2 {
        const __m256 d = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(t.x + p * C + c), _mm256_loadu_ps(hi + c)),
                                       _mm256_loadu_ps(lo + c));
        return _mm256_mul_ps(d, d);
    });
    for (int64_t g = 0; g < t.G; ++g) {
        double total = 0.0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) total += sums[c];
        rstd[g] = 1.0 / std::sqrt(total / count + eps);
    }
    per_channel(rstd, C, t.G, r);
}

DDPM_AVX2 inline __m256 x_hat_nhwc(const float* x, const float* hi, const float* lo, const float* r, int64_t c) {
    return _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(hi + c)),
                                       _mm256_loadu_ps(lo + c)), _mm256_loadu_ps(r + c));
}

DDPM_AVX2 void forward_nhwc(const SampleNHWC& t, double eps, bool activation, float* y, double* mean,
                            double* rstd, float* work, double* sums) {
    const int64_t C = t.C;
    float *hi = work, *lo = hi + C, *r = lo + C, *w = r + C, *b = w + C, *scratch = b + C;
    for (int64_t c = 0; c < C; ++c) {
        w[c] = param(t.weight, c, 1.0f);
        b[c] = param(t.bias, c, 0.0f);
    }
    stats_nhwc(t, eps, mean, rstd, hi, lo, r, sums, scratch);
    for (int64_t p = 0; p < t.S; ++p)
        for (int64_t c = 0; c < C; c += 8) {
            const __m256 x_hat = x_hat_nhwc(t.x + p * C + c, hi, lo, r, c);
            const __m256 z = _mm256_add_ps(_mm256_mul_ps(x_hat, _mm256_loadu_ps(w + c)), _mm256_loadu_ps(b + c));
            _mm256_storeu_ps(y + p * C + c, activation ? _mm256_mul_ps(z, sigmoid8(z)) : z);
        }
}

// dx (S, C) of one sample; partial (C, 2): (sum dz, sum dz x_hat); dshift (C) or nullptr
DDPM_AVX2 void backward_nhwc(const SampleNHWC& t, const double* mean, const double* rstd, bool activation,
                             const float* dy, float* dx, double* partial, float* dshift, float* work,
                             double* sums) {
    const int64_t C = t.C, cg = C / t.G;
    float *hi = work, *lo = hi + C, *r = lo + C, *w = r + C, *b = w + C, *scratch = b + C;
    float *m1 = scratch + C, *m2 = m1 + C;
    for (int64_t c = 0; c < C; ++c) {
        w[c] = param(t.weight, c, 1.0f);
        b[c] = param(t.bias, c, 0.0f);
        const double centre_c = mean[c / cg] - (double)param(t.shift, c, 0.0f);
        hi[c] = (float)centre_c;
        lo[c] = (float)(centre_c - (double)hi[c]);
    }
    per_channel(rstd, C, t.G, r);
    const __m256 one = _mm256_set1_ps(1.0f);
    // pass 1: dz into dx, and per channel sum dz (sums) and sum dz x_hat (sums + C)
    double *dz_sums = sums, *dz_x_hat_sums = sums + C;
    std::fill(sums, sums + 2 * C, 0.0);
    channel_sums_nhwc(t, dz_sums, scratch, [&](int64_t p, int64_t c) DDPM_AVX2 {
        const __m256 x_hat = x_hat_nhwc(t.x + p * C + c, hi, lo, r, c);
        __m256 dz = _mm256_loadu_ps(dy + p * C + c);
        if (activation) {
            const __m256 z = _mm256_add_ps(_mm256_mul_ps(x_hat, _mm256_loadu_ps(w + c)), _mm256_loadu_ps(b + c));
            const __m256 sig = sigmoid8(z);
            dz = _mm256_mul_ps(dz, _mm256_mul_ps(sig, _mm256_add_ps(one, _mm256_mul_ps(z, _mm256_sub_ps(one, sig)))));
        }
        _mm256_storeu_ps(dx + p * C + c, dz);
        return dz;
    });
    channel_sums_nhwc(t, dz_x_hat_sums, scratch, [&](int64_t p, int64_t c) DDPM_AVX2 {
        return _mm256_mul_ps(_mm256_loadu_ps(dx + p * C + c), x_hat_nhwc(t.x + p * C + c, hi, lo, r, c));
    });
    for (int64_t g = 0; g < t.G; ++g) {
        double s1 = 0.0, s2 = 0.0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
            s1 += (double)w[c] * dz_sums[c];
            s2 += (double)w[c] * dz_x_hat_sums[c];
        }
        const double count = (double)(cg * t.S);
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
            m1[c] = (float)(s1 / count);
            m2[c] = (float)(s2 / count);
        }
    }
    for (int64_t c = 0; c < C; ++c) {
        partial[2 * c] = dz_sums[c];
        partial[2 * c + 1] = dz_x_hat_sums[c];
    }
    // pass 2: dx = rstd (w dz - m1 - x_hat m2), and sum_hw dx per channel for dshift
    std::fill(sums, sums + C, 0.0);
    channel_sums_nhwc(t, sums, scratch, [&](int64_t p, int64_t c) DDPM_AVX2 {
        const __m256 x_hat = x_hat_nhwc(t.x + p * C + c, hi, lo, r, c);
        const __m256 inner = _mm256_sub_ps(
            _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(w + c), _mm256_loadu_ps(dx + p * C + c)), _mm256_loadu_ps(m1 + c)),
            _mm256_mul_ps(x_hat, _mm256_loadu_ps(m2 + c)));
        const __m256 out = _mm256_mul_ps(_mm256_loadu_ps(r + c), inner);
        _mm256_storeu_ps(dx + p * C + c, out);
        return out;
    });
    if (dshift)
        for (int64_t c = 0; c < C; ++c) dshift[c] = (float)sums[c];
}
#else
bool cpu_has_avx2_fma() { return false; }
#endif

void stats(Group& g, double eps, bool avx2) {
#if DDPM_X86
    if (avx2) return stats_avx2(g, eps);
#endif
    stats_scalar(g, eps);
}

void normalise(const Group& g, int64_t k, bool activation, float* y, bool avx2) {
#if DDPM_X86
    if (avx2) return normalise_avx2(g, k, activation, y);
#endif
    normalise_scalar(g, k, 0, activation, y);
}

void dz_pass(const Group& g, int64_t k, bool activation, const float* dy, float* out, double* sums, bool avx2) {
#if DDPM_X86
    if (avx2) return dz_avx2(g, k, activation, dy, out, sums);
#endif
    dz_scalar(g, k, 0, activation, dy, out, sums);
}

double dx_pass(const Group& g, int64_t k, float m1, float m2, float* dz, bool avx2) {
#if DDPM_X86
    if (avx2) return dx_avx2(g, k, m1, m2, dz);
#endif
    return dx_scalar(g, k, 0, m1, m2, dz);
}

Group make_group(const float* x, const float* shift, const float* weight, const float* bias, int64_t n,
                 int64_t group, int64_t C, int64_t S, int64_t G) {
    const int64_t cg = C / G, c0 = group * cg;
    return Group{x + (n * C + c0) * S, shift ? shift + n * C + c0 : nullptr, weight ? weight + c0 : nullptr,
                 bias ? bias + c0 : nullptr, cg, S, 0.0, 0.0};
}

// Threads for `values` floats of work: one below 2**14 (a fork costs more than it saves)
int useful_threads(int threads, int64_t values) {
    return (int)std::max<int64_t>(1, std::min<int64_t>(threads, values >> 14));
}

// One (sample, group) of an NCHW block: statistics, then y (the group's block of out)
void forward_group(Group& g, double eps, bool activation, float* out, bool avx2) {
    stats(g, eps, avx2);
    for (int64_t k = 0; k < g.channels; ++k) normalise(g, k, activation, out + k * g.S, avx2);
}

// One (sample, group) of an NCHW block: dx into dx_out (the group's block), the per-channel
// (sum dz, sum dz x_hat) into sums (2 per channel), sum_hw dx per channel into dshift if wanted
void backward_group(const Group& g, bool activation, const float* dy, float* dx_out, double* sums,
                    float* dshift, bool avx2) {
    const int64_t S = g.S;
    double m1 = 0.0, m2 = 0.0;  // sums over the group of dx_hat = w dz and of dx_hat x_hat
    for (int64_t k = 0; k < g.channels; ++k) {
        double* own = sums + 2 * k;
        own[0] = own[1] = 0.0;
        dz_pass(g, k, activation, dy + k * S, dx_out + k * S, own, avx2);
        const double w = param(g.weight, k, 1.0f);
        m1 += w * own[0];
        m2 += w * own[1];
    }
    const double count = (double)(g.channels * S);
    const float mean_dx_hat = (float)(m1 / count), mean_dx_hat_x_hat = (float)(m2 / count);
    for (int64_t k = 0; k < g.channels; ++k) {
        const double total = dx_pass(g, k, mean_dx_hat, mean_dx_hat_x_hat, dx_out + k * S, avx2);
        if (dshift) dshift[k] = (float)total;
    }
}

// channels_last: a sample's (S, C) values <-> (C, S), so the NCHW code above runs on it
void to_channels_first(const float* src, int64_t S, int64_t C, float* dst) {
    for (int64_t p = 0; p < S; ++p)
        for (int64_t c = 0; c < C; ++c) dst[c * S + p] = src[p * C + c];
}

void to_channels_last(const float* src, int64_t S, int64_t C, float* dst) {
    for (int64_t p = 0; p < S; ++p)
        for (int64_t c = 0; c < C; ++c) dst[p * C + c] = src[c * S + p];
}

}  // namespace

extern "C" {

int ddpm_gns_has_avx2() { return cpu_has_avx2_fma() ? 1 : 0; }

// x, y: (N, C, S) float32, NCHW-contiguous, or with channels_last != 0 (N, S, C) contiguous (the
// same tensor in torch.channels_last); shift (N, C), weight, bias (C) or null;
// mean, rstd: (N, G) float64 out
void ddpm_group_norm_silu_forward(const float* x, const float* shift, const float* weight, const float* bias,
                                  int64_t N, int64_t C, int64_t S, int64_t G, double eps, int activation,
                                  float* y, double* mean, double* rstd, int channels_last, int threads,
                                  int use_avx2) {
    const int64_t cg = C / G;
    if (!channels_last) {
#pragma omp parallel for num_threads(useful_threads(threads, N * C * S)) schedule(static)
        for (int64_t task = 0; task < N * G; ++task) {
            Group g = make_group(x, shift, weight, bias, task / G, task % G, C, S, G);
            forward_group(g, eps, activation != 0, y + (g.x - x), use_avx2);
            mean[task] = g.mean;
            rstd[task] = g.rstd;
        }
        return;
    }
#if DDPM_X86
    if (use_avx2 && C % 8 == 0) {  // one task per sample, 8 channels per vector
#pragma omp parallel for num_threads(useful_threads(threads, N * C * S)) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            std::vector<float> work(6 * C);
            std::vector<double> sums(C);
            const SampleNHWC t{x + n * C * S, shift ? shift + n * C : nullptr, weight, bias, C, S, G};
            forward_nhwc(t, eps, activation != 0, y + n * C * S, mean + n * G, rstd + n * G, work.data(), sums.data());
        }
        return;
    }
#endif
    // otherwise one task per sample: its values transposed into a scratch block (cache-resident
    // at these sizes), the groups normalised there, the result transposed back
#pragma omp parallel for num_threads(useful_threads(threads, N * C * S)) schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        std::vector<float> block(2 * C * S);
        float *xs = block.data(), *ys = xs + C * S;
        to_channels_first(x + n * C * S, S, C, xs);
        for (int64_t group = 0; group < G; ++group) {
            Group g = make_group(xs, shift ? shift + n * C : nullptr, weight, bias, 0, group, C, S, G);
            forward_group(g, eps, activation != 0, ys + group * cg * S, use_avx2);
            mean[n * G + group] = g.mean;
            rstd[n * G + group] = g.rstd;
        }
        to_channels_last(ys, S, C, y + n * C * S);
    }
}

// dy, x, dx: like x of the forward (dx always written); partial: (N, C, 2) float64 scratch;
// dweight, dbias (C), dshift (N, C): out, or null when not wanted
void ddpm_group_norm_silu_backward(const float* dy, const float* x, const float* shift, const float* weight,
                                   const float* bias, const double* mean, const double* rstd, int64_t N,
                                   int64_t C, int64_t S, int64_t G, int activation, float* dx, float* dweight,
                                   float* dbias, float* dshift, double* partial, int channels_last, int threads,
                                   int use_avx2) {
    const int64_t cg = C / G;
    if (!channels_last) {
#pragma omp parallel for num_threads(useful_threads(threads, N * C * S)) schedule(static)
        for (int64_t task = 0; task < N * G; ++task) {
            const int64_t n = task / G, c0 = (task % G) * cg;
            Group g = make_group(x, shift, weight, bias, n, task % G, C, S, G);
            g.mean = mean[task];
            g.rstd = rstd[task];
            const int64_t offset = g.x - x;
            backward_group(g, activation != 0, dy + offset, dx + offset, partial + 2 * (n * C + c0),
                           dshift ? dshift + n * C + c0 : nullptr, use_avx2);
        }
#if DDPM_X86
    } else if (use_avx2 && C % 8 == 0) {
#pragma omp parallel for num_threads(useful_threads(threads, N * C * S)) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            std::vector<float> work(8 * C);
            std::vector<double> sums(2 * C);
            const SampleNHWC t{x + n * C * S, shift ? shift + n * C : nullptr, weight, bias, C, S, G};
            backward_nhwc(t, mean + n * G, rstd + n * G, activation != 0, dy + n * C * S, dx + n * C * S,
                          partial + 2 * n * C, dshift ? dshift + n * C : nullptr, work.data(), sums.data());
        }
#endif
    } else {
#pragma omp parallel for num_threads(useful_threads(threads, N * C * S)) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            std::vector<float> block(3 * C * S);
            float *xs = block.data(), *dys = xs + C * S, *dxs = dys + C * S;
            to_channels_first(x + n * C * S, S, C, xs);
            to_channels_first(dy + n * C * S, S, C, dys);
            for (int64_t group = 0; group < G; ++group) {
                const int64_t c0 = group * cg;
                Group g = make_group(xs, shift ? shift + n * C : nullptr, weight, bias, 0, group, C, S, G);
                g.mean = mean[n * G + group];
                g.rstd = rstd[n * G + group];
                backward_group(g, activation != 0, dys + c0 * S, dxs + c0 * S, partial + 2 * (n * C + c0),
                               dshift ? dshift + n * C + c0 : nullptr, use_avx2);
            }
            to_channels_last(dxs, S, C, dx + n * C * S);
        }
    }
    // over samples in a fixed order, after the parallel loop (thread-count independent)
    for (int64_t c = 0; c < C; ++c) {
        double db = 0.0, dw = 0.0;
        for (int64_t n = 0; n < N; ++n) {
            db += partial[2 * (n * C + c)];
            dw += partial[2 * (n * C + c) + 1];
        }
        if (dbias) dbias[c] = (float)db;
        if (dweight) dweight[c] = (float)dw;
    }
}

}  // extern "C"
