// The noise stream on the CPU (DESIGN contract 2; reference/noise.py defines every number here).
//
//   Philox4x32-10 (Salmon et al. 2011, Random123) on counter (j, 0, sample, stream), key (seed lo,
//   seed hi); Triton's uint_to_uniform_float in float32; Box-Muller, first output, evaluated in
//   float64 and rounded once to float32, as reference.pair_uniform_to_normal does.
//
// Two instruction sets, chosen at run time (no -mavx2 on the command line: the library loads on
// any x86-64 CPU): AVX2 (8 counters per vector, 4 vectors in flight; float64 log/cos from the
// SLEEF inside libtorch_cpu, 3.5-ulp variants, with a check that the float32 rounding is the C
// library's: box_muller4) and plain C++ (std::log/std::cos, the C library NumPy uses). The
// integer words and uniforms are exact in both; the normals round the same float64 expression
// the reference rounds, to the same float32.
//
// Built with -ffp-contract=off: x_t = a * x0 + s * eps must round like torch's separate mul/add.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#define DDPM_X86 1
#else
#define DDPM_X86 0
#endif

namespace {

constexpr uint32_t ROUND_A = 0xD2511F53u, ROUND_B = 0xCD9E8D57u;  // Philox multipliers
constexpr uint32_t KEY_A = 0x9E3779B9u, KEY_B = 0xBB67AE85u;      // Weyl key increments
constexpr float UNIFORM_SCALE = 4.6566127342e-10f;  // Triton's: (2**23 - 1) / 2**23 * 2**-31
constexpr double TWO_PI = 6.283185307179586;
constexpr int BLOCK = 32;  // counters per inner step (4 AVX2 vectors of 8)

struct Row {  // one sample's counter words and key
    uint32_t sample, stream, key0, key1;
};

// ---- plain C++ --------------------------------------------------------------------------------
inline void philox_scalar(const Row& row, uint32_t j, uint32_t w[4]) {
    uint32_t c0 = j, c1 = 0, c2 = row.sample, c3 = row.stream, k0 = row.key0, k1 = row.key1;
    for (int round = 0; round < 10; ++round) {
        const uint64_t prod_a = (uint64_t)ROUND_A * c0, prod_b = (uint64_t)ROUND_B * c2;
        const uint32_t n0 = (uint32_t)(prod_b >> 32) ^ c1 ^ k0;
        const uint32_t n2 = (uint32_t)(prod_a >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)prod_b;
        c3 = (uint32_t)prod_a;
        c0 = n0;
        c2 = n2;
        k0 += KEY_A;
        k1 += KEY_B;
    }
    w[0] = c0; w[1] = c1; w[2] = c2; w[3] = c3;
}

inline float uniform_scalar(uint32_t word) {
    int32_t x = (int32_t)word;
    if (x < 0) x = ~x;  // Triton folds negatives: -x - 1
    return (float)x * UNIFORM_SCALE;
}

inline float box_muller_scalar(float u1, float u2) {
    const double r = std::sqrt(-2.0 * std::log((double)std::max(1.0e-7f, u1)));
    return (float)(r * std::cos(TWO_PI * (double)u2));
}

void normals_scalar(const Row& row, uint32_t j, int count, float* z) {
    uint32_t w[4];
    for (int l = 0; l < count; ++l) {
        philox_scalar(row, j + (uint32_t)l, w);
        z[l] = box_muller_scalar(uniform_scalar(w[0]), uniform_scalar(w[1]));
    }
}

#if DDPM_X86
// ---- AVX2 -------------------------------------------------------------------------------------
// SLEEF's float64 log and cos with at most 3.5 ulp error, exported by libtorch_cpu
#ifndef SLEEF_LOG
#define SLEEF_LOG Sleef_logd4_u35
#define SLEEF_COS Sleef_cosd4_u35
#endif
extern "C" __m256d SLEEF_LOG(__m256d);
extern "C" __m256d SLEEF_COS(__m256d);

// Rounding to float32 hides float64 errors unless the value lies near a float32 rounding
// boundary. SLEEF's z = sqrt(-2 log u1) cos(theta) is within (1.75 + 0.5 + 3.5 + 0.5) ulp =
// 6.25 * 2**-52 (relative) of the exact value of the same expression, the C library's (the
// reference's) within 2.5 * 2**-52: together < 2**-48.8. Where z (1 - 2**-47) and z (1 + 2**-47)
// round to the same float32, so do both; elsewhere (about 1 in 10**7) the lane is recomputed with
// the C library's log and cos, as the reference computes it.
double rounding_margin = 1.0 / 140737488355328.0;  // 2**-47 (tests widen it: ddpm_set_rounding_margin)

constexpr int VECS = BLOCK / 8;

// hi and lo 32-bit halves of a * c for 8 lanes (AVX2 multiplies only the even lanes)
__attribute__((target("avx2"))) inline void mulhilo8(__m256i a, __m256i c, __m256i& hi, __m256i& lo) {
    const __m256i even = _mm256_mul_epu32(a, c);
    const __m256i odd = _mm256_mul_epu32(a, _mm256_srli_epi64(c, 32));
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// the words of counters j .. j + 31 (all four, or words 0 and 1 only: the last round then skips
// the product that feeds words 2 and 3); four independent vectors keep the multipliers busy
template <bool ALL_WORDS>
__attribute__((target("avx2"))) inline void philox_block(const Row& row, uint32_t j, __m256i c[4][VECS]) {
    const __m256i A = _mm256_set1_epi32((int)ROUND_A), B = _mm256_set1_epi32((int)ROUND_B);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    uint32_t k0 = row.key0, k1 = row.key1;
    // round 1: c1 = 0, c2 = sample and c3 = stream are the same in every lane, so B * c2 is one
    // scalar product
    const uint64_t prod_b = (uint64_t)ROUND_B * row.sample;
    const __m256i first_c0 = _mm256_set1_epi32((int)((uint32_t)(prod_b >> 32) ^ k0));
    const __m256i first_c1 = _mm256_set1_epi32((int)(uint32_t)prod_b);
    const __m256i first_k1 = _mm256_set1_epi32((int)(row.stream ^ k1));
    for (int v = 0; v < VECS; ++v) {
        __m256i hi_a, lo_a;
        mulhilo8(A, _mm256_add_epi32(_mm256_set1_epi32((int)(j + 8u * v)), lane), hi_a, lo_a);
        c[0][v] = first_c0;
        c[1][v] = first_c1;
        c[2][v] = _mm256_xor_si256(hi_a, first_k1);
        c[3][v] = lo_a;
    }
    k0 += KEY_A;
    k1 += KEY_B;
    for (int round = 1; round < 10; ++round) {
        const __m256i K0 = _mm256_set1_epi32((int)k0), K1 = _mm256_set1_epi32((int)k1);
        const bool last = round == 9;
#pragma GCC unroll 4
        for (int v = 0; v < VECS; ++v) {
            __m256i hi_a, lo_a, hi_b, lo_b;
            mulhilo8(B, c[2][v], hi_b, lo_b);
            if (ALL_WORDS || !last) {
                mulhilo8(A, c[0][v], hi_a, lo_a);
                c[2][v] = _mm256_xor_si256(_mm256_xor_si256(hi_a, c[3][v]), K1);
                c[3][v] = lo_a;
            }
            c[0][v] = _mm256_xor_si256(_mm256_xor_si256(hi_b, c[1][v]), K0);
            c[1][v] = lo_b;
        }
        k0 += KEY_A;
        k1 += KEY_B;
    }
}

__attribute__((target("avx2"))) inline __m256 uniform8(__m256i word) {
    const __m256i folded = _mm256_xor_si256(word, _mm256_srai_epi32(word, 31));  // ~x if x < 0
    return _mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(UNIFORM_SCALE));
}

// r cos(theta) of 4 pairs in float64, rounded to float32  (reference.pair_uniform_to_normal)
__attribute__((target("avx2"))) inline __m128 box_muller4(__m128 u1, __m128 u2) {
    const __m256d r = _mm256_sqrt_pd(_mm256_mul_pd(
        _mm256_set1_pd(-2.0), SLEEF_LOG(_mm256_cvtps_pd(_mm_max_ps(_mm_set1_ps(1.0e-7f), u1)))));
    const __m256d cos_theta = SLEEF_COS(_mm256_mul_pd(_mm256_set1_pd(TWO_PI), _mm256_cvtps_pd(u2)));
    const __m256d z = _mm256_mul_pd(r, cos_theta);
    const __m128 below = _mm256_cvtpd_ps(_mm256_mul_pd(z, _mm256_set1_pd(1.0 - rounding_margin)));
    const __m128 above = _mm256_cvtpd_ps(_mm256_mul_pd(z, _mm256_set1_pd(1.0 + rounding_margin)));
    __m128 rounded = _mm256_cvtpd_ps(z);
    const int near_boundary = _mm_movemask_ps(_mm_cmpneq_ps(below, above));
    if (near_boundary) {  // rare: the C library's float64, as the reference
        alignas(16) float a[4], b[4], out[4];
        _mm_store_ps(a, u1);
        _mm_store_ps(b, u2);
        _mm_store_ps(out, rounded);
        for (int l = 0; l < 4; ++l)
            if (near_boundary & (1 << l)) out[l] = box_muller_scalar(a[l], b[l]);
        rounded = _mm_load_ps(out);
    }
    return rounded;
}

__attribute__((target("avx2"))) void normals_avx2(const Row& row, uint32_t j, int count, float* z) {
    alignas(32) float block[BLOCK];
    __m256i c[4][VECS];
    philox_block<false>(row, j, c);
    for (int v = 0; v < VECS; ++v) {
        const __m256 u1 = uniform8(c[0][v]), u2 = uniform8(c[1][v]);
        _mm_store_ps(block + 8 * v, box_muller4(_mm256_castps256_ps128(u1), _mm256_castps256_ps128(u2)));
        _mm_store_ps(block + 8 * v + 4, box_muller4(_mm256_extractf128_ps(u1, 1), _mm256_extractf128_ps(u2, 1)));
    }
    std::memcpy(z, block, sizeof(float) * count);
}

__attribute__((target("avx2"))) void words_avx2(const Row& row, uint32_t j, int count, uint32_t* out) {
    alignas(32) uint32_t words[4][BLOCK];
    __m256i c[4][VECS];
    philox_block<true>(row, j, c);
    for (int k = 0; k < 4; ++k)
        for (int v = 0; v < VECS; ++v) _mm256_store_si256((__m256i*)(words[k] + 8 * v), c[k][v]);
    for (int l = 0; l < count; ++l)
        for (int k = 0; k < 4; ++k) out[4 * l + k] = words[k][l];
}

bool cpu_has_avx2() { return __builtin_cpu_supports("avx2"); }
#else
void normals_avx2(const Row& row, uint32_t j, int count, float* z) { normals_scalar(row, j, count, z); }
bool cpu_has_avx2() { return false; }
#endif

void words_scalar(const Row& row, uint32_t j, int count, uint32_t* out) {
    for (int l = 0; l < count; ++l) philox_scalar(row, j + (uint32_t)l, out + 4 * l);
}

// Split the flat range [0, rows * numel) into `threads` contiguous pieces; `body(row, j, count,
// flat)` handles up to BLOCK counters j.. of one row, whose output starts at flat index `flat`.
template <class Body>
void parallel_blocks(const int64_t* samples, const int64_t* streams, int64_t rows, int64_t numel,
                     uint64_t seed, int threads, const Body& body) {
    auto piece = [&](int64_t begin, int64_t end) {
        while (begin < end) {
            const int64_t r = begin / numel;
            const Row row = {(uint32_t)samples[r], (uint32_t)streams[r], (uint32_t)seed, (uint32_t)(seed >> 32)};
            const int64_t row_end = std::min(end, (r + 1) * numel);
            for (int64_t flat = begin; flat < row_end; flat += BLOCK) {
                const int count = (int)std::min<int64_t>(BLOCK, row_end - flat);
                body(row, (uint32_t)(flat - r * numel), count, flat);
            }
            begin = row_end;
        }
    };
    const int64_t total = rows * numel;
    const int64_t min_per_thread = 1 << 14;  // below this a thread costs more than it saves
    const int64_t useful = std::max<int64_t>(1, total / min_per_thread);
    const int64_t n = std::max<int64_t>(1, std::min<int64_t>(threads, useful));
    if (n == 1) {
        piece(0, total);
        return;
    }
    const int64_t chunk = (total + n - 1) / n;
    // torch's own OpenMP runtime (libgomp.so.1 from torch/lib, already loaded): its workers, not
    // threads of our own that would compete with them while they spin after torch's last op
#pragma omp parallel for num_threads((int)n) schedule(static, 1)
    for (int64_t t = 0; t < n; ++t) piece(std::min(total, t * chunk), std::min(total, (t + 1) * chunk));
}

}  // namespace

extern "C" {

int ddpm_cpu_has_avx2() { return cpu_has_avx2() ? 1 : 0; }

// the relative margin of the float32 rounding check (box_muller4); returns the previous one.
// Tests widen it so that most lanes take the C library's recomputation.
double ddpm_set_rounding_margin(double margin) {
#if DDPM_X86
    const double previous = rounding_margin;
    rounding_margin = margin;
    return previous;
#else
    return margin;
#endif
}

// out: (rows, numel, 4) uint32, the Philox words of counters (j, 0, samples[r], streams[r])
void ddpm_philox_words(uint64_t seed, const int64_t* samples, const int64_t* streams, int64_t rows,
                       int64_t numel, uint32_t* out, int threads, int use_avx2) {
    parallel_blocks(samples, streams, rows, numel, seed, threads,
                    [&](const Row& row, uint32_t j, int count, int64_t flat) {
                        if (use_avx2) words_avx2(row, j, count, out + 4 * flat);
                        else words_scalar(row, j, count, out + 4 * flat);
                    });
}

// out: (rows, numel) float32 standard normals  (reference.normal)
void ddpm_normal(uint64_t seed, const int64_t* samples, const int64_t* streams, int64_t rows,
                 int64_t numel, float* out, int threads, int use_avx2) {
    parallel_blocks(samples, streams, rows, numel, seed, threads,
                    [&](const Row& row, uint32_t j, int count, int64_t flat) {
                        if (use_avx2) normals_avx2(row, j, count, out + flat);
                        else normals_scalar(row, j, count, out + flat);
                    });
}

// x_t = a[r] * x0 + s[r] * eps with eps drawn here (DDPM Eq. 4; reference.q_sample), float32,
// contiguous (rows, numel); eps is written out too (the loss needs it)
void ddpm_q_sample(uint64_t seed, const int64_t* samples, const int64_t* streams, int64_t rows,
                   int64_t numel, const float* x0, const float* a, const float* s, float* x_t,
                   float* eps, int threads, int use_avx2) {
    parallel_blocks(samples, streams, rows, numel, seed, threads,
                    [&](const Row& row, uint32_t j, int count, int64_t flat) {
                        float* z = eps + flat;
                        if (use_avx2) normals_avx2(row, j, count, z);
                        else normals_scalar(row, j, count, z);
                        const int64_t r = flat / numel;
                        const float a_r = a[r], s_r = s[r];
                        for (int l = 0; l < count; ++l) x_t[flat + l] = a_r * x0[flat + l] + s_r * z[l];
                    });
}

}  // extern "C"
