// simt_emulator.h: runs hmexport's CUDA kernels on CPU threads, so CI (no GPU) checks their
// indexing, chunking, padding and warp reductions against the numpy references.
//
// hmexport/kernels_cuda/common.cuh includes this instead of the CUDA runtime when the sources are
// compiled by g++ with -DHMX_SIMT_EMULATOR (tests/kernels_cuda/emulator.py does that). The CUDA
// headers still provide the types (dim3, __half, cudaError_t) and host fp16/bf16 conversions.
//
// Model: one std::thread per CUDA thread of a block, the blocks of a grid one after another.
// __shared__ becomes static (one copy, shared by the block's threads); __syncthreads is a block
// barrier; __shfl_xor_sync goes through a per-lane mailbox between two warp barriers, so it needs
// every lane of the warp, as the kernels' 0xffffffff masks promise. A kernel that returns early
// before a barrier, or diverges around one, deadlocks here as it would hang on a GPU.
// Not modelled: timing, occupancy, shared-memory limits, memory ordering beyond the barriers,
// and the fast-math differences of the GPU's exp2f (ex2.approx, 2 ulp).
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace simt {

struct Block {
  explicit Block(int n) : sync(n), mailbox(n) {
    for (int w = 0; w * 32 < n; ++w) warp_sync.push_back(std::make_unique<std::barrier<>>(std::min(32, n - w * 32)));
  }
  std::barrier<> sync;
  std::vector<std::unique_ptr<std::barrier<>>> warp_sync;
  std::vector<uint64_t> mailbox;
};

inline thread_local uint3 thread_idx;
inline thread_local uint3 block_idx;
inline thread_local int linear_tid;
inline thread_local Block* current;
inline dim3 block_dim, grid_dim;  // written before the threads start

inline void syncthreads() { current->sync.arrive_and_wait(); }

template <typename T>
T shfl_xor(unsigned /*mask*/, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 8 bytes");
  const int lane = linear_tid % 32, warp = linear_tid / 32;
  int src = lane ^ lane_mask;
  if ((src & ~(width - 1)) > (lane & ~(width - 1))) src = lane;  // CUDA: a later group returns own value
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  current->mailbox[linear_tid] = bits;
  current->warp_sync[warp]->arrive_and_wait();
  bits = current->mailbox[warp * 32 + src];
  current->warp_sync[warp]->arrive_and_wait();  // nobody overwrites a slot before it is read
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <typename... KernelArgs, typename... Args>
cudaError_t launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, Args... args) {
  const int n = int(block.x * block.y * block.z);
  if (n < 1 || n > 1024 || grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535)
    return cudaErrorInvalidConfiguration;
  Block shared(n);
  block_dim = block;
  grid_dim = grid;
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      current = &shared;
      linear_tid = i;
      thread_idx = uint3{unsigned(i) % block.x, (unsigned(i) / block.x) % block.y, unsigned(i) / (block.x * block.y)};
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            block_idx = uint3{x, y, z};
            kernel(args...);
            shared.sync.arrive_and_wait();  // the next block reuses the static "shared" memory
          }
    });
  }
  for (auto& t : threads) t.join();
  return cudaSuccess;
}

}  // namespace simt

#define threadIdx (::simt::thread_idx)
#define blockIdx (::simt::block_idx)
#define blockDim (::simt::block_dim)
#define gridDim (::simt::grid_dim)
#define __syncthreads() ::simt::syncthreads()
#define __shfl_xor_sync(...) ::simt::shfl_xor(__VA_ARGS__)
