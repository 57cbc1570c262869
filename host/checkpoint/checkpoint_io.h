/*
 * checkpoint_io.h -- the files of checkpoints (host/checkpoint/
 * checkpoint_io.c).  A save writes a temporary file next to the target,
 * fsyncs it, renames it over the target and fsyncs the directory, so the
 * target is at every moment either the old checkpoint or the complete new
 * one (docs/reliability.md).  Not installed.
 */
#ifndef FO_CHECKPOINT_IO_H
#define FO_CHECKPOINT_IO_H

#include <stddef.h>
#include <sys/types.h>

#include "internal.h"

/* Host memory passes through write() in pieces of this size, and device
 * memory through a staging buffer of this size. */
#define FO_CKPT_IO_CHUNK ((size_t)16 << 20)

/* FO_ERR_IO: "<what> \"<path>\": <strerror(err)>". */
fo_status fo_ckpt_io_fail(const char *func, const char *what, const char *path, int err);
/* FO_ERR_IO on the temporary file tmp of a save of path: names path
 * first, then tmp. */
fo_status fo_ckpt_tmp_fail(const char *func, const char *what, const char *path, const char *tmp,
                           int err);

/* FO_ERR_NULL_POINTER or FO_ERR_INVALID_ARGUMENT for a NULL or empty path
 * (what names the argument). */
fo_status fo_ckpt_check_path(const char *func, const char *what, const char *path);

/* The whole regular file at path in one malloc'd buffer. */
fo_status fo_ckpt_read_file(const char *func, const char *path, unsigned char **out, size_t *len);

/* Create the temporary file of a save of path (*tmp malloc'd, *fd open for
 * writing). */
fo_status fo_ckpt_open_temp(const char *func, const char *path, char **tmp, int *fd);
/* All n bytes at the file's position, or at offset at; failures name path
 * and tmp. */
fo_status fo_ckpt_write_all(const char *func, int fd, const void *data, size_t n, const char *path,
                            const char *tmp);
fo_status fo_ckpt_pwrite_all(const char *func, int fd, const void *data, size_t n, off_t at,
                             const char *path, const char *tmp);
/* Rename the complete temporary file over path (removing it if that
 * fails), make the rename durable, and remove what earlier saves of path
 * that died left behind. */
fo_status fo_ckpt_commit(const char *func, const char *tmp, const char *path);

#endif /* FO_CHECKPOINT_IO_H */
