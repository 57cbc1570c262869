/* Links the installed library, runs one SGD step on the CPU, and checks
 * it (and the algorithm's name); then asks for the CUDA executor, which
 * must work or fail with FO_ERR_NO_DEVICE and a reason ("--no-cuda": a
 * build without CUDA, whose reason must say so).  C11, and valid C++
 * (check.sh builds it as both). */
#include <fusedopt.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  float p[3] = {1.0f, 2.0f, 3.0f}, g[3] = {0.5f, -1.0f, 2.0f};
  fo_options o;
  fo_hparams h;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  fo_hparams_default(FO_ALG_SGD, &h);
  h.lr = 0.5f;
  fo_tensor_desc t = {3, 0, p, g, "p"};
  fo_optimizer *opt = NULL;
  if (fo_optimizer_create(&opt, &o, &h, 1, &t, 1) != FO_SUCCESS ||
      fo_optimizer_step(opt, NULL) != FO_SUCCESS) {
    fprintf(stderr, "consumer: %s\n", fo_last_error());
    return 1;
  }
  fo_optimizer_destroy(opt);
  /* fo_algorithm_string (0.3): the installed library exports it */
  int ok = p[0] == 0.75f && p[1] == 2.5f && p[2] == 2.0f &&
           strcmp(fo_algorithm_string(o.algorithm), "sgd") == 0;
  printf("consumer: fusedopt %s, %s step %s\n", fo_version_string(),
         fo_algorithm_string(o.algorithm), ok ? "ok" : "WRONG");

  int no_cuda = argc > 1 && strcmp(argv[1], "--no-cuda") == 0;
  int count = 0;
  fo_status st = fo_cuda_device_count(&count);
  if (st != FO_SUCCESS) {
    const char *why = fo_last_error();
    printf("consumer: no CUDA: %s\n", why);
    if (st != FO_ERR_NO_DEVICE || !why[0]) ok = 0;
    if (no_cuda && !strstr(why, "built without CUDA")) ok = 0;
  } else if (no_cuda) {
    ok = 0;
  }
  return ok && fo_version_number() == FO_VERSION_NUMBER ? 0 : 1;
}
