/*
 * mpi_model.c -- what the data-parallel programs of the multi-rank tier
 * share (mpi_model.h).
 */
#include "mpi_model.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt_mpi.h"

/* ---------------------------------------------------------------- data */

/* A value that depends only on (seed, a, b): every rank can compute every
 * other rank's data. */
static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

double uniform(uint64_t seed, uint64_t a, uint64_t b) { /* [-1, 1) */
  uint64_t h = mix(seed * 0x9e3779b97f4a7c15ull ^ mix(a * 0x632be59bd9b4e019ull + b));
  return (double)(h >> 11) * 0x1.0p-52 - 1.0;
}

float dyadic(uint64_t seed, uint64_t a, uint64_t b) {
  return (float)(int)(mix(seed ^ mix(a * 31 + b)) % 9 - 4) / 16.0f;
}

/* ------------------------------------------------------------ the model */

const int64_t SIZES[NT] = {37, 1000, 0, 4099, 260};

fo_status model_make(model *m, fo_options o, const fo_hparams *h, int64_t gap) {
  memset(m, 0, sizeof *m);
  m->o = o;
  fo_tensor_desc t[NT];
  int64_t total = 0, off = 0;
  for (int i = 0; i < NT; i++) total += SIZES[i] + gap;
  int ext = o.storage == FO_STORAGE_EXTERNAL;
  if (ext) {
    m->pbuf = calloc((size_t)total, 4);
    m->gbuf = calloc((size_t)total, 4);
    if (!m->pbuf || !m->gbuf) return FO_ERR_OUT_OF_MEMORY;
  }
  size_t ps = fo_dtype_size(o.param_dtype), gs = fo_dtype_size(o.grad_dtype);
  for (int i = 0; i < NT; i++) {
    t[i] = (fo_tensor_desc){SIZES[i], i % 2, ext ? (char *)m->pbuf + (size_t)off * ps : NULL,
                            ext ? (char *)m->gbuf + (size_t)off * gs : NULL, NULL};
    off += SIZES[i] + gap;
  }
  fo_hparams groups[2] = {*h, *h};
  groups[1].weight_decay = 0.0f;
  return fo_optimizer_create(&m->opt, &o, groups, 2, t, NT);
}

void model_free(model *m) {
  fo_optimizer_destroy(m->opt);
  free(m->pbuf);
  free(m->gbuf);
  m->opt = NULL;
}

fo_status put(const model *m, int grad, float *const vals[NT]) {
  for (int i = 0; i < NT; i++) {
    void *dst = NULL;
    fo_status st =
        grad ? fo_optimizer_grad_ptr(m->opt, i, &dst) : fo_optimizer_param_ptr(m->opt, i, &dst);
    if (st == FO_SUCCESS)
      st = fo_convert_from_f32(grad ? m->o.grad_dtype : m->o.param_dtype, vals[i], dst, SIZES[i]);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

fo_status get(const model *m, int grad, float *vals[NT]) {
  for (int i = 0; i < NT; i++) {
    void *src = NULL;
    fo_status st =
        grad ? fo_optimizer_grad_ptr(m->opt, i, &src) : fo_optimizer_param_ptr(m->opt, i, &src);
    if (st == FO_SUCCESS)
      st = fo_convert_to_f32(grad ? m->o.grad_dtype : m->o.param_dtype, src, vals[i], SIZES[i]);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

void arrays_alloc(arrays *x) {
  for (int i = 0; i < NT; i++) x->a[i] = calloc((size_t)SIZES[i] + 1, sizeof(float));
}

void arrays_free(arrays *x) {
  for (int i = 0; i < NT; i++) free(x->a[i]);
}

int same_on_every_rank(const void *buf, size_t bytes) {
  unsigned char *root = malloc(bytes + 1);
  if (!root) return 0;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) memcpy(root, buf, bytes);
  MPI_Bcast(root, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD);
  int same = memcmp(root, buf, bytes) == 0;
  free(root);
  return same;
}

int arrays_same_on_every_rank(const arrays *x) {
  int same = 1;
  for (int i = 0; i < NT; i++) same &= same_on_every_rank(x->a[i], (size_t)SIZES[i] * 4);
  return same;
}

fo_options cpu_options(fo_algorithm alg, fo_storage storage, fo_dtype pd, fo_dtype gd) {
  fo_options o;
  fo_options_default(&o);
  o.algorithm = alg;
  o.storage = storage;
  o.param_dtype = pd;
  o.grad_dtype = gd;
  o.num_threads = 1; /* several ranks share the cores */
  return o;
}

fo_comm *g_comm; /* over MPI_COMM_WORLD */

fo_status attach_ex(model *m, size_t bucket_bytes, int reduce_in_f32, int shard) {
  fo_dp_options d;
  fo_dp_options_default(&d);
  d.bucket_bytes = bucket_bytes;
  d.reduce_in_f32 = reduce_in_f32;
  d.shard_state = shard;
  return fo_optimizer_set_comm(m->opt, g_comm, &d);
}

fo_status attach(model *m, size_t bucket_bytes, int reduce_in_f32) {
  return attach_ex(m, bucket_bytes, reduce_in_f32, 0);
}

fo_status reduce_reversed(model *m) {
  int64_t nb = 0;
  fo_status st = fo_optimizer_num_buckets(m->opt, &nb);
  for (int64_t b = nb - 1; b >= 0 && st == FO_SUCCESS; b--)
    st = fo_optimizer_reduce_bucket(m->opt, b, NULL);
  return st;
}

float loss_scale(const model *m) {
  float *s = NULL;
  return fo_optimizer_loss_scale_ptr(m->opt, &s) == FO_SUCCESS ? *s : 1.0f;
}
