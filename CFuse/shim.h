// CFuse: libfuse3's low-level API as Swift sees it. One header pins the API
// version and wraps the macros Swift cannot import.
#ifndef CFUSE_SHIM_H
#define CFUSE_SHIM_H

// 3.12 is the lowest API with the opaque `struct fuse_loop_config` and the
// `fuse_loop_cfg_*` setters that `fuse_session_loop_mt(se, cfg)` takes; set
// here and nowhere else (the header #errors without it).
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h> // pkg-config fuse3 adds -I/usr/include/fuse3

#include <stddef.h>
#include <stdint.h>

/// `FUSE_ARGS_INIT` is a function-like macro; Swift cannot call macros.
static inline struct fuse_args cfuse_args_init(int argc, char **argv) {
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  return args;
}

/// `FUSE_BUFVEC_INIT` is a function-like macro (a compound literal); Swift cannot call macros.
static inline struct fuse_bufvec cfuse_bufvec_init(size_t size) {
  return FUSE_BUFVEC_INIT(size);
}

/// `fuse_session_loop_mt` is a macro (bound to `fuse_session_loop_mt_312`) when
/// libfuse is built without versioned symbols; the wrapper works either way.
static inline int cfuse_session_loop_mt(struct fuse_session *se,
                                        struct fuse_loop_config *config) {
  return fuse_session_loop_mt(se, config);
}

/// `struct fuse_bufvec` ends in `buf[1]` (a pre-C99 flexible array); the byte
/// size of a vector with `count` segments is `offsetof` arithmetic Swift cannot
/// spell for a C array member.
static inline size_t cfuse_bufvec_size(size_t count) {
  return offsetof(struct fuse_bufvec, buf) + count * sizeof(struct fuse_buf);
}

#endif
