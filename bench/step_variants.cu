/*
 * step_variants.cu -- the fused step kernel in several shapes, timed side
 * by side on the same buffers (issue #15; docs/performance.md, "Step
 * kernel variants").  A developer's harness in the manner of llm.c's
 * dev/cuda: it includes the kernels' own block work (kernels/
 * block_work.cuh) rather than the public API, so a shape can be tried
 * without touching the library, and one device call measures them all.
 *
 * A variant is the library's kernel (fo_step_kernel, the "base" rows) at
 * another chunk size, or the same block work with another ILP (vectors in
 * flight per thread) and another __launch_bounds__ minimum of blocks per
 * SM: fewer registers, more blocks resident, more blocks' load chains in
 * flight at once, which is what a list of small tensors (list d) needs and
 * what a list of large ones may not; or the library's block work over
 * packed blocks, each CUDA block running a run of small plan blocks in turn.
 *
 * Each row: the variant's registers and resident blocks per SM (from the
 * runtime), the median time of a step over reps back-to-back launches (a
 * CUDA event between any two), the bytes the step moves over that time, and
 * that bandwidth over a device-to-device copy of the same bytes measured in
 * the same run.  Check: from the same initial values, one step of the
 * variant leaves every output array bit-identical to one step of the base
 * kernel (a checksum of each array's words, element index included), and
 * the base kernel's step changes every array (a base that wrote nothing
 * would pass any variant that also wrote nothing); the arithmetic per
 * element is the same whatever the shape, so any difference is a coverage
 * bug.
 *
 * The step's scalars are carried by value (fo_step_launch.k, step 1; no
 * prepare kernel), as the library's eager steps without a pre-pass carry
 * them: the row times the update kernel alone.  One set of buffers, no rotation: list
 * a (3.5 GB) and list d (237 MB) both exceed the H100's and H200's L2.
 *
 * usage: step_variants [--lists a,d] [--reps N] [--warmup N] [--csv FILE]
 * Exit status 0; 1 on a CUDA error or a bad argument; 2 when a check
 * fails.  Without a usable device it says why and exits 0.
 */
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "block_work.cuh"
#include "step_kernel.cuh"

extern "C" {
#include "bench.h"
}

extern "C" void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "step_variants: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

#define SV_CHECK(call)                                                               \
  do {                                                                               \
    cudaError_t e_ = (call);                                                         \
    if (e_ != cudaSuccess)                                                           \
      bench_die("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
  } while (0)

namespace {

/* ------------------------------------------------------------ variants */

/* The shape of a variant: fo_step_shape's vector width, another ILP. */
template <int ILP>
struct sv_shape {
  static constexpr int W = 4;
  static constexpr int ILP_VEC = ILP;
  static constexpr int ILP_SCALAR = 4;
};

/* The library's step kernel with another shape, thread count and bound. */
template <int ALG, int PT, int GT, bool MASTER, int ILP, int THREADS, int MINB>
__global__ void __launch_bounds__(THREADS, MINB)
    sv_step_kernel(const __grid_constant__ fo_step_launch args, int64_t first_block) {
  typedef fo_step_op<ALG, PT, GT, MASTER, false, FO_PASS_UPDATE, sv_shape<ILP>> op;
  fo_run_block(op(args, first_block + blockIdx.x), (int)threadIdx.x, THREADS);
}

/* The library's kernel over packed blocks: CUDA block k runs the plan's
 * blocks first[k] .. first[k+1] - 1 one after another, so a run of small
 * tensors (one plan block each) shares one CUDA block and the grid shrinks
 * (list d: 4096 blocks of at most 4096 elements become a few hundred). */
template <int ALG, int PT, int GT, bool MASTER, int ILP, int MINB>
__global__ void __launch_bounds__(FO_CUDA_THREADS, MINB)
    sv_packed_kernel(const __grid_constant__ fo_step_launch args, const int64_t *first) {
  typedef fo_step_op<ALG, PT, GT, MASTER, false, FO_PASS_UPDATE, sv_shape<ILP>> op;
  for (int64_t b = first[blockIdx.x]; b < first[blockIdx.x + 1]; b++)
    fo_run_block(op(args, b), (int)threadIdx.x, FO_CUDA_THREADS);
}

typedef void (*sv_kernel)(fo_step_launch, int64_t);
typedef void (*sv_packed)(fo_step_launch, const int64_t *);

struct variant {
  const char *name;
  sv_kernel kernel;
  int threads, ilp, min_blocks;
  int64_t chunk;
  sv_packed packed; /* instead of kernel: blocks packed up to pack elements */
  int64_t pack;
};

/* Every variant of one configuration; the first is the library's kernel
 * as it launches it, the reference of the check. */
template <int ALG, int PT, int GT, bool MASTER>
std::vector<variant> variants_of() {
  const sv_kernel base = fo_step_kernel<ALG, PT, GT, MASTER, false, FO_PASS_UPDATE>;
  constexpr int ilp = fo_step_shape<ALG, PT, GT>::ILP_VEC;
  constexpr int minb = fo_step_min_blocks(ALG);
  return {
      {"base", base, FO_CUDA_THREADS, ilp, minb, FO_CUDA_CHUNK, nullptr, 0},
      /* the library's shape until 2026-12-06: 4 vectors, 2 blocks per SM */
      {"ilp4_b2", sv_step_kernel<ALG, PT, GT, MASTER, 4, FO_CUDA_THREADS, 2>, FO_CUDA_THREADS, 4, 2,
       FO_CUDA_CHUNK, nullptr, 0},
      {"chunk16k", base, FO_CUDA_THREADS, ilp, minb, 16384, nullptr, 0},
      {"chunk64k", base, FO_CUDA_THREADS, ilp, minb, 65536, nullptr, 0},
      {"ilp2_b3", sv_step_kernel<ALG, PT, GT, MASTER, 2, 256, 3>, 256, 2, 3, FO_CUDA_CHUNK, nullptr,
       0},
      {"ilp2_b4", sv_step_kernel<ALG, PT, GT, MASTER, 2, 256, 4>, 256, 2, 4, FO_CUDA_CHUNK, nullptr,
       0},
      {"ilp4_t512", sv_step_kernel<ALG, PT, GT, MASTER, 4, 512, 1>, 512, 4, 1, FO_CUDA_CHUNK,
       nullptr, 0},
      {"packed16k", nullptr, 256, 4, 2, FO_CUDA_CHUNK, sv_packed_kernel<ALG, PT, GT, MASTER, 4, 2>,
       16384},
      {"packed64k", nullptr, 256, 4, 2, FO_CUDA_CHUNK, sv_packed_kernel<ALG, PT, GT, MASTER, 4, 2>,
       65536},
      {"packed16k_ilp2_b3", nullptr, 256, 2, 3, FO_CUDA_CHUNK,
       sv_packed_kernel<ALG, PT, GT, MASTER, 2, 3>, 16384},
  };
}

/* ------------------------------------------------------ configurations */

struct config {
  const char *name; /* adamw/fp32, ... */
  int alg, pt, gt;
  bool master;
  std::vector<variant> variants;
};

std::vector<config> configs() {
  return {
      {"adamw/fp32", FO_RULE_ADAMW, FO_RULE_F32, FO_RULE_F32, false,
       variants_of<FO_RULE_ADAMW, FO_RULE_F32, FO_RULE_F32, false>()},
      {"adamw/bf16-master", FO_RULE_ADAMW, FO_RULE_BF16, FO_RULE_BF16, true,
       variants_of<FO_RULE_ADAMW, FO_RULE_BF16, FO_RULE_BF16, true>()},
      {"lion/fp32", FO_RULE_LION, FO_RULE_F32, FO_RULE_F32, false,
       variants_of<FO_RULE_LION, FO_RULE_F32, FO_RULE_F32, false>()},
  };
}

size_t elem_bytes(int dtype) {
  return dtype == FO_RULE_F32 ? 4 : 2;
}

/* Bytes one step moves per parameter: what it reads and what it writes. */
int64_t bytes_per_param(const config &c) {
  const int64_t p = (int64_t)elem_bytes(c.pt), g = (int64_t)elem_bytes(c.gt);
  const int64_t moments = c.alg == FO_RULE_LION ? 1 : 2;
  const int64_t weights = c.master ? 4 + 4 + p : p + p; /* master read+write, param write */
  return weights + g + moments * 8;
}

/* ------------------------------------------------------------- buffers */

/* Deterministic values: lo + (hi - lo) * u, u from (seed, index). */
__global__ void sv_fill(void *dst, int dtype, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float u = (float)(fo_mix64(seed ^ fo_mix64((uint64_t)i)) >> 40) * (1.0f / 16777216.0f);
    const float x = lo + (hi - lo) * u;
    if (dtype == FO_RULE_F32)
      ((float *)dst)[i] = x;
    else
      ((uint16_t *)dst)[i] = fo_f32_to_bf16(x);
  }
}

/* Sum over the 16-bit words of an array of mix(word, index): equal sums
 * mean equal arrays, but for a 2^-64 chance. */
__global__ void sv_checksum(const uint16_t *w, int64_t n, unsigned long long *out) {
  unsigned long long s = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    s += fo_mix64(((uint64_t)i << 16) ^ w[i] ^ 0x5851f42d4c957f2dull);
  atomicAdd(out, s);
}

/* One array per role, each tensor at a 256-byte boundary (vector_ok). */
struct arena {
  void *param = nullptr, *grad = nullptr;
  float *master = nullptr, *m = nullptr, *v = nullptr;
  std::vector<int64_t> offset; /* elements */
  int64_t total = 0;
};

const int64_t ALIGN_ELEMS = 128; /* 256 bytes of a 16-bit array */

void *dev_alloc(size_t bytes) {
  void *p = nullptr;
  SV_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}

arena make_arena(const bench_list &l, const config &c) {
  arena a;
  for (int64_t i = 0; i < l.count; i++) {
    a.offset.push_back(a.total);
    a.total += (l.tensors[i].numel + ALIGN_ELEMS - 1) / ALIGN_ELEMS * ALIGN_ELEMS;
  }
  a.param = dev_alloc((size_t)a.total * elem_bytes(c.pt));
  a.grad = dev_alloc((size_t)a.total * elem_bytes(c.gt));
  if (c.master) a.master = (float *)dev_alloc((size_t)a.total * 4);
  a.m = (float *)dev_alloc((size_t)a.total * 4);
  if (c.alg != FO_RULE_LION) a.v = (float *)dev_alloc((size_t)a.total * 4);
  return a;
}

void free_arena(arena &a) {
  for (void *p : {a.param, a.grad, (void *)a.master, (void *)a.m, (void *)a.v})
    if (p) SV_CHECK(cudaFree(p));
}

void fill(void *dst, int dtype, int64_t n, uint64_t seed, float lo, float hi) {
  sv_fill<<<1024, 256>>>(dst, dtype, n, seed, lo, hi);
  SV_CHECK(cudaGetLastError());
}

/* The same initial values before every check. */
void reset(const arena &a, const config &c) {
  fill(a.param, c.pt, a.total, 1, -0.05f, 0.05f);
  fill(a.grad, c.gt, a.total, 2, -1.0f, 1.0f);
  if (a.master) fill(a.master, FO_RULE_F32, a.total, 3, -0.05f, 0.05f);
  fill(a.m, FO_RULE_F32, a.total, 4, -0.01f, 0.01f);
  if (a.v) fill(a.v, FO_RULE_F32, a.total, 5, 0.0f, 1e-4f);
  /* the fills run on the legacy stream, the steps on a non-blocking one */
  SV_CHECK(cudaDeviceSynchronize());
}

/* The checksums of every array the step writes. */
std::vector<unsigned long long> checksums(const arena &a, const config &c) {
  struct arr {
    const void *p;
    size_t elem;
  };
  const arr outs[] = {{a.param, elem_bytes(c.pt)}, {a.master, 4}, {a.m, 4}, {a.v, 4}};
  std::vector<unsigned long long> sums;
  unsigned long long *d = (unsigned long long *)dev_alloc(sizeof *d);
  for (const arr &o : outs) {
    if (!o.p) continue;
    SV_CHECK(cudaMemset(d, 0, sizeof *d));
    sv_checksum<<<1024, 256>>>((const uint16_t *)o.p, a.total * (int64_t)(o.elem / 2), d);
    SV_CHECK(cudaGetLastError());
    unsigned long long h = 0;
    SV_CHECK(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost));
    sums.push_back(h);
  }
  SV_CHECK(cudaFree(d));
  return sums;
}

/* --------------------------------------------------------------- plans */

/* The plan of a chunk size: tensor table and block table, on the device. */
struct plan {
  fo_plan_tensor *tensors = nullptr;
  fo_plan_block *blocks = nullptr;
  int64_t num_blocks = 0;
  int64_t *first = nullptr; /* packed: CUDA block k runs [first[k], first[k+1]) */
  int64_t grid = 0;         /* CUDA blocks per launch */
};

/* Consecutive plan blocks grouped while their elements add up to at most
 * pack; a block of pack elements or more stands alone. */
std::vector<int64_t> pack_blocks(const std::vector<fo_plan_block> &b,
                                 const std::vector<fo_plan_tensor> &t, int64_t chunk,
                                 int64_t pack) {
  std::vector<int64_t> first{0};
  int64_t sum = 0;
  for (size_t k = 0; k < b.size(); k++) {
    const int64_t n = fo_block_range_at(b[k], t.data(), chunk).n;
    if (sum > 0 && sum + n > pack) {
      first.push_back((int64_t)k);
      sum = 0;
    }
    sum += n;
  }
  first.push_back((int64_t)b.size());
  return first;
}

plan make_plan(const bench_list &l, const config &c, const arena &a, int64_t chunk, int64_t pack) {
  std::vector<fo_plan_tensor> t((size_t)l.count);
  for (int64_t i = 0; i < l.count; i++) {
    fo_plan_tensor &x = t[(size_t)i];
    memset(&x, 0, sizeof x);
    const int64_t o = a.offset[(size_t)i];
    x.param = (char *)a.param + o * (int64_t)elem_bytes(c.pt);
    x.grad = (char *)a.grad + o * (int64_t)elem_bytes(c.gt);
    x.master = a.master ? a.master + o : nullptr;
    x.exp_avg = a.m + o;
    x.exp_avg_sq = a.v ? a.v + o : nullptr;
    x.numel = l.tensors[i].numel;
    x.index = i;
    x.group = l.tensors[i].group;
    x.vector_ok = 1;
  }
  /* the library's blocks (kernels/plan.h) */
  plan p;
  p.num_blocks = fo_plan_count_blocks(t.data(), l.count, chunk);
  if (p.num_blocks < 0) bench_die("list %s: no plan at chunk %lld", l.name, (long long)chunk);
  std::vector<fo_plan_block> b((size_t)p.num_blocks);
  fo_plan_fill_blocks(t.data(), l.count, chunk, b.data());
  p.tensors = (fo_plan_tensor *)dev_alloc(t.size() * sizeof t[0]);
  p.blocks = (fo_plan_block *)dev_alloc(b.size() * sizeof b[0]);
  SV_CHECK(cudaMemcpy(p.tensors, t.data(), t.size() * sizeof t[0], cudaMemcpyHostToDevice));
  SV_CHECK(cudaMemcpy(p.blocks, b.data(), b.size() * sizeof b[0], cudaMemcpyHostToDevice));
  p.grid = p.num_blocks;
  if (pack > 0) {
    const std::vector<int64_t> first = pack_blocks(b, t, chunk, pack);
    p.grid = (int64_t)first.size() - 1;
    p.first = (int64_t *)dev_alloc(first.size() * sizeof first[0]);
    SV_CHECK(
        cudaMemcpy(p.first, first.data(), first.size() * sizeof first[0], cudaMemcpyHostToDevice));
  }
  return p;
}

/* Two groups as training uses them (decay on group 0 only), step 1,
 * carried by value in the launch as the library's eager steps carry them. */
fo_known_step make_known(const config &c) {
  fo_known_step k;
  memset(&k, 0, sizeof k);
  k.step = 1;
  k.grad_coef = 1.0f;
  k.lr_factor = 1.0f;
  k.num_groups = 2;
  for (int g = 0; g < 2; g++) {
    fo_group_hparams h;
    memset(&h, 0, sizeof h);
    const bool lion = c.alg == FO_RULE_LION;
    h.lr = lion ? 1e-4f : 1e-3f;
    h.weight_decay = g == 0 ? 0.1f : 0.0f;
    h.beta1 = 0.9f;
    h.beta2 = lion ? 0.99f : 0.999f;
    h.eps = 1e-8f;
    k.mu_product[g] = 1.0f;
    fo_group_scalars(c.alg, &h, 1, h.lr, 1.0f, &k.mu_product[g], &k.groups[g]);
  }
  return k;
}

/* ------------------------------------------------------------- timing */

/* Median microseconds of reps back-to-back calls of run (warmup first). */
template <class F>
double median_us(F run, int reps, int warmup, cudaStream_t s) {
  for (int i = 0; i < warmup; i++) run();
  std::vector<cudaEvent_t> ev((size_t)reps + 1);
  for (auto &e : ev) SV_CHECK(cudaEventCreate(&e));
  SV_CHECK(cudaStreamSynchronize(s));
  SV_CHECK(cudaEventRecord(ev[0], s));
  for (int i = 0; i < reps; i++) {
    run();
    SV_CHECK(cudaEventRecord(ev[(size_t)i + 1], s));
  }
  SV_CHECK(cudaEventSynchronize(ev[(size_t)reps]));
  std::vector<double> us((size_t)reps);
  for (int i = 0; i < reps; i++) {
    float ms = 0;
    SV_CHECK(cudaEventElapsedTime(&ms, ev[(size_t)i], ev[(size_t)i + 1]));
    us[(size_t)i] = ms * 1e3;
  }
  for (auto &e : ev) SV_CHECK(cudaEventDestroy(e));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

struct opts {
  const char *lists = "a,d";
  int reps = 30, warmup = 5;
  const char *csv = nullptr;
};

void launch(const variant &v, const plan &p, const fo_step_launch &a, cudaStream_t s) {
  /* one launch covers the plan: blockIdx.x < 2^31 for every list here */
  if (v.packed)
    v.packed<<<(unsigned)p.grid, v.threads, 0, s>>>(a, p.first);
  else
    v.kernel<<<(unsigned)p.grid, v.threads, 0, s>>>(a, 0);
  SV_CHECK(cudaGetLastError());
}

/* Every variant of one configuration over one list; returns failed checks. */
int run_config(const bench_list &l, const config &c, const opts &o, FILE *csv) {
  arena ar = make_arena(l, c);
  const fo_known_step known = make_known(c);
  const int64_t bytes = bytes_per_param(c) * l.params;
  cudaStream_t s;
  SV_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  /* the copy: half the counted bytes read, half written */
  const size_t side = (size_t)(bytes / 2) / 16 * 16;
  char *cp = (char *)dev_alloc(2 * side);
  SV_CHECK(cudaMemset(cp, 1, 2 * side));
  SV_CHECK(cudaDeviceSynchronize());
  const double copy_us = median_us(
      [&] { SV_CHECK(cudaMemcpyAsync(cp + side, cp, side, cudaMemcpyDeviceToDevice, s)); }, o.reps,
      o.warmup, s);
  SV_CHECK(cudaFree(cp));

  int failed = 0;
  /* the checksums before any step: the base kernel (the first variant) must
   * change every array it writes, else its outputs prove nothing */
  reset(ar, c);
  const std::vector<unsigned long long> before = checksums(ar, c);
  std::vector<unsigned long long> want;
  bool base_ok = true;
  for (const variant &v : c.variants) {
    const plan p = make_plan(l, c, ar, v.chunk, v.pack);
    fo_step_launch a;
    memset(&a, 0, sizeof a);
    a.blocks = p.blocks;
    a.tensors = p.tensors;
    a.num_blocks = p.num_blocks;
    a.chunk = v.chunk;
    a.algorithm = c.alg;
    a.param_dtype = c.pt;
    a.grad_dtype = c.gt;
    a.master = c.master;
    a.num_groups = 2;
    a.known = 1;
    a.k = known;
    a.pass = FO_PASS_UPDATE;
    /* the check: one step from the initial values */
    reset(ar, c);
    launch(v, p, a, s);
    SV_CHECK(cudaStreamSynchronize(s));
    const std::vector<unsigned long long> got = checksums(ar, c);
    if (want.empty()) {
      want = got;
      for (size_t i = 0; i < got.size(); i++)
        if (got[i] == before[i]) {
          printf("# %s %s: the base kernel left output array %zu as it was\n", l.name, c.name, i);
          base_ok = false;
        }
    }
    const bool ok = base_ok && got == want;
    failed += !ok;
    /* then the timing, from wherever the check left the values */
    const double us = median_us([&] { launch(v, p, a, s); }, o.reps, o.warmup, s);
    const void *fn = v.packed ? (const void *)v.packed : (const void *)v.kernel;
    cudaFuncAttributes attr;
    SV_CHECK(cudaFuncGetAttributes(&attr, fn));
    int per_sm = 0;
    SV_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, v.threads, 0));
    const double gbps = (double)bytes / us * 1e-3, copy_gbps = (double)bytes / copy_us * 1e-3;
    printf("%-2s %-18s %-10s %4d %3d %2d %6lld %4d %2d %7lld %9.2f %9.2f %8.1f %6.4f  %s\n", l.name,
           c.name, v.name, v.threads, v.ilp, v.min_blocks, (long long)v.chunk, attr.numRegs, per_sm,
           (long long)p.grid, copy_us, us, gbps, gbps / copy_gbps, ok ? "ok" : "FAIL");
    if (csv)
      fprintf(csv, "%s,%s,%s,%d,%d,%d,%lld,%d,%d,%lld,%lld,%.3f,%.3f,%.1f,%.1f,%.4f,%s\n", l.name,
              c.name, v.name, v.threads, v.ilp, v.min_blocks, (long long)v.chunk, attr.numRegs,
              per_sm, (long long)p.grid, (long long)bytes, copy_us, us, copy_gbps, gbps,
              gbps / copy_gbps, ok ? "ok" : "FAIL");
    fflush(stdout);
    SV_CHECK(cudaFree(p.blocks));
    if (p.first) SV_CHECK(cudaFree(p.first));
    SV_CHECK(cudaFree(p.tensors));
  }
  SV_CHECK(cudaStreamDestroy(s));
  free_arena(ar);
  return failed;
}

void usage(FILE *f) {
  fprintf(f,
          "usage: step_variants [--lists a,d] [--reps N] [--warmup N] [--csv FILE]\n"
          "  the step kernel's shapes (chunk, ILP, blocks per SM) side by side on lists\n"
          "  a (GPT-2 124M) and d (4096 tiny tensors); docs/performance.md\n");
}

opts parse(int argc, char **argv) {
  opts o;
  for (int i = 1; i < argc; i++) {
    const char *k = argv[i];
    const bool has = i + 1 < argc;
    if (!strcmp(k, "--help") || !strcmp(k, "-h")) {
      usage(stdout);
      exit(0);
    } else if (!strcmp(k, "--lists") && has) {
      o.lists = argv[++i];
    } else if (!strcmp(k, "--reps") && has) {
      o.reps = atoi(argv[++i]);
    } else if (!strcmp(k, "--warmup") && has) {
      o.warmup = atoi(argv[++i]);
    } else if (!strcmp(k, "--csv") && has) {
      o.csv = argv[++i];
    } else {
      usage(stderr);
      bench_die("bad argument '%s'", k);
    }
  }
  if (o.reps < 1 || o.warmup < 0) bench_die("--reps must be >= 1 and --warmup >= 0");
  return o;
}

}  // namespace

int main(int argc, char **argv) {
  const opts o = parse(argc, argv);
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    printf("step_variants: no usable CUDA device (%s): nothing to time\n",
           e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    return 0;
  }
  cudaDeviceProp prop;
  SV_CHECK(cudaGetDeviceProperties(&prop, 0));
  printf("# %s, %d SMs; step kernel variants (docs/performance.md)\n", prop.name,
         prop.multiProcessorCount);
  printf(
      "# list config variant threads ilp min_blocks chunk regs blocks/SM blocks copy_us us "
      "GB/s of_copy check\n");
  FILE *csv = nullptr;
  if (o.csv) {
    csv = fopen(o.csv, "w");
    if (!csv) bench_die("cannot write %s", o.csv);
    fprintf(csv,
            "list,config,variant,threads,ilp,min_blocks,chunk,regs,blocks_per_sm,blocks,"
            "bytes,copy_us,us,copy_gbps,gbps,of_copy,check\n");
  }
  int failed = 0;
  char names[64];
  snprintf(names, sizeof names, "%s", o.lists);
  const bench_sizes sizes = {0, 0};
  const std::vector<config> cs = configs();
  for (char *name = strtok(names, ","); name; name = strtok(nullptr, ",")) {
    bench_list l;
    if (strcmp(name, "a") && strcmp(name, "d")) bench_die("list '%s': a or d", name);
    if (bench_list_make(name, &sizes, &l) != 0) bench_die("unknown list '%s'", name);
    for (const config &c : cs) failed += run_config(l, c, o, csv);
    bench_list_free(&l);
  }
  if (csv) fclose(csv);
  if (failed) printf("step_variants: %d check(s) FAILED\n", failed);
  return failed ? 2 : 0;
}
