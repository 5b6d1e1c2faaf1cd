#define _GNU_SOURCE
#include "CUring.h"
#include <liburing.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct cu_ring { struct io_uring ring; };

const unsigned CU_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
const unsigned CU_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;
const unsigned CU_SETUP_COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
const unsigned CU_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
const unsigned CU_CQE_F_BUFFER = IORING_CQE_F_BUFFER;
const unsigned CU_CQE_F_MORE = IORING_CQE_F_MORE;
const unsigned CU_CQE_BUFFER_SHIFT = IORING_CQE_BUFFER_SHIFT;

cu_ring *cu_queue_init(unsigned entries, unsigned flags, int *err) {
    cu_ring *r = calloc(1, sizeof(*r));
    if (!r) { *err = ENOMEM; return NULL; }
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = flags;
    int ret = io_uring_queue_init_params(entries, &r->ring, &p);
    if (ret < 0) { *err = -ret; free(r); return NULL; }
    *err = 0;
    return r;
}

void cu_queue_exit(cu_ring *ring) {
    io_uring_queue_exit(&ring->ring);
    free(ring);
}

struct io_uring_sqe *cu_get_sqe(cu_ring *ring) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) {
        io_uring_submit(&ring->ring);
        sqe = io_uring_get_sqe(&ring->ring);
    }
    return sqe;
}

int cu_submit(cu_ring *ring) { return io_uring_submit(&ring->ring); }

int cu_submit_and_wait_timeout(cu_ring *ring, unsigned wait_nr, int64_t timeout_ns) {
    struct io_uring_cqe *cqe = NULL;
    if (timeout_ns < 0) {
        return io_uring_submit_and_wait_timeout(&ring->ring, &cqe, wait_nr, NULL, NULL);
    }
    struct __kernel_timespec ts;
    ts.tv_sec = timeout_ns / 1000000000LL;
    ts.tv_nsec = timeout_ns % 1000000000LL;
    return io_uring_submit_and_wait_timeout(&ring->ring, &cqe, wait_nr, &ts, NULL);
}

unsigned cu_reap(cu_ring *ring, cu_cqe *out, unsigned max) {
    unsigned head, n = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
        if (n == max) break;
        out[n].user_data = cqe->user_data;
        out[n].res = cqe->res;
        out[n].flags = cqe->flags;
        n++;
    }
    io_uring_cq_advance(&ring->ring, n);
    return n;
}

void cu_sqe_set_data64(struct io_uring_sqe *sqe, uint64_t data) { io_uring_sqe_set_data64(sqe, data); }
void cu_sqe_set_flags(struct io_uring_sqe *sqe, unsigned flags) { io_uring_sqe_set_flags(sqe, flags); }
void cu_sqe_use_fixed_file(struct io_uring_sqe *sqe) { sqe->flags |= IOSQE_FIXED_FILE; }
int cu_register_files_sparse(cu_ring *ring, unsigned nr) { return io_uring_register_files_sparse(&ring->ring, nr); }
int cu_register_file(cu_ring *ring, unsigned slot, int fd) {
    return io_uring_register_files_update(&ring->ring, slot, &fd, 1);
}

void cu_prep_multishot_accept(struct io_uring_sqe *sqe, int fd, int flags) {
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, flags);
}
void cu_prep_recv_multishot(struct io_uring_sqe *sqe, int fd, int bgid) {
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = (__u16)bgid;
}
void cu_prep_recv_select(struct io_uring_sqe *sqe, int fd, int bgid) {
    io_uring_prep_recv(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = (__u16)bgid;
}
void cu_prep_sendmsg(struct io_uring_sqe *sqe, int fd, const struct msghdr *msg, unsigned flags) {
    io_uring_prep_sendmsg(sqe, fd, msg, flags);
}
void cu_prep_send(struct io_uring_sqe *sqe, int fd, const void *buf, size_t len, int flags) {
    io_uring_prep_send(sqe, fd, buf, len, flags);
}
void cu_prep_read(struct io_uring_sqe *sqe, int fd, void *buf, unsigned nbytes, uint64_t offset) {
    io_uring_prep_read(sqe, fd, buf, nbytes, offset);
}
void cu_prep_cancel64(struct io_uring_sqe *sqe, uint64_t user_data, int flags) {
    io_uring_prep_cancel64(sqe, user_data, flags);
}

cu_buf_ring *cu_setup_buf_ring(cu_ring *ring, unsigned entries, int bgid, int *err) {
    size_t size = entries * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) { *err = errno; return NULL; }
    struct io_uring_buf_ring *br = mem;
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)br;
    reg.ring_entries = entries;
    reg.bgid = (unsigned short)bgid;
    int ret = io_uring_register_buf_ring(&ring->ring, &reg, 0);
    if (ret) { *err = -ret; munmap(mem, size); return NULL; }
    *err = 0;
    return (cu_buf_ring *)br;
}

void cu_free_buf_ring(cu_ring *ring, cu_buf_ring *br, unsigned entries, int bgid) {
    io_uring_unregister_buf_ring(&ring->ring, bgid);
    munmap(br, entries * sizeof(struct io_uring_buf));
}

void cu_buf_ring_add(cu_buf_ring *br, void *addr, unsigned len, unsigned short bid, int mask, int offset) {
    io_uring_buf_ring_add((struct io_uring_buf_ring *)br, addr, len, bid, mask, offset);
}
void cu_buf_ring_advance(cu_buf_ring *br, int count) {
    io_uring_buf_ring_advance((struct io_uring_buf_ring *)br, count);
}
int cu_buf_ring_mask(unsigned entries) { return io_uring_buf_ring_mask(entries); }

int cu_pin_thread_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

const uint32_t CU_EPOLLIN = EPOLLIN, CU_EPOLLOUT = EPOLLOUT, CU_EPOLLRDHUP = EPOLLRDHUP,
    CU_EPOLLHUP = EPOLLHUP, CU_EPOLLERR = EPOLLERR;
const int CU_EPOLL_CTL_ADD = EPOLL_CTL_ADD, CU_EPOLL_CTL_MOD = EPOLL_CTL_MOD, CU_EPOLL_CTL_DEL = EPOLL_CTL_DEL;

int cu_accept_nonblocking(int fd) {
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return c >= 0 ? c : -errno;
}

int cu_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int cu_allowed_cpus(int *out, int max) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
    int n = 0;
    for (int i = 0; i < CPU_SETSIZE && n < max; i++) if (CPU_ISSET(i, &set)) out[n++] = i;
    return n;
}

int cu_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int cu_epoll_wait(int epfd, cu_epoll_event *out, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) { out[i].events = evs[i].events; out[i].data = evs[i].data.u64; }
    return n;
}

int cu_eventfd(void) { return eventfd(0, EFD_CLOEXEC); }

void cu_write_stderr(const char *text) {
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(2, text + off, len - off);
        if (n <= 0) return;
        off += (size_t)n;
    }
}
