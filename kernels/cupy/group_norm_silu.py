"""GroupNorm + SiLU forward and backward, CUDA C  (reference.group_norm_silu / _backward).

Same plan as the Triton kernels (see kernels/triton/group_norm_silu.py): x read as (N, C, HW)
through strides (NCHW-contiguous or channels_last in place); grid (N G, S), one block of 256
threads per chunk of a group; chunk element e walks memory order (hw-major for channels_last,
channel-major for NCHW) so that neighbouring threads read neighbouring addresses.

forward   stats_kernel      per-chunk Welford (count, mean, M2), block tree-combined (Chan et al.)
          forward_kernel    every thread combines the S chunk statistics of its group in the
                            same order (so all agree), normalises, affine, SiLU; mean/rstd out
backward  backward_partials_kernel  per-(n, c, chunk) sums of dz, dz x_hat, x_hat (x_hat and the
                            activation recomputed from x; channels_last: thread t owns channel
                            t % Cg, so a warp reads contiguous channels of its pixels, the lanes
                            summed in a fixed order); group_norm_silu_reduce.backward_stage2;
                            backward_dx_kernel
Deterministic: fixed-shape tree reductions in shared memory, no atomics. float32 arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch

from ..group_norm_silu_reduce import backward_stage2
from ..layout import dense_layout, empty_like_layout, same_layout_or_copy
from .runtime import STORAGE_CUH, address, get_kernel, launch, storage_id

__all__ = ["forward", "backward", "launch_config"]

BLOCK = 256

_SOURCE = STORAGE_CUH + r"""
#define BLOCK 256

struct GroupView {            /* one chunk of one group of x, read as (N, C, HW) */
    long long base;           /* n sN + g Cg sC */
    long long sC, sHW;
    long long hw_start, length, Cg;
    int channels_last;
};

__device__ __forceinline__ GroupView group_view(long long n, long long g, long long s, long long Cg,
                                                long long HW, long long HW_PER, long long sN,
                                                long long sC, long long sHW) {
    GroupView v;
    v.base = n * sN + g * Cg * sC;
    v.sC = sC; v.sHW = sHW; v.Cg = Cg;
    v.hw_start = s * HW_PER;
    const long long hw_end = min(v.hw_start + HW_PER, HW);
    v.length = hw_end - v.hw_start;
    v.channels_last = (sC == 1 && Cg > 1);
    return v;
}

/* element e of the chunk -> (channel within the group, memory offset); memory order walk */
__device__ __forceinline__ long long element(const GroupView& v, long long e, long long* cc) {
    long long hw;
    if (v.channels_last) { hw = e / v.Cg; *cc = e - hw * v.Cg; }
    else { *cc = e / v.length; hw = e - *cc * v.length; }
    return v.base + *cc * v.sC + (v.hw_start + hw) * v.sHW;
}

__device__ __forceinline__ float shift_of(const float* shift, long long n, long long ch,
                                          long long shN, long long shC) {
    return shift != 0 ? shift[n * shN + ch * shC] : 0.0f;
}

/* Chan et al.: merge (count, mean, m2) b into a */
__device__ __forceinline__ void welford_merge(float& count, float& mean, float& m2,
                                              float count_b, float mean_b, float m2_b) {
    const float total = count + count_b;
    if (count_b == 0.0f) return;
    const float delta = mean_b - mean;
    const float ratio = count_b / total;
    mean = mean + delta * ratio;
    m2 = m2 + m2_b + delta * delta * count * ratio;
    count = total;
}

/* deterministic block sum of one value per thread; all threads get the result */
__device__ __forceinline__ float block_sum(float value, float* scratch) {
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        __syncthreads();
    }
    const float result = scratch[0];
    __syncthreads();
    return result;
}

extern "C" __global__ void stats_kernel(
        unsigned long long x_addr,        /* (N, C, HW) storage_t via sN, sC, sHW */
        unsigned long long shift_addr,    /* (N, C) float32 via shN, shC, or 0 */
        unsigned long long partial_addr,  /* (N G, S, 3) float32 out: count, mean, M2 */
        long long G, long long Cg, long long HW, long long HW_PER, long long S,
        long long sN, long long sC, long long sHW, long long shN, long long shC) {
    __shared__ float s_count[BLOCK], s_mean[BLOCK], s_m2[BLOCK];
    const storage_t* x = (const storage_t*)x_addr;
    const float* shift = (const float*)shift_addr;
    const long long ng = blockIdx.x, s = blockIdx.y, n = ng / G, g = ng - n * G;
    const GroupView v = group_view(n, g, s, Cg, HW, HW_PER, sN, sC, sHW);
    float count = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (long long e = threadIdx.x; e < v.length * Cg; e += BLOCK) {
        long long cc;
        const long long offset = element(v, e, &cc);
        const float value = load_f32(x, offset) + shift_of(shift, n, g * Cg + cc, shN, shC);
        count += 1.0f;
        const float delta = value - mean;
        mean += delta / count;
        m2 += delta * (value - mean);
    }
    s_count[threadIdx.x] = count; s_mean[threadIdx.x] = mean; s_m2[threadIdx.x] = m2;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            float c = s_count[threadIdx.x], m = s_mean[threadIdx.x], q = s_m2[threadIdx.x];
            welford_merge(c, m, q, s_count[threadIdx.x + stride], s_mean[threadIdx.x + stride],
                          s_m2[threadIdx.x + stride]);
            s_count[threadIdx.x] = c; s_mean[threadIdx.x] = m; s_m2[threadIdx.x] = q;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float* out = (float*)partial_addr + (ng * S + s) * 3;
        out[0] = s_count[0]; out[1] = s_mean[0]; out[2] = s_m2[0];
    }
}

extern "C" __global__ void forward_kernel(
        unsigned long long x_addr, unsigned long long y_addr,  /* y: same strides as x */
        unsigned long long weight_addr, unsigned long long bias_addr,  /* (C,) float32 or 0 */
        unsigned long long shift_addr, unsigned long long partial_addr,
        unsigned long long mean_addr, unsigned long long rstd_addr,     /* (N G,) float32 out */
        float eps, int activation, long long G, long long Cg, long long HW, long long HW_PER,
        long long S, long long sN, long long sC, long long sHW, long long shN, long long shC) {
    const storage_t* x = (const storage_t*)x_addr;
    storage_t* y = (storage_t*)y_addr;
    const float* weight = (const float*)weight_addr;
    const float* bias = (const float*)bias_addr;
    const float* shift = (const float*)shift_addr;
    const float* partial = (const float*)partial_addr;
    const long long ng = blockIdx.x, s = blockIdx.y, n = ng / G, g = ng - n * G;
    float count = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (long long k = 0; k < S; ++k) {  /* stage 2: the same order in every thread */
        const float* p = partial + (ng * S + k) * 3;
        welford_merge(count, mean, m2, p[0], p[1], p[2]);
    }
    const float rstd = 1.0f / sqrtf(m2 / count + eps);  /* biased variance */
    if (s == 0 && threadIdx.x == 0) {
        ((float*)mean_addr)[ng] = mean;
        ((float*)rstd_addr)[ng] = rstd;
    }
    const GroupView v = group_view(n, g, s, Cg, HW, HW_PER, sN, sC, sHW);
    for (long long e = threadIdx.x; e < v.length * Cg; e += BLOCK) {
        long long cc;
        const long long offset = element(v, e, &cc);
        const long long ch = g * Cg + cc;
        float z = (load_f32(x, offset) + shift_of(shift, n, ch, shN, shC) - mean) * rstd;
        if (weight != 0) z = z * weight[ch];
        if (bias != 0) z = z + bias[ch];
        if (activation) z = z / (1.0f + expf(-z));  /* SiLU: z sigmoid(z) */
        store_f32(y, offset, z);
    }
}

/* x_hat and dz = dL/dz (z = w x_hat + b before the SiLU) at one element */
__device__ __forceinline__ void backward_element(const storage_t* dy, const storage_t* x,
        const float* weight, const float* bias, const float* shift, long long n,
        long long ch, long long offset, long long shN, long long shC, float mean, float rstd,
        int activation, float* x_hat, float* dz) {
    *x_hat = (load_f32(x, offset) + shift_of(shift, n, ch, shN, shC) - mean) * rstd;
    float d = load_f32(dy, offset);
    if (activation) {
        float z = *x_hat;
        if (weight != 0) z = z * weight[ch];
        if (bias != 0) z = z + bias[ch];
        const float sig = 1.0f / (1.0f + expf(-z));
        d = d * sig * (1.0f + z * (1.0f - sig));  /* silu'(z) = s (1 + z (1 - s)) */
    }
    *dz = d;
}

/* per-channel sums over the lanes of the channels_last walk: thread t < Cg returns the sum of
   the values of threads t, t + Cg, t + 2 Cg, ... (lanes of them), in that order */
__device__ __forceinline__ float lane_sum(float value, float* scratch, long long Cg, long long lanes) {
    __syncthreads();  /* scratch may still be read by the previous call */
    scratch[threadIdx.x] = value;
    __syncthreads();
    float total = 0.0f;
    if (threadIdx.x < Cg) {
        for (long long k = 0; k < lanes; ++k) total += scratch[threadIdx.x + k * Cg];
    }
    return total;
}

extern "C" __global__ void backward_partials_kernel(
        unsigned long long dy_addr, unsigned long long x_addr,  /* dy: same strides as x */
        unsigned long long weight_addr, unsigned long long bias_addr, unsigned long long shift_addr,
        unsigned long long mean_addr, unsigned long long rstd_addr,
        unsigned long long partial_addr,  /* (3, N G, S, Cg) float32 out */
        long long plane, int activation, int need_x_hat_sum, long long G, long long Cg,
        long long HW, long long HW_PER, long long S, long long sN, long long sC, long long sHW,
        long long shN, long long shC) {
    __shared__ float scratch[BLOCK];
    const storage_t* dy = (const storage_t*)dy_addr;
    const storage_t* x = (const storage_t*)x_addr;
    const float* weight = (const float*)weight_addr;
    const float* bias = (const float*)bias_addr;
    const float* shift = (const float*)shift_addr;
    float* partial = (float*)partial_addr;
    const long long ng = blockIdx.x, s = blockIdx.y, n = ng / G, g = ng - n * G;
    const float mean = ((const float*)mean_addr)[ng], rstd = ((const float*)rstd_addr)[ng];
    const GroupView v = group_view(n, g, s, Cg, HW, HW_PER, sN, sC, sHW);
    if (v.channels_last && Cg <= BLOCK) {
        /* channels_last: thread t owns channel t % Cg of pixels t / Cg, t / Cg + lanes, ...:
           neighbouring threads read neighbouring channels of a pixel (contiguous memory; the
           channel-at-a-time walk below reads with stride C). The lanes of a channel are added
           in a fixed order (deterministic). */
        const long long lanes = BLOCK / Cg;
        const long long cc = threadIdx.x % Cg, lane = threadIdx.x / Cg, ch = g * Cg + cc;
        float sum_dz = 0.0f, sum_dz_x_hat = 0.0f, sum_x_hat = 0.0f;
        if (lane < lanes) {
            for (long long hw = lane; hw < v.length; hw += lanes) {
                const long long offset = v.base + cc + (v.hw_start + hw) * sHW;
                float x_hat, dz;
                backward_element(dy, x, weight, bias, shift, n, ch, offset, shN, shC, mean, rstd,
                                 activation, &x_hat, &dz);
                sum_dz += dz;
                sum_dz_x_hat += dz * x_hat;
                sum_x_hat += x_hat;
            }
        }
        sum_dz = lane_sum(sum_dz, scratch, Cg, lanes);
        sum_dz_x_hat = lane_sum(sum_dz_x_hat, scratch, Cg, lanes);
        if (need_x_hat_sum) sum_x_hat = lane_sum(sum_x_hat, scratch, Cg, lanes);
        if (threadIdx.x < Cg) {
            float* out = partial + (ng * S + s) * Cg + cc;
            out[0] = sum_dz;
            out[plane] = sum_dz_x_hat;
            if (need_x_hat_sum) out[2 * plane] = sum_x_hat;
        }
        return;
    }
    /* NCHW (or channels_last groups wider than a block): one channel at a time, threads over
       the chunk's hw */
    for (long long cc = 0; cc < Cg; ++cc) {
        const long long ch = g * Cg + cc;
        float sum_dz = 0.0f, sum_dz_x_hat = 0.0f, sum_x_hat = 0.0f;
        for (long long hw = threadIdx.x; hw < v.length; hw += BLOCK) {
            const long long offset = v.base + cc * sC + (v.hw_start + hw) * sHW;
            float x_hat, dz;
            backward_element(dy, x, weight, bias, shift, n, ch, offset, shN, shC, mean, rstd,
                             activation, &x_hat, &dz);
            sum_dz += dz;
            sum_dz_x_hat += dz * x_hat;
            sum_x_hat += x_hat;
        }
        sum_dz = block_sum(sum_dz, scratch);
        sum_dz_x_hat = block_sum(sum_dz_x_hat, scratch);
        if (need_x_hat_sum) sum_x_hat = block_sum(sum_x_hat, scratch);
        if (threadIdx.x == 0) {
            float* out = partial + (ng * S + s) * Cg + cc;
            out[0] = sum_dz;
            out[plane] = sum_dz_x_hat;
            if (need_x_hat_sum) out[2 * plane] = sum_x_hat;
        }
    }
}

extern "C" __global__ void backward_dx_kernel(
        unsigned long long dy_addr, unsigned long long x_addr, unsigned long long dx_addr,
        unsigned long long weight_addr, unsigned long long bias_addr, unsigned long long shift_addr,
        unsigned long long mean_addr, unsigned long long rstd_addr,
        unsigned long long mean_dx_hat_addr,        /* (N G,) float32 */
        unsigned long long mean_dx_hat_x_hat_addr,  /* (N G,) float32 */
        int activation, long long G, long long Cg, long long HW, long long HW_PER,
        long long sN, long long sC, long long sHW, long long shN, long long shC) {
    const storage_t* dy = (const storage_t*)dy_addr;
    const storage_t* x = (const storage_t*)x_addr;
    storage_t* dx = (storage_t*)dx_addr;
    const float* weight = (const float*)weight_addr;
    const float* bias = (const float*)bias_addr;
    const float* shift = (const float*)shift_addr;
    const long long ng = blockIdx.x, s = blockIdx.y, n = ng / G, g = ng - n * G;
    const float mean = ((const float*)mean_addr)[ng], rstd = ((const float*)rstd_addr)[ng];
    const float mean_dx_hat = ((const float*)mean_dx_hat_addr)[ng];
    const float mean_dx_hat_x_hat = ((const float*)mean_dx_hat_x_hat_addr)[ng];
    const GroupView v = group_view(n, g, s, Cg, HW, HW_PER, sN, sC, sHW);
    for (long long e = threadIdx.x; e < v.length * Cg; e += BLOCK) {
        long long cc;
        const long long offset = element(v, e, &cc);
        const long long ch = g * Cg + cc;
        float x_hat, dz;
        backward_element(dy, x, weight, bias, shift, n, ch, offset, shN, shC, mean, rstd,
                         activation, &x_hat, &dz);
        const float dx_hat = weight != 0 ? dz * weight[ch] : dz;
        store_f32(dx, offset, rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat));
    }
}
"""

GPU_CHUNK = 4096  # elements per block and chunk when the group is split


def _view_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    C = x.shape[1]
    HW = 1
    for d in x.shape[2:]:
        HW *= d
    if layout == "channels_last":
        return HW, C * HW, 1, C
    return HW, C * HW, HW, 1


def launch_config(N: int, G: int, Cg: int, HW: int, device: torch.device, *,
                  splits: int | None = None) -> tuple[int, int]:
    """(S, HW_PER): split every group into S chunks of HW_PER spatial positions so that N G S
    blocks fill the device (4 per SM), without chunks below GPU_CHUNK elements."""
    if splits is None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        sms = torch.cuda.get_device_properties(index).multi_processor_count
        wanted = -(-4 * sms // max(N * G, 1))
        by_size = max(1, (Cg * HW) // GPU_CHUNK)
        splits = min(wanted, by_size)
    splits = max(1, min(int(splits), HW))
    hw_per = -(-HW // splits)
    return -(-HW // hw_per), hw_per


def _prepare(x, shift):
    layout = dense_layout(x) or "contiguous"
    x = same_layout_or_copy(x, layout)
    if shift is not None:
        shift = shift.to(torch.float32)
    shN, shC = (shift.stride(0), shift.stride(1)) if shift is not None else (0, 0)
    return x, layout, shift, shN, shC


def _param(p):
    return None if p is None else p.to(torch.float32).contiguous()


def forward(x, weight, bias, shift, groups: int, eps: float, activation: bool, **config):
    """(y, mean, rstd): y like x (dtype, layout), mean/rstd (N * groups,) float32.

    weight, bias and shift are read as float32 (small copies when they are stored otherwise)."""
    x, layout, shift_x, shN, shC = _prepare(x, shift)
    N, C = x.shape[:2]
    G, Cg = groups, C // groups
    HW, sN, sC, sHW = _view_strides(x, layout)
    S, hw_per = launch_config(N, G, Cg, HW, x.device, **config)
    w, b = _param(weight), _param(bias)
    y = empty_like_layout(x, layout)
    partial = torch.empty((N * G, S, 3), dtype=torch.float32, device=x.device)
    mean = torch.empty((N * G,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((N * G,), dtype=torch.float32, device=x.device)
    sid = storage_id(x.dtype)
    grid = (N * G, S)
    geometry = (np.int64(G), np.int64(Cg), np.int64(HW), np.int64(hw_per))
    strides = (np.int64(sN), np.int64(sC), np.int64(sHW), np.int64(shN), np.int64(shC))
    launch(get_kernel(_SOURCE, "stats_kernel", STORAGE_ID=sid), grid, (BLOCK,),
           (address(x), address(shift_x), address(partial)) + geometry + (np.int64(S),) + strides,
           x.device)
    launch(get_kernel(_SOURCE, "forward_kernel", STORAGE_ID=sid), grid, (BLOCK,),
           (address(x), address(y), address(w), address(b), address(shift_x), address(partial),
            address(mean), address(rstd), np.float32(eps), np.int32(activation)) + geometry
           + (np.int64(S),) + strides, x.device)
    return y, mean, rstd


def backward(dy, x, weight, bias, shift, mean, rstd, groups: int, activation: bool, needs, **config):
    """(dx, dweight, dbias, dshift), each None where `needs` (4 bools) says it is not wanted."""
    x, layout, shift_x, shN, shC = _prepare(x, shift)
    dy = same_layout_or_copy(dy.to(x.dtype), layout)
    N, C = x.shape[:2]
    G, Cg = groups, C // groups
    HW, sN, sC, sHW = _view_strides(x, layout)
    S, hw_per = launch_config(N, G, Cg, HW, x.device, **config)
    w, b = _param(weight), _param(bias)
    need_dx, need_dweight, need_dbias, need_dshift = (bool(v) for v in needs)
    need_dshift = need_dshift and shift is not None
    plane = N * G * S * Cg
    partial = torch.empty((3, N * G, S, Cg), dtype=torch.float32, device=x.device)
    sid = storage_id(x.dtype)
    grid = (N * G, S)
    geometry = (np.int64(G), np.int64(Cg), np.int64(HW), np.int64(hw_per))
    strides = (np.int64(sN), np.int64(sC), np.int64(sHW), np.int64(shN), np.int64(shC))
    launch(get_kernel(_SOURCE, "backward_partials_kernel", STORAGE_ID=sid), grid, (BLOCK,),
           (address(dy), address(x), address(w), address(b), address(shift_x), address(mean),
            address(rstd), address(partial), np.int64(plane), np.int32(activation),
            np.int32(need_dshift)) + geometry + (np.int64(S),) + strides, x.device)
    mean_dx_hat, mean_dx_hat_x_hat, dweight, dbias, dshift = backward_stage2(
        partial, weight, bias, shift, rstd, N, G, Cg, HW, need_dweight, need_dbias, need_dshift)
    dx = None
    if need_dx:
        dx = empty_like_layout(x, layout)
        launch(get_kernel(_SOURCE, "backward_dx_kernel", STORAGE_ID=sid), grid, (BLOCK,),
               (address(dy), address(x), address(dx), address(w), address(b), address(shift_x),
                address(mean), address(rstd), address(mean_dx_hat), address(mean_dx_hat_x_hat),
                np.int32(activation)) + geometry + strides, x.device)
    return dx, dweight, dbias, dshift

