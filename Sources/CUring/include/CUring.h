// C shim over liburing. Every helper keeps liburing's name with the `cu_` prefix, so
// `cu_prep_recv_multishot` is `io_uring_prep_recv_multishot` (see its man page). liburing's
// helpers are `static inline` and its header uses C11 atomics, so Swift sees only this header;
// the ring itself is opaque. No logic lives here beyond unwrapping.
#ifndef CURING_H
#define CURING_H

#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/uio.h>

typedef struct cu_ring cu_ring;
typedef struct cu_buf_ring cu_buf_ring;
struct io_uring_sqe;

/// A completion copied out of the ring (reap first, act after).
typedef struct cu_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
} cu_cqe;

// Setup flags and CQE flags, re-exported as plain constants.
extern const unsigned CU_SETUP_SINGLE_ISSUER;
extern const unsigned CU_SETUP_DEFER_TASKRUN;
extern const unsigned CU_SETUP_COOP_TASKRUN;
extern const unsigned CU_SETUP_SUBMIT_ALL;
extern const unsigned CU_CQE_F_BUFFER;
extern const unsigned CU_CQE_F_MORE;
extern const unsigned CU_CQE_BUFFER_SHIFT;

/// io_uring_queue_init_params: returns NULL and sets *err (a positive errno) on failure.
cu_ring *cu_queue_init(unsigned entries, unsigned flags, int *err);
/// io_uring_queue_exit and free.
void cu_queue_exit(cu_ring *ring);
/// io_uring_get_sqe; when the submission queue is full it submits once and tries again.
struct io_uring_sqe *cu_get_sqe(cu_ring *ring);
/// io_uring_submit.
int cu_submit(cu_ring *ring);
/// io_uring_submit_and_wait_timeout: submits and waits for `wait_nr` completions or `timeout_ns`
/// (negative: no timeout). Returns 0 or a negative errno (-ETIME on timeout, -EINTR).
int cu_submit_and_wait_timeout(cu_ring *ring, unsigned wait_nr, int64_t timeout_ns);
/// Copies up to `max` completions into `out` and advances the completion queue past them.
unsigned cu_reap(cu_ring *ring, cu_cqe *out, unsigned max);

void cu_sqe_set_data64(struct io_uring_sqe *sqe, uint64_t data);
void cu_sqe_set_flags(struct io_uring_sqe *sqe, unsigned flags);
/// Marks the SQE's fd as an index into the ring's registered file table (IOSQE_FIXED_FILE).
void cu_sqe_use_fixed_file(struct io_uring_sqe *sqe);
/// io_uring_register_files_sparse: a table of `nr` empty registered-file slots. Returns 0 or -errno.
int cu_register_files_sparse(cu_ring *ring, unsigned nr);
/// io_uring_register_files_update of one slot (`fd` -1 empties it). Returns 1 or -errno.
int cu_register_file(cu_ring *ring, unsigned slot, int fd);
void cu_prep_multishot_accept(struct io_uring_sqe *sqe, int fd, int flags);
/// io_uring_prep_recv_multishot with IOSQE_BUFFER_SELECT from buffer group `bgid`.
void cu_prep_recv_multishot(struct io_uring_sqe *sqe, int fd, int bgid);
/// io_uring_prep_recv (single shot) with IOSQE_BUFFER_SELECT from buffer group `bgid`.
void cu_prep_recv_select(struct io_uring_sqe *sqe, int fd, int bgid);
void cu_prep_sendmsg(struct io_uring_sqe *sqe, int fd, const struct msghdr *msg, unsigned flags);
void cu_prep_send(struct io_uring_sqe *sqe, int fd, const void *buf, size_t len, int flags);
void cu_prep_read(struct io_uring_sqe *sqe, int fd, void *buf, unsigned nbytes, uint64_t offset);
void cu_prep_cancel64(struct io_uring_sqe *sqe, uint64_t user_data, int flags);

/// Allocates page-aligned ring memory (liburing 2.3 has no io_uring_setup_buf_ring),
/// io_uring_buf_ring_init + io_uring_register_buf_ring. NULL and *err on failure.
cu_buf_ring *cu_setup_buf_ring(cu_ring *ring, unsigned entries, int bgid, int *err);
void cu_free_buf_ring(cu_ring *ring, cu_buf_ring *br, unsigned entries, int bgid);
void cu_buf_ring_add(cu_buf_ring *br, void *addr, unsigned len, unsigned short bid, int mask, int offset);
void cu_buf_ring_advance(cu_buf_ring *br, int count);
int cu_buf_ring_mask(unsigned entries);

/// Pins the calling thread to one CPU (pthread_setaffinity_np; CPU_SET is a macro).
int cu_pin_thread_to_cpu(int cpu);
/// Writes up to `max` CPU numbers this process may run on into `out`; returns how many.
int cu_allowed_cpus(int *out, int max);

// epoll, for the fallback backend (epoll_event is packed on x86-64, awkward from Swift).
typedef struct cu_epoll_event {
    uint32_t events;
    uint64_t data;
} cu_epoll_event;
extern const uint32_t CU_EPOLLIN, CU_EPOLLOUT, CU_EPOLLRDHUP, CU_EPOLLHUP, CU_EPOLLERR;
extern const int CU_EPOLL_CTL_ADD, CU_EPOLL_CTL_MOD, CU_EPOLL_CTL_DEL;
/// accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK): a negative errno on failure.
int cu_accept_nonblocking(int fd);
/// epoll_create1(EPOLL_CLOEXEC).
int cu_epoll_create(void);
int cu_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int cu_epoll_wait(int epfd, cu_epoll_event *out, int max, int timeout_ms);

/// eventfd(0, EFD_CLOEXEC).
int cu_eventfd(void);
/// Writes a line to standard error (write(2) on fd 2, whole or not at all).
void cu_write_stderr(const char *text);

#endif
