// The tile configurations of the tensor-core convolution (conv2d_tc.cuh) and the test switch that
// forces one of them. Plain C++ (no CUDA): the launcher (conv2d_launch.h), fastconv.info() and the
// emulator module read the same table, and Python sees it as fastconv.info()["cuda_conv_configs"].
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastconv {
namespace cuda {

// One block tile: BM output pixels x BN output channels, K walked 64 bytes per stage (BK = 32
// halfs or 16 floats), WARPS_M x WARPS_N warps, STAGES cp.async stages of (BM + BN) * 64 bytes.
// blocks_per_sm: blocks an SM holds (shared memory and the 255-register cap at these block sizes,
// sm_80; also the kernel's __launch_bounds__ minimum); eff: mainloop efficiency relative to
// 128x128, used by the tile heuristic: multiply-adds per cycle when every SM streams its stages from
// L2 at once (A100: ~33 bytes per clock per SM against ~870 bf16 multiply-adds issued), i.e.
// min(1, BM*BN / (BM + BN) / 53), lowered further where the warps' shared-memory fragment reads
// outlast the MMAs (a warp tile of 64x32 reads 3 KiB per 32 MMAs, 32x32 2 KiB per 16).
struct TcConfig {
  const char* name;
  int bm, bn, bk_bytes, warps_m, warps_n, stages;
  int blocks_per_sm;
  double eff;
  constexpr int threads() const { return 32 * warps_m * warps_n; }
  constexpr int smem_bytes() const { return stages * (bm + bn) * bk_bytes; }
};

// 128x128: the deep layers; 192x128 (one block of 8 warps per SM, 96x32 warp tiles): the same
// layers where 128x128 leaves the last wave mostly empty (VGG16 conv3_x / conv4_x at batch 32 on
// 108 SMs: 7.26 waves of 128x128, 9.69 of 192x128); 256x64 / 256x32: 64 / 32 output channels over many pixels (the A tile
// of a tap is reloaded from L2 once per N tile, the B tile once per M tile: the long M side halves
// the B share); 64x128 / 32x128: the weight gradient of 64 / 32 output channels (M = K there, so no
// half-empty rows) and small grids.
constexpr int kTcConfigs = 8;
constexpr TcConfig kTcConfig[kTcConfigs] = {
    {"tc128x128", 128, 128, 64, 2, 4, 3, 2, 1.00},
    {"tc128x64", 128, 64, 64, 2, 2, 4, 3, 0.85},
    {"tc64x64", 64, 64, 64, 2, 2, 4, 4, 0.70},
    {"tc256x64", 256, 64, 64, 4, 2, 3, 2, 0.96},
    {"tc256x32", 256, 32, 64, 4, 1, 3, 2, 0.53},
    {"tc64x128", 64, 128, 64, 2, 4, 4, 2, 0.80},
    {"tc32x128", 32, 128, 64, 1, 4, 4, 4, 0.48},
    {"tc192x128", 192, 128, 64, 2, 4, 4, 1, 1.00},
};

// Test switch (fastconv.testing.force_cuda_conv_config): -2 "auto" (the heuristic), -1 "simt"
// (the FP32 FFMA implicit GEMM of igemm.cuh), i >= 0: kTcConfig[i] wherever the tensor-core path
// applies (elsewhere the automatic choice). One copy per module (_C and _simt each keep their own).
inline int& forced_conv_config() {
  static int v = -2;
  return v;
}

inline const char* conv_config_name(int i) { return i == -2 ? "auto" : i == -1 ? "simt" : kTcConfig[i].name; }

// Sets the switch; returns the previous setting's name. Raises std::invalid_argument for an unknown
// name.
inline std::string set_cuda_conv_config(std::string name) {
  int v = -3;
  if (name == "auto") v = -2;
  else if (name == "simt") v = -1;
  for (int i = 0; i < kTcConfigs; ++i)
    if (name == kTcConfig[i].name) v = i;
  if (v == -3) {
    std::string all = "auto, simt";
    for (int i = 0; i < kTcConfigs; ++i) all += std::string(", ") + kTcConfig[i].name;
    throw std::invalid_argument("fastconv: unknown CUDA conv config '" + name + "' (one of " + all + ")");
  }
  const int prev = forced_conv_config();
  forced_conv_config() = v;
  return conv_config_name(prev);
}

// Wave-quantisation-aware tile choice for a GEMM of M output pixels x K output channels on `sms`
// SMs: a wave is sms * blocks_per_sm blocks, and an SM busy with r blocks of BM x BN takes
// ~ r * BM * BN / eff per K step, r = min(blocks_per_sm, the blocks per SM of a single wave), so the
// estimate is waves * r * BM * BN / eff. Big GEMMs get 128x128, 64-channel layers 256x64,
// 32-channel ones 256x32, small grids 64x64 / 64x128. The test switch overrides it. Also torch.ops.fastconv._cuda_conv_config_for, for the
// GPU performance model (benchmarks/gpu_model.py).
inline double tc_waves_cost(const TcConfig& c, int64_t blocks, int64_t sms) {
  const int64_t slots = sms * c.blocks_per_sm, resident = std::min<int64_t>(c.blocks_per_sm, (blocks + sms - 1) / sms);
  return double((blocks + slots - 1) / slots) * double(resident) * c.bm * c.bn / c.eff;
}
inline int pick_tc_config(int64_t M, int64_t K, int64_t sms) {
  if (forced_conv_config() >= 0) return forced_conv_config();
  int best = 0;
  double best_t = 0;
  for (int i = 0; i < kTcConfigs; ++i) {
    const TcConfig& c = kTcConfig[i];
    const double t = tc_waves_cost(c, ((M + c.bm - 1) / c.bm) * ((K + c.bn - 1) / c.bn), sms);
    if (i == 0 || t < best_t) best = i, best_t = t;
  }
  return best;
}

inline std::string cuda_conv_config_for(int64_t M, int64_t K, int64_t sms) {
  return kTcConfig[pick_tc_config(M, K, sms)].name;
}

// The weight gradient's plan (conv2d_tc_wgrad.cuh): a GEMM of K output channels x rsc = R*S*Cp
// columns over ktiles stages of pixels, split into `splits` ranges of the pixels, each summed by
// its own blocks into an fp32 workspace. For each configuration (the forced one only, under the
// test switch) and split count, the estimate is (stages per split + kWgradSplitCost) times
// tc_waves_cost of the tiles x splits blocks: splitting shortens the blocks and fills the waves,
// each split adds one partial tile's store and its read by the reduction (~ kWgradSplitCost
// stages). Splits are at most ktiles / kWgradMinStages (a split keeps a pipeline's worth of
// stages), four waves' worth of blocks (more only adds reduction work), a workspace of
// kWgradWorkspaceBytes and 65535 (gridDim.z). Also torch.ops.fastconv._cuda_wgrad_plan_for, for
// benchmarks/gpu_model.py.
struct TcWgradPlan {
  int config;
  int64_t splits;
};
constexpr int kWgradSplitCost = 8, kWgradMinStages = 16;
constexpr int64_t kWgradWorkspaceBytes = int64_t(64) << 20;
inline TcWgradPlan pick_tc_wgrad(int64_t K, int64_t rsc, int64_t ktiles, int64_t sms) {
  const int64_t max_splits = std::min<int64_t>(65535, kWgradWorkspaceBytes / (4 * K * rsc));
  TcWgradPlan best{0, 1};
  double best_t = -1;
  for (int i = 0; i < kTcConfigs; ++i) {
    if (forced_conv_config() >= 0 && i != forced_conv_config()) continue;
    const TcConfig& c = kTcConfig[i];
    const int64_t tiles = ((K + c.bm - 1) / c.bm) * ((rsc + c.bn - 1) / c.bn);
    const int64_t slots = sms * c.blocks_per_sm;
    const int64_t most = std::max<int64_t>(1, std::min({max_splits, ktiles / kWgradMinStages, (4 * slots + tiles - 1) / tiles}));
    for (int64_t s = 1; s <= most; ++s) {
      const double t = double((ktiles + s - 1) / s + kWgradSplitCost) * tc_waves_cost(c, tiles * s, sms);
      if (best_t < 0 || t < best_t) best = {i, s}, best_t = t;
    }
  }
  return best;
}

inline std::string cuda_wgrad_plan_for(int64_t K, int64_t rsc, int64_t ktiles, int64_t sms) {
  const TcWgradPlan p = pick_tc_wgrad(K, rsc, ktiles, sms);
  return std::string(kTcConfig[p.config].name) + " " + std::to_string(p.splits);
}

// The table as a JSON list (fastconv.info()["cuda_conv_configs"]).
inline std::string tc_configs_json() {
  std::string s = "[";
  for (int i = 0; i < kTcConfigs; ++i) {
    const TcConfig& c = kTcConfig[i];
    s += std::string(i ? ", " : "") + "{\"name\": \"" + c.name + "\", \"bm\": " + std::to_string(c.bm) +
         ", \"bn\": " + std::to_string(c.bn) + ", \"bk_bytes\": " + std::to_string(c.bk_bytes) +
         ", \"bk\": {\"float16\": " + std::to_string(c.bk_bytes / 2) + ", \"bfloat16\": " +
         std::to_string(c.bk_bytes / 2) + ", \"float32\": " + std::to_string(c.bk_bytes / 4) +
         "}, \"warps\": " + std::to_string(c.warps_m * c.warps_n) + ", \"warps_m\": " + std::to_string(c.warps_m) +
         ", \"warps_n\": " + std::to_string(c.warps_n) + ", \"threads\": " + std::to_string(c.threads()) +
         ", \"stages\": " + std::to_string(c.stages) + ", \"smem_bytes\": " + std::to_string(c.smem_bytes()) +
         ", \"blocks_per_sm\": " + std::to_string(c.blocks_per_sm) + ", \"eff\": " + std::to_string(c.eff) +
         ", \"mma\": {\"float16\": \"m16n8k16\", \"bfloat16\": \"m16n8k16\", \"float32\": \"m16n8k8.tf32\"}}";
  }
  return s + "]";
}

}  // namespace cuda
}  // namespace fastconv
