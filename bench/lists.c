/*
 * lists.c -- the tensor lists, from real model shapes:
 *
 *   a  GPT-2 small (124M): wte, wpe, 12 layers of ln/attn/mlp weights and
 *      biases, final ln: 148 tensors, 124,439,808 parameters (lm_head tied);
 *   b  Llama-7B-style decoder layers: q, k, v, o 4096x4096, gate, up, down
 *      4096x11008, two RMSNorm 4096: 9 tensors and 202,383,360 parameters a
 *      layer, as many layers as fit (bench.c decides);
 *   c  one huge tensor;
 *   d  4096 tiny tensors of random sizes 1..4096 (fixed seed);
 *   m  a 4-tensor MLP (64-128-10: 9,610 parameters), scripts/bench_torch.py's
 *      list mlp: a step that only latency can measure.
 *
 * Two parameter groups where the model has them, as training uses them:
 * matrices decay (group 0), biases and norms do not (group 1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "values.h"

#define D_TENSORS 4096
#define D_MAX_NUMEL 4096

/* A list under construction: appends with the capacity known up front. */
static void push(bench_list *l, int64_t numel, int group) {
  l->tensors[l->count].numel = numel;
  l->tensors[l->count].group = group;
  l->count++;
  l->params += numel;
}

static void start(bench_list *l, const char *name, int64_t capacity, int groups) {
  memset(l, 0, sizeof *l);
  snprintf(l->name, sizeof l->name, "%s", name);
  l->tensors = calloc((size_t)capacity, sizeof *l->tensors);
  if (!l->tensors) bench_die("out of host memory for list %s", name);
  l->num_groups = groups;
}

static void make_gpt2(bench_list *l) {
  const int64_t c = 768, layers = 12;
  start(l, "a", 4 + 12 * layers, 2);
  push(l, 50257 * c, 0); /* wte */
  push(l, 1024 * c, 0);  /* wpe */
  for (int64_t i = 0; i < layers; i++) {
    push(l, c, 1);         /* ln_1.weight */
    push(l, c, 1);         /* ln_1.bias */
    push(l, c * 3 * c, 0); /* attn.c_attn.weight */
    push(l, 3 * c, 1);     /* attn.c_attn.bias */
    push(l, c * c, 0);     /* attn.c_proj.weight */
    push(l, c, 1);         /* attn.c_proj.bias */
    push(l, c, 1);         /* ln_2.weight */
    push(l, c, 1);         /* ln_2.bias */
    push(l, c * 4 * c, 0); /* mlp.c_fc.weight */
    push(l, 4 * c, 1);     /* mlp.c_fc.bias */
    push(l, 4 * c * c, 0); /* mlp.c_proj.weight */
    push(l, c, 1);         /* mlp.c_proj.bias */
  }
  push(l, c, 1); /* ln_f.weight */
  push(l, c, 1); /* ln_f.bias */
  snprintf(l->what, sizeof l->what, "GPT-2 124M");
}

int64_t bench_llama_layer_params(void) {
  const int64_t h = 4096, f = 11008;
  return 4 * h * h + 3 * h * f + 2 * h;
}

static void make_llama(bench_list *l, int layers) {
  const int64_t h = 4096, f = 11008;
  start(l, "b", 9 * (int64_t)layers, 2);
  for (int i = 0; i < layers; i++) {
    push(l, h, 1); /* input_layernorm */
    for (int j = 0; j < 4; j++) push(l, h * h, 0); /* q, k, v, o */
    push(l, h, 1);                                 /* post_attention_layernorm */
    for (int j = 0; j < 3; j++) push(l, h * f, 0); /* gate, up, down */
  }
  snprintf(l->what, sizeof l->what, "Llama-7B x %d layers", layers);
}

static void make_huge(bench_list *l, int64_t numel) {
  start(l, "c", 1, 1);
  push(l, numel, 0);
  snprintf(l->what, sizeof l->what, "one tensor of %lld", (long long)numel);
}

static void make_tiny(bench_list *l) {
  start(l, "d", D_TENSORS, 1);
  for (int64_t i = 0; i < D_TENSORS; i++)
    push(l, 1 + (int64_t)(bv_mix(0x5eed + (uint64_t)i) % D_MAX_NUMEL), 0);
  snprintf(l->what, sizeof l->what, "%d tensors of 1..%d", D_TENSORS, D_MAX_NUMEL);
}

static void make_mlp(bench_list *l) {
  start(l, "m", 4, 2);
  push(l, 128 * 64, 0); /* fc1.weight */
  push(l, 128, 1);      /* fc1.bias */
  push(l, 10 * 128, 0); /* fc2.weight */
  push(l, 10, 1);       /* fc2.bias */
  snprintf(l->what, sizeof l->what, "MLP 64-128-10");
}

int bench_list_make(const char *name, const bench_sizes *sizes, bench_list *out) {
  if (!strcmp(name, "a"))
    make_gpt2(out);
  else if (!strcmp(name, "b"))
    make_llama(out, sizes->llama_layers);
  else if (!strcmp(name, "c"))
    make_huge(out, sizes->huge_numel);
  else if (!strcmp(name, "d"))
    make_tiny(out);
  else if (!strcmp(name, "m"))
    make_mlp(out);
  else
    return -1;
  return 0;
}

void bench_list_free(bench_list *l) {
  free(l->tensors);
  memset(l, 0, sizeof *l);
}
