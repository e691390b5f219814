// Grouped (segmented) float32 matmuls for XLA:CPU, called through the XLA FFI.
//
// Rows of a [M, *] buffer are split into G segments (starts[g], lengths[g]), one per expert;
// segment g is multiplied by its own weight matrix. This is the CPU twin of jax.lax.ragged_dot,
// which on CPU falls back to a dense computation doing G times the work. Opt-in
// (MoeConfig.grouped_matmul = 'cpu_ffi'): it needs AVX-512, and build.py builds it. Three
// products cover the forward and backward passes of an expert FFN (x: rows, w: [G, K, N]):
//
//   nn: out[M, N]    = x[M, K]  @ w[g]       for the rows of segment g   (forward)
//   nt: out[M, K]    = dy[M, N] @ w[g]^T     for the rows of segment g   (input gradient)
//   tn: out[G, K, N] = x[seg g]^T @ dy[seg g]                           (weight gradient)
//
// Rows outside every segment get zeros (nn, nt); an empty segment gets a zero gradient (tn).
//
// Why a kernel: with many experts each segment holds few rows (4096 tokens / 128 experts = 32),
// and a general GEMM spends as long packing and streaming each thin weight matrix as it does
// multiplying. Here each weight block is read from memory once (prefetched while the previous
// block computes), packed into cache-sized panels and reused by every row block of the segment
// (nn, tn, and nt for deep segments or long weight rows, whose panels are transposed weight
// rows). The input gradient of a thinner segment (< 64 rows, weight rows <= 512 floats) is
// computed weight-stationary instead (nt_thin).
// Work is split over (segment, column block) tasks run on XLA's intra-op thread pool.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include <immintrin.h>
#include <sys/mman.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
constexpr int kLanes = 16;
// A 6 x 64 micro-tile keeps 24 accumulators in registers and needs one broadcast per 4 FMAs
// (timed against 8 x 32, 8 x 48 and 12 x 32 tiles: the fastest at 512 rows per expert).
constexpr int kVecs = 4;               // vectors per micro-tile row
constexpr int kNr = kVecs * kLanes;    // columns of a micro-tile
constexpr int kMr = 6;                 // rows of a micro-tile
constexpr int kKc = 128;         // reduction depth of a packed panel
constexpr int kNb = kNr * (256 / kNr);   // columns of one task (nn, tn)
constexpr int kKb = 64;          // output columns of one task (nt)
constexpr int kPackedNtRows = 64;  // nt: segments this deep amortise transposing weight panels
// nt: past this depth n the thin path's dy^T panel (n x up to 64 floats) crowds L2, and the
// packed path is faster at any row count (timed at 24-44 rows: at n = 2048 the packed path
// wins, at n = 512 the thin one).
constexpr int64_t kThinNtMaxDepth = 512;

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

// How a micro-tile writes its result: overwrite, add to what is there, or overwrite with
// non-temporal stores (a result nobody reads soon, e.g. a weight gradient: no read-for-ownership,
// no cache pollution).
enum class Store { kWrite, kAdd, kStream };

// Non-temporal store of v to 64-byte aligned p.
inline void stream(float* p, v16 v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#elif defined(__AVX__)
  float lanes[kLanes];
  store(lanes, v);
  _mm256_stream_ps(p, _mm256_loadu_ps(lanes));
  _mm256_stream_ps(p + 8, _mm256_loadu_ps(lanes + 8));
#else
  store(p, v);
#endif
}

inline void store_vector(float* p, v16 v, Store mode) {
  if (mode == Store::kAdd) {
    store(p, load(p) + v);
  } else if (mode == Store::kStream && reinterpret_cast<uintptr_t>(p) % sizeof(v16) == 0) {
    stream(p, v);
  } else {
    store(p, v);
  }
}

// c[MR, nr] (op)= sum_p a(i, p) * panel[p, :]; a(i, p) = a[i * a_row + p * a_red];
// panel: [depth, kNr] contiguous (columns past nr are zero padding).
// Walks the cache lines of a block of rows (`Upcoming`) for prefetching, row by row.
struct PrefetchCursor {
  const char* row = nullptr;
  int64_t row_bytes_stride = 0;
  int line = 0;            // next line of `row`
  int lines_per_row = 0;
  int64_t remaining = 0;   // lines left in the block

  void prefetch_next() {
    __builtin_prefetch(row + line * 64, 0, 2);
    if (++line == lines_per_row) {
      line = 0;
      row += row_bytes_stride;
    }
    --remaining;
  }
};

// Also prefetches the next `num_prefetch` lines of `cursor`, one per step of p. V: vectors
// per row (panel rows are V * kLanes floats apart).
template <int MR, int V>
void micro_tile(int depth, const float* a, int64_t a_row, int64_t a_red, const float* panel,
                float* c, int64_t ldc, int nr, Store mode, PrefetchCursor& cursor,
                int num_prefetch) {
  constexpr int kWidth = V * kLanes;
  PrefetchCursor local = cursor;   // in registers for the loop
  v16 acc[MR][V];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < V; ++v) acc[i][v] = v16{};
  }
  for (int p = 0; p < depth; ++p) {
    if (p < num_prefetch) local.prefetch_next();
    v16 b[V];
    for (int v = 0; v < V; ++v) b[v] = load(panel + p * kWidth + v * kLanes);
    for (int i = 0; i < MR; ++i) {
      const float s = a[i * a_row + p * a_red];
      for (int v = 0; v < V; ++v) acc[i][v] += s * b[v];
    }
  }
  for (int p = depth; p < num_prefetch; ++p) local.prefetch_next();
  cursor = local;
  for (int i = 0; i < MR; ++i) {
    float* row = c + i * ldc;
    if (nr == kWidth) {
      for (int v = 0; v < V; ++v) store_vector(row + v * kLanes, acc[i][v], mode);
    } else {
      float tile[kWidth];
      for (int v = 0; v < V; ++v) store(tile + v * kLanes, acc[i][v]);
      for (int j = 0; j < nr; ++j) row[j] = mode == Store::kAdd ? row[j] + tile[j] : tile[j];
    }
  }
}

using MicroTileFn = void (*)(int, const float*, int64_t, int64_t, const float*, float*, int64_t,
                             int, Store, PrefetchCursor&, int);
template <int V, int... MR>
constexpr std::array<MicroTileFn, sizeof...(MR) + 1> micro_tiles(
    std::integer_sequence<int, MR...>) {
  return {nullptr, micro_tile<MR + 1, V>...};
}
// kMicroTiles[mr]: mr x kNr tiles (24 accumulators at mr = kMr).
constexpr auto kMicroTiles = micro_tiles<kVecs>(std::make_integer_sequence<int, kMr>());

// panel[s][p][0:kNr] = b[p0 + p, n0 + s * kNr + j] (zero past nb): panels of width kNr.
void pack_panels(const float* b, int64_t ldb, int64_t p0, int depth, int64_t n0, int nb,
                 float* panel) {
  for (int s = 0; s * kNr < nb; ++s) {
    const int width = std::min(kNr, nb - s * kNr);
    float* out = panel + static_cast<int64_t>(s) * depth * kNr;
    for (int p = 0; p < depth; ++p) {
      const float* src = b + (p0 + p) * ldb + n0 + s * kNr;
      float* dst = out + p * kNr;
      if (width == kNr) {   // the common case, without a library call
        for (int v = 0; v < kVecs; ++v) store(dst + v * kLanes, load(src + v * kLanes));
      } else {
        std::memcpy(dst, src, width * sizeof(float));
        std::memset(dst + width, 0, (kNr - width) * sizeof(float));
      }
    }
  }
}

// The rows the next pack_panels will read. A thin segment does little arithmetic per weight
// element, so the next block is prefetched while this one computes: otherwise each pack waits
// on memory with the core idle.
struct Upcoming {
  const float* first = nullptr;  // element (row 0, column 0) of the block
  int64_t ld = 0;
  int rows = 0;
  int width = 0;                 // floats per row
};

// c[rows, nb] (op)= a-block @ panels: rows in blocks of kMr, panels in blocks of kNr; the
// lines of `next` are prefetched spread evenly over the micro-tiles.
void panel_product(int rows, int depth, const float* a, int64_t a_row, int64_t a_red,
                   const float* panel, int nb, float* c, int64_t ldc, Store mode,
                   const Upcoming& next) {
  const int lines_per_row = (next.width * 4 + 63) / 64;
  PrefetchCursor cursor{reinterpret_cast<const char*>(next.first), next.ld * 4, 0, lines_per_row,
                        int64_t{next.rows} * lines_per_row};
  const int row_blocks = (rows + kMr - 1) / kMr, col_panels = (nb + kNr - 1) / kNr;
  const int tiles = row_blocks * col_panels;
  const int64_t total = cursor.remaining;
  for (int t = 0; t < tiles; ++t) {
    const int count = static_cast<int>((t + 1) * total / tiles - t * total / tiles);
    const int i = (t / col_panels) * kMr, s = t % col_panels;
    const int mr = std::min(kMr, rows - i);
    kMicroTiles[mr](depth, a + i * a_row, a_row, a_red,
                    panel + static_cast<int64_t>(s) * depth * kNr, c + i * ldc + s * kNr, ldc,
                    std::min(kNr, nb - s * kNr), mode, cursor, count);
  }
}

// Runs task(t, next) for t in [0, num_tasks) on the calling thread and the intra-op pool;
// `next` is the task the same thread runs after t (-1 if none), so t can prefetch its inputs.
template <typename Task>
void parallel_tasks(ffi::ThreadPool& pool, int64_t num_tasks, Task task) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, num_tasks, task]() {
    for (int64_t t = state->next.fetch_add(1); t < num_tasks;) {
      const int64_t following = state->next.fetch_add(1);
      task(t, following < num_tasks ? following : -1);
      __builtin_ia32_sfence();   // order any non-temporal stores before the release below
      state->done.fetch_add(1, std::memory_order_release);
      t = following;
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_tasks) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  // Helpers that start late find no task left; they hold `state`, not this frame.
  while (state->done.load(std::memory_order_acquire) < num_tasks) {
    __builtin_ia32_pause();
  }
}

// Maps in a fresh output buffer before the kernel writes it. XLA:CPU allocates every output
// anew and glibc maps large blocks with a fresh mmap, so the first write to each 4 KiB page
// faults (262k faults for a 1 GiB weight gradient). One MADV_POPULATE_WRITE per chunk, split
// over the threads, maps the same pages without a trap per page, which takes a large share of
// the page-fault time off a step with large weight gradients. (Transparent huge pages are not
// used: on a virtual machine that hands freed pages back to its host they made steps slower.)
// Kernels without MADV_POPULATE_WRITE (Linux < 5.14) refuse it and the writes fault as before.
void populate_output(ffi::ThreadPool& pool, float* data, size_t bytes) {
#ifdef MADV_POPULATE_WRITE
  constexpr size_t kMinBytes = size_t{4} << 20, kChunks = 64;
  constexpr uintptr_t kPage = 4096;
  if (bytes < kMinBytes) return;
  const uintptr_t first = (reinterpret_cast<uintptr_t>(data) + kPage - 1) & ~(kPage - 1);
  const uintptr_t last = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kPage - 1);
  parallel_tasks(pool, kChunks, [=](int64_t c, int64_t) {
    const uintptr_t begin = first + ((last - first) / kPage * c / kChunks) * kPage;
    const uintptr_t end = first + ((last - first) / kPage * (c + 1) / kChunks) * kPage;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
  });
#endif
}

struct Segments {
  const int32_t* starts;
  const int32_t* lengths;
  int64_t count;
};

ffi::Error check_segments(const Segments& seg, int64_t rows) {
  for (int64_t g = 0; g < seg.count; ++g) {
    const int64_t s = seg.starts[g], n = seg.lengths[g];
    if (s < 0 || n < 0 || s + n > rows) {
      return ffi::Error::InvalidArgument("grouped_matmul: segment " + std::to_string(g) +
                                         " (start " + std::to_string(s) + ", length " +
                                         std::to_string(n) + ") is outside the " +
                                         std::to_string(rows) + " rows");
    }
  }
  return ffi::Error::Success();
}

// Zeroes the rows of out[rows, width] that no segment covers.
void zero_uncovered(const Segments& seg, int64_t rows, int64_t width, float* out) {
  std::vector<char> covered(rows, 0);
  for (int64_t g = 0; g < seg.count; ++g) {
    std::fill_n(covered.begin() + seg.starts[g], seg.lengths[g], 1);
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (!covered[r]) std::memset(out + r * width, 0, width * sizeof(float));
  }
}

// The shared start of nn and nt, whose output out[rows, width] follows the input's rows:
// checks the segments, maps the output in and zeroes the rows no segment covers.
ffi::Error prepare_row_output(ffi::ThreadPool& pool, const Segments& seg, int64_t rows,
                              int64_t width, ffi::ResultBuffer<ffi::F32>& out) {
  if (ffi::Error e = check_segments(seg, rows); e.failure()) return e;
  populate_output(pool, out->typed_data(), out->size_bytes());
  zero_uncovered(seg, rows, width, out->typed_data());
  return ffi::Error::Success();
}

// out[M, N] = x[M, K] @ w[g] on each segment's rows.
ffi::Error GroupedNN(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                     ffi::Buffer<ffi::S32> starts, ffi::Buffer<ffi::S32> lengths,
                     ffi::ResultBuffer<ffi::F32> out) {
  const int64_t m = x.dimensions()[0], k = x.dimensions()[1], n = w.dimensions()[2];
  const Segments seg{starts.typed_data(), lengths.typed_data(), w.dimensions()[0]};
  if (ffi::Error e = prepare_row_output(pool, seg, m, n, out); e.failure()) return e;
  const float *xd = x.typed_data(), *wd = w.typed_data();
  float* od = out->typed_data();
  const int64_t col_blocks = (n + kNb - 1) / kNb;
  // The first weight block of task t (read by its first pack).
  auto first_block = [=](int64_t t) {
    const int64_t g = t / col_blocks, n0 = (t % col_blocks) * kNb;
    if (t < 0 || seg.lengths[g] == 0) return Upcoming{};
    return Upcoming{wd + g * k * n + n0, n, static_cast<int>(std::min<int64_t>(kKc, k)),
                    static_cast<int>(std::min<int64_t>(kNb, n - n0))};
  };
  parallel_tasks(pool, seg.count * col_blocks, [=](int64_t t, int64_t following) {
    const int64_t g = t / col_blocks, n0 = (t % col_blocks) * kNb;
    const int rows = seg.lengths[g], nb = static_cast<int>(std::min<int64_t>(kNb, n - n0));
    if (rows == 0) return;
    thread_local std::vector<float> panel;
    panel.resize(static_cast<size_t>(kKc) * kNb);
    const float* wg = wd + g * k * n;
    const float* xg = xd + static_cast<int64_t>(seg.starts[g]) * k;
    float* og = od + static_cast<int64_t>(seg.starts[g]) * n + n0;
    for (int64_t p0 = 0; p0 < k; p0 += kKc) {
      const int depth = static_cast<int>(std::min<int64_t>(kKc, k - p0));
      pack_panels(wg, n, p0, depth, n0, nb, panel.data());
      const int64_t p1 = p0 + kKc;
      const Upcoming next = p1 < k ? Upcoming{wg + p1 * n + n0, n,
                                              static_cast<int>(std::min<int64_t>(kKc, k - p1)), nb}
                                   : first_block(following);
      panel_product(rows, depth, xg + p0, k, 1, panel.data(), nb, og, n,
                    p0 > 0 ? Store::kAdd : Store::kWrite, next);
    }
  });
  return ffi::Error::Success();
}

// out[g] = x[seg g]^T @ dy[seg g]: x [M, K], dy [M, N], out [G, K, N].
ffi::Error GroupedTN(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                     ffi::Buffer<ffi::S32> starts, ffi::Buffer<ffi::S32> lengths,
                     ffi::ResultBuffer<ffi::F32> out) {
  const int64_t m = x.dimensions()[0], k = x.dimensions()[1], n = dy.dimensions()[1];
  const Segments seg{starts.typed_data(), lengths.typed_data(), starts.dimensions()[0]};
  if (ffi::Error e = check_segments(seg, m); e.failure()) return e;
  const float *xd = x.typed_data(), *dyd = dy.typed_data();
  float* od = out->typed_data();
  populate_output(pool, od, out->size_bytes());
  const int64_t col_blocks = (n + kNb - 1) / kNb;
  parallel_tasks(pool, seg.count * col_blocks, [=](int64_t t, int64_t) {
    // Expert-minor order: the two threads write different experts' gradients, so they do not
    // fault in the same fresh pages.
    const int64_t g = t % seg.count, n0 = (t / seg.count) * kNb;
    const int rows = seg.lengths[g], nb = static_cast<int>(std::min<int64_t>(kNb, n - n0));
    float* og = od + g * k * n + n0;
    if (rows == 0) {
      for (int64_t r = 0; r < k; ++r) std::memset(og + r * n, 0, nb * sizeof(float));
      return;
    }
    thread_local std::vector<float> panel;
    panel.resize(static_cast<size_t>(kKc) * kNb);
    const int64_t first = seg.starts[g];
    for (int64_t p0 = 0; p0 < rows; p0 += kKc) {   // reduction over the segment's rows
      const int depth = static_cast<int>(std::min<int64_t>(kKc, rows - p0));
      pack_panels(dyd, n, first + p0, depth, n0, nb, panel.data());
      const int64_t p1 = p0 + kKc;
      const Upcoming next{dyd + (first + std::min<int64_t>(p1, rows - 1)) * n + n0, n,
                          static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(kKc, rows - p1))),
                          nb};
      // One pass (a thin segment): the gradient is final, stream it past the caches.
      const Store mode = p0 > 0 ? Store::kAdd : (rows <= kKc ? Store::kStream : Store::kWrite);
      panel_product(static_cast<int>(k), depth, xd + (first + p0) * k, 1, k, panel.data(), nb,
                    og, n, mode, next);
    }
  });
  return ffi::Error::Success();
}

#if defined(__AVX512F__)
// In-register transpose of a 16 x 16 block: r[i] holds row i on entry, column i on return.
inline void transpose16(__m512 r[kLanes]) {
  __m512 t[kLanes];
  for (int i = 0; i < kLanes; i += 2) {     // interleave 32-bit elements of row pairs
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < kLanes; i += 4) {     // then 64-bit pairs: 4 x 4 blocks per 128-bit lane
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {             // then move the 128-bit lanes into place
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}
#endif

// panel[s][p][j] = b[k0 + s * kNr + j, p0 + p] (zero past kb): rows of b become panel columns,
// 16 x 16 blocks at a time through registers where AVX-512 is there, element by element at
// the edges.
void pack_transposed(const float* b, int64_t ldb, int64_t k0, int kb, int64_t p0, int depth,
                     float* panel) {
  for (int s = 0; s * kNr < kb; ++s) {
    const int width = std::min(kNr, kb - s * kNr);
    float* out = panel + static_cast<int64_t>(s) * depth * kNr;
    const float* rows = b + (k0 + s * kNr) * ldb + p0;   // row j of this panel: rows + j * ldb
    for (int j0 = 0; j0 < kNr; j0 += kLanes) {
      int p = 0;
#if defined(__AVX512F__)
      if (j0 + kLanes <= width) {
        for (; p + kLanes <= depth; p += kLanes) {
          __m512 r[kLanes];
          for (int i = 0; i < kLanes; ++i) r[i] = _mm512_loadu_ps(rows + (j0 + i) * ldb + p);
          transpose16(r);
          for (int q = 0; q < kLanes; ++q) _mm512_storeu_ps(out + (p + q) * kNr + j0, r[q]);
        }
      }
#endif
      for (; p < depth; ++p) {
        for (int j = j0; j < j0 + kLanes; ++j) {
          out[p * kNr + j] = j < width ? rows[j * ldb + p] : 0.f;
        }
      }
    }
  }
}

// og[rows, kb] = dy_g[rows, n] @ w_g[k0 : k0 + kb, :]^T through transposed panels: the
// transpose is paid once per panel and shared by rows / kMr micro-tiles.
void nt_packed(int rows, int64_t n, const float* dy_g, const float* w_g, int64_t k0, int kb,
               float* og, int64_t ldo) {
  thread_local std::vector<float> panel;
  panel.resize(static_cast<size_t>(kKc) * ((kKb + kNr - 1) / kNr) * kNr);
  for (int64_t p0 = 0; p0 < n; p0 += kKc) {
    const int depth = static_cast<int>(std::min<int64_t>(kKc, n - p0));
    pack_transposed(w_g, n, k0, kb, p0, depth, panel.data());
    const int64_t p1 = p0 + kKc;
    const Upcoming next = p1 < n ? Upcoming{w_g + k0 * n + p1, n, kb,
                                            static_cast<int>(std::min<int64_t>(kKc, n - p1))}
                                 : Upcoming{};
    panel_product(rows, depth, dy_g + p0, n, 1, panel.data(), kb, og + k0, ldo,
                  p0 > 0 ? Store::kAdd : Store::kWrite, next);
  }
}

// og[rows, k] = dy_g[rows, n] @ w_g[k, n]^T for a thin segment (rows <= V * 16), the whole
// segment at once, weight-stationary: computed as its transpose w_g @ dy_g^T, so each weight
// element is broadcast once from its contiguous row while the segment's rows fill the V vectors'
// lanes. MR weight rows per tile: MR x V = 24 accumulators.
template <int V, int MR>
void nt_thin(int rows, int64_t n, int k, const float* dy_g, const float* w_g, float* og) {
  constexpr int kWidth = V * kLanes;
  static constexpr auto kTiles = micro_tiles<V>(std::make_integer_sequence<int, MR>());
  thread_local std::vector<float> panel, result;
  panel.resize(static_cast<size_t>(n) * kWidth);
  result.resize(static_cast<size_t>(k) * kWidth);
  for (int64_t p = 0; p < n; ++p) {          // panel[p][j] = dy_g[j, p]
    for (int j = 0; j < kWidth; ++j) panel[p * kWidth + j] = j < rows ? dy_g[j * n + p] : 0.f;
  }
  // Weight rows up to 4 KiB are prefetched a tile ahead; longer rows stream well through the
  // hardware prefetcher (timed at 32 rows: prefetching helps 2 KiB rows, slows 8 KiB rows).
  const int lines_per_row = n * 4 <= 4096 ? static_cast<int>((n * 4 + 63) / 64) : 0;
  for (int i = 0; i < k; i += MR) {
    const int mr = std::min(MR, k - i);
    const int next_rows = std::max(0, std::min(MR, k - i - MR));
    const float* next_first = next_rows > 0 ? w_g + (i + MR) * n : w_g;
    PrefetchCursor next{reinterpret_cast<const char*>(next_first), n * 4, 0, lines_per_row,
                        int64_t{next_rows} * lines_per_row};
    kTiles[mr](static_cast<int>(n), w_g + i * n, n, 1, panel.data(),
               result.data() + i * kWidth, kWidth, kWidth, Store::kWrite, next,
               static_cast<int>(next.remaining));
  }
  for (int j = 0; j < rows; ++j) {           // og[j, i] = result[i, j]
    for (int i = 0; i < k; ++i) og[j * k + i] = result[i * kWidth + j];
  }
}

// out[M, K] = dy[M, N] @ w[g]^T on each segment's rows (w: [G, K, N]).
ffi::Error GroupedNT(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                     ffi::Buffer<ffi::S32> starts, ffi::Buffer<ffi::S32> lengths,
                     ffi::ResultBuffer<ffi::F32> out) {
  const int64_t m = dy.dimensions()[0], n = dy.dimensions()[1], k = w.dimensions()[1];
  const Segments seg{starts.typed_data(), lengths.typed_data(), w.dimensions()[0]};
  if (ffi::Error e = prepare_row_output(pool, seg, m, k, out); e.failure()) return e;
  const float *dyd = dy.typed_data(), *wd = w.typed_data();
  float* od = out->typed_data();
  const int64_t col_blocks = (k + kKb - 1) / kKb;
  parallel_tasks(pool, seg.count * col_blocks, [=](int64_t t, int64_t) {
    const int64_t g = t / col_blocks, k0 = (t % col_blocks) * kKb;
    const int rows = seg.lengths[g], kb = static_cast<int>(std::min<int64_t>(kKb, k - k0));
    if (rows == 0) return;
    const int64_t first = seg.starts[g];
    if (rows >= kPackedNtRows || n > kThinNtMaxDepth) {
      nt_packed(rows, n, dyd + first * n, wd + g * k * n, k0, kb, od + first * k, k);
    } else if (k0 == 0) {
      // Thin: the first task of the segment does all of it (the transpose of dy is paid once),
      // with the narrowest lane width that holds its rows.
      const auto thin = rows <= 2 * kLanes ? nt_thin<2, 12>
                        : rows <= 3 * kLanes ? nt_thin<3, 8> : nt_thin<4, 6>;
      thin(rows, n, static_cast<int>(k), dyd + first * n, wd + g * k * n, od + first * k);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

#define MOE_FLAN_BIND_GROUPED(NAME, FN)                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN,                               \
                                ffi::Ffi::Bind()                        \
                                    .Ctx<ffi::ThreadPool>()             \
                                    .Arg<ffi::Buffer<ffi::F32>>()       \
                                    .Arg<ffi::Buffer<ffi::F32>>()       \
                                    .Arg<ffi::Buffer<ffi::S32>>()       \
                                    .Arg<ffi::Buffer<ffi::S32>>()       \
                                    .Ret<ffi::Buffer<ffi::F32>>());

MOE_FLAN_BIND_GROUPED(MoeFlanGroupedNN, GroupedNN)
MOE_FLAN_BIND_GROUPED(MoeFlanGroupedNT, GroupedNT)
MOE_FLAN_BIND_GROUPED(MoeFlanGroupedTN, GroupedTN)
