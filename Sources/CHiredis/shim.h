/* Redis client (Debian libhiredis-dev 0.14): the blocking API, used only on the store thread
   (StateroomServer/Store/RedisStore.swift), never on a shard. */
#include <hiredis/hiredis.h>
#include <sys/time.h>

/* Fields of hiredis structs read through functions: the error string is a fixed char array,
   awkward as a Swift tuple. */
static inline int sr_redis_err(const redisContext *c) { return c->err; }
static inline const char *sr_redis_errstr(const redisContext *c) { return c->errstr; }
static inline int sr_redis_fd(const redisContext *c) { return c->fd; }
