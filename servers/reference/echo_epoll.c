/*
 * The reference "limit": a minimal C epoll (level-triggered) echo server.
 *
 * Same rules as the Python models so the comparison is fair: one 64 KiB
 * receive per readiness report, TCP_NODELAY, write directly and keep only
 * what the kernel did not take, watch for writability only while such a
 * backlog exists (and stop reading meanwhile, as the Python echo does).
 *
 * usage: echo_epoll [--host ADDR] [--port N]   (IPv4; prints "listening on")
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define RECV_SIZE 65536

struct conn {
    int fd;
    size_t off, len; /* backlog = buf[off .. len) */
    int eof;
    char buf[RECV_SIZE];
};

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static void watch(int ep, int op, struct conn *c) {
    struct epoll_event ev = {.events = c->len > c->off ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, op, c->fd, &ev);
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Write the backlog; returns -1 when the connection is gone. */
static int flush(struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        c->off += (size_t)n;
    }
    c->off = c->len = 0;
    return 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    /* Die with whoever started us, even SIGKILLed, when it can run no clean-up
     * (nor reach us: we may be in a session of our own).  A parent already gone
     * has left us to init, and then no signal will come: stop now. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) {
        fprintf(stderr, "echo_epoll: started by init, or its parent is gone; not running\n");
        return 1;
    }
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: wake epoll_wait */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1 ||
        bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        fprintf(stderr, "echo_epoll: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        return 2;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("echo_epoll: c-epoll (echo) listening on %s:%d\n", host, ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL}, events[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    while (!stopping) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0) continue;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c = calloc(1, sizeof *c);
                c->fd = fd;
                watch(ep, EPOLL_CTL_ADD, c);
                continue;
            }
            if (events[i].events & EPOLLOUT) {
                if (flush(c) < 0) { drop(ep, c); continue; }
                if (c->len == 0) {
                    if (c->eof) { drop(ep, c); continue; }
                    watch(ep, EPOLL_CTL_MOD, c);
                }
                continue;
            }
            ssize_t got = recv(c->fd, c->buf, RECV_SIZE, 0);
            if (got < 0 && errno == EAGAIN) continue;
            if (got <= 0) { drop(ep, c); continue; } /* EOF with nothing queued, or reset */
            c->off = 0;
            c->len = (size_t)got;
            if (flush(c) < 0) { drop(ep, c); continue; }
            if (c->len) watch(ep, EPOLL_CTL_MOD, c);
        }
    }
    return 0;
}
