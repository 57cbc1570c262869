/*
 * checkpoint_schema.h -- what a checkpoint holds, written down once
 * (host/checkpoint/checkpoint_schema.c): the table of the "fusedopt.*"
 * metadata fields and of the tensors' roles.  The writer, the reader and
 * the checksum the ranks compare all walk this table; a field added here
 * is saved, loaded and compared.  docs/checkpoints.md lists the fields
 * and docs/reliability.md the file's layout.  Not installed.
 */
#ifndef FO_CHECKPOINT_SCHEMA_H
#define FO_CHECKPOINT_SCHEMA_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint_format.h"
#include "checkpoint_meta.h"

/* Per-tensor metadata, "<prefix><tensor key>" (fo_ckpt_entry.key):
 * every tensor's CRC-32; each tensor's parameter group, under its
 * parameters' key (a load refuses to move a tensor to another group;
 * files written before it was recorded load without the check); and in a
 * per-rank file (version 2) each state piece's first element in its
 * tensor. */
#define FO_CKPT_CRC_PREFIX "fusedopt.crc32."
#define FO_CKPT_GROUP_OF_PREFIX "fusedopt.group_of."
#define FO_CKPT_PIECE_PREFIX "fusedopt.shard.offset."
/* Its presence in a version-2 file makes it a per-rank file. */
#define FO_CKPT_SHARD_SIZE_KEY "fusedopt.shard.size"

/* Where a field's value lives, and which files hold it. */
typedef enum fo_ckpt_scope {
  FO_CKPT_FILE,        /* fo_ckpt_facts: every file */
  FO_CKPT_OPTION,      /* fo_options: every file */
  FO_CKPT_GROUP,       /* fo_hparams, once per group ("group.<g>.<name>"): every file */
  FO_CKPT_STATE,       /* fo_step_state: every file */
  FO_CKPT_GROUP_STATE, /* an array of fo_step_state with one element per group
                        * ("group.<g>.<name>") */
  FO_CKPT_SHARD        /* fo_ckpt_shard: per-rank files of a sharded state only */
} fo_ckpt_scope;

/* The FO_CKPT_FILE fields' values. */
typedef struct fo_ckpt_facts {
  int format_version; /* FO_CKPT_FORMAT_WHOLE or _SHARD */
  const char *library_version;
  int num_groups;
  int64_t num_tensors;
} fo_ckpt_facts;

/* How a value is stored in its struct, and written (checkpoint_text.h). */
typedef enum fo_ckpt_type {
  FO_CKPT_INT,  /* int or int32_t, decimal */
  FO_CKPT_I64,  /* int64_t, decimal */
  FO_CKPT_U64,  /* uint64_t, decimal */
  FO_CKPT_F32,  /* float, hexadecimal */
  FO_CKPT_NAME, /* an enum, by its name in names[] */
  FO_CKPT_TEXT  /* const char * */
} fo_ckpt_type;

/* What a load does with a field (the FO_CKPT_FIT_* uses last). */
typedef enum fo_ckpt_use {
  FO_CKPT_RECORDED,        /* nothing: the saver's choice; the loader keeps its own */
  FO_CKPT_VERSION,         /* the format version, read before anything else */
  FO_CKPT_RESTORED,        /* read into what the load restores, in table order */
  FO_CKPT_FIT_ALGORITHM,   /* must be the loader's algorithm */
  FO_CKPT_FIT_PARAM_DTYPE, /* must be the loader's parameter dtype */
  FO_CKPT_FIT_ROLES,       /* with the fields before it, must need the state roles the
                            * loader keeps (fo_state_needed) */
  FO_CKPT_FIT_EQUAL        /* must equal the loader's value */
} fo_ckpt_use;

typedef struct fo_ckpt_field {
  const char *name; /* the key after "fusedopt." (after "fusedopt.group.<g>." in a group) */
  fo_ckpt_scope scope;
  fo_ckpt_type type;
  size_t offset; /* in the scope's struct */
  fo_ckpt_use use;
  /* An integer that is read must lie in [lo, hi] -- hi, when hi_of is
   * set, computed from the fields of the scope read before it. */
  int64_t lo, hi;
  int64_t (*hi_of)(const void *scope_value);
  const char *const *names; /* FO_CKPT_NAME: names[0 .. num_names) */
  int num_names;
  /* The algorithms whose files hold the field, a mask of 1u << fo_algorithm;
   * 0: every algorithm.  A field only some update rules read (AdaGrad's
   * lr_decay, NAdam's mu_product) is neither written nor read for the
   * others, so their files stay as earlier versions wrote them. */
  unsigned algs;
  size_t stride; /* FO_CKPT_GROUP_STATE: bytes from one group's element to the next */
} fo_ckpt_field;

/* Whether a load holds the field to the loading optimizer's. */
static inline int fo_ckpt_use_is_fit(fo_ckpt_use use) {
  return use >= FO_CKPT_FIT_ALGORITHM;
}

/* Every field, in the order a load reads them (which failure a file
 * with several faults reports); the order of writing does not matter,
 * the metadata is sorted. */
extern const fo_ckpt_field fo_ckpt_fields[];
extern const int fo_ckpt_num_fields;

/* Whether a file of alg holds field f. */
static inline int fo_ckpt_field_held(const fo_ckpt_field *f, fo_algorithm alg) {
  return f->algs == 0 || (f->algs >> (unsigned)alg & 1u);
}

/* Write every field of scope that a file of alg holds (of group g in the
 * group scopes) from value, the scope's struct. */
void fo_ckpt_schema_write(fo_meta_list *l, fo_ckpt_scope scope, fo_algorithm alg, int g,
                          const void *value);

/* Read field f (of group g) into value, the scope's struct. */
fo_status fo_ckpt_schema_read_field(const fo_meta_reader *r, const fo_ckpt_field *f, int g,
                                    void *value);
/* Read every FO_CKPT_RESTORED field of scope that a file of alg holds, in
 * table order. */
fo_status fo_ckpt_schema_read(const fo_meta_reader *r, fo_ckpt_scope scope, fo_algorithm alg, int g,
                              void *value);

/* Continue crc over the FO_CKPT_RESTORED fields of scope (of group g) in
 * value that a file of alg holds, in table order: the fingerprint of a
 * load's step state and hyper-parameters that the ranks compare. */
uint32_t fo_ckpt_schema_fold(const fo_crc32 *c, uint32_t crc, fo_ckpt_scope scope, fo_algorithm alg,
                             int g, const void *value);

/* An integer or enum field's value, widened. */
int64_t fo_ckpt_field_int(const fo_ckpt_field *f, const void *value);

/* ----------------------------------------------------------------- roles */

/* Whether a checkpoint of opt holds a buffer of role: the parameters
 * always, a state role when opt keeps it (fo_role_kept), gradients never. */
int fo_ckpt_role_saved(const fo_optimizer *opt, fo_role role);
/* The suffix of a role's key after the tensor's name (fo_ckpt_entry.key);
 * SGD's buffer takes PyTorch's name for it. */
const char *fo_ckpt_role_suffix(fo_algorithm alg, fo_role role);

static inline int fo_ckpt_is_state_role(fo_role r) {
  return r >= FO_ROLE_MASTER && r < FO_ROLE_COUNT;
}

#endif /* FO_CHECKPOINT_SCHEMA_H */
