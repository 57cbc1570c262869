/*
 * test_nccl_loading.c -- NCCL loaded on demand (host/dp/nccl.c,
 * docs/install.md), in a program that does not link NCCL itself.
 *
 * ncclGetUniqueId leaves a bootstrap thread running inside libnccl, waiting
 * for the ranks to connect to the address the id holds.  The library must
 * stay mapped after fusedopt closes its handle, or that thread wakes in
 * unmapped code when the first rank connects and the process dies (this
 * test connects the way a rank would, and outlives the wake-up).  Runs
 * without a GPU: the id needs only NCCL and a network interface.  Skips,
 * saying why, where NCCL is not available (CPU-only builds, no libnccl).
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fusedopt.h"

/* The size of an IPv4 or IPv6 socket address stored at p, else 0. */
static socklen_t address_len(const struct sockaddr_storage *ss) {
  return ss->ss_family == AF_INET    ? (socklen_t)sizeof(struct sockaddr_in)
         : ss->ss_family == AF_INET6 ? (socklen_t)sizeof(struct sockaddr_in6)
                                     : 0;
}

/* Connect to the bootstrap root named by the id and send it a few bytes;
 * 0 when the id holds no address this test knows how to reach.  NCCL 2's
 * id is an 8-byte magic followed by the root's socket address (older ones
 * start with the address). */
static int poke_root(const fo_nccl_id *id) {
  struct sockaddr_storage ss;
  socklen_t len = 0;
  for (size_t at = 0; at <= 8 && len == 0; at += 8) {
    memset(&ss, 0, sizeof ss);
    size_t n = sizeof id->internal - at < sizeof ss ? sizeof id->internal - at : sizeof ss;
    memcpy(&ss, id->internal + at, n);
    len = address_len(&ss);
  }
  if (len == 0) return 0;
  int fd = socket(ss.ss_family, SOCK_STREAM, 0);
  cr_assert_geq(fd, 0, "socket");
  int connected = connect(fd, (const struct sockaddr *)&ss, len) == 0;
  if (connected) {
    static const char hello[64] = "not a rank";
    (void)!write(fd, hello, sizeof hello);
  }
  close(fd);
  return connected;
}

Test(nccl_loading, the_library_outlives_the_handle_of_get_id) {
  fo_nccl_id id;
  fo_status st = fo_nccl_get_id(&id);
  if (st == FO_ERR_UNSUPPORTED) cr_skip_test("NCCL is not available here: %s", fo_last_error());
  cr_assert_eq(st, FO_SUCCESS, "fo_nccl_get_id: %s", fo_last_error());
  if (!poke_root(&id)) cr_skip_test("the id's bootstrap address cannot be reached here");
  /* give the root's thread time to wake and read what was sent */
  struct timespec pause = {0, 300 * 1000 * 1000};
  nanosleep(&pause, NULL);
  /* reaching this line is the test: the process is still alive */
  cr_assert(1);
}

Test(nccl_loading, a_missing_argument_is_refused_before_loading) {
  cr_assert_eq(fo_nccl_get_id(NULL), FO_ERR_NULL_POINTER);
  cr_assert(strstr(fo_last_error(), "out is NULL"), "%s", fo_last_error());
}
