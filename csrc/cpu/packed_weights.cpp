// The packed-weight cache (cpu/packed_weights.h).
#include "cpu/packed_weights.h"

#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <list>
#include <mutex>
#include <sstream>
#include <vector>

#include "common/info.h"
#include "cpu/dispatch.h"

namespace fastconv {
namespace cpu {
namespace {

// Which weight (and which version of it) an entry was packed from.
struct Source {
  const c10::StorageImpl* storage;
  const void* data;
  int64_t offset;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;

  explicit Source(const at::Tensor& w)
      : storage(w.storage().unsafeGetStorageImpl()), data(w.const_data_ptr()), offset(w.storage_offset()),
        sizes(w.sizes().vec()), strides(w.strides().vec()), dtype(w.scalar_type()) {}
  bool operator==(const Source& o) const {
    return storage == o.storage && data == o.data && offset == o.offset && sizes == o.sizes && strides == o.strides &&
           dtype == o.dtype;
  }
};

struct Entry {
  c10::weak_intrusive_ptr<c10::StorageImpl> alive;  // keeps the StorageImpl's address from reuse
  Source source;
  uint32_t version;
  Isa isa;
  PackTag tag;
  int64_t bytes;
  std::shared_ptr<const void> buffer;
};

int64_t limit_from_env() {
  const char* v = std::getenv("FASTCONV_PACKED_WEIGHTS_MB");
  if (!v) return int64_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(v, &end, 10);
  return end != v && mb >= 0 ? int64_t(mb) << 20 : int64_t(1024) << 20;  // a bad value: the default
}

// Entries most recently used first; `bytes` their total.
struct Cache {
  std::mutex mutex;
  std::list<Entry> entries;
  int64_t bytes = 0;
  const int64_t limit = limit_from_env();

  void erase(std::list<Entry>::iterator it) {
    bytes -= it->bytes;
    entries.erase(it);
  }
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: kernels may run during interpreter exit
  return *c;
}

}  // namespace

bool packed_weights_cacheable(const at::Tensor& weight) {
  if (cache().limit == 0 || weight.is_inference()) return false;
  return !weight.requires_grad() || c10::InferenceMode::is_enabled();
}

CachedBuffer find_packed(const at::Tensor& weight, const PackTag& tag) {
  const Source source(weight);
  const uint32_t version = weight._version();
  const Isa isa = current_isa();
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto it = c.entries.begin(); it != c.entries.end();) {
    auto next = std::next(it);
    if (it->alive.expired()) {  // its weight is gone (the address may now be another tensor's)
      c.erase(it);
    } else if (it->version == version && it->isa == isa && it->tag == tag && it->source == source) {
      c.entries.splice(c.entries.begin(), c.entries, it);
      return {it->buffer.get(), it->buffer};
    }
    it = next;
  }
  return {};
}

CachedBuffer store_packed(const at::Tensor& weight, const PackTag& tag, int64_t bytes,
                          void (*fill)(void* dst, const void* ctx), const void* ctx) {
  const size_t alloc = size_t(round_up(std::max<int64_t>(bytes, 1), 64));
  void* p = std::aligned_alloc(64, alloc);
  if (!p) throw std::bad_alloc();
  std::shared_ptr<const void> buffer(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  fill(p, ctx);
  Cache& c = cache();
  if (bytes > c.limit) return {p, buffer};  // too large to keep: used once
  Entry e{weight.storage().getWeakStorageImpl(), Source(weight), uint32_t(weight._version()), current_isa(), tag,
          bytes, buffer};
  std::lock_guard<std::mutex> lock(c.mutex);
  // One entry per (weight view, layout): drop older versions, and entries whose weight is gone.
  for (auto it = c.entries.begin(); it != c.entries.end();) {
    auto next = std::next(it);
    if (it->alive.expired() || (it->tag == tag && it->isa == e.isa && it->source == e.source)) c.erase(it);
    it = next;
  }
  while (c.bytes + bytes > c.limit && !c.entries.empty()) c.erase(std::prev(c.entries.end()));  // LRU last
  c.bytes += bytes;
  c.entries.push_front(std::move(e));
  return {p, buffer};
}

void clear_packed_weights() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.entries.clear();
  c.bytes = 0;
}

std::string packed_weights_json() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto it = c.entries.begin(); it != c.entries.end();) {
    auto next = std::next(it);
    if (it->alive.expired()) c.erase(it);
    it = next;
  }
  std::ostringstream os;
  os << "{\"entries\": " << c.entries.size() << ", \"bytes\": " << c.bytes << ", \"limit_bytes\": " << c.limit
     << "}";
  return os.str();
}

}  // namespace cpu

std::string cpu_packed_weights_json() { return cpu::packed_weights_json(); }
void clear_cpu_packed_weights() { cpu::clear_packed_weights(); }

}  // namespace fastconv
