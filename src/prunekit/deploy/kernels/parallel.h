// Dynamic scheduling of row chunks over ATen's thread pool.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace prunekit {

// Calls f(c, c + 1) for every chunk c in [0, n), each thread taking the next free chunk.
// at::parallel_for splits a range statically; on a shared machine where one core is slowed by a
// neighbour, the call then waits for the slow half (measured here: two threads slower than one).
template <class F>
void for_each_chunk(int64_t n, const F& f) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1) {
    for (int64_t c = 0; c < n; ++c) f(c, c + 1);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < n; c = next.fetch_add(1)) f(c, c + 1);
  });
}

}  // namespace prunekit
