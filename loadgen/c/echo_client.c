/*
 * The yardstick for the load generator: a minimal C epoll echo client.
 *
 * Closed loop, one message in flight per connection, like `muxbench load
 * --workload echo --depth 1`, and just as honest: each connection sends a
 * message carrying its own sequence number and checks every byte that comes
 * back (memcmp) before sending the next.  Counts round trips completed inside
 * the window (after a warm-up), and the CPU it spent per round trip from its
 * first send to its last (start-up and connecting left out, as `muxbench
 * load` leaves them out of its figure), and prints one line:
 *
 *   roundtrips N seconds S rate R errors E cpu_us_per_roundtrip C
 *
 * usage: echo_client --port P [--host 127.0.0.1] [--conns 50] [--size 64]
 *                    [--duration 5] [--warmup 1]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    uint64_t seq;
    size_t got;
    char *sent, *recv;
};

static double seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now(void) { return seconds(CLOCK_MONOTONIC); }

static int send_next(struct conn *c, size_t size) {
    c->seq++;
    memcpy(c->sent, &c->seq, sizeof c->seq);
    c->got = 0;
    return send(c->fd, c->sent, size, 0) == (ssize_t)size ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, nconns = 50;
    size_t size = 64;
    double duration = 5, warmup = 1;
    /* Die with whoever started us, even SIGKILLed, when it can run no clean-up
     * (nor reach us: we may be in a session of our own).  A parent already gone
     * has left us to init, and then no signal will come: stop now. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) {
        fprintf(stderr, "echo_client: started by init, or its parent is gone; not running\n");
        return 1;
    }
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--conns")) nconns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size")) size = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup")) warmup = atof(argv[i + 1]);
        else { fprintf(stderr, "echo_client: unknown option %s\n", argv[i]); return 2; }
    }
    if (port <= 0 || nconns <= 0 || size < sizeof(uint64_t)) {
        fprintf(stderr, "echo_client: need --port, --conns > 0 and --size >= 8\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "echo_client: bad IPv4 address %s\n", host);
        return 2;
    }
    int ep = epoll_create1(0);
    struct conn *conns = calloc(nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("echo_client: connect");
            return 2;
        }
        c->sent = malloc(size);
        c->recv = malloc(size);
        for (size_t j = 0; j < size; j++) c->sent[j] = (char)(i * 31 + j * 7);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    long roundtrips = 0, errors = 0;
    double start = now(), open_at = start + warmup, close_at = open_at + duration;
    double cpu_start = seconds(CLOCK_PROCESS_CPUTIME_ID);
    for (int i = 0; i < nconns; i++)
        if (send_next(&conns[i], size) < 0) errors++;
    struct epoll_event events[256];
    for (;;) {
        double t = now();
        if (t >= close_at) break;
        int n = epoll_wait(ep, events, 256, (int)((close_at - t) * 1000) + 1);
        for (int k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            ssize_t r = recv(c->fd, c->recv + c->got, size - c->got, 0);
            if (r <= 0) {
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->got += (size_t)r;
            if (c->got < size) continue;
            if (memcmp(c->recv, c->sent, size) != 0) errors++;
            t = now();
            if (t >= open_at && t < close_at) roundtrips++;
            if (send_next(c, size) < 0) errors++;
        }
    }
    double cpu = seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
    long completed = 0; /* each connection's sequence number is one ahead of its replies */
    for (int i = 0; i < nconns; i++) completed += (long)conns[i].seq - 1;
    printf("roundtrips %ld seconds %.6f rate %.1f errors %ld cpu_us_per_roundtrip %.3f\n",
           roundtrips, duration, roundtrips / duration, errors,
           completed > 0 ? cpu * 1e6 / completed : 0.0);
    return errors ? 1 : 0;
}
