// Packed (or transformed) convolution weights reused across calls while the weight is unchanged.
//
// Every forward kernel that reorganises its weight before computing (GEMM A panels, the direct
// kernels' 8-channel blocks, Winograd's U = G g G^T) gets that form through packed_weight(): in
// inference it is looked up in a process-wide cache and computed only when missing; otherwise it
// is computed into the caller's scratch buffer, exactly as before (training pays one branch).
//
// When the cache is used: the weight does not require a gradient, or InferenceMode is on. (The
// Python layer, fastconv.functional, passes weight.detach() when grad mode is off, so eval under
// torch.no_grad() qualifies; inside a training forward the weight still requires grad.) Inference
// tensors (made under InferenceMode) have no version counter and are never cached.
//
// What an entry is valid for (all compared on lookup):
//   - the weight's storage, held by a weak reference (a freed storage cannot be mistaken for a new
//     one at the same address: the weak reference keeps the StorageImpl's memory; an expired
//     entry is dropped), its data pointer, storage offset, sizes, strides and dtype;
//   - the weight's version counter (shared by the parameter and its detach()ed aliases): every
//     in-place change through PyTorch (w.add_(1), w.copy_(..) under no_grad, load_state_dict,
//     optimizer steps) bumps it, and the next call repacks. A change PyTorch does not version
//     (writes through w.data, numpy views, raw pointers) is not seen: call clear_packed_weights().
//   - the packed layout: kernel, ISA, and the shape numbers that determine it (PackTag).
// One entry per (storage view, tag): a newer version replaces the older. Total size bounded
// (FASTCONV_PACKED_WEIGHTS_MB, default 1024; 0 disables the cache): least recently used entries
// are evicted first; a layout larger than the bound is not cached. Thread-safe: one mutex around
// the lookups; packing runs outside it; an entry in use is kept alive by its shared_ptr.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {

// The packed layout of one kernel: `kind` names the packing function, `dims` the shape numbers
// (and micro-kernel sizes) its output depends on. The ISA in use is added by packed_weight().
struct PackTag {
  enum Kind : int { kGemmA = 1, kDirect, kWinograd } kind;
  std::array<int64_t, 6> dims;
  bool operator==(const PackTag& o) const { return kind == o.kind && dims == o.dims; }
};

// Whether packed_weight() may use the cache for this weight now (see the header comment).
bool packed_weights_cacheable(const at::Tensor& weight);

// A cached buffer (nullptr data: not found). `hold` keeps it alive while a kernel reads it.
struct CachedBuffer {
  const void* data = nullptr;
  std::shared_ptr<const void> hold;
};
CachedBuffer find_packed(const at::Tensor& weight, const PackTag& tag);
// Stores a buffer of `bytes` bytes filled by fill(dst) (64-byte aligned) for weight and tag;
// returns it (its data is valid while `hold` lives, cached or not).
CachedBuffer store_packed(const at::Tensor& weight, const PackTag& tag, int64_t bytes,
                          void (*fill)(void* dst, const void* ctx), const void* ctx);

// The packed form of `weight` (count elements of T written by fill(T* dst)): from the cache when
// the weight qualifies, else packed into `scratch`. The result is valid while `hold` lives (and,
// for the scratch, until the calling thread's next use of it).
template <typename T>
struct Packed {
  const T* data;
  std::shared_ptr<const void> hold;
};

template <typename T, typename Fill>
Packed<T> packed_weight(const at::Tensor& weight, const PackTag& tag, int64_t count, Scratch<T>& scratch,
                        const Fill& fill) {
  if (packed_weights_cacheable(weight)) {
    CachedBuffer hit = find_packed(weight, tag);
    if (!hit.data) {
      hit = store_packed(weight, tag, count * int64_t(sizeof(T)),
                         [](void* dst, const void* ctx) { (*static_cast<const Fill*>(ctx))(static_cast<T*>(dst)); },
                         &fill);
    }
    return {static_cast<const T*>(hit.data), std::move(hit.hold)};
  }
  T* dst = scratch.get(count);
  fill(dst);
  return {dst, nullptr};
}

// Drops every entry (fastconv.clear_packed_weights).
void clear_packed_weights();

// {"entries": n, "bytes": b, "limit_bytes": l} as JSON (fastconv.info()["packed_weights"]).
std::string packed_weights_json();

}  // namespace cpu
}  // namespace fastconv
