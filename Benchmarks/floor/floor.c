// floor: what the kernel's loopback TCP path costs a sender, with no WebSocket work at all.
//
// One process, two threads. The sender owns N accepted TCP sockets on 127.0.0.1 (like a
// server) and, each round, sends every one of them K pre-built 66-byte frames (a 64-byte
// unmasked text frame) in a single send. The receiver, on another core, drains the client ends
// with epoll. The sender's thread CPU is read around the send phase only (it includes the
// receiving socket's TCP work, which loopback runs in the sender's context), plus the time of the
// sender core's ksoftirqd. Two ways to send are compared, interleaved, as the best each I/O
// backend can do:
//
//   send   one send() system call per socket (what an epoll loop does)
//   uring  io_uring SEND with registered files, SINGLE_ISSUER | DEFER_TASKRUN, submitted every
//          --batch sends (0: the whole round in one io_uring_enter), completions reaped at the end
//
// Every round waits until the receiver has drained it, so socket buffers never fill and both
// modes do exactly the same TCP work. The ratio uring/send bounds what any server's io_uring
// backend can gain over an epoll one when sends dominate.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME 66
// At most this many frames per send (4,224 bytes): every send fits a fresh socket's 16 KiB send
// buffer, so a send never writes part of its bytes.
#define MAX_FRAMES 64

static int nsock = 1000, rounds = 200, repeats = 5, batch = 32, sendCPU = 0, recvCPU = 1;
static int framesList[8] = {1, 4, 16}, nframes = 3;
static int *srv, *cli;
static _Atomic long long drained;
static _Atomic int stop;

static void die(const char *what) { perror(what); exit(1); }

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) fprintf(stderr, "floor: cannot pin to CPU %d\n", cpu);
}

static double threadCPU(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

// utime + stime of ksoftirqd/<cpu>, in seconds; 0 when it cannot be found.
static int softirqPid = -1;
static double softirqCPU(void) {
    if (softirqPid < 0) {
        softirqPid = 0;
        char want[32], path[64], comm[64];
        snprintf(want, sizeof want, "ksoftirqd/%d\n", sendCPU);
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 0) continue;
            snprintf(path, sizeof path, "/proc/%d/comm", pid);
            FILE *f = fopen(path, "r");
            if (!f) continue;
            if (fgets(comm, sizeof comm, f) && strcmp(comm, want) == 0) softirqPid = pid;
            fclose(f);
            if (softirqPid > 0) break;
        }
        if (d) closedir(d);
    }
    if (softirqPid <= 0) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", softirqPid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    // After ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return 0;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static void *receiver(void *arg) {
    (void)arg;
    pin(recvCPU);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < nsock; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = cli[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cli[i], &ev) < 0) die("epoll_ctl");
    }
    static char buf[1 << 16];
    struct epoll_event evs[256];
    while (!atomic_load(&stop)) {
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            ssize_t r;
            while ((r = recv(evs[i].data.fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) atomic_fetch_add(&drained, r);
        }
    }
    close(ep);
    return NULL;
}

static void connectAll(void) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (void *)&a, sizeof a) < 0 || listen(l, 4096) < 0 || getsockname(l, (void *)&a, &al) < 0) die("listen");
    srv = calloc(nsock, sizeof *srv);
    cli = calloc(nsock, sizeof *cli);
    int one = 1;
    for (int i = 0; i < nsock; i++) {
        cli[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (cli[i] < 0 || connect(cli[i], (void *)&a, sizeof a) < 0) die("connect");
        srv[i] = accept(l, NULL, NULL);
        if (srv[i] < 0) die("accept");
        setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    close(l);
}

static void waitDrained(long long target) {
    struct timespec ts = {0, 20000};
    for (int spins = 0; atomic_load(&drained) < target; spins++) {
        if (spins > 500000) { fprintf(stderr, "floor: receiver stalled at %lld of %lld bytes\n", atomic_load(&drained), target); exit(1); }
        nanosleep(&ts, NULL);
    }
}

static long long expected;

// One round of the `send` path: a send() per socket.
static void sendRound(struct io_uring *ring, const char *frames, size_t len) {
    (void)ring;
    for (int i = 0; i < nsock; i++) {
        ssize_t w = send(srv[i], frames, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w != (ssize_t)len) { fprintf(stderr, "floor: send wrote %zd of %zu (%s)\n", w, len, strerror(errno)); exit(1); }
    }
}

// One round of the `uring` path: a SEND per socket (registered file index = socket index),
// submitted every `batch`, then every completion reaped.
static void uringRound(struct io_uring *ring, const char *frames, size_t len) {
    int pending = 0, done = 0;
    for (int i = 0; i < nsock; i++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
        if (!sqe) { io_uring_submit(ring); sqe = io_uring_get_sqe(ring); }
        io_uring_prep_send(sqe, i, frames, len, MSG_NOSIGNAL);
        sqe->flags |= IOSQE_FIXED_FILE;
        if (batch > 0 && ++pending == batch) { io_uring_submit(ring); pending = 0; }
    }
    io_uring_submit(ring);
    while (done < nsock) {
        struct io_uring_cqe *cqe;
        int e = io_uring_wait_cqe(ring, &cqe);
        if (e < 0) { fprintf(stderr, "floor: wait_cqe: %s\n", strerror(-e)); exit(1); }
        unsigned head, n = 0;
        io_uring_for_each_cqe(ring, head, cqe) {
            if (cqe->res != (int)len) { fprintf(stderr, "floor: io_uring send: %d of %zu\n", cqe->res, len); exit(1); }
            n++;
        }
        io_uring_cq_advance(ring, n);
        done += n;
    }
}

typedef void (*Round)(struct io_uring *, const char *, size_t);

// One measured run of one path: `rounds` rounds of K frames to every socket, each timed on its
// own and followed by an untimed wait until the receiver has drained it. Returns CPU µs per frame.
static double run(Round round, struct io_uring *ring, const char *frames, int k) {
    size_t len = (size_t)k * FRAME;
    double cpu = 0, soft0 = softirqCPU();
    for (int r = 0; r < rounds; r++) {
        double t0 = threadCPU();
        round(ring, frames, len);
        cpu += threadCPU() - t0;
        expected += (long long)len * nsock;
        waitDrained(expected);
    }
    cpu += softirqCPU() - soft0;
    return cpu * 1e6 / ((double)rounds * nsock * k);
}

static int cmpd(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return (x > y) - (x < y); }
static double median(double *v, int n) { qsort(v, n, sizeof *v, cmpd); return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2; }

static void usage(void) {
    fprintf(stderr,
            "usage: floor [--sockets N] [--frames K[,K...] (1-64, up to 8 counts)] [--rounds R] [--repeats M] [--batch B]\n"
            "             [--sender-cpu C] [--receiver-cpu C]   (a CPU of -1 leaves the thread unpinned)\n");
    exit(2);
}

// A whole decimal number, or usage.
static int num(const char *v) {
    char *end;
    long n = strtol(v, &end, 10);
    if (end == v || *end || n < -1000000 || n > 1000000) usage();
    return (int)n;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i += 2) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(o, "--sockets")) nsock = num(v);
        else if (!strcmp(o, "--rounds")) rounds = num(v);
        else if (!strcmp(o, "--repeats")) repeats = num(v);
        else if (!strcmp(o, "--batch")) batch = num(v);
        else if (!strcmp(o, "--sender-cpu")) sendCPU = num(v);
        else if (!strcmp(o, "--receiver-cpu")) recvCPU = num(v);
        else if (!strcmp(o, "--frames")) {
            nframes = 0;
            for (char *s = strdup(v), *t = strtok(s, ","); t; t = strtok(NULL, ",")) {
                if (nframes == 8) usage();
                framesList[nframes++] = num(t);
            }
        } else usage();
    }
    if (nsock < 1 || nsock > 9000 || rounds < 1 || repeats < 1 || batch < 0 || nframes < 1) usage();
    for (int f = 0; f < nframes; f++) if (framesList[f] < 1 || framesList[f] > MAX_FRAMES) usage();

    connectAll();
    pthread_t rt;
    if (pthread_create(&rt, NULL, receiver, NULL) != 0) die("pthread_create");
    pin(sendCPU);

    struct io_uring ring;
    struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
    int e = io_uring_queue_init_params(4096, &ring, &p);
    if (e < 0) { fprintf(stderr, "floor: io_uring_queue_init: %s\n", strerror(-e)); return 1; }
    if ((e = io_uring_register_files(&ring, srv, nsock)) < 0) { fprintf(stderr, "floor: register_files: %s\n", strerror(-e)); return 1; }

    char *frames = malloc((size_t)MAX_FRAMES * FRAME);
    for (int i = 0; i < MAX_FRAMES; i++) {
        frames[i * FRAME] = (char)0x81;
        frames[i * FRAME + 1] = 64;
        memset(frames + i * FRAME + 2, 'a' + i % 26, 64);
    }
    // Warm-up: both paths once, unmeasured.
    int saveRounds = rounds;
    rounds = rounds / 10 + 1;
    run(sendRound, &ring, frames, framesList[0]);
    run(uringRound, &ring, frames, framesList[0]);
    rounds = saveRounds;

    printf("floor: %d sockets, %d rounds per run, %d interleaved runs per mode, io_uring batch %d%s\n",
           nsock, rounds, repeats, batch, batch == 0 ? " (whole round)" : "");
    printf("%-16s %14s %14s %12s\n", "frames per send", "send µs/frame", "uring µs/frame", "uring/send");
    double *vs = calloc(repeats, sizeof *vs), *vu = calloc(repeats, sizeof *vu);
    for (int f = 0; f < nframes; f++) {
        int k = framesList[f];
        for (int r = 0; r < repeats; r++) {
            if (r % 2 == 0) { vs[r] = run(sendRound, &ring, frames, k); vu[r] = run(uringRound, &ring, frames, k); }
            else { vu[r] = run(uringRound, &ring, frames, k); vs[r] = run(sendRound, &ring, frames, k); }
        }
        double ms = median(vs, repeats), mu = median(vu, repeats);
        printf("%-16d %14.3f %14.3f %11.2fx\n", k, ms, mu, mu / ms);
    }
    printf("bytes sent %lld, received %lld\n", expected, atomic_load(&drained));
    atomic_store(&stop, 1);
    pthread_join(rt, NULL);
    return atomic_load(&drained) == expected ? 0 : 1;
}
